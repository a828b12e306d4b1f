#include "meshtls/telemetry/metrics.h"

#include <prometheus/text_serializer.h>

#include "meshtls/common/strings.h"

namespace meshtls::telemetry {
namespace {

// 0.5 ms (a resumed handshake on loopback) to 10 s (the default handshake timeout).
const prometheus::Histogram::BucketBoundaries& HandshakeBuckets() {
  static const prometheus::Histogram::BucketBoundaries buckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return buckets;
}

std::string OrUnknown(const std::string& value) { return value.empty() ? "unknown" : value; }

prometheus::Labels IstioLabels(const ConnectionLabels& l) {
  // Only two reporters exist; anything else would be a caller bug that must not add series.
  std::string reporter = l.reporter == "source" || l.reporter == "destination" ? l.reporter : "unknown";
  return {{"reporter", std::move(reporter)},
          {"source_workload", OrUnknown(l.source_workload)},
          {"source_workload_namespace", OrUnknown(l.source_namespace)},
          {"source_principal", OrUnknown(l.source_principal)},
          {"destination_workload", OrUnknown(l.destination_workload)},
          {"destination_workload_namespace", OrUnknown(l.destination_namespace)},
          {"destination_principal", OrUnknown(l.destination_principal)},
          {"connection_security_policy", l.mtls ? "mutual_tls" : "none"}};
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      svid_rotations_(prometheus::BuildCounter()
                          .Name("meshtls_svid_rotations_total")
                          .Help("SVID issuances and renewals, by result")
                          .Register(*registry_)),
      certificate_expiration_(prometheus::BuildGauge()
                                  .Name("meshtls_certificate_expiration_timestamp_seconds")
                                  .Help("When the current SVID of each identity expires (Unix time)")
                                  .Register(*registry_)),
      tcp_sent_bytes_(prometheus::BuildCounter()
                          .Name("istio_tcp_sent_bytes_total")
                          .Help("Bytes from the destination workload to the source (responses), as in Istio")
                          .Register(*registry_)),
      tcp_received_bytes_(prometheus::BuildCounter()
                              .Name("istio_tcp_received_bytes_total")
                              .Help("Bytes from the source workload to the destination (requests), as in Istio")
                              .Register(*registry_)),
      tcp_opened_(prometheus::BuildCounter()
                      .Name("istio_tcp_connections_opened_total")
                      .Help("TCP connections opened")
                      .Register(*registry_)),
      tcp_closed_(prometheus::BuildCounter()
                      .Name("istio_tcp_connections_closed_total")
                      .Help("TCP connections closed")
                      .Register(*registry_)),
      handshakes_(prometheus::BuildCounter()
                      .Name("meshtls_handshakes_total")
                      .Help("TLS handshakes, by result and failure reason")
                      .Register(*registry_)),
      handshake_duration_family_(prometheus::BuildHistogram()
                                     .Name("meshtls_handshake_duration_seconds")
                                     .Help("TLS handshake duration, successful or not")
                                     .Register(*registry_)),
      connections_active_(prometheus::BuildGauge()
                              .Name("meshtls_connections_active")
                              .Help("Relayed connections currently open, by datapath")
                              .Register(*registry_)),
      policy_denials_(prometheus::BuildCounter()
                          .Name("meshtls_policy_denials_total")
                          .Help("Connections refused by authorization policy, by reason")
                          .Register(*registry_)),
      ktls_unavailable_family_(prometheus::BuildGauge()
                                   .Name("meshtls_ktls_unavailable")
                                   .Help("1 when the agent runs without kernel TLS")
                                   .Register(*registry_)),
      build_info_family_(prometheus::BuildGauge()
                             .Name("meshtls_build_info")
                             .Help("Always 1; labels give the agent version and datapath")
                             .Register(*registry_)),
      events_dropped_family_(prometheus::BuildCounter()
                                 .Name("meshtls_events_dropped_total")
                                 .Help("Events lost because a consumer could not keep up")
                                 .Register(*registry_)),
      certificate_renewal_(prometheus::BuildGauge()
                               .Name("meshtls_certificate_renewal_timestamp_seconds")
                               .Help("When the agent plans to renew the current SVID of each identity (Unix time)")
                               .Register(*registry_)),
      svid_issuance_family_(prometheus::BuildHistogram()
                                .Name("meshtls_svid_issuance_duration_seconds")
                                .Help("Time to issue or renew one SVID, successful or not")
                                .Register(*registry_)),
      ca_expiration_(prometheus::BuildGauge()
                         .Name("meshtls_ca_expiration_timestamp_seconds")
                         .Help("When each CA certificate of the trust bundle and signing chain expires (Unix time)")
                         .Register(*registry_)),
      plaintext_connections_(prometheus::BuildCounter()
                                 .Name("meshtls_plaintext_connections_total")
                                 .Help("Plaintext connections accepted under PERMISSIVE or DISABLE, per destination")
                                 .Register(*registry_)),
      policy_reloads_(prometheus::BuildCounter()
                          .Name("meshtls_policy_reloads_total")
                          .Help("Policy directory reloads, by result")
                          .Register(*registry_)),
      policy_reload_ok_family_(prometheus::BuildGauge()
                                   .Name("meshtls_policy_last_reload_successful")
                                   .Help("1 if the last policy reload succeeded (or none failed yet), else 0")
                                   .Register(*registry_)),
      ready_family_(prometheus::BuildGauge()
                        .Name("meshtls_ready")
                        .Help("1 when the readiness check passes (local pods served, SVIDs held, BPF attached)")
                        .Register(*registry_)),
      handshake_events_suppressed_family_(prometheus::BuildCounter()
                                              .Name("meshtls_handshake_events_suppressed_total")
                                              .Help("mtls_handshake event lines not written: over the rate limit")
                                              .Register(*registry_)),
      key_updates_(prometheus::BuildCounter()
                       .Name("meshtls_tls_key_updates_total")
                       .Help("TLS 1.3 KeyUpdates, by direction (sent, received) and result (ok, flood)")
                       .Register(*registry_)),
      connections_closed_(prometheus::BuildCounter()
                              .Name("meshtls_connections_closed_total")
                              .Help("Relayed connections that ended, by reason (none: a clean end)")
                              .Register(*registry_)),
      handshake_duration_(handshake_duration_family_.Add({}, HandshakeBuckets())),
      svid_issuance_(svid_issuance_family_.Add({}, HandshakeBuckets())),
      policy_reload_ok_(policy_reload_ok_family_.Add({})),
      ready_(ready_family_.Add({})),
      handshake_events_suppressed_(handshake_events_suppressed_family_.Add({})),
      ktls_unavailable_(ktls_unavailable_family_.Add({})),
      events_dropped_(events_dropped_family_.Add({})) {
  policy_reload_ok_.Set(1);
  key_updates_.Add({{"direction", "sent"}, {"result", "ok"}});
  key_updates_.Add({{"direction", "received"}, {"result", "ok"}});
  key_updates_.Add({{"direction", "received"}, {"result", "flood"}});
  connections_closed_.Add({{"reason", "key_limit"}});
  close_reasons_.insert("key_limit");
  policy_reloads_.Add({{"result", "success"}});
  policy_reloads_.Add({{"result", "failure"}});
  // Series that exist from the start, so that rate() and alerts see 0 rather than nothing.
  svid_rotations_.Add({{"result", "success"}});
  svid_rotations_.Add({{"result", "failure"}});
  handshakes_.Add({{"result", "success"}, {"reason", "none"}});
  handshake_reasons_.insert("none");
}

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::SvidRenewal(bool success) {
  svid_rotations_.Add({{"result", success ? "success" : "failure"}}).Increment();
}

void Metrics::SvidExpiry(const std::string& spiffe_id, std::chrono::system_clock::time_point not_after) {
  certificate_expiration_.Add({{"spiffe_id", spiffe_id}})
      .Set(static_cast<double>(std::chrono::system_clock::to_time_t(not_after)));
}

void Metrics::SvidRenewalDue(const std::string& spiffe_id, std::chrono::system_clock::time_point due) {
  certificate_renewal_.Add({{"spiffe_id", spiffe_id}})
      .Set(static_cast<double>(std::chrono::system_clock::to_time_t(due)));
}

void Metrics::ForgetSvid(const std::string& spiffe_id) {
  certificate_expiration_.Remove(&certificate_expiration_.Add({{"spiffe_id", spiffe_id}}));
  certificate_renewal_.Remove(&certificate_renewal_.Add({{"spiffe_id", spiffe_id}}));
}

void Metrics::SvidIssuanceDuration(std::chrono::microseconds duration) {
  svid_issuance_.Observe(static_cast<double>(duration.count()) / 1e6);
}

void Metrics::CaExpiry(const std::vector<CaCertificate>& certificates) {
  std::lock_guard lock(mutex_);
  for (prometheus::Gauge* gauge : ca_series_) ca_expiration_.Remove(gauge);
  ca_series_.clear();
  for (const CaCertificate& certificate : certificates) {
    auto& gauge = ca_expiration_.Add({{"role", certificate.role}, {"subject", certificate.subject}});
    gauge.Set(static_cast<double>(std::chrono::system_clock::to_time_t(certificate.not_after)));
    ca_series_.push_back(&gauge);
  }
}

void Metrics::PlaintextAccepted(const std::string& destination_workload, const std::string& destination_namespace,
                                std::string_view mode) {
  std::lock_guard lock(mutex_);
  // Bounded like the istio_tcp_* families: per destination workload, never per connection.
  std::string workload = destination_workload.empty() ? "unknown" : destination_workload;
  std::string space = destination_namespace.empty() ? "unknown" : destination_namespace;
  const std::string key = StrCat(space, "/", workload);
  if (!plaintext_workloads_.contains(key)) {
    if (plaintext_workloads_.size() >= kMaxConnectionLabelSets) {
      workload = "other";
      space = "other";
    } else {
      plaintext_workloads_.insert(key);
    }
  }
  plaintext_connections_
      .Add({{"destination_workload", workload}, {"destination_workload_namespace", space},
            {"mode", mode == "DISABLE" ? "DISABLE" : "PERMISSIVE"}})
      .Increment();
}

void Metrics::PolicyReload(bool success) {
  policy_reloads_.Add({{"result", success ? "success" : "failure"}}).Increment();
  policy_reload_ok_.Set(success ? 1 : 0);
}

void Metrics::Ready(bool ready) { ready_.Set(ready ? 1 : 0); }

void Metrics::KeyUpdates(uint64_t sent, uint64_t received, uint64_t floods) {
  std::lock_guard lock(mutex_);
  // Process totals in, increments out; a flood's last KeyUpdate is counted as received too.
  key_updates_.Add({{"direction", "sent"}, {"result", "ok"}})
      .Increment(static_cast<double>(sent - std::min(sent, key_updates_sent_)));
  key_updates_.Add({{"direction", "received"}, {"result", "ok"}})
      .Increment(static_cast<double>(received - std::min(received, key_updates_received_)));
  key_updates_.Add({{"direction", "received"}, {"result", "flood"}})
      .Increment(static_cast<double>(floods - std::min(floods, key_update_floods_)));
  key_updates_sent_ = std::max(sent, key_updates_sent_);
  key_updates_received_ = std::max(received, key_updates_received_);
  key_update_floods_ = std::max(floods, key_update_floods_);
}

void Metrics::ConnectionEnded(std::string_view reason) {
  std::lock_guard lock(mutex_);
  connections_closed_.Add({{"reason", Bounded(close_reasons_, reason.empty() ? "none" : reason)}}).Increment();
}

void Metrics::HandshakeEventsSuppressed(uint64_t count) {
  handshake_events_suppressed_.Increment(static_cast<double>(count));
}

Metrics::ConnectionSeries& Metrics::Series(const ConnectionLabels& labels) {
  if (auto it = connection_series_.find(labels); it != connection_series_.end()) return it->second;
  ConnectionLabels key = labels;
  if (connection_series_.size() >= kMaxConnectionLabelSets) {
    key = ConnectionLabels{.reporter = labels.reporter,
                           .source_workload = "other",
                           .source_namespace = "other",
                           .source_principal = "other",
                           .destination_workload = "other",
                           .destination_namespace = "other",
                           .destination_principal = "other",
                           .mtls = labels.mtls};
    if (auto it = connection_series_.find(key); it != connection_series_.end()) return it->second;
  }
  const prometheus::Labels exported = IstioLabels(key);
  ConnectionSeries series{.sent = &tcp_sent_bytes_.Add(exported),
                          .received = &tcp_received_bytes_.Add(exported),
                          .opened = &tcp_opened_.Add(exported),
                          .closed = &tcp_closed_.Add(exported)};
  return connection_series_.emplace(std::move(key), series).first->second;
}

void Metrics::ConnectionOpened(const ConnectionLabels& labels) {
  std::lock_guard lock(mutex_);
  Series(labels).opened->Increment();
}

void Metrics::ConnectionClosed(const ConnectionLabels& labels, uint64_t sent, uint64_t received) {
  std::lock_guard lock(mutex_);
  ConnectionSeries& series = Series(labels);
  series.closed->Increment();
  series.sent->Increment(static_cast<double>(sent));
  series.received->Increment(static_cast<double>(received));
}

void Metrics::BytesTransferred(const ConnectionLabels& labels, uint64_t sent, uint64_t received) {
  std::lock_guard lock(mutex_);
  ConnectionSeries& series = Series(labels);
  series.sent->Increment(static_cast<double>(sent));
  series.received->Increment(static_cast<double>(received));
}

std::string Metrics::Bounded(absl::flat_hash_set<std::string>& seen, std::string_view value) {
  std::string label(value);
  if (seen.contains(label)) return label;
  if (seen.size() >= kMaxValuesPerLabel) return "other";
  seen.insert(label);
  return label;
}

void Metrics::Handshake(bool ok, std::string_view reason) {
  std::lock_guard lock(mutex_);
  std::string label = Bounded(handshake_reasons_, reason.empty() ? std::string_view("none") : reason);
  handshakes_.Add({{"result", ok ? "success" : "failure"}, {"reason", std::move(label)}}).Increment();
}

void Metrics::HandshakeDuration(std::chrono::microseconds duration) {
  handshake_duration_.Observe(static_cast<double>(duration.count()) / 1e6);
}

void Metrics::ConnectionsActive(std::string_view datapath, int64_t delta) {
  std::lock_guard lock(mutex_);
  std::string label = Bounded(datapaths_, datapath.empty() ? std::string_view("unknown") : datapath);
  connections_active_.Add({{"datapath", std::move(label)}}).Increment(static_cast<double>(delta));
}

void Metrics::PolicyDenial(std::string_view reason) {
  std::lock_guard lock(mutex_);
  std::string label = Bounded(denial_reasons_, reason.empty() ? std::string_view("unknown") : reason);
  policy_denials_.Add({{"reason", std::move(label)}}).Increment();
}

void Metrics::KtlsUnavailable(bool unavailable) { ktls_unavailable_.Set(unavailable ? 1 : 0); }

void Metrics::BuildInfo(std::string_view version, std::string_view datapath) {
  std::lock_guard lock(mutex_);
  if (build_info_ != nullptr) build_info_family_.Remove(build_info_);
  build_info_ = &build_info_family_.Add({{"version", std::string(version.empty() ? "unknown" : version)},
                                         {"datapath", std::string(datapath.empty() ? "unknown" : datapath)}});
  build_info_->Set(1);
}

void Metrics::EventsDropped(uint64_t count) { events_dropped_.Increment(static_cast<double>(count)); }

}  // namespace meshtls::telemetry
