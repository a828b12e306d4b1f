#pragma once

#include <atomic>
#include <string>

#include "meshtls/inspect/agent_view.h"

namespace meshtls::inspect::testing {

// An agent with fixed, recognisable data, so a client's test can compare field by field. The
// Python client test (python_client_test.py) checks the same values: keep them in step.
class FakeAgentView : public AgentView {
 public:
  static constexpr char kVersion[] = "0.1.0-test";
  static constexpr char kNode[] = "node-a";
  static constexpr char kWebId[] = "spiffe://cluster.local/ns/default/sa/web";
  static constexpr char kDbId[] = "spiffe://cluster.local/ns/data/sa/db";

  v1::GetStatusResponse Status() const override;
  v1::ListWorkloadsResponse Workloads() const override;
  v1::ListConnectionsResponse Connections(const std::string& workload) const override;
  v1::ListCertificatesResponse Certificates() const override;
  absl::StatusOr<v1::GetPolicyResponse> Policy(const std::string& workload) const override;
  absl::StatusOr<v1::RotateCertificatesResponse> Rotate(const std::string& spiffe_id) override;
  // default/web: DENY by default/deny-db; anything else: NotFound.
  absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const v1::CheckAccessRequest& request) const override;
  v1::AuditResponse Audit() const override;

  int rotate_calls() const { return rotate_calls_.load(); }

 private:
  std::atomic<int> rotate_calls_{0};
};

}  // namespace meshtls::inspect::testing
