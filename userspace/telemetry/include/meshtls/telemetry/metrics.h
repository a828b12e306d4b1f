#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include <string_view>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace meshtls::telemetry {

// Who talked to whom, as the istio_tcp_* families label it. Workloads and principals only: ports,
// addresses and connection ids would make one series per connection. Empty fields are exported as
// "unknown", as Istio does.
struct ConnectionLabels {
  // The {} let callers name only the fields they know in designated initializers (GCC 12 warns
  // about the others otherwise).
  std::string reporter{};  // "source" (the client's node) or "destination" (the server's node)
  std::string source_workload{}, source_namespace{}, source_principal{};
  std::string destination_workload{}, destination_namespace{}, destination_principal{};
  bool mtls = false;  // connection_security_policy: "mutual_tls" or "none"

  friend bool operator==(const ConnectionLabels&, const ConnectionLabels&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ConnectionLabels& l) {
    return H::combine(std::move(h), l.reporter, l.source_workload, l.source_namespace,
                      l.source_principal, l.destination_workload, l.destination_namespace,
                      l.destination_principal, l.mtls);
  }
};

// The metrics meshtls exports, in one prometheus-cpp registry (served on :15020/metrics by
// MetricsServer). Families are created once here so that names and labels stay in one place and
// label cardinality stays bounded (per identity on the node, never per connection). Every method
// is thread-safe; docs/metrics.md lists the families.
class Metrics {
 public:
  // Free-text labels (reasons, datapaths) keep at most this many distinct values per family;
  // later values are folded into "other", so a caller passing error messages cannot grow the
  // scrape without bound.
  static constexpr size_t kMaxValuesPerLabel = 64;
  // Distinct ConnectionLabels; later ones are counted under all-"other" workloads and principals.
  static constexpr size_t kMaxConnectionLabelSets = 10'000;

  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> shared_registry() { return registry_; }
  // Prometheus text exposition of everything registered.
  std::string Serialize() const;

  // Identity: SVID renewals by result, and when each identity's current SVID expires.
  void SvidRenewal(bool success);
  void SvidExpiry(const std::string& spiffe_id, std::chrono::system_clock::time_point not_after);
  // When the agent plans to renew that SVID; a renewal still pending well past it is failing.
  void SvidRenewalDue(const std::string& spiffe_id, std::chrono::system_clock::time_point due);
  void ForgetSvid(const std::string& spiffe_id);
  void SvidIssuanceDuration(std::chrono::microseconds duration);
  // Expiry of each CA certificate in the trust bundle or signing chain (`role`: root,
  // intermediate). Replaces every earlier series.
  struct CaCertificate {
    std::string role, subject;
    std::chrono::system_clock::time_point not_after;
  };
  void CaExpiry(const std::vector<CaCertificate>& certificates);

  // Plaintext connections let in by PERMISSIVE or DISABLE (`mode`), per destination workload.
  void PlaintextAccepted(const std::string& destination_workload, const std::string& destination_namespace,
                         std::string_view mode);
  // Policy directory reloads.
  void PolicyReload(bool success);
  // The readiness check's answer, also as a metric for alerts.
  void Ready(bool ready);
  // mtls_handshake event lines dropped by the access log's rate limit.
  void HandshakeEventsSuppressed(uint64_t count);
  // TLS 1.3 KeyUpdates so far (process totals; the counters follow them): sent, received, and
  // received from peers that were cut off for exceeding their budget.
  void KeyUpdates(uint64_t sent, uint64_t received, uint64_t floods);
  // Relayed connections that ended, by reason ("none" for a clean end).
  void ConnectionEnded(std::string_view reason);

  // Connections (istio_tcp_*). Directions are Istio's, the same whichever side reports: `sent` is
  // destination -> source (the response direction), `received` is source -> destination (the
  // request direction). Byte arguments are increments since the previous report for the same
  // connection: a caller that never calls BytesTransferred passes the totals at close; one that
  // reports long connections periodically passes only the remainder at close.
  void ConnectionOpened(const ConnectionLabels& labels);
  void ConnectionClosed(const ConnectionLabels& labels, uint64_t sent, uint64_t received);
  void BytesTransferred(const ConnectionLabels& labels, uint64_t sent, uint64_t received);

  // TLS handshakes: result success/failure, and a stable reason name (tls::FailureReasonName;
  // empty means "none").
  void Handshake(bool ok, std::string_view reason);
  void HandshakeDuration(std::chrono::microseconds duration);
  // Relayed connections currently open per datapath ("ktls-splice", "userspace-tls", ...).
  void ConnectionsActive(std::string_view datapath, int64_t delta);
  void PolicyDenial(std::string_view reason);
  // 1 while the agent runs without kernel TLS (the kTLS probe failed or it was turned off).
  void KtlsUnavailable(bool unavailable);
  // meshtls_build_info{version,datapath} = 1; a later call replaces the series.
  void BuildInfo(std::string_view version, std::string_view datapath);
  // Events (e.g. for WatchEvents streams or the access log) lost because a consumer was too slow.
  void EventsDropped(uint64_t count);

 private:
  struct ConnectionSeries {
    prometheus::Counter* sent;
    prometheus::Counter* received;
    prometheus::Counter* opened;
    prometheus::Counter* closed;
  };
  ConnectionSeries& Series(const ConnectionLabels& labels);

  // The label value to export for `value` in the family owning `seen` (see kMaxValuesPerLabel).
  std::string Bounded(absl::flat_hash_set<std::string>& seen, std::string_view value);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& svid_rotations_;
  prometheus::Family<prometheus::Gauge>& certificate_expiration_;
  prometheus::Family<prometheus::Counter>& tcp_sent_bytes_;
  prometheus::Family<prometheus::Counter>& tcp_received_bytes_;
  prometheus::Family<prometheus::Counter>& tcp_opened_;
  prometheus::Family<prometheus::Counter>& tcp_closed_;
  prometheus::Family<prometheus::Counter>& handshakes_;
  prometheus::Family<prometheus::Histogram>& handshake_duration_family_;
  prometheus::Family<prometheus::Gauge>& connections_active_;
  prometheus::Family<prometheus::Counter>& policy_denials_;
  prometheus::Family<prometheus::Gauge>& ktls_unavailable_family_;
  prometheus::Family<prometheus::Gauge>& build_info_family_;
  prometheus::Family<prometheus::Counter>& events_dropped_family_;
  prometheus::Family<prometheus::Gauge>& certificate_renewal_;
  prometheus::Family<prometheus::Histogram>& svid_issuance_family_;
  prometheus::Family<prometheus::Gauge>& ca_expiration_;
  prometheus::Family<prometheus::Counter>& plaintext_connections_;
  prometheus::Family<prometheus::Counter>& policy_reloads_;
  prometheus::Family<prometheus::Gauge>& policy_reload_ok_family_;
  prometheus::Family<prometheus::Gauge>& ready_family_;
  prometheus::Family<prometheus::Counter>& handshake_events_suppressed_family_;
  prometheus::Family<prometheus::Counter>& key_updates_;
  prometheus::Family<prometheus::Counter>& connections_closed_;
  prometheus::Histogram& handshake_duration_;
  prometheus::Histogram& svid_issuance_;
  prometheus::Gauge& policy_reload_ok_;
  prometheus::Gauge& ready_;
  prometheus::Counter& handshake_events_suppressed_;
  prometheus::Gauge& ktls_unavailable_;
  prometheus::Counter& events_dropped_;

  std::mutex mutex_;  // guards everything below
  absl::flat_hash_map<ConnectionLabels, ConnectionSeries> connection_series_;
  absl::flat_hash_set<std::string> handshake_reasons_;
  absl::flat_hash_set<std::string> denial_reasons_;
  absl::flat_hash_set<std::string> datapaths_;
  absl::flat_hash_set<std::string> plaintext_workloads_;
  absl::flat_hash_set<std::string> close_reasons_;
  uint64_t key_updates_sent_ = 0, key_updates_received_ = 0, key_update_floods_ = 0;
  std::vector<prometheus::Gauge*> ca_series_;
  prometheus::Gauge* build_info_ = nullptr;
};

}  // namespace meshtls::telemetry
