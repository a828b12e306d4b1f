#include "meshtls/proxy/node_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <set>

#include "meshtls/common/ip_address.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/datapath/inbound_capture.h"
#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/plain_relay.h"
#include "meshtls/tunnel/preamble.h"
#include "spdlog/spdlog.h"
#include "meshtls/proxy/tunnel_exchange.h"

namespace meshtls::proxy {
namespace {

using Clock = std::chrono::steady_clock;
// A session shared by the callbacks of one connection until a relay takes it over.
using SessionBox = std::unique_ptr<tls::TlsSession>;

// The listeners of one meshed pod on this node, shared by every worker loop.
struct Pod {
  Pod(workload::Workload w, SpiffeId id) : workload(std::move(w)), identity(std::move(id)) {}
  workload::Workload workload;
  SpiffeId identity;
  policy::PolicyTarget target;
  uint32_t index = 0;
  UniqueFd outbound4, outbound6, capture, tunnel;
  std::vector<int> fds() const {
    std::vector<int> out;
    for (const UniqueFd* fd : {&outbound4, &outbound6, &capture, &tunnel}) {
      if (*fd) out.push_back(fd->get());
    }
    return out;
  }
};

std::string Endpoint(const IpAddress& address, uint16_t port) {
  return address.is_v4() ? StrCat(address.ToString(), ":", port) : StrCat("[", address.ToString(), "]:", port);
}

absl::StatusOr<std::pair<IpAddress, uint16_t>> SocketName(int fd, bool peer) {
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  const int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&storage), &length)
                      : ::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length);
  if (rc != 0) return ErrnoStatus(errno, peer ? "getpeername" : "getsockname");
  ASSIGN_OR_RETURN(IpAddress address, IpAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&storage), length));
  const uint16_t port = storage.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port)
                                                     : ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port);
  return std::make_pair(address, port);
}

void SetNoDelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Ends a socket with RST: a refused or failed connection must never look like a clean end.
void Reset(UniqueFd& fd) {
  if (!fd) return;
  const linger abort_on_close{1, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  fd.reset();
}

absl::StatusOr<UniqueFd> Listen(const std::string& netns, const IpAddress& address, uint16_t port) {
  ASSIGN_OR_RETURN(UniqueFd fd, datapath::SocketInNetns(netns, address.family(), SOCK_STREAM | SOCK_NONBLOCK));
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (!address.is_v4()) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  sockaddr_storage storage{};
  const socklen_t length = address.ToSockaddr(port, &storage);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) != 0) {
    return ErrnoStatus(errno, StrCat("bind ", Endpoint(address, port), " in ", netns));
  }
  if (::listen(fd.get(), 4096) != 0) return ErrnoStatus(errno, "listen");
  return fd;
}

// A non-blocking connect from inside `netns` (so the wire shows the pod's address).
absl::StatusOr<UniqueFd> ConnectFrom(const std::string& netns, const IpAddress& address, uint16_t port) {
  ASSIGN_OR_RETURN(UniqueFd fd, datapath::SocketInNetns(netns, address.family(), SOCK_STREAM | SOCK_NONBLOCK));
  SetNoDelay(fd.get());
  sockaddr_storage storage{};
  const socklen_t length = address.ToSockaddr(port, &storage);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) != 0 && errno != EINPROGRESS) {
    return ErrnoStatus(errno, StrCat("connect ", Endpoint(address, port)));
  }
  return fd;
}

std::string Principal(const SpiffeId& id) { return StrCat(id.trust_domain(), id.path()); }

// The modes the BPF programs see, from one Describe(). For inbound capture (sk_lookup), a DISABLE
// pod that some AuthorizationPolicy selects is captured like a PERMISSIVE one: DISABLE turns mTLS
// off, not authorization, and only the agent can enforce the policy on its plaintext. Outbound
// steering keeps DISABLE (the pod's own connections stay outside the mesh).
struct BpfModes {
  uint8_t steering;
  uint8_t capture;
};
BpfModes BpfModesFor(const policy::PolicySet& policies, const policy::PolicyTarget& target) {
  const policy::PolicySet::Effective effective = policies.Describe(target);
  bool strict = effective.mode == policy::MtlsMode::kStrict;
  bool permissive = effective.mode == policy::MtlsMode::kPermissive;
  for (const auto& [port, mode] : effective.port_modes) {
    strict |= mode == policy::MtlsMode::kStrict;
    permissive |= mode == policy::MtlsMode::kPermissive;
  }
  // STRICT anywhere makes the whole pod fail closed while the agent is away.
  const uint8_t steering = strict ? MESHTLS_MODE_STRICT : permissive ? MESHTLS_MODE_PERMISSIVE : MESHTLS_MODE_DISABLE;
  const bool authorized = !effective.authorization_policies.empty();
  return {steering, steering == MESHTLS_MODE_DISABLE && authorized ? static_cast<uint8_t>(MESHTLS_MODE_PERMISSIVE)
                                                                   : steering};
}

}  // namespace

// What this agent can do with a peer's KeyUpdate: OpenSSL always follows one; the kTLS relay
// only where the kernel can install the next key (a peer must never send it one otherwise).
uint8_t LocalCapabilities(const ProxyOptions& options) {
  const bool follows = options.datapath == tls::Datapath::kUserspaceTls || options.ktls_rekey;
  return follows ? tunnel::kCapabilityFollowsKeyUpdate : 0;
}

struct NodeProxy::Impl {
  ProxyOptions options;
  ProxyDependencies deps;
  ProxyCounters* counters = nullptr;

  std::mutex mutex;  // guards pods, snapshot, inbound
  std::map<std::string, std::shared_ptr<Pod>> pods;  // by workload uid
  std::shared_ptr<const workload::WorkloadSnapshot> snapshot;
  std::set<IpAddress> endpoints;  // mesh endpoints currently in the BPF maps
  uint32_t next_index = 1;
  bool accepting = true;

  // Inbound relays, re-authorized when policies change.
  struct InboundEntry {
    std::weak_ptr<tls::Relay> relay;
    // By uid, not by Pod: re-authorization uses the pod's current labels, and a removed pod's
    // listeners must not be kept open by its draining connections.
    std::string pod_uid;
    policy::SourceAttributes source;
  };
  std::map<const void*, InboundEntry> inbound;
  std::map<IpAddress, uint32_t> pending_by_source;  // inbound handshakes in progress, per peer

  uint32_t PerSourceLimit() const {
    if (options.max_pending_handshakes_per_source != 0) return options.max_pending_handshakes_per_source;
    return std::max<uint32_t>(16, options.max_pending_handshakes / 8);
  }

  // Counts an inbound handshake against its source; false (and a log line) over the limit.
  bool AdmitFromSource(const IpAddress& source) {
    std::lock_guard<std::mutex> lock(mutex);
    uint32_t& pending = pending_by_source[source];
    if (pending >= PerSourceLimit()) {
      counters->limit_refusals++;
      spdlog::warn("connection from {} refused: {} handshakes pending from that address (limit maxPendingHandshakes/8)",
                   source.ToString(), pending);
      return false;
    }
    ++pending;
    return true;
  }

  void ReleaseSource(const IpAddress& source) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = pending_by_source.find(source);
    if (it != pending_by_source.end() && --it->second == 0) pending_by_source.erase(it);
  }

  std::shared_ptr<const workload::WorkloadSnapshot> Snapshot() {
    std::lock_guard<std::mutex> lock(mutex);
    return snapshot;
  }

  // Runs `task` on every worker loop and waits for all of them.
  void OnEveryLoop(const std::function<void(EventLoop&)>& task) {
    std::vector<std::future<void>> done;
    for (EventLoop* loop : deps.workers) {
      auto promise = std::make_shared<std::promise<void>>();
      done.push_back(promise->get_future());
      loop->Post([loop, promise, &task] {
        task(*loop);
        promise->set_value();
      });
    }
    for (auto& f : done) f.wait();
  }

  bool AdmitHandshake() {
    if (counters->pending_handshakes.load() >= static_cast<int64_t>(options.max_pending_handshakes)) {
      counters->limit_refusals++;
      spdlog::warn("connection refused: {} handshakes pending (limit maxPendingHandshakes)",
                   counters->pending_handshakes.load());
      return false;
    }
    if (counters->active_connections.load() >= static_cast<int64_t>(options.max_connections)) {
      counters->limit_refusals++;
      spdlog::warn("connection refused: {} connections open (limit maxConnections)",
                   counters->active_connections.load());
      return false;
    }
    return true;
  }

  // The end of every connection, whatever happened to it.
  void Log(const ConnectionRecord& record, bool was_opened = false) {
    if (deps.access_log != nullptr) deps.access_log->Write(record);
    if (deps.observer != nullptr) deps.observer->OnFinished(record, was_opened);
  }

  // The connection gets its id here, so that the handshake event, the status API and the access
  // log line name it alike.
  void Handshaked(ConnectionRecord& record, const tls::TlsSession& session) {
    if (record.connection_id == 0) record.connection_id = next_connection_id++;
    if (session.handshake_done()) {
      record.tls_version = std::string(session.protocol_version());
      record.cipher = std::string(session.cipher_name());
    }
    if (deps.observer != nullptr) deps.observer->OnHandshake(record, session.handshake_done(), session.handshake_duration());
  }

  // Live connections, one table per worker loop, each touched only on its own loop thread.
  struct Live {
    ConnectionRecord record;
    Clock::time_point started;
    bool ktls = false;
    std::weak_ptr<tls::Relay> relay;
    std::weak_ptr<tls::PlainRelay> plain;
  };
  std::map<const EventLoop*, std::map<uint64_t, Live>> live;  // keys fixed at Create()
  std::atomic<uint64_t> next_connection_id{1};

  // Counted before the relay starts: a relay can finish inside Start(), and its end is then
  // logged as an opened connection, so the open must already be on the books.
  void CountOpened(const ConnectionRecord& record) {
    if (deps.observer != nullptr) deps.observer->OnOpened(record);
  }

  uint64_t Track(EventLoop& loop, const ConnectionRecord& record, Live entry) {
    const uint64_t id = record.connection_id != 0 ? record.connection_id : next_connection_id++;
    entry.record = record;
    entry.record.connection_id = id;
    entry.started = Clock::now();
    live.at(&loop).emplace(id, std::move(entry));
    return id;
  }

  void WatchListeners(const std::shared_ptr<Pod>& pod) {
    OnEveryLoop([this, pod](EventLoop& loop) {
      auto watch = [&](const UniqueFd& fd, void (Impl::*accept)(EventLoop&, const std::shared_ptr<Pod>&, UniqueFd)) {
        if (!fd) return;
        const int listener = fd.get();
        // EPOLLEXCLUSIVE: one loop wakes per connection, which spreads them over the cores.
        absl::Status st = loop.Add(listener, EPOLLIN | EPOLLEXCLUSIVE, [this, &loop, pod, listener, accept](uint32_t) {
          for (int i = 0; i < 64; ++i) {
            UniqueFd accepted(::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (!accepted) {
              if (errno != EAGAIN && errno != EINTR) spdlog::warn("accept: {}", std::strerror(errno));
              return;
            }
            SetNoDelay(accepted.get());
            (this->*accept)(loop, pod, std::move(accepted));
          }
        });
        if (!st.ok()) spdlog::error("watch listener for {}: {}", pod->workload.uid(), st.message());
      };
      watch(pod->outbound4, &Impl::AcceptOutbound);
      watch(pod->outbound6, &Impl::AcceptOutbound);
      watch(pod->capture, &Impl::AcceptCapture);
      watch(pod->tunnel, &Impl::AcceptTunnel);
    });
  }

  void UnwatchListeners(const std::shared_ptr<Pod>& pod) {
    OnEveryLoop([pod](EventLoop& loop) {
      for (int fd : pod->fds()) loop.Remove(fd);
    });
  }

  // ---- outbound: app -> 15001 -> TLS to the destination pod's agent on 15008 ----
  void AcceptOutbound(EventLoop& loop, const std::shared_ptr<Pod>& pod, UniqueFd local) {
    ConnectionRecord record;
    record.direction = "outbound";
    record.source_workload = pod->workload.uid();
    record.source_identity = pod->identity.ToString();
    record.tls = true;
    record.datapath = std::string(tls::DatapathName(options.datapath));
    auto refuse = [&](std::string reason, std::string detail) {
      record.result = "error";
      record.reason = std::move(reason);
      record.detail = std::move(detail);
      spdlog::warn("outbound from {} refused: {} ({})", record.source_workload, record.reason, record.detail);
      Reset(local);
      Log(record);
    };
    // The application's port on the local leg, with the pod's address (what the wire shows).
    if (auto peer = SocketName(local.get(), true); peer.ok()) {
      record.source_address = Endpoint(pod->workload.ips.front(), peer->second);
    }
    if (deps.steering == nullptr) return refuse("not_steered", "outbound steering is off");
    auto original = deps.steering->OriginalDestinationOf(local.get());
    if (!original.ok()) return refuse("internal", std::string(original.status().message()));
    if (!original->has_value()) return refuse("not_steered", "no original destination recorded for this connection");
    const meshtls_original_destination& dst = **original;
    IpAddress dst_ip;
    if (dst.family == AF_INET) {
      in_addr v4{dst.addr4};
      dst_ip = IpAddress(v4);
    } else {
      in6_addr v6{};
      std::memcpy(&v6, dst.addr6, sizeof(v6));
      dst_ip = IpAddress(v6);
    }
    const uint16_t dst_port = ntohs(dst.port);
    record.destination_address = Endpoint(dst_ip, dst_port);
    auto snap = Snapshot();
    const workload::Workload* destination = snap ? snap->FindByIp(dst_ip) : nullptr;
    if (destination == nullptr) return refuse("no_such_workload", StrCat(dst_ip.ToString(), " is not a mesh workload"));
    record.destination_workload = destination->uid();
    auto expected = SpiffeId::ForWorkload(options.trust_domain, destination->namespace_name, destination->service_account);
    if (!expected.ok()) return refuse("internal", std::string(expected.status().message()));
    record.destination_identity = expected->ToString();
    if (!AdmitHandshake()) return refuse("overloaded", "handshake or connection limit reached");
    auto context = deps.identities->For(pod->identity);
    if (!context.ok()) return refuse("no_certificate", std::string(context.status().message()));
    auto upstream = ConnectFrom(pod->workload.netns_path, dst_ip, options.ports.tunnel);
    if (!upstream.ok()) return refuse("upstream_connect_failed", std::string(upstream.status().message()));

    tls::SessionOptions session_options;
    session_options.role = tls::Role::kClient;
    session_options.expected_peer = *expected;
    session_options.handshake_timeout = options.handshake_timeout;
    session_options.capture_traffic_secrets = options.datapath == tls::Datapath::kKtlsSplice;
    auto session = tls::TlsSession::Create(*context, std::move(*upstream), session_options);
    if (!session.ok()) return refuse("internal", std::string(session.status().message()));

    tunnel::Preamble preamble;
    preamble.destination = dst_ip;
    preamble.destination_port = dst_port;
    preamble.source_workload = pod->workload.uid();
    preamble.capabilities = LocalCapabilities(options);
    auto encoded = tunnel::EncodePreamble(preamble);
    if (!encoded.ok()) return refuse("internal", std::string(encoded.status().message()));

    counters->pending_handshakes++;
    auto plain = std::make_shared<UniqueFd>(std::move(local));
    const auto deadline = Clock::now() + options.handshake_timeout;
    tls::DriveHandshake(loop, *std::move(session),
                        [this, &loop, plain, record, out = *std::move(encoded), deadline](
                            std::unique_ptr<tls::TlsSession> s) mutable {
      counters->pending_handshakes--;
      if (!s->handshake_done()) {
        counters->handshakes_failed++;
        record.result = "error";
        record.reason = std::string(tls::FailureReasonName(s->failure_reason()));
        record.detail = s->failure_detail();
        Handshaked(record, *s);
        Reset(*plain);
        Log(record);
        return;
      }
      Handshaked(record, *s);
      counters->handshakes_ok++;
      record.tls_version = std::string(s->protocol_version());
      record.cipher = std::string(s->cipher_name());
      record.peer_serial = s->peer_serial();
      if (options.datapath == tls::Datapath::kKtlsSplice) {
        if (absl::Status st = tls::SwitchToKtls(*s); !st.ok()) {
          record.result = "error";
          record.reason = "ktls_setup_failed";
          record.detail = std::string(st.message());
          Reset(*plain);
          s->CloseSocket(true);
          Log(record);
          return;
        }
      }
      auto box = std::make_shared<SessionBox>(std::move(s));
      TunnelExchange::Start(
          loop, **box, std::move(out), kResponseHeader, ResponseLength, deadline,
          [this, &loop, plain, record, box](absl::Status status, std::string received) mutable {
            tunnel::ResponseParser parser;
            if (status.ok()) parser.Feed(received);
            if (!status.ok() || parser.state() != tunnel::ResponseParser::State::kDone) {
              record.result = "error";
              record.reason = "malformed_response";
              record.detail = status.ok() ? parser.error() : std::string(status.message());
              Reset(*plain);
              (*box)->CloseSocket(true);
              Log(record);
              return;
            }
            const tunnel::Response& response = parser.response();
            if (response.status != tunnel::ResponseStatus::kOk) {
              record.result = response.status == tunnel::ResponseStatus::kDenied ? "denied" : "error";
              record.reason = std::string(tunnel::ReasonCodeName(response.reason));
              record.detail = response.message;
              if (response.status == tunnel::ResponseStatus::kDenied) counters->denied++;
              spdlog::info("outbound {} -> {} {}: {} ({})", record.source_workload, record.destination_address,
                           record.result, record.reason, record.detail);
              Reset(*plain);
              (*box)->CloseSocket(true);
              Log(record);
              return;
            }
            // With OK, the reason code carries the server's capability flags.
            const bool peer_follows =
                (static_cast<uint16_t>(response.reason) & tunnel::kCapabilityFollowsKeyUpdate) != 0;
            StartTlsRelay(loop, std::move(*plain), std::move(*box), std::move(record), nullptr, {}, peer_follows);
          });
    });
  }

  // Relays a tunnel whose handshake and preamble exchange are done; logs when it ends. Inbound
  // relays are remembered with their pod and source so that a policy change can end them.
  void StartTlsRelay(EventLoop& loop, UniqueFd plain, std::unique_ptr<tls::TlsSession> session,
                     ConnectionRecord record, std::shared_ptr<Pod> inbound_pod, policy::SourceAttributes source,
                     bool peer_follows_key_update) {
    tls::RelayOptions relay_options;
    relay_options.key_lifetime = options.key_lifetime;
    relay_options.peer_follows_key_update = peer_follows_key_update;
    relay_options.ktls_rekey = options.ktls_rekey;
    relay_options.registry = deps.registry;
    relay_options.plaintext_read_with_recv = options.local_leg_shortcut && record.direction == "outbound";
    const bool outbound = record.direction == "outbound";
    counters->active_connections++;
    CountOpened(record);
    auto id = std::make_shared<uint64_t>(0);
    auto relay = tls::Relay::Start(
        loop, std::move(plain), std::move(session), options.datapath, relay_options,
        [this, &loop, record, outbound, id](const tls::RelayResult& result) mutable {
          counters->active_connections--;
          live.at(&loop).erase(*id);
          record.bytes_sent = outbound ? result.stats.bytes_to_tunnel : result.stats.bytes_from_tunnel;
          record.bytes_received = outbound ? result.stats.bytes_from_tunnel : result.stats.bytes_to_tunnel;
          record.duration = result.duration;
          record.result = result.reason == tls::FailureReason::kNone ? "ok" : "error";
          record.reason = std::string(tls::FailureReasonName(result.reason));
          record.detail = result.detail;
          Log(record, true);
        });
    if (!relay.ok()) {
      counters->active_connections--;
      record.result = "error";
      record.reason = "internal";
      record.detail = std::string(relay.status().message());
      Log(record, true);
      return;
    }
    if (!(*relay)->closed()) {
      Live entry;
      entry.ktls = options.datapath == tls::Datapath::kKtlsSplice;
      entry.relay = *relay;
      *id = Track(loop, record, std::move(entry));
    }
    if (inbound_pod) {
      std::lock_guard<std::mutex> lock(mutex);
      inbound[relay->get()] = InboundEntry{*relay, inbound_pod->workload.uid(), std::move(source)};
      // Drop entries of relays that ended (cheap here; the map stays the size of live relays).
      for (auto it = inbound.begin(); it != inbound.end();) {
        it = it->second.relay.expired() ? inbound.erase(it) : std::next(it);
      }
    }
  }

  // ---- inbound tunnel: another agent -> 15008 -> the pod's app on 127.0.0.1:port ----
  void AcceptTunnel(EventLoop& loop, const std::shared_ptr<Pod>& pod, UniqueFd accepted) {
    ConnectionRecord record;
    record.direction = "inbound";
    record.destination_workload = pod->workload.uid();
    record.destination_identity = pod->identity.ToString();
    record.tls = true;
    record.datapath = std::string(tls::DatapathName(options.datapath));
    IpAddress source_ip;
    if (auto peer = SocketName(accepted.get(), true); peer.ok()) {
      source_ip = peer->first;
      record.source_address = Endpoint(peer->first, peer->second);
    }
    auto refuse = [&](std::string reason, std::string detail) {
      record.result = "error";
      record.reason = std::move(reason);
      record.detail = std::move(detail);
      Reset(accepted);
      Log(record);
    };
    if (!AdmitHandshake()) return refuse("overloaded", "handshake or connection limit reached");
    if (!AdmitFromSource(source_ip)) return refuse("overloaded", "too many pending handshakes from this address");
    auto context = deps.identities->For(pod->identity);
    if (!context.ok()) {
      ReleaseSource(source_ip);
      return refuse("no_certificate", std::string(context.status().message()));
    }
    tls::SessionOptions session_options;
    session_options.role = tls::Role::kServer;
    session_options.handshake_timeout = options.handshake_timeout;
    session_options.capture_traffic_secrets = options.datapath == tls::Datapath::kKtlsSplice;
    auto session = tls::TlsSession::Create(*context, std::move(accepted), session_options);
    if (!session.ok()) {
      ReleaseSource(source_ip);
      return refuse("internal", std::string(session.status().message()));
    }
    counters->pending_handshakes++;
    const auto deadline = Clock::now() + options.handshake_timeout;
    tls::DriveHandshake(loop, *std::move(session),
                        [this, &loop, pod, record, source_ip, deadline](std::unique_ptr<tls::TlsSession> s) mutable {
      counters->pending_handshakes--;
      ReleaseSource(source_ip);
      if (!s->handshake_done()) {
        counters->handshakes_failed++;
        record.result = "error";
        record.reason = std::string(tls::FailureReasonName(s->failure_reason()));
        record.detail = s->failure_detail();
        Handshaked(record, *s);
        Log(record);
        return;
      }
      counters->handshakes_ok++;
      record.source_identity = s->peer_id() ? s->peer_id()->ToString() : "";
      Handshaked(record, *s);
      record.peer_serial = s->peer_serial();
      record.tls_version = std::string(s->protocol_version());
      record.cipher = std::string(s->cipher_name());
      if (options.datapath == tls::Datapath::kKtlsSplice) {
        if (absl::Status st = tls::SwitchToKtls(*s); !st.ok()) {
          record.result = "error";
          record.reason = "ktls_setup_failed";
          record.detail = std::string(st.message());
          s->CloseSocket(true);
          Log(record);
          return;
        }
      }
      policy::SourceAttributes source;
      source.source_ip = source_ip;
      if (s->peer_id()) {
        source.principal = Principal(*s->peer_id());
        if (auto ns = s->peer_id()->namespace_name()) source.namespace_name = std::string(*ns);
      }
      auto box = std::make_shared<SessionBox>(std::move(s));
      TunnelExchange::Start(
          loop, **box, "", kPreambleHeader, PreambleLength, deadline,
          [this, &loop, pod, record, source, box, deadline](absl::Status status, std::string received) mutable {
            tunnel::PreambleParser parser;
            if (status.ok()) parser.Feed(received);
            if (!status.ok() || parser.state() != tunnel::PreambleParser::State::kDone) {
              const bool malformed = status.ok();
              Answer(loop, box, deadline,
                     {tunnel::ResponseStatus::kError,
                      malformed ? parser.error_reason() : tunnel::ReasonCode::kMalformedPreamble,
                      malformed ? parser.error() : std::string(status.message())},
                     std::move(record));
              return;
            }
            const tunnel::Preamble& preamble = parser.preamble();
            record.destination_address = Endpoint(preamble.destination, preamble.destination_port);
            if (!preamble.source_workload.empty()) record.source_workload = preamble.source_workload;
            const auto& ips = pod->workload.ips;
            if (std::find(ips.begin(), ips.end(), preamble.destination) == ips.end()) {
              Answer(loop, box, deadline,
                     {tunnel::ResponseStatus::kDenied, tunnel::ReasonCode::kNoSuchWorkload,
                      StrCat(preamble.destination.ToString(), " is not ", pod->workload.uid())},
                     std::move(record));
              return;
            }
            source.destination_port = preamble.destination_port;
            const policy::Decision decision = deps.policies->Current()->Authorize(pod->target, source);
            if (!decision.allowed) {
              counters->denied++;
              spdlog::info("inbound {} -> {} denied: {}", record.source_identity, record.destination_address,
                           decision.reason);
              Answer(loop, box, deadline,
                     {tunnel::ResponseStatus::kDenied, tunnel::ReasonCode::kPolicyDenied, decision.reason},
                     std::move(record));
              return;
            }
            const bool peer_follows = (preamble.capabilities & tunnel::kCapabilityFollowsKeyUpdate) != 0;
            ConnectToApp(loop, pod, preamble.destination_port, box, deadline, std::move(record), std::move(source),
                         peer_follows);
          });
    });
  }

  // Sends a DENIED or ERROR response, then closes the tunnel and logs.
  void Answer(EventLoop& loop, const std::shared_ptr<SessionBox>& box, Clock::time_point deadline,
              tunnel::Response response, ConnectionRecord record) {
    record.result = response.status == tunnel::ResponseStatus::kDenied ? "denied" : "error";
    record.reason = std::string(tunnel::ReasonCodeName(response.reason));
    record.detail = response.message;
    TunnelExchange::Start(loop, **box, tunnel::EncodeResponse(response), 0, nullptr, deadline,
                          [this, box, record](absl::Status, std::string) {
                            (*box)->CloseSocket(false);
                            Log(record);
                          });
  }

  void ConnectToApp(EventLoop& loop, const std::shared_ptr<Pod>& pod, uint16_t port,
                    const std::shared_ptr<SessionBox>& box, Clock::time_point deadline, ConnectionRecord record,
                    policy::SourceAttributes source, bool peer_follows_key_update) {
    const IpAddress loopback = pod->workload.ips.front().is_v4() ? *IpAddress::Parse("127.0.0.1") : *IpAddress::Parse("::1");
    auto app = ConnectFrom(pod->workload.netns_path, loopback, port);
    if (!app.ok()) {
      Answer(loop, box, deadline,
             {tunnel::ResponseStatus::kError, tunnel::ReasonCode::kUpstreamConnectFailed, std::string(app.status().message())},
             std::move(record));
      return;
    }
    auto fd = std::make_shared<UniqueFd>(std::move(*app));
    const int raw = fd->get();
    // Wait for the connect to finish, so the client learns about a closed port before any byte.
    absl::Status st = loop.Add(raw, EPOLLOUT, [this, &loop, pod, fd, raw, box, deadline, record, source,
                                               peer_follows_key_update](uint32_t) mutable {
      loop.Remove(raw);
      int error = 0;
      socklen_t length = sizeof(error);
      ::getsockopt(raw, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) {
        Answer(loop, box, deadline,
               {tunnel::ResponseStatus::kError, tunnel::ReasonCode::kUpstreamConnectFailed,
                StrCat("connect to the app: ", std::strerror(error))},
               std::move(record));
        return;
      }
      const tunnel::Response ok{tunnel::ResponseStatus::kOk,
                                static_cast<tunnel::ReasonCode>(LocalCapabilities(options)), ""};
      TunnelExchange::Start(loop, **box, tunnel::EncodeResponse(ok), 0, nullptr, deadline,
                            [this, &loop, pod, fd, box, record, source, peer_follows_key_update](absl::Status status,
                                                                                                  std::string) mutable {
                              if (!status.ok()) {
                                record.result = "error";
                                record.reason = "peer_closed";
                                record.detail = std::string(status.message());
                                Reset(*fd);
                                (*box)->CloseSocket(true);
                                Log(record);
                                return;
                              }
                              StartTlsRelay(loop, std::move(*fd), std::move(*box), std::move(record), pod, std::move(source),
                                            peer_follows_key_update);
                            });
    });
    if (!st.ok()) {
      Answer(loop, box, deadline, {tunnel::ResponseStatus::kError, tunnel::ReasonCode::kInternal, std::string(st.message())},
             std::move(record));
    }
  }

  // ---- inbound capture: plaintext to the pod, steered by sk_lookup to 15006 ----
  void AcceptCapture(EventLoop& loop, const std::shared_ptr<Pod>& pod, UniqueFd accepted) {
    ConnectionRecord record;
    record.direction = "passthrough";
    record.destination_workload = pod->workload.uid();
    record.tls = false;
    record.datapath = "plaintext";
    auto local = SocketName(accepted.get(), false);
    auto peer = SocketName(accepted.get(), true);
    if (!local.ok() || !peer.ok()) {
      Reset(accepted);
      return;
    }
    record.source_address = Endpoint(peer->first, peer->second);
    record.destination_address = Endpoint(local->first, local->second);
    auto snap = Snapshot();
    if (snap) {
      if (const workload::Workload* from = snap->FindByIp(peer->first)) record.source_workload = from->uid();
    }
    const uint16_t port = local->second;
    auto policies = deps.policies->Current();
    const policy::MtlsMode mode = policies->ModeFor(pod->target, port);
    if (mode == policy::MtlsMode::kStrict) {
      counters->plaintext_refused++;
      record.result = "denied";
      record.reason = "plaintext_refused";
      record.detail = StrCat("port ", port, " of ", pod->workload.uid(), " is STRICT: mutual TLS only");
      spdlog::info("plaintext {} -> {} refused: STRICT", record.source_address, record.destination_address);
      Reset(accepted);
      Log(record);
      return;
    }
    record.mtls_mode = std::string(policy::MtlsModeName(mode));
    // DISABLE turns mTLS off, not authorization: as in Istio, policies still apply, by address
    // (a plaintext peer has no identity).
    {
      policy::SourceAttributes source;
      source.source_ip = peer->first;
      source.destination_port = port;
      const policy::Decision decision = policies->Authorize(pod->target, source);
      if (!decision.allowed) {
        counters->denied++;
        record.result = "denied";
        record.reason = "policy_denied";
        record.detail = decision.reason;
        Reset(accepted);
        Log(record);
        return;
      }
    }
    const IpAddress loopback = local->first.is_v4() ? *IpAddress::Parse("127.0.0.1") : *IpAddress::Parse("::1");
    auto app = ConnectFrom(pod->workload.netns_path, loopback, port);
    if (!app.ok()) {
      record.result = "error";
      record.reason = "upstream_connect_failed";
      record.detail = std::string(app.status().message());
      Reset(accepted);
      Log(record);
      return;
    }
    counters->passthrough++;
    counters->active_connections++;
    CountOpened(record);
    auto id = std::make_shared<uint64_t>(0);
    auto relay = tls::PlainRelay::Start(loop, std::move(accepted), std::move(*app), {},
                                        [this, &loop, record, id](const tls::PlainRelayResult& result) mutable {
                                          counters->active_connections--;
                                          live.at(&loop).erase(*id);
                                          record.bytes_sent = result.bytes_a_to_b;
                                          record.bytes_received = result.bytes_b_to_a;
                                          record.duration = result.duration;
                                          record.result = result.reason == tls::FailureReason::kNone ? "ok" : "error";
                                          record.reason = std::string(tls::FailureReasonName(result.reason));
                                          record.detail = result.detail;
                                          Log(record, true);
                                        });
    if (!relay.ok()) {
      counters->active_connections--;
      spdlog::warn("passthrough relay: {}", relay.status().message());
      record.result = "error";
      record.reason = "internal";
      record.detail = std::string(relay.status().message());
      Log(record, true);
      return;
    }
    if (!(*relay)->closed()) {
      Live entry;
      entry.plain = *relay;
      *id = Track(loop, record, std::move(entry));
    }
  }

  absl::Status AddPod(const workload::Workload& w, const policy::PolicySet& policies) {
    ASSIGN_OR_RETURN(SpiffeId identity, SpiffeId::ForWorkload(options.trust_domain, w.namespace_name, w.service_account));
    auto pod = std::make_shared<Pod>(w, std::move(identity));
    pod->target = policy::PolicyTarget{w.namespace_name, w.labels};
    if (w.netns_path.empty() || w.ips.empty()) {
      return absl::InvalidArgumentError(StrCat(w.uid(), " is on this node but has no netns or no IPs"));
    }
    pod->index = next_index++;
    ASSIGN_OR_RETURN(pod->outbound4, Listen(w.netns_path, *IpAddress::Parse("127.0.0.1"), options.ports.outbound));
    if (auto v6 = Listen(w.netns_path, *IpAddress::Parse("::1"), options.ports.outbound); v6.ok()) {
      pod->outbound6 = std::move(*v6);
    }  // a pod netns without IPv6 simply has no [::1] listener; connect6 to the mesh then fails closed
    ASSIGN_OR_RETURN(pod->capture, Listen(w.netns_path, *IpAddress::Parse("0.0.0.0"), options.ports.inbound_capture));
    ASSIGN_OR_RETURN(pod->tunnel, Listen(w.netns_path, *IpAddress::Parse("0.0.0.0"), options.ports.tunnel));
    const BpfModes modes = BpfModesFor(policies, pod->target);
    const meshtls_workload value{pod->index, modes.steering, {}};
    const meshtls_workload capture_value{pod->index, modes.capture, {}};
    if (deps.capture != nullptr) {
      RETURN_IF_ERROR(deps.capture->AttachToNetns(w.netns_path));
      for (const IpAddress& ip : w.ips) {
        if (!ip.is_v4()) continue;  // sk_lookup capture is IPv4 for now
        RETURN_IF_ERROR(deps.capture->SetPod(ip.v4(), capture_value));
        RETURN_IF_ERROR(deps.capture->SetCaptureListener(ip.v4(), pod->capture.get()));
      }
    }
    if (deps.steering != nullptr && !w.cgroup_path.empty()) {
      ASSIGN_OR_RETURN(uint64_t cgroup_id, datapath::CgroupId(w.cgroup_path));
      RETURN_IF_ERROR(deps.steering->SetMeshedCgroup(cgroup_id, value));
    }
    // Issue the pod's SVID now, so its first connection does not wait for the CA.
    if (auto context = deps.identities->For(pod->identity); !context.ok()) {
      spdlog::warn("no SVID yet for {}: {}", pod->identity.ToString(), context.status().message());
    }
    WatchListeners(pod);
    spdlog::info("serving {} ({}) in {}: mode {}", w.uid(), pod->identity.ToString(), w.netns_path,
                 value.mode == MESHTLS_MODE_STRICT ? "STRICT" : value.mode == MESHTLS_MODE_PERMISSIVE ? "PERMISSIVE" : "DISABLE");
    std::lock_guard<std::mutex> lock(mutex);  // ServedWorkloads() reads from other threads
    pods[w.uid()] = std::move(pod);
    return absl::OkStatus();
  }

  void RemovePod(const std::string& uid) {
    auto it = pods.find(uid);
    if (it == pods.end()) return;
    std::shared_ptr<Pod> pod = it->second;
    {
      std::lock_guard<std::mutex> lock(mutex);
      pods.erase(it);
    }
    UnwatchListeners(pod);
    // No loop accepts on them any more; closing them now (rather than when the last connection
    // holding the Pod ends) frees the ports at once, so a pod that comes back can listen again.
    for (UniqueFd* listener : {&pod->outbound4, &pod->outbound6, &pod->capture, &pod->tunnel}) listener->reset();
    if (deps.capture != nullptr) {
      for (const IpAddress& ip : pod->workload.ips) {
        if (ip.is_v4()) (void)deps.capture->RemovePod(ip.v4());
      }
    }
    if (deps.steering != nullptr && !pod->workload.cgroup_path.empty()) {
      if (auto id = datapath::CgroupId(pod->workload.cgroup_path); id.ok()) (void)deps.steering->RemoveMeshedCgroup(*id);
    }
    spdlog::info("stopped serving {}", uid);
  }
};

absl::StatusOr<std::unique_ptr<NodeProxy>> NodeProxy::Create(ProxyOptions options, ProxyDependencies deps) {
  if (deps.workers.empty()) return absl::InvalidArgumentError("the proxy needs at least one worker loop");
  if (deps.identities == nullptr || deps.policies == nullptr) {
    return absl::InvalidArgumentError("the proxy needs identities and policies");
  }
  std::unique_ptr<NodeProxy> proxy(new NodeProxy());
  proxy->impl_ = std::make_unique<Impl>();
  proxy->impl_->options = std::move(options);
  proxy->impl_->deps = std::move(deps);
  proxy->impl_->counters = &proxy->counters_;
  for (EventLoop* loop : proxy->impl_->deps.workers) proxy->impl_->live[loop];
  return proxy;
}

NodeProxy::~NodeProxy() {
  if (!impl_) return;
  std::vector<std::string> uids;
  for (const auto& [uid, pod] : impl_->pods) uids.push_back(uid);
  for (const std::string& uid : uids) impl_->RemovePod(uid);
}

absl::Status NodeProxy::Reconcile(std::shared_ptr<const workload::WorkloadSnapshot> snapshot) {
  Impl& impl = *impl_;
  std::vector<std::string> errors;
  auto policies = impl.deps.policies->Current();
  {
    std::lock_guard<std::mutex> lock(impl.mutex);
    impl.snapshot = snapshot;
  }
  // Mesh endpoints: every workload's IPs, on any node.
  std::set<IpAddress> wanted_endpoints;
  for (const workload::Workload& w : snapshot->all()) wanted_endpoints.insert(w.ips.begin(), w.ips.end());
  if (impl.deps.steering != nullptr) {
    for (const IpAddress& ip : wanted_endpoints) {
      if (impl.endpoints.count(ip) != 0) continue;
      absl::Status st = ip.is_v4() ? impl.deps.steering->AddMeshEndpoint(ip.v4()) : impl.deps.steering->AddMeshEndpoint(ip.v6());
      if (!st.ok()) errors.push_back(std::string(st.message()));
    }
    for (const IpAddress& ip : impl.endpoints) {
      if (wanted_endpoints.count(ip) != 0) continue;
      (void)(ip.is_v4() ? impl.deps.steering->RemoveMeshEndpoint(ip.v4()) : impl.deps.steering->RemoveMeshEndpoint(ip.v6()));
    }
  }
  impl.endpoints = std::move(wanted_endpoints);

  // Pods on this node: a changed workload is removed and added again (new listeners).
  std::map<std::string, const workload::Workload*> wanted;
  for (const workload::Workload* w : snapshot->OnNode(impl.options.node_name)) wanted[w->uid()] = w;
  std::vector<std::string> stale;
  for (const auto& [uid, pod] : impl.pods) {
    auto it = wanted.find(uid);
    if (it == wanted.end() || !(pod->workload == *it->second)) stale.push_back(uid);
  }
  for (const std::string& uid : stale) impl.RemovePod(uid);
  for (const auto& [uid, w] : wanted) {
    if (impl.pods.count(uid) != 0) continue;
    if (absl::Status st = impl.AddPod(*w, *policies); !st.ok()) {
      spdlog::error("cannot serve {}: {}", uid, st.message());
      errors.push_back(StrCat(uid, ": ", st.message()));
    }
  }
  if (impl.deps.capture != nullptr) impl.deps.capture->PruneStaleLinks();
  if (!errors.empty()) return absl::UnavailableError(Join(errors, "; "));
  return absl::OkStatus();
}

void NodeProxy::OnPolicyChange() {
  Impl& impl = *impl_;
  auto policies = impl.deps.policies->Current();
  for (const auto& [uid, pod] : impl.pods) {
    const BpfModes modes = BpfModesFor(*policies, pod->target);
    const meshtls_workload value{pod->index, modes.steering, {}};
    const meshtls_workload capture_value{pod->index, modes.capture, {}};
    if (impl.deps.capture != nullptr) {
      for (const IpAddress& ip : pod->workload.ips) {
        if (ip.is_v4()) (void)impl.deps.capture->SetPod(ip.v4(), capture_value);
      }
    }
    if (impl.deps.steering != nullptr && !pod->workload.cgroup_path.empty()) {
      if (auto id = datapath::CgroupId(pod->workload.cgroup_path); id.ok()) {
        (void)impl.deps.steering->SetMeshedCgroup(*id, value);
      }
    }
  }
  std::lock_guard<std::mutex> lock(impl.mutex);
  size_t closed = 0;
  for (auto it = impl.inbound.begin(); it != impl.inbound.end();) {
    auto relay = it->second.relay.lock();
    if (!relay) {
      it = impl.inbound.erase(it);
      continue;
    }
    auto pod = impl.pods.find(it->second.pod_uid);
    if (pod == impl.pods.end()) {  // the pod is gone; its remaining connections drain on their own
      ++it;
      continue;
    }
    const policy::Decision decision = policies->Authorize(pod->second->target, it->second.source);
    if (!decision.allowed) {
      relay->AbortFromAnyThread(tls::FailureReason::kPolicyDenied, decision.reason);
      ++closed;
      it = impl.inbound.erase(it);
      continue;
    }
    ++it;
  }
  if (closed > 0) spdlog::info("policy change closed {} connection(s) that are now denied", closed);
}

void NodeProxy::StopAccepting() {
  for (const auto& [uid, pod] : impl_->pods) impl_->UnwatchListeners(pod);
}

void NodeProxy::AbortAll() {
  if (impl_->deps.registry == nullptr) return;
  impl_->deps.registry->CloseMatching([](const tls::TlsSession&) { return true; }, tls::FailureReason::kShutdown,
                                      "the agent is shutting down");
}

std::vector<LiveConnection> NodeProxy::Connections(const std::string& workload) const {
  std::mutex mutex;
  std::vector<LiveConnection> out;
  impl_->OnEveryLoop([&](EventLoop& loop) {
    const auto now = Clock::now();
    std::vector<LiveConnection> mine;
    for (const auto& [id, entry] : impl_->live.at(&loop)) {
      if (!workload.empty() && entry.record.source_workload != workload &&
          entry.record.destination_workload != workload) {
        continue;
      }
      LiveConnection c;
      c.id = id;
      c.record = entry.record;
      c.age = now - entry.started;
      c.ktls = entry.ktls;
      const bool outbound = entry.record.direction == "outbound";
      if (auto relay = entry.relay.lock()) {
        c.record.bytes_sent = outbound ? relay->stats().bytes_to_tunnel : relay->stats().bytes_from_tunnel;
        c.record.bytes_received = outbound ? relay->stats().bytes_from_tunnel : relay->stats().bytes_to_tunnel;
        c.keys = relay->key_usage();
      } else if (auto plain = entry.plain.lock()) {
        c.record.bytes_sent = plain->bytes_a_to_b();
        c.record.bytes_received = plain->bytes_b_to_a();
      }
      mine.push_back(std::move(c));
    }
    std::lock_guard<std::mutex> lock(mutex);
    for (auto& c : mine) out.push_back(std::move(c));
  });
  std::sort(out.begin(), out.end(), [](const LiveConnection& a, const LiveConnection& b) { return a.id < b.id; });
  return out;
}

std::vector<std::string> NodeProxy::ServedWorkloads() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  std::vector<std::string> out;
  for (const auto& [uid, pod] : impl_->pods) out.push_back(uid);
  return out;
}

}  // namespace meshtls::proxy
