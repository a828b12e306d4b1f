#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

namespace meshtls::telemetry {

// The metrics meshtls exports, in one prometheus-cpp registry (served on :15020/metrics by the
// agent). Families are created once here so that names and labels stay in one place and label
// cardinality stays bounded (per identity on the node, never per connection).
class Metrics {
 public:
  Metrics();

  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> shared_registry() { return registry_; }
  // Prometheus text exposition of everything registered.
  std::string Serialize() const;

  // Identity: SVID renewals by result, and when each identity's current SVID expires.
  void SvidRenewal(bool success);
  void SvidExpiry(const std::string& spiffe_id, std::chrono::system_clock::time_point not_after);
  void ForgetSvid(const std::string& spiffe_id);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& svid_rotations_;
  prometheus::Family<prometheus::Gauge>& certificate_expiration_;
};

}  // namespace meshtls::telemetry
