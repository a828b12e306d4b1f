#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/datapath/cgroup_steering.h"
#include "meshtls/datapath/inbound_capture.h"
#include "meshtls/datapath/local_leg_shortcut.h"
#include "meshtls/policy/policy.h"
#include "meshtls/proxy/access_log.h"
#include "meshtls/tls/connection_registry.h"
#include "meshtls/tls/identity_contexts.h"
#include "meshtls/tls/relay.h"
#include "meshtls/workload/registry.h"

namespace meshtls::proxy {

struct ProxyPorts {
  uint16_t outbound = 15001;
  uint16_t inbound_capture = 15006;
  uint16_t tunnel = 15008;
};

struct ProxyOptions {
  std::string node_name;
  std::string trust_domain;
  ProxyPorts ports;
  tls::Datapath datapath = tls::Datapath::kUserspaceTls;
  // ktls-splice only: the kernel can replace kTLS keys (probe and self-test), so tunnels send and
  // follow KeyUpdates and say so to their peers (tunnel capability).
  bool ktls_rekey = false;
  bool local_leg_shortcut = false;  // read local legs with recv() (the sockmap shortcut is on)
  std::chrono::milliseconds handshake_timeout{10'000};
  uint32_t max_pending_handshakes = 1024;
  // Pending inbound handshakes one source address may hold, so that one flooding peer cannot
  // use up the node-wide limit and lock out everyone else. 0: max_pending_handshakes / 8.
  uint32_t max_pending_handshakes_per_source = 0;
  uint32_t max_connections = 65536;
  tls::KeyLifetimeOptions key_lifetime;
};

// Told about every connection's life, for metrics and the event stream. Called on worker loop
// threads; implementations must be thread-safe and quick.
class ConnectionObserver {
 public:
  virtual ~ConnectionObserver() = default;
  // A TLS handshake finished (ok or not); `record` has the identities known so far.
  virtual void OnHandshake(const ConnectionRecord& record, bool ok, std::chrono::microseconds duration) = 0;
  // Bytes may flow now (relay started).
  virtual void OnOpened(const ConnectionRecord& record) = 0;
  // The connection is over: refused, denied, failed, or closed after relaying (with its bytes).
  virtual void OnFinished(const ConnectionRecord& record, bool was_opened) = 0;
};

// A live connection, as the status API lists it.
struct LiveConnection {
  uint64_t id = 0;
  ConnectionRecord record;  // bytes_sent/bytes_received are the counts so far
  std::chrono::steady_clock::duration age{};
  bool ktls = false;
  tls::KeyUsage keys;  // TLS connections: records per key and key generations so far
};

// What the proxy uses but does not own. Everything must outlive the proxy.
struct ProxyDependencies {
  std::vector<EventLoop*> workers;  // one per core; every pod listener is watched by all of them
  tls::IdentityContexts* identities = nullptr;
  policy::PolicyStore* policies = nullptr;
  datapath::CgroupSteering* steering = nullptr;  // null: no outbound steering (tests)
  datapath::InboundCapture* capture = nullptr;   // null: no inbound capture
  AccessLog* access_log = nullptr;
  tls::ConnectionRegistry* registry = nullptr;
  ConnectionObserver* observer = nullptr;  // may be null
};

struct ProxyCounters {
  std::atomic<uint64_t> handshakes_ok{0};
  std::atomic<uint64_t> handshakes_failed{0};
  std::atomic<uint64_t> denied{0};
  std::atomic<uint64_t> plaintext_refused{0};
  std::atomic<uint64_t> passthrough{0};
  std::atomic<uint64_t> limit_refusals{0};
  std::atomic<int64_t> pending_handshakes{0};
  std::atomic<int64_t> active_connections{0};
};

// The node's proxy: per meshed pod on this node, listeners inside the pod's netns (15001
// outbound, 15006 inbound capture, 15008 tunnel), and the three connection paths between them.
// Reconcile() makes listeners and BPF maps match a workload snapshot; it runs on one control
// thread, while connections run on the worker loops.
class NodeProxy {
 public:
  static absl::StatusOr<std::unique_ptr<NodeProxy>> Create(ProxyOptions options, ProxyDependencies deps);
  ~NodeProxy();

  // Brings listeners and BPF maps in line with `snapshot`. Per-pod failures are logged and
  // returned together; other pods are still served.
  absl::Status Reconcile(std::shared_ptr<const workload::WorkloadSnapshot> snapshot);
  // Re-applies modes after a policy change and closes connections a DENY now matches.
  void OnPolicyChange();
  // Stops accepting on every listener (drain starts); connections keep running.
  void StopAccepting();
  // Ends every connection now (the drain deadline).
  void AbortAll();

  const ProxyCounters& counters() const { return counters_; }
  // A snapshot of the live connections (asks every worker loop; call from another thread).
  // `workload`: "namespace/name" to keep only connections from or to it; empty: all.
  std::vector<LiveConnection> Connections(const std::string& workload) const;
  std::vector<std::string> ServedWorkloads() const;
  struct Impl;

 private:
  NodeProxy() = default;
  std::unique_ptr<Impl> impl_;
  ProxyCounters counters_;
};

}  // namespace meshtls::proxy
