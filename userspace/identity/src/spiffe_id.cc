#include "meshtls/identity/spiffe_id.h"

#include <vector>

#include "meshtls/common/strings.h"

namespace meshtls {
namespace {

constexpr std::string_view kScheme = "spiffe://";

bool IsTrustDomainChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

bool IsPathChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

absl::Status ValidateTrustDomain(std::string_view td) {
  if (td.empty()) return absl::InvalidArgumentError("trust domain is empty");
  if (td.size() > SpiffeId::kMaxTrustDomainLength) {
    return absl::InvalidArgumentError(
        StrCat("trust domain is longer than ", SpiffeId::kMaxTrustDomainLength, " bytes"));
  }
  for (char c : td) {
    if (c >= 'A' && c <= 'Z') {
      return absl::InvalidArgumentError("trust domain must be lowercase");
    }
    if (c == ':') return absl::InvalidArgumentError("trust domain must not contain a port");
    if (c == '@') return absl::InvalidArgumentError("trust domain must not contain userinfo");
    if (!IsTrustDomainChar(c)) {
      return absl::InvalidArgumentError(
          StrCat("trust domain has a character outside [a-z0-9.-_]: '", std::string(1, c),
                       "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePath(std::string_view path) {
  if (path.empty()) return absl::OkStatus();
  if (path.front() != '/') return absl::InvalidArgumentError("path must start with '/'");
  if (path.back() == '/') return absl::InvalidArgumentError("path must not end with '/'");
  std::vector<std::string_view> segments = Split(path.substr(1), '/');
  for (std::string_view segment : segments) {
    if (segment.empty()) return absl::InvalidArgumentError("path has an empty segment");
    if (segment == "." || segment == "..") {
      return absl::InvalidArgumentError("path has a '.' or '..' segment");
    }
    for (char c : segment) {
      if (!IsPathChar(c)) {
        return absl::InvalidArgumentError(StrCat(
            "path has a character outside [a-zA-Z0-9.-_]: '", std::string(1, c), "'"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SpiffeId> SpiffeId::Parse(std::string_view uri) {
  if (uri.empty()) return absl::InvalidArgumentError("SPIFFE ID is empty");
  if (uri.size() > kMaxLength) {
    return absl::InvalidArgumentError(StrCat("SPIFFE ID is longer than ", kMaxLength, " bytes"));
  }
  if (uri.substr(0, kScheme.size()) != kScheme) {
    return absl::InvalidArgumentError("SPIFFE ID must start with 'spiffe://' (lowercase scheme)");
  }
  std::string_view rest = uri.substr(kScheme.size());
  if (rest.find('?') != std::string_view::npos) {
    return absl::InvalidArgumentError("SPIFFE ID must not have a query");
  }
  if (rest.find('#') != std::string_view::npos) {
    return absl::InvalidArgumentError("SPIFFE ID must not have a fragment");
  }
  const size_t slash = rest.find('/');
  std::string_view td = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (absl::Status st = ValidateTrustDomain(td); !st.ok()) {
    return absl::InvalidArgumentError(StrCat("invalid SPIFFE ID '", uri, "': ", st.message()));
  }
  if (absl::Status st = ValidatePath(path); !st.ok()) {
    return absl::InvalidArgumentError(StrCat("invalid SPIFFE ID '", uri, "': ", st.message()));
  }
  return SpiffeId(std::string(td), std::string(path));
}

absl::StatusOr<SpiffeId> SpiffeId::ForWorkload(std::string_view trust_domain,
                                               std::string_view namespace_name,
                                               std::string_view service_account) {
  return Parse(StrCat(kScheme, trust_domain, "/ns/", namespace_name, "/sa/", service_account));
}

namespace {
// Returns {namespace, service account} when the path is exactly /ns/<ns>/sa/<sa>.
std::optional<std::pair<std::string_view, std::string_view>> WorkloadParts(std::string_view path) {
  std::vector<std::string_view> parts = Split(path, '/');
  if (parts.size() != 5 || !parts[0].empty() || parts[1] != "ns" || parts[3] != "sa") {
    return std::nullopt;
  }
  return std::make_pair(parts[2], parts[4]);
}
}  // namespace

std::optional<std::string_view> SpiffeId::namespace_name() const {
  auto parts = WorkloadParts(path_);
  if (!parts) return std::nullopt;
  return parts->first;
}

std::optional<std::string_view> SpiffeId::service_account() const {
  auto parts = WorkloadParts(path_);
  if (!parts) return std::nullopt;
  return parts->second;
}

}  // namespace meshtls
