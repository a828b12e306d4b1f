#include "meshtls/proxy/access_log.h"

#include <chrono>

#include "meshtls/common/strings.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace meshtls::proxy {

absl::StatusOr<std::unique_ptr<AccessLog>> AccessLog::Create(const std::string& target, HandshakeEventBudget budget) {
  if (target == "off") return std::unique_ptr<AccessLog>(new AccessLog(nullptr, budget));
  std::shared_ptr<spdlog::logger> logger;
  try {  // spdlog reports sink errors by throwing; only at start-up, never on the data path
    if (target == "stdout") {
      logger = std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::stdout_sink_mt>());
    } else if (target == "stderr") {
      logger = std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    } else if (!target.empty() && target.front() == '/') {
      logger = std::make_shared<spdlog::logger>("access",
                                                std::make_shared<spdlog::sinks::basic_file_sink_mt>(target));
    } else {
      return absl::InvalidArgumentError(
          StrCat("accessLog '", target, "': use stdout, stderr, off or an absolute file path"));
    }
  } catch (const spdlog::spdlog_ex& e) {
    return absl::UnavailableError(StrCat("accessLog '", target, "': ", e.what()));
  }
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  return std::unique_ptr<AccessLog>(new AccessLog(std::move(logger), budget));
}

AccessLog::~AccessLog() = default;

namespace {

double NowSeconds() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
             .count() /
         1000.0;
}

// Who talked to whom, the same in every line.
void AddParties(nlohmann::json& j, const ConnectionRecord& r) {
  j["direction"] = r.direction;
  j["src_workload"] = r.source_workload;
  j["src_identity"] = r.source_identity;
  j["src_addr"] = r.source_address;
  j["dst_workload"] = r.destination_workload;
  j["dst_identity"] = r.destination_identity;
  j["dst_addr"] = r.destination_address;
}

// Replaces invalid UTF-8 rather than throw: details can carry peer-controlled bytes.
std::string Dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

}  // namespace

std::string AccessLog::ToJson(const ConnectionRecord& r) {
  nlohmann::json j;
  j["time"] = NowSeconds();
  j["event"] = "connection";
  if (r.connection_id != 0) j["connection_id"] = r.connection_id;
  AddParties(j, r);
  j["bytes_sent"] = r.bytes_sent;
  j["bytes_received"] = r.bytes_received;
  j["duration_ms"] = static_cast<double>(r.duration.count()) / 1000.0;
  j["tls"] = r.tls;
  j["tls_version"] = r.tls_version;
  j["cipher"] = r.cipher;
  j["datapath"] = r.datapath;
  if (!r.peer_serial.empty()) j["peer_serial"] = r.peer_serial;
  if (!r.mtls_mode.empty()) j["mtls_mode"] = r.mtls_mode;
  j["result"] = r.result;
  j["reason"] = r.reason;
  if (!r.detail.empty()) j["detail"] = r.detail;
  return Dump(j);
}

void AccessLog::Write(const ConnectionRecord& record) {
  if (logger_) logger_->info(ToJson(record));
}

std::string AccessLog::HandshakeJson(const ConnectionRecord& r, bool ok, std::chrono::microseconds duration) {
  nlohmann::json j;
  j["time"] = NowSeconds();
  j["event"] = "mtls_handshake";
  j["connection_id"] = r.connection_id;
  AddParties(j, r);
  j["result"] = ok ? "success" : "failure";
  j["failure_reason"] = ok ? "" : r.reason;
  if (!ok && !r.detail.empty()) j["detail"] = r.detail;
  j["tls_version"] = r.tls_version;
  j["duration_ms"] = static_cast<double>(duration.count()) / 1000.0;
  return Dump(j);
}

bool AccessLog::WriteHandshake(const ConnectionRecord& record, bool ok, std::chrono::microseconds duration) {
  if (!logger_) return true;
  if (!handshake_budget_.TryTake()) {
    suppressed_++;
    return false;
  }
  logger_->info(HandshakeJson(record, ok, duration));
  return true;
}

}  // namespace meshtls::proxy
