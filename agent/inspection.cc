#include "inspection.h"

#include "meshtls/inspect/policy_report.h"

#include <sys/utsname.h>

#include <algorithm>

#include <openssl/crypto.h>

#include "meshtls/common/openssl_setup.h"
#include "meshtls/common/strings.h"

namespace meshtls::agent {
namespace {

using SystemClock = std::chrono::system_clock;

google::protobuf::Timestamp Timestamp(SystemClock::time_point t) {
  google::protobuf::Timestamp out;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  out.set_seconds(ns / 1'000'000'000);
  out.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return out;
}

google::protobuf::Duration Duration(std::chrono::nanoseconds d) {
  google::protobuf::Duration out;
  out.set_seconds(d.count() / 1'000'000'000);
  out.set_nanos(static_cast<int32_t>(d.count() % 1'000'000'000));
  return out;
}

v1::Datapath ToProto(tls::Datapath datapath) {
  return datapath == tls::Datapath::kKtlsSplice ? v1::DATAPATH_KTLS_SPLICE : v1::DATAPATH_USERSPACE_TLS;
}

v1::Datapath DatapathOf(const std::string& name) {
  if (name == "ktls-splice") return v1::DATAPATH_KTLS_SPLICE;
  if (name == "userspace-tls") return v1::DATAPATH_USERSPACE_TLS;
  if (name == "plaintext") return v1::DATAPATH_PLAINTEXT;
  return v1::DATAPATH_UNSPECIFIED;
}

policy::PolicyTarget TargetOf(const workload::Workload& w) { return {w.namespace_name, w.labels}; }

}  // namespace


v1::GetStatusResponse AgentInspection::Status() const {
  v1::GetStatusResponse out;
  out.set_version(MESHTLS_VERSION);
  out.set_build(StrCat(MESHTLS_BUILD_TYPE, ", ", __VERSION__));
  *out.mutable_uptime() = Duration(std::chrono::steady_clock::now() - parts_.started);
  out.set_node_name(parts_.config->node_name);
  out.set_trust_domain(parts_.config->trust_domain);
  out.set_datapath(ToProto(parts_.datapath));
  out.set_datapath_reason(parts_.datapath_reason);
  v1::KernelFeatures* kernel = out.mutable_kernel();
  utsname uts{};
  if (uname(&uts) == 0) kernel->set_kernel_release(uts.release);
  kernel->set_ktls_available(parts_.ktls.available);
  kernel->set_ktls_detail(parts_.ktls.detail);
  kernel->set_ktls_self_test(parts_.ktls_self_test);
  kernel->set_ktls_rekey(parts_.ktls.rekey);
  kernel->set_ktls_rekey_detail(parts_.ktls.rekey_detail);
  kernel->set_openssl_version(OpenSSL_version(OPENSSL_VERSION));
  const OpenSslSetup openssl = CurrentOpenSslSetup();
  kernel->set_openssl_builtin_ec(openssl.builtin_ec_keys);
  kernel->set_openssl_builtin_ec_detail(openssl.detail);
  for (tls::KtlsCipher cipher : {tls::KtlsCipher::kAes128Gcm, tls::KtlsCipher::kAes256Gcm, tls::KtlsCipher::kChacha20Poly1305}) {
    if (parts_.ktls.Supports(cipher)) kernel->add_ktls_ciphers(std::string(tls::KtlsCipherName(cipher)));
  }
  kernel->set_local_leg_shortcut(parts_.shortcut != nullptr);
  std::vector<datapath::AttachedLink> links;
  if (parts_.steering != nullptr) links = parts_.steering->Links();
  if (parts_.capture != nullptr) {
    auto more = parts_.capture->Links();
    links.insert(links.end(), more.begin(), more.end());
  }
  if (parts_.shortcut != nullptr) {
    auto more = parts_.shortcut->Links();
    links.insert(links.end(), more.begin(), more.end());
  }
  for (const datapath::AttachedLink& link : links) {
    v1::BpfProgram* program = out.add_bpf_programs();
    program->set_name(link.program_name);
    program->set_attach_point(link.attach_point);
    program->set_program_id(link.program_id);
    program->set_link_id(link.link_id);
    program->set_pin_path(link.pin_path);
  }
  const proxy::ProxyCounters& c = parts_.proxy->counters();
  v1::Counters* counters = out.mutable_counters();
  counters->set_handshakes_ok(c.handshakes_ok.load());
  counters->set_handshakes_failed(c.handshakes_failed.load());
  counters->set_denied(c.denied.load());
  counters->set_plaintext_refused(c.plaintext_refused.load());
  counters->set_passthrough(c.passthrough.load());
  counters->set_limit_refusals(c.limit_refusals.load());
  counters->set_pending_handshakes(c.pending_handshakes.load());
  counters->set_active_connections(c.active_connections.load());
  out.set_worker_loops(parts_.worker_loops);
  for (const std::string& uid : parts_.proxy->ServedWorkloads()) out.add_served_workloads(uid);
  return out;
}

v1::ListWorkloadsResponse AgentInspection::Workloads() const {
  v1::ListWorkloadsResponse out;
  auto snapshot = parts_.workloads->Current();
  auto policies = parts_.policies->Current();
  for (const workload::Workload& w : snapshot->all()) {
    v1::Workload* item = out.add_workloads();
    item->set_name(w.name);
    item->set_namespace_(w.namespace_name);
    item->set_service_account(w.service_account);
    item->set_node(w.node);
    for (const auto& [key, value] : w.labels) (*item->mutable_labels())[key] = value;
    for (const IpAddress& ip : w.ips) item->add_ips(ip.ToString());
    item->set_netns(w.netns_path);
    item->set_cgroup(w.cgroup_path);
    item->set_spiffe_id(w.Identity(parts_.config->trust_domain).ToString());
    item->set_served_here(w.node == parts_.config->node_name);
    item->set_mode(inspect::ToProto(policies->ModeFor(TargetOf(w), 0)));
  }
  out.set_source(parts_.workloads->source().Health());
  if (auto error = parts_.workloads->last_error()) out.set_last_reload_error(*error);
  return out;
}

v1::ListConnectionsResponse AgentInspection::Connections(const std::string& workload) const {
  v1::ListConnectionsResponse out;
  for (const proxy::LiveConnection& live : parts_.proxy->Connections(workload)) {
    const proxy::ConnectionRecord& r = live.record;
    v1::Connection* c = out.add_connections();
    c->set_id(live.id);
    c->set_direction(r.direction);
    c->set_source_workload(r.source_workload);
    c->set_source_identity(r.source_identity);
    c->set_source_address(r.source_address);
    c->set_destination_workload(r.destination_workload);
    c->set_destination_identity(r.destination_identity);
    c->set_destination_address(r.destination_address);
    c->set_bytes_sent(r.bytes_sent);
    c->set_bytes_received(r.bytes_received);
    c->set_tls_version(r.tls_version);
    c->set_cipher(r.cipher);
    c->set_ktls(live.ktls);
    c->set_tx_key_generation(live.keys.tx_generation);
    c->set_rx_key_generation(live.keys.rx_generation);
    c->set_tx_records_current_key(live.keys.tx_records);
    c->set_rx_records_current_key(live.keys.rx_records);
    c->set_datapath(DatapathOf(r.datapath));
    *c->mutable_age() = Duration(std::chrono::duration_cast<std::chrono::nanoseconds>(live.age));
    c->set_peer_serial(r.peer_serial);
  }
  return out;
}

v1::Certificate AgentInspection::DescribeSvid(const identity::SvidState& state) const {
  v1::Certificate out;
  out.set_spiffe_id(state.id.ToString());
  out.set_serial(state.serial_hex);
  *out.mutable_not_before() = Timestamp(state.not_before);
  *out.mutable_not_after() = Timestamp(state.not_after);
  out.set_seconds_left(std::chrono::duration_cast<std::chrono::seconds>(state.not_after - SystemClock::now()).count());
  *out.mutable_rotate_at() = Timestamp(state.rotate_at);
  out.set_rotations(state.rotations);
  out.set_consecutive_failures(state.failures);
  out.set_last_error(state.last_error);
  if (auto svid = parts_.svids->Current(state.id); svid.ok()) {
    if (auto chain = identity::SummarizeCertificates((*svid)->chain_pem); chain.ok()) {
      for (const identity::CertificateSummary& cert : *chain) {
        out.add_chain_subjects(cert.uri_sans.empty() ? cert.subject : StrCat(cert.subject, " (", cert.uri_sans.front(), ")"));
      }
    }
  }
  return out;
}

v1::ListCertificatesResponse AgentInspection::Certificates() const {
  v1::ListCertificatesResponse out;
  for (const identity::SvidState& state : parts_.svids->States()) *out.add_certificates() = DescribeSvid(state);
  if (auto roots = identity::SummarizeCertificates(parts_.ca->TrustBundlePem()); roots.ok()) {
    for (const identity::CertificateSummary& root : *roots) {
      v1::TrustRoot* r = out.add_trust_bundle();
      r->set_subject(root.subject);
      r->set_serial(root.serial_hex);
      *r->mutable_not_after() = Timestamp(root.not_after);
    }
  }
  return out;
}

absl::StatusOr<v1::GetPolicyResponse> AgentInspection::Policy(const std::string& workload) const {
  v1::GetPolicyResponse out;
  auto policies = parts_.policies->Current();
  auto snapshot = parts_.workloads->Current();
  std::vector<const workload::Workload*> targets;
  if (workload.empty()) {
    targets = snapshot->OnNode(parts_.config->node_name);
  } else {
    const workload::Workload* w = snapshot->Find(workload);
    if (w == nullptr) return absl::NotFoundError(StrCat("no workload '", workload, "' in the registry (use namespace/name)"));
    targets.push_back(w);
  }
  for (const workload::Workload* w : targets) {
    const policy::PolicySet::Effective effective = policies->Describe(TargetOf(*w));
    v1::WorkloadPolicy* item = out.add_workloads();
    item->set_workload(w->uid());
    item->set_mode(inspect::ToProto(effective.mode));
    item->set_peer_authentication(effective.peer_authentication);
    for (const auto& [port, mode] : effective.port_modes) (*item->mutable_port_modes())[port] = inspect::ToProto(mode);
    for (const std::string& name : effective.authorization_policies) item->add_authorization_policies(name);
    item->set_summary(effective.summary);
  }
  out.set_policy_dir(parts_.policies->directory());
  if (auto error = parts_.policies->last_error()) out.set_last_reload_error(*error);
  for (const std::string& warning : policies->warnings()) out.add_warnings(warning);
  return out;
}

absl::StatusOr<v1::RotateCertificatesResponse> AgentInspection::Rotate(const std::string& spiffe_id) {
  std::vector<SpiffeId> ids;
  if (spiffe_id.empty()) {
    for (const identity::SvidState& state : parts_.svids->States()) ids.push_back(state.id);
  } else {
    auto id = SpiffeId::Parse(spiffe_id);
    if (!id.ok()) return id.status();
    const auto states = parts_.svids->States();
    const bool held = std::any_of(states.begin(), states.end(), [&](const identity::SvidState& s) { return s.id == *id; });
    if (!held) return absl::NotFoundError(StrCat("this agent holds no SVID for ", spiffe_id));
    ids.push_back(*id);
  }
  v1::RotateCertificatesResponse out;
  for (const SpiffeId& id : ids) {
    if (absl::Status st = parts_.svids->Rotate(id); !st.ok()) return st;
  }
  for (const identity::SvidState& state : parts_.svids->States()) {
    if (std::find(ids.begin(), ids.end(), state.id) != ids.end()) *out.add_rotated() = DescribeSvid(state);
  }
  return out;
}

}  // namespace meshtls::agent

namespace meshtls::agent {

absl::StatusOr<v1::CheckAccessResponse> AgentInspection::CheckAccess(const v1::CheckAccessRequest& request) const {
  return inspect::CheckAccess(*parts_.policies->Current(), *parts_.workloads->Current(), parts_.config->trust_domain,
                              request);
}

v1::AuditResponse AgentInspection::Audit() const {
  std::vector<v1::Finding> findings = inspect::AuditPolicies(*parts_.policies->Current(), *parts_.workloads->Current());
  inspect::LiveAuditInput live;
  live.now = std::chrono::system_clock::now();
  for (const identity::SvidState& state : parts_.svids->States()) {
    inspect::LiveAuditInput::Svid svid;
    svid.spiffe_id = state.id.ToString();
    svid.renewal_due = state.renewal_due;
    svid.not_after = state.not_after;
    svid.failures = state.failures;
    svid.last_error = state.last_error;
    if (auto current = parts_.svids->Peek(state.id)) svid.chain_pem = current->chain_pem;
    live.svids.push_back(std::move(svid));
  }
  live.trust_bundle_pem = parts_.ca->TrustBundlePem();
  live.intermediate_pem = parts_.ca->intermediate_pem();
  live.ktls_fallback = parts_.datapath == tls::Datapath::kUserspaceTls && !parts_.ktls.available;
  live.datapath_reason = parts_.datapath_reason;
  std::vector<v1::Finding> more = inspect::AuditLive(live);
  findings.insert(findings.end(), more.begin(), more.end());
  inspect::SortFindings(findings);
  v1::AuditResponse out;
  for (v1::Finding& finding : findings) *out.add_findings() = std::move(finding);
  return out;
}

}  // namespace meshtls::agent
