#include "observer.h"

#include <chrono>

#include "spdlog/spdlog.h"

namespace meshtls::agent {
namespace {

// "spiffe://td/ns/x/sa/y" -> Istio's principal form "td/ns/x/sa/y".
std::string Principal(const std::string& spiffe_id) {
  constexpr std::string_view kScheme = "spiffe://";
  return spiffe_id.rfind(kScheme, 0) == 0 ? spiffe_id.substr(kScheme.size()) : spiffe_id;
}

// "namespace/name" -> {name, namespace}.
std::pair<std::string, std::string> Split(const std::string& uid) {
  const size_t slash = uid.find('/');
  if (slash == std::string::npos) return {uid, ""};
  return {uid.substr(slash + 1), uid.substr(0, slash)};
}

telemetry::ConnectionLabels LabelsOf(const proxy::ConnectionRecord& r) {
  telemetry::ConnectionLabels labels;
  // The outbound side reports as the source, the inbound and capture sides as the destination.
  labels.reporter = r.direction == "outbound" ? "source" : "destination";
  std::tie(labels.source_workload, labels.source_namespace) = Split(r.source_workload);
  std::tie(labels.destination_workload, labels.destination_namespace) = Split(r.destination_workload);
  labels.source_principal = Principal(r.source_identity);
  labels.destination_principal = Principal(r.destination_identity);
  labels.mtls = r.tls;
  return labels;
}

v1::EventKind KindOf(const proxy::ConnectionRecord& r) {
  if (r.result == "denied") return v1::EVENT_KIND_DENIAL;
  return v1::EVENT_KIND_CLOSE;
}

}  // namespace

void AgentObserver::OnHandshake(const proxy::ConnectionRecord& record, bool ok, std::chrono::microseconds duration) {
  metrics_->Handshake(ok, ok ? "none" : record.reason);
  if (ok) metrics_->HandshakeDuration(duration);
  // Every failure gets an event line; successes only at debug level (one per connection would
  // double the access log).
  if (access_log_ != nullptr && (!ok || spdlog::should_log(spdlog::level::debug))) {
    if (!access_log_->WriteHandshake(record, ok, duration)) metrics_->HandshakeEventsSuppressed(1);
  }
  const bool inbound = record.direction == "inbound";
  Publish(v1::EVENT_KIND_HANDSHAKE, inbound ? record.destination_workload : record.source_workload,
          inbound ? record.source_identity : record.destination_identity, ok ? "ok" : "error", ok ? "" : record.reason,
          ok ? record.cipher : record.detail);
}

void AgentObserver::OnOpened(const proxy::ConnectionRecord& record) {
  metrics_->ConnectionOpened(LabelsOf(record));
  if (record.direction == "passthrough") {
    const auto [name, space] = Split(record.destination_workload);
    metrics_->PlaintextAccepted(name, space, record.mtls_mode);
  }
  metrics_->ConnectionsActive(record.datapath, 1);
}

void AgentObserver::OnFinished(const proxy::ConnectionRecord& record, bool was_opened) {
  if (was_opened) {
    // Istio's directions: "received" is source -> destination, "sent" the way back.
    metrics_->ConnectionClosed(LabelsOf(record), record.bytes_received, record.bytes_sent);
    metrics_->ConnectionsActive(record.datapath, -1);
    metrics_->ConnectionEnded(record.result == "ok" ? "none" : record.reason);
  }
  if (record.result == "denied") metrics_->PolicyDenial(record.reason);
  const bool inbound = record.direction != "outbound";
  Publish(KindOf(record), inbound ? record.destination_workload : record.source_workload,
          inbound ? (record.source_identity.empty() ? record.source_address : record.source_identity)
                  : record.destination_address,
          record.result, record.reason, record.detail);
}

void AgentObserver::Publish(v1::EventKind kind, std::string workload, std::string peer, std::string result,
                            std::string reason, std::string detail) {
  if (events_ == nullptr) return;
  v1::Event event;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  event.mutable_time()->set_seconds(ns / 1'000'000'000);
  event.mutable_time()->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  event.set_kind(kind);
  event.set_workload(std::move(workload));
  event.set_peer(std::move(peer));
  event.set_result(std::move(result));
  event.set_reason(std::move(reason));
  event.set_detail(std::move(detail));
  events_->Publish(std::move(event));
}

}  // namespace meshtls::agent
