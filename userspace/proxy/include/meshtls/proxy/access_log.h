#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/common/token_bucket.h"

namespace spdlog {
class logger;
}

namespace meshtls::proxy {

// One finished connection, as the access log and the status API describe it.
struct ConnectionRecord {
  uint64_t connection_id = 0;  // the status API's id; 0 until the handshake (or accept) assigns one
  std::string direction;  // outbound | inbound | passthrough
  std::string source_workload, destination_workload;   // "namespace/name", empty if unknown
  std::string source_identity, destination_identity;   // SPIFFE IDs, empty for plaintext
  std::string source_address, destination_address;     // "ip:port" (the destination the app asked for)
  uint64_t bytes_sent = 0;      // from the source towards the destination
  uint64_t bytes_received = 0;  // from the destination back to the source
  std::chrono::microseconds duration{0};
  bool tls = false;
  std::string tls_version, cipher, datapath;
  std::string peer_serial;  // hex serial of the certificate the other agent presented
  std::string mtls_mode;    // passthrough: the mode that let plaintext in (PERMISSIVE, DISABLE)
  std::string result;  // ok | denied | error
  std::string reason;  // snake_case, e.g. policy_denied, identity_mismatch, plaintext_refused
  std::string detail;  // free text
};

// The handshake event lines' budget: a flood of failing handshakes (a scanner, a peer with the
// wrong CA) must not fill the disk. Lines over the budget are counted, not written.
struct HandshakeEventBudget {
  double per_second = 50;
  double burst = 200;
};

// JSON lines through spdlog (its own sink, never mixed with the application log on stderr unless
// asked for): one per closed connection (`"event":"connection"`), and one per handshake event
// (`"event":"mtls_handshake"`, rate-limited).
class AccessLog {
 public:
  // `target`: stdout | stderr | off | an absolute file path.
  static absl::StatusOr<std::unique_ptr<AccessLog>> Create(const std::string& target,
                                                           HandshakeEventBudget budget = {});
  ~AccessLog();
  void Write(const ConnectionRecord& record);
  static std::string ToJson(const ConnectionRecord& record);

  // One mtls_handshake line, unless the budget is spent; false when the line was suppressed (the
  // caller counts it). Thread-safe.
  bool WriteHandshake(const ConnectionRecord& record, bool ok, std::chrono::microseconds duration);
  static std::string HandshakeJson(const ConnectionRecord& record, bool ok, std::chrono::microseconds duration);
  uint64_t handshake_events_suppressed() const { return suppressed_.load(); }

 private:
  AccessLog(std::shared_ptr<spdlog::logger> logger, HandshakeEventBudget budget)
      : logger_(std::move(logger)), handshake_budget_(budget.per_second, budget.burst) {}
  std::shared_ptr<spdlog::logger> logger_;  // null when off
  TokenBucket handshake_budget_;
  std::atomic<uint64_t> suppressed_{0};
};

}  // namespace meshtls::proxy
