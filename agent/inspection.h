#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "meshtls/agent/config.h"
#include "meshtls/datapath/cgroup_steering.h"
#include "meshtls/datapath/inbound_capture.h"
#include "meshtls/datapath/local_leg_shortcut.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/identity/svid_store.h"
#include "meshtls/inspect/agent_view.h"
#include "meshtls/policy/policy.h"
#include "meshtls/proxy/node_proxy.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/relay.h"
#include "meshtls/workload/registry.h"

namespace meshtls::agent {

// The parts of a running agent the status API reads. Pointers, because the agent owns them;
// null where a part is off (e.g. no local-leg shortcut).
struct AgentParts {
  const AgentConfig* config = nullptr;
  std::chrono::steady_clock::time_point started;
  tls::Datapath datapath = tls::Datapath::kUserspaceTls;
  std::string datapath_reason;
  tls::KtlsSupport ktls;
  std::string ktls_self_test;  // KtlsSelfTestResult::Summary(), empty if it did not run
  unsigned worker_loops = 0;
  const identity::CertificateAuthority* ca = nullptr;
  identity::SvidStore* svids = nullptr;
  const policy::PolicyStore* policies = nullptr;
  const workload::WorkloadRegistry* workloads = nullptr;
  const datapath::CgroupSteering* steering = nullptr;
  const datapath::InboundCapture* capture = nullptr;
  const datapath::LocalLegShortcut* shortcut = nullptr;
  const proxy::NodeProxy* proxy = nullptr;
};

// The agent as the status API sees it: snapshots built from the libraries on each call.
class AgentInspection : public inspect::AgentView {
 public:
  explicit AgentInspection(AgentParts parts) : parts_(std::move(parts)) {}
  v1::GetStatusResponse Status() const override;
  v1::ListWorkloadsResponse Workloads() const override;
  v1::ListConnectionsResponse Connections(const std::string& workload) const override;
  v1::ListCertificatesResponse Certificates() const override;
  absl::StatusOr<v1::GetPolicyResponse> Policy(const std::string& workload) const override;
  absl::StatusOr<v1::RotateCertificatesResponse> Rotate(const std::string& spiffe_id) override;
  absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const v1::CheckAccessRequest& request) const override;
  v1::AuditResponse Audit() const override;

 private:
  v1::Certificate DescribeSvid(const identity::SvidState& state) const;
  AgentParts parts_;
};

}  // namespace meshtls::agent
