#include "meshtls/telemetry/metrics.h"

#include <prometheus/text_serializer.h>

namespace meshtls::telemetry {

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      svid_rotations_(prometheus::BuildCounter()
                          .Name("meshtls_svid_rotations_total")
                          .Help("SVID issuances and renewals, by result")
                          .Register(*registry_)),
      certificate_expiration_(prometheus::BuildGauge()
                                  .Name("meshtls_certificate_expiration_timestamp_seconds")
                                  .Help("When the current SVID of each identity expires (Unix time)")
                                  .Register(*registry_)) {
  // Both results exist from the start, so a rate() over failures is 0 rather than absent.
  svid_rotations_.Add({{"result", "success"}});
  svid_rotations_.Add({{"result", "failure"}});
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

void Metrics::ForgetSvid(const std::string& spiffe_id) {
  auto& gauge = certificate_expiration_.Add({{"spiffe_id", spiffe_id}});
  certificate_expiration_.Remove(&gauge);
}

}  // namespace meshtls::telemetry
