#pragma once

// The answers behind `meshtlsctl policy check` and `meshtlsctl audit`. The agent calls these for
// the CheckAccess and Audit RPCs with what it has loaded; meshtlsctl calls the same functions
// offline with files it loaded itself. One implementation, so both answer alike, and both rest on
// PolicySet::Explain(), the data path's own evaluation.

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/policy/policy.h"
#include "meshtls/v1/status.pb.h"
#include "meshtls/workload/registry.h"

namespace meshtls::inspect {

v1::MtlsMode ToProto(policy::MtlsMode mode);

// InvalidArgument for a malformed request, NotFound for a workload that is not in `workloads`.
absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const policy::PolicySet& policies,
                                                    const workload::WorkloadSnapshot& workloads,
                                                    std::string_view trust_domain,
                                                    const v1::CheckAccessRequest& request);

// Findings from the policies and workloads alone: permissive_mode, mtls_disabled,
// namespace_isolation_gap, rule_never_matches_l4, policy_selects_nothing.
std::vector<v1::Finding> AuditPolicies(const policy::PolicySet& policies, const workload::WorkloadSnapshot& workloads);

// What a running agent adds.
struct LiveAuditInput {
  std::chrono::system_clock::time_point now;
  struct Svid {
    std::string spiffe_id;
    std::chrono::system_clock::time_point renewal_due;  // zero: never issued
    std::chrono::system_clock::time_point not_after;
    uint64_t failures = 0;
    std::string last_error;
    std::string chain_pem;  // what handshakes present (leaf first)
  };
  std::vector<Svid> svids;
  std::string trust_bundle_pem;
  std::string intermediate_pem;  // the signing CA's intermediate, if any
  bool ktls_fallback = false;    // kTLS wanted but unavailable
  std::string datapath_reason;
};
// svid_rotation_overdue, ca_expiring, chain_missing_intermediate, ktls_fallback.
std::vector<v1::Finding> AuditLive(const LiveAuditInput& input);

// Most severe first, then by code and subject.
void SortFindings(std::vector<v1::Finding>& findings);

}  // namespace meshtls::inspect
