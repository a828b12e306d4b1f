#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/tls/failure_reason.h"
#include "meshtls/tls/session.h"

namespace meshtls::tls {

// How bulk bytes move once the handshake is done.
enum class Datapath {
  kKtlsSplice,    // kernel TLS on the tunnel socket, splice() to and from the plaintext socket
  kUserspaceTls,  // OpenSSL encrypts and decrypts, 16 KB records
};
std::string_view DatapathName(Datapath datapath);
absl::StatusOr<Datapath> ParseDatapath(std::string_view name);
// "auto" picks ktls-splice where the running kernel passes the kTLS probe, else userspace-tls
// (with a warning saying why). A forced ktls-splice without kernel support is an error. The
// choice and its reason are logged.
absl::StatusOr<Datapath> ChooseDatapath(std::string_view requested);

class ConnectionRegistry;

// How long one TLS 1.3 traffic key may be used, and how often a peer may change its own.
struct KeyLifetimeOptions {
  // Records protected under one key, per direction, before it is replaced (KeyUpdate). RFC 8446
  // §5.5 allows AES-GCM 2^24.5 full records; the default leaves a wide margin.
  uint64_t max_records_per_key = uint64_t{1} << 23;
  // KeyUpdates a peer may send: a token bucket per connection. A peer over it is cut off with
  // key_update_flood (HAProxy's kTLS frontends fell over under such a storm, haproxy#3450).
  double peer_key_updates_per_second = 1.0;
  double peer_key_update_burst = 16;
};

// One connection's key use, per direction.
struct KeyUsage {
  uint64_t tx_records = 0;     // records sent under the current sending key
  uint64_t rx_records = 0;     // records received under the current receiving key
  uint64_t tx_generation = 0;  // KeyUpdates sent (0: still the handshake's traffic key)
  uint64_t rx_generation = 0;  // KeyUpdates received
};

// Process-wide KeyUpdate counts, for metrics (meshtls_tls_key_updates_total).
struct KeyUpdateCounters {
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> floods{0};  // connections cut off for key_update_flood
  std::atomic<uint64_t> key_limit_closes{0};  // connections closed at a key's record limit
};
KeyUpdateCounters& GlobalKeyUpdateCounters();

struct RelayOptions {
  KeyLifetimeOptions key_lifetime;
  // The peer said (tunnel capabilities) that it can follow our KeyUpdate. Without it a sending
  // key is never updated: an AES-GCM connection is closed at its record limit (key_limit).
  bool peer_follows_key_update = false;
  // ktls-splice: the running kernel can replace kTLS keys (probe and self-test passed), so the
  // relay keeps the traffic secrets and follows and sends KeyUpdates. Without it the secrets are
  // wiped at once and a peer's KeyUpdate ends the connection (peer_key_update_unsupported).
  bool ktls_rekey = false;
  // Capacity of each direction's pipe in the splice relay (bounded by fs.pipe-max-size).
  size_t pipe_size = 1 << 20;
  // If set, the relay is listed there while it runs (must outlive the relay).
  ConnectionRegistry* registry = nullptr;
  // Read the plaintext socket with recv() rather than splice(): bytes that arrive through the
  // sockmap shortcut (sk_msg redirect) are invisible to splice().
  bool plaintext_read_with_recv = false;
};

struct RelayStats {
  uint64_t bytes_to_tunnel = 0;    // plaintext bytes sent into the TLS tunnel
  uint64_t bytes_from_tunnel = 0;  // plaintext bytes delivered to the plaintext socket
};

struct RelayResult {
  FailureReason reason = FailureReason::kNone;  // kNone: both directions closed cleanly
  std::string detail;
  RelayStats stats;
  KeyUsage key_usage;
  std::chrono::microseconds duration{0};
};

// Moves bytes both ways between a plaintext socket and a TLS tunnel whose handshake is done.
// Backpressure: a direction stops reading when its sink is full. Half-close: EOF on one side
// becomes close_notify + FIN (or FIN) on the other while the opposite direction keeps flowing.
// On a failure (truncation, bad record, reset) both sockets are reset, never closed cleanly, so
// an application can tell a broken stream from a finished one.
//
// A Relay keeps itself alive while it runs; `on_close` runs once on the loop thread at the end.
class Relay : public std::enable_shared_from_this<Relay> {
 public:
  using CloseCallback = std::function<void(const RelayResult&)>;

  // For kKtlsSplice the session must have captured its traffic secrets; kTLS is installed here.
  static absl::StatusOr<std::shared_ptr<Relay>> Start(EventLoop& loop, UniqueFd plaintext,
                                                       std::unique_ptr<TlsSession> tunnel,
                                                       Datapath datapath, const RelayOptions& options,
                                                       CloseCallback on_close);
  virtual ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  Datapath datapath() const { return datapath_; }
  const RelayStats& stats() const { return stats_; }
  // Loop thread only (the status API reads it there, like the live connection table). The kTLS
  // relay asks the kernel for its record counts.
  virtual KeyUsage key_usage() const { return key_usage_; }
  const TlsSession& tunnel() const { return *tunnel_; }
  bool closed() const { return closed_; }

  // Ends the relay now with `reason` (policy change, shutdown deadline): both sockets are reset.
  // Abort() runs on the relay's loop thread; AbortFromAnyThread() posts it there.
  void Abort(FailureReason reason, std::string detail);
  void AbortFromAnyThread(FailureReason reason, std::string detail);

 protected:
  Relay(EventLoop& loop, UniqueFd plaintext, std::unique_ptr<TlsSession> tunnel, Datapath datapath,
        CloseCallback on_close);

  virtual absl::Status Init(const RelayOptions& options) = 0;
  // Moves as many bytes as possible without blocking: it tries an operation only while the
  // socket is believed ready, and clears that belief when the operation would block.
  virtual void Pump() = 0;

  // Watches both sockets edge-triggered for reading and writing, once: no epoll_ctl per
  // direction change, and no read attempted on a socket that has nothing (those were most of
  // the system calls of a level-triggered relay).
  absl::Status Register();
  void Finish(FailureReason reason, std::string detail);
  // Pump() moves at most this many rounds per call, then lets the loop run everything else
  // (other connections, timers, posted tasks) before it continues: one fast stream must not
  // starve its loop.
  static constexpr int kPumpRounds = 64;
  void ResumeLater();
  // Finishes after a failed system call: a reset or broken pipe is kPeerReset, anything else
  // kIoError. Always returns false, so callers can `return FailWithErrno(...)`.
  bool FailWithErrno(int saved_errno, std::string_view what);
  // Ends a connection whose peer went over its KeyUpdate budget (counted for metrics).
  void FinishKeyUpdateFlood(const KeyLifetimeOptions& lifetime);

  // Readiness as last reported by epoll, cleared when an operation returns EAGAIN.
  bool plaintext_readable_ = true;
  bool plaintext_writable_ = true;
  bool tunnel_readable_ = true;
  bool tunnel_writable_ = true;

  int plaintext_fd() const { return plaintext_.get(); }
  int tunnel_fd() const { return tunnel_->fd(); }

  EventLoop& loop_;
  UniqueFd plaintext_;
  std::unique_ptr<TlsSession> tunnel_;
  Datapath datapath_;
  RelayStats stats_;
  KeyUsage key_usage_;
  bool closed_ = false;

 private:
  void OnEvent(bool plaintext, uint32_t events);

  CloseCallback on_close_;
  std::chrono::steady_clock::time_point started_;
  bool registered_ = false;
  bool resume_pending_ = false;
  ConnectionRegistry* registry_ = nullptr;
};

}  // namespace meshtls::tls
