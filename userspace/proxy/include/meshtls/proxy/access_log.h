#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace spdlog {
class logger;
}

namespace meshtls::proxy {

// One finished connection, as the access log and the status API describe it.
struct ConnectionRecord {
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
  std::string result;  // ok | denied | error
  std::string reason;  // snake_case, e.g. policy_denied, identity_mismatch, plaintext_refused
  std::string detail;  // free text
};

// JSON lines, one per closed connection, through spdlog (its own sink, never mixed with the
// application log on stderr unless asked for).
class AccessLog {
 public:
  // `target`: stdout | stderr | off | an absolute file path.
  static absl::StatusOr<std::unique_ptr<AccessLog>> Create(const std::string& target);
  ~AccessLog();
  void Write(const ConnectionRecord& record);
  static std::string ToJson(const ConnectionRecord& record);

 private:
  explicit AccessLog(std::shared_ptr<spdlog::logger> logger) : logger_(std::move(logger)) {}
  std::shared_ptr<spdlog::logger> logger_;  // null when off
};

}  // namespace meshtls::proxy
