#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meshtls {

// A SPIFFE ID (spiffe://<trust-domain>/<path>), validated by the SPIFFE ID spec: lowercase trust
// domain of [a-z0-9.-_], path segments of [a-zA-Z0-9.-_] that are neither empty, "." nor "..",
// no query, fragment, port or userinfo, at most 2048 bytes in all.
class SpiffeId {
 public:
  static constexpr size_t kMaxLength = 2048;
  static constexpr size_t kMaxTrustDomainLength = 255;

  static absl::StatusOr<SpiffeId> Parse(std::string_view uri);
  // spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>
  static absl::StatusOr<SpiffeId> ForWorkload(std::string_view trust_domain,
                                              std::string_view namespace_name,
                                              std::string_view service_account);

  const std::string& trust_domain() const { return trust_domain_; }
  // Starts with '/', or is empty for a trust domain's own ID.
  const std::string& path() const { return path_; }
  std::string ToString() const { return "spiffe://" + trust_domain_ + path_; }

  // Set only when the path has the mesh workload form /ns/<namespace>/sa/<service-account>.
  std::optional<std::string_view> namespace_name() const;
  std::optional<std::string_view> service_account() const;

  friend bool operator==(const SpiffeId&, const SpiffeId&) = default;

 private:
  SpiffeId(std::string trust_domain, std::string path)
      : trust_domain_(std::move(trust_domain)), path_(std::move(path)) {}

  std::string trust_domain_;
  std::string path_;
};

}  // namespace meshtls
