#include "inspect/fake_agent_view.h"

#include "meshtls/common/strings.h"

namespace meshtls::inspect::testing {

namespace {

void SetTime(google::protobuf::Timestamp* t, int64_t seconds) { t->set_seconds(seconds); }

v1::Certificate Cert(const std::string& id, const std::string& serial, const std::string& subject) {
  v1::Certificate cert;
  cert.set_spiffe_id(id);
  cert.set_serial(serial);
  SetTime(cert.mutable_not_before(), 1700000000);
  SetTime(cert.mutable_not_after(), 1700003600);
  cert.set_seconds_left(1800);
  cert.add_chain_subjects(subject);
  cert.add_chain_subjects("O=meshtls, CN=meshtls root CA");
  SetTime(cert.mutable_rotate_at(), 1700001800);
  cert.set_rotations(3);
  return cert;
}

v1::WorkloadPolicy PolicyFor(const std::string& workload) {
  v1::WorkloadPolicy policy;
  policy.set_workload(workload);
  policy.set_mode(v1::MTLS_MODE_STRICT);
  policy.set_peer_authentication("istio-system/default");
  (*policy.mutable_port_modes())[8080] = v1::MTLS_MODE_PERMISSIVE;
  policy.add_authorization_policies(StrCat(workload, "-deny"));
  policy.set_summary("STRICT; port 8080 PERMISSIVE");
  return policy;
}

}  // namespace

v1::GetStatusResponse FakeAgentView::Status() const {
  v1::GetStatusResponse status;
  status.set_version(kVersion);
  status.set_build("gcc 12 RelWithDebInfo");
  status.mutable_uptime()->set_seconds(3723);
  status.set_node_name(kNode);
  status.set_trust_domain("cluster.local");
  status.set_datapath(v1::DATAPATH_KTLS_SPLICE);
  status.set_datapath_reason("kTLS probe passed");
  v1::KernelFeatures* kernel = status.mutable_kernel();
  kernel->set_kernel_release("6.1.0-test");
  kernel->set_ktls_available(true);
  kernel->set_ktls_detail("TLS_TX and TLS_RX accepted on a loopback pair");
  kernel->add_ktls_ciphers("TLS_AES_128_GCM_SHA256");
  kernel->set_local_leg_shortcut(true);
  v1::BpfProgram* program = status.add_bpf_programs();
  program->set_name("meshtls_connect4");
  program->set_attach_point("/sys/fs/cgroup/meshtls");
  program->set_program_id(42);
  program->set_link_id(7);
  v1::Counters* counters = status.mutable_counters();
  counters->set_handshakes_ok(10);
  counters->set_handshakes_failed(1);
  counters->set_denied(2);
  counters->set_active_connections(2);
  status.set_worker_loops(2);
  status.add_served_workloads("default/web");
  status.add_served_workloads("data/db");
  return status;
}

v1::ListWorkloadsResponse FakeAgentView::Workloads() const {
  v1::ListWorkloadsResponse response;
  struct Row {
    const char* ns;
    const char* name;
    const char* node;
    const char* ip;
    bool served;
  };
  for (const Row& row :
       {Row{"default", "web", kNode, "10.0.1.2", true}, Row{"data", "db", kNode, "10.0.1.3", true},
        Row{"default", "client", "node-b", "10.0.2.2", false}}) {
    v1::Workload* w = response.add_workloads();
    w->set_name(row.name);
    w->set_namespace_(row.ns);
    w->set_service_account(row.name);
    w->set_node(row.node);
    (*w->mutable_labels())["app"] = row.name;
    w->add_ips(row.ip);
    w->set_spiffe_id(StrCat("spiffe://cluster.local/ns/", row.ns, "/sa/", row.name));
    w->set_served_here(row.served);
    w->set_mode(v1::MTLS_MODE_STRICT);
  }
  response.set_source("static file /etc/meshtls/workloads.yaml");
  return response;
}

v1::ListConnectionsResponse FakeAgentView::Connections(const std::string& workload) const {
  v1::ListConnectionsResponse all;
  v1::Connection* c = all.add_connections();
  c->set_id(1);
  c->set_direction("outbound");
  c->set_source_workload("default/web");
  c->set_source_identity(kWebId);
  c->set_destination_workload("data/db");
  c->set_destination_identity(kDbId);
  c->set_bytes_sent(1000);
  c->set_bytes_received(2000);
  c->set_tls_version("TLSv1.3");
  c->set_cipher("TLS_AES_128_GCM_SHA256");
  c->set_ktls(true);
  c->set_datapath(v1::DATAPATH_KTLS_SPLICE);
  c->mutable_age()->set_seconds(5);
  c = all.add_connections();
  c->set_id(2);
  c->set_direction("inbound");
  c->set_source_workload("default/client");
  c->set_destination_workload("default/web");
  c->set_datapath(v1::DATAPATH_USERSPACE_TLS);
  if (workload.empty()) return all;
  v1::ListConnectionsResponse filtered;
  for (const v1::Connection& conn : all.connections()) {
    if (conn.source_workload() == workload || conn.destination_workload() == workload) {
      *filtered.add_connections() = conn;
    }
  }
  return filtered;
}

v1::ListCertificatesResponse FakeAgentView::Certificates() const {
  v1::ListCertificatesResponse response;
  *response.add_certificates() = Cert(kWebId, "0a1b2c", "O=meshtls, CN=web");
  *response.add_certificates() = Cert(kDbId, "0d0e0f", "O=meshtls, CN=db");
  v1::TrustRoot* root = response.add_trust_bundle();
  root->set_subject("O=meshtls, CN=meshtls root CA");
  root->set_serial("01");
  SetTime(root->mutable_not_after(), 2000000000);
  return response;
}

absl::StatusOr<v1::GetPolicyResponse> FakeAgentView::Policy(const std::string& workload) const {
  v1::GetPolicyResponse response;
  response.set_policy_dir("/etc/meshtls/policies");
  SetTime(response.mutable_loaded_at(), 1700000000);
  if (workload.empty()) {
    *response.add_workloads() = PolicyFor("default/web");
    *response.add_workloads() = PolicyFor("data/db");
  } else if (workload == "default/web" || workload == "data/db") {
    *response.add_workloads() = PolicyFor(workload);
  } else {
    return absl::NotFoundError(StrCat("workload ", workload, " is not served by this agent"));
  }
  return response;
}

absl::StatusOr<v1::RotateCertificatesResponse> FakeAgentView::Rotate(const std::string& spiffe_id) {
  ++rotate_calls_;
  v1::RotateCertificatesResponse response;
  const v1::ListCertificatesResponse held = Certificates();
  for (const v1::Certificate& cert : held.certificates()) {
    if (spiffe_id.empty() || cert.spiffe_id() == spiffe_id) {
      v1::Certificate* rotated = response.add_rotated();
      *rotated = cert;
      rotated->set_rotations(cert.rotations() + 1);
    }
  }
  if (response.rotated_size() == 0) {
    return absl::NotFoundError(StrCat("no SVID held for ", spiffe_id));
  }
  return response;
}

absl::StatusOr<v1::CheckAccessResponse> FakeAgentView::CheckAccess(const v1::CheckAccessRequest& request) const {
  if (request.destination_workload() != "default/web") {
    return absl::NotFoundError("no workload '" + request.destination_workload() + "' in the registry");
  }
  v1::CheckAccessResponse out;
  out.set_decision(v1::DECISION_DENY);
  out.set_mtls_mode(v1::MTLS_MODE_STRICT);
  out.set_mtls_mode_level("mesh");
  out.set_peer_authentication("istio-system/default");
  out.set_policy("default/deny-db");
  out.set_reason("deny_policy_matched");
  out.set_detail("denied by DENY policy default/deny-db rule 0");
  v1::ConsideredPolicy* considered = out.add_considered();
  considered->set_policy("default/deny-db");
  considered->set_action("DENY");
  considered->set_matched(true);
  considered->set_rule(0);
  considered->set_why("rule 0 matched");
  out.set_source_principal(request.source_principal());
  return out;
}

v1::AuditResponse FakeAgentView::Audit() const {
  v1::AuditResponse out;
  v1::Finding* finding = out.add_findings();
  finding->set_severity(v1::SEVERITY_WARNING);
  finding->set_code("permissive_mode");
  finding->set_subject("default/web");
  finding->set_detail("PERMISSIVE (no PeerAuthentication: Istio's default): plaintext is accepted");
  return out;
}

}  // namespace meshtls::inspect::testing
