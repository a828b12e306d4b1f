#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "meshtls/v1/status.pb.h"

namespace meshtls::inspect {

// What the status API can see of a running agent. The agent implements it over its libraries;
// tests implement it with fixed data. Every method is called from gRPC threads, so
// implementations must be thread-safe, and must return quickly (they build a snapshot).
class AgentView {
 public:
  virtual ~AgentView() = default;
  virtual v1::GetStatusResponse Status() const = 0;
  virtual v1::ListWorkloadsResponse Workloads() const = 0;
  // `workload`: "namespace/name" to filter on (either end), empty for all.
  virtual v1::ListConnectionsResponse Connections(const std::string& workload) const = 0;
  virtual v1::ListCertificatesResponse Certificates() const = 0;
  // NotFound for a workload this agent does not serve.
  virtual absl::StatusOr<v1::GetPolicyResponse> Policy(const std::string& workload) const = 0;
  // `spiffe_id` empty: every identity. NotFound for an identity the agent does not hold.
  virtual absl::StatusOr<v1::RotateCertificatesResponse> Rotate(const std::string& spiffe_id) = 0;
  // Through inspect::CheckAccess / AuditPolicies + AuditLive (policy_report.h) over what the
  // agent has loaded.
  virtual absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const v1::CheckAccessRequest& request) const = 0;
  virtual v1::AuditResponse Audit() const = 0;
};

}  // namespace meshtls::inspect
