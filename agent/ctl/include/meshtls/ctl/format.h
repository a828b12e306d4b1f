#pragma once

// Rendering of the status API's answers, as meshtlsctl prints them. Pure functions: a message
// and "now" in, text out (ending in a newline), so each command's output is golden-tested
// without an agent.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "meshtls/v1/status.pb.h"

namespace meshtls::ctl {

enum class OutputFormat { kTable, kJson, kYaml };

// "table", "json" or "yaml".
std::optional<OutputFormat> ParseOutputFormat(std::string_view name);

struct RenderOptions {
  OutputFormat format = OutputFormat::kTable;
  // Reference for relative times ("expires in", "loaded 5m ago"); the CLI passes the clock.
  std::chrono::system_clock::time_point now;
};

std::string RenderStatus(const v1::GetStatusResponse& status, const RenderOptions& options);
std::string RenderWorkloads(const v1::ListWorkloadsResponse& workloads, const RenderOptions& options);
std::string RenderConnections(const v1::ListConnectionsResponse& connections, const RenderOptions& options);
std::string RenderCertificates(const v1::ListCertificatesResponse& certs, const RenderOptions& options);
std::string RenderPolicy(const v1::GetPolicyResponse& policy, const RenderOptions& options);
std::string RenderRotation(const v1::RotateCertificatesResponse& rotation, const RenderOptions& options);
std::string RenderCheckAccess(const v1::CheckAccessResponse& check, const RenderOptions& options);
std::string RenderAudit(const v1::AuditResponse& audit, const RenderOptions& options);
// "info", "warning", "critical" ("-" if unspecified); ParseSeverity takes the same names.
std::string SeverityName(v1::Severity severity);
std::optional<v1::Severity> ParseSeverity(std::string_view name);

// One streamed event: a single line for table and json (NDJSON), a "---" document for yaml.
std::string RenderEvent(const v1::Event& event, const RenderOptions& options);
// The line tap writes to stderr before an event with dropped_before > 0.
std::string DroppedEventsWarning(uint64_t dropped);

// The machine-readable forms. Like proto3 JSON with the .proto's field names, except that every
// field is present (unset messages as null) and 64-bit integers are numbers, not strings;
// Timestamp and Duration keep their proto3 JSON strings, enums their value names, map entries
// are sorted by key.
nlohmann::ordered_json ToJsonValue(const google::protobuf::Message& message);
std::string ToJson(const google::protobuf::Message& message, bool pretty = true);
std::string ToYaml(const google::protobuf::Message& message);
std::string JsonToYaml(const nlohmann::ordered_json& value);

// Short lower-case names used by the table output and by `tap --kind`.
std::string DatapathName(v1::Datapath datapath);    // "ktls-splice", "userspace-tls", ...
std::string ModeName(v1::MtlsMode mode);            // "STRICT", ... ("-" if unspecified)
std::string EventKindName(v1::EventKind kind);      // "handshake", "denial", ...

// "handshake,denial": the kinds for WatchEventsRequest (case-insensitive, no duplicates needed).
absl::StatusOr<std::vector<v1::EventKind>> ParseEventKinds(std::string_view list);
// "namespace/name", both parts non-empty.
bool IsWorkloadName(std::string_view name);

}  // namespace meshtls::ctl
