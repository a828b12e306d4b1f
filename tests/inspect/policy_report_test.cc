// inspect::CheckAccess and the audits: golden answers for `meshtlsctl policy check` over the
// policy set in testdata/policy_check/ (every reason code, every mode level, DENY over ALLOW,
// wildcards, ipBlocks, L7 and empty-spec policies), one test per audit finding, and a check that
// the explained decision is the data path's decision. After a deliberate change:
//   MESHTLS_UPDATE_GOLDEN=1 build/tests/inspect/policy_report_test
// then read the diff of testdata/policy_check/golden/.
#include "meshtls/inspect/policy_report.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "meshtls/ctl/format.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/workload/workload.h"
#include "testing/test_util.h"

namespace meshtls::inspect {
namespace {

namespace fs = std::filesystem;
const std::string kData = MESHTLS_POLICY_CHECK_DIR;

struct Inputs {
  std::shared_ptr<const policy::PolicySet> policies;
  workload::WorkloadSnapshot workloads;
};

// Relative paths, so that the file names in warnings (and so the golden files) do not depend on
// where the checkout is.
Inputs LoadTestdata() {
  Inputs inputs;
  fs::current_path(kData);
  auto policies = policy::PolicySet::LoadDirectory("policies");
  EXPECT_TRUE(policies.ok()) << policies.status();
  inputs.policies = *policies;
  workload::StaticWorkloadFile file("workloads.yaml");
  auto list = file.Load();
  EXPECT_TRUE(list.ok()) << list.status();
  auto snapshot = workload::WorkloadSnapshot::Create(*list);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  inputs.workloads = *snapshot;
  return inputs;
}

void ExpectGolden(const std::string& name, const std::string& actual) {
  meshtls::testing::ExpectGolden(kData + "/golden/" + name, actual);
}

struct Case {
  std::string name;
  std::string to;
  uint32_t port;
  std::string principal, space;  // neither: plaintext
  std::string ip;
  // What the case is about, asserted here as well as in the golden file.
  v1::Decision decision;
  std::string reason;
  v1::MtlsMode mode;
  std::string level;
  std::string policy;
};

v1::CheckAccessRequest RequestOf(const Case& c) {
  v1::CheckAccessRequest request;
  request.set_destination_workload(c.to);
  request.set_port(c.port);
  request.set_source_principal(c.principal);
  request.set_source_namespace(c.space);
  request.set_plaintext(c.principal.empty() && c.space.empty());
  request.set_source_ip(c.ip);
  return request;
}

const std::vector<Case>& Cases() {
  using v1::DECISION_ALLOW, v1::DECISION_DENY, v1::MTLS_MODE_STRICT, v1::MTLS_MODE_PERMISSIVE, v1::MTLS_MODE_DISABLE;
  static const std::vector<Case> cases = {
      {"allow_exact_principal", "shop/db", 5432, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_ALLOW,
       "allow_policy_matched", MTLS_MODE_STRICT, "mesh", "shop/allow-frontend"},
      {"allow_prefix_wildcard", "shop/db", 5432, "spiffe://cluster.local/ns/shop/sa/batch-nightly", "", "",
       DECISION_ALLOW, "allow_policy_matched", MTLS_MODE_STRICT, "mesh", "shop/allow-frontend"},
      {"allow_suffix_wildcard", "shop/db", 5432, "other.example/ns/shop/sa/reporting", "", "", DECISION_ALLOW,
       "allow_policy_matched", MTLS_MODE_STRICT, "mesh", "shop/allow-frontend"},
      {"allow_ip_block", "shop/db", 5432, "", "partners", "10.8.3.4", DECISION_ALLOW, "allow_policy_matched",
       MTLS_MODE_STRICT, "mesh", "shop/allow-office"},
      {"deny_over_allow", "shop/db", 5432, "cluster.local/ns/legacy/sa/billing", "", "10.8.1.1", DECISION_DENY,
       "deny_policy_matched", MTLS_MODE_STRICT, "mesh", "shop/deny-legacy"},
      {"no_allow_matched_wrong_principal", "shop/db", 5432, "cluster.local/ns/shop/sa/api", "", "", DECISION_DENY,
       "no_allow_policy_matched", MTLS_MODE_STRICT, "mesh", ""},
      {"no_allow_matched_wrong_port", "shop/db", 6000, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_DENY,
       "no_allow_policy_matched", MTLS_MODE_STRICT, "mesh", ""},
      {"plaintext_in_strict", "shop/db", 5432, "", "", "10.8.0.9", DECISION_DENY, "plaintext_in_strict",
       MTLS_MODE_STRICT, "mesh", ""},
      {"port_level_permissive", "shop/db", 9090, "", "", "10.8.0.9", DECISION_DENY, "no_allow_policy_matched",
       MTLS_MODE_PERMISSIVE, "port", ""},
      {"workload_level_permissive", "shop/cache", 6379, "", "", "10.1.0.10", DECISION_ALLOW, "default_allow",
       MTLS_MODE_PERMISSIVE, "workload", ""},
      {"namespace_level_permissive", "legacy/billing", 8080, "", "", "", DECISION_ALLOW, "default_allow",
       MTLS_MODE_PERMISSIVE, "namespace", ""},
      {"workload_level_disable", "open/insecure", 80, "", "", "", DECISION_ALLOW, "default_allow", MTLS_MODE_DISABLE,
       "workload", ""},
      {"l7_rule_ignored", "shop/api", 8080, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_DENY,
       "l7_rule_ignored", MTLS_MODE_STRICT, "mesh", ""},
      {"empty_spec_denies_all", "locked/vault", 8200, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_DENY,
       "no_allow_policy_matched", MTLS_MODE_STRICT, "mesh", ""},
      {"root_namespace_deny", "open/echo", 22, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_DENY,
       "deny_policy_matched", MTLS_MODE_STRICT, "mesh", "istio-system/deny-ssh"},
      {"default_allow", "open/echo", 80, "cluster.local/ns/shop/sa/frontend", "", "", DECISION_ALLOW, "default_allow",
       MTLS_MODE_STRICT, "mesh", ""},
  };
  return cases;
}

class PolicyCheckGolden : public ::testing::TestWithParam<Case> {};

TEST_P(PolicyCheckGolden, AnswerAndRendering) {
  const Case& c = GetParam();
  const Inputs inputs = LoadTestdata();
  absl::StatusOr<v1::CheckAccessResponse> answer =
      CheckAccess(*inputs.policies, inputs.workloads, "cluster.local", RequestOf(c));
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->decision(), c.decision);
  EXPECT_EQ(answer->reason(), c.reason);
  EXPECT_EQ(answer->mtls_mode(), c.mode);
  EXPECT_EQ(answer->mtls_mode_level(), c.level);
  EXPECT_EQ(answer->policy(), c.policy);
  ctl::RenderOptions options;
  options.format = ctl::OutputFormat::kJson;
  ExpectGolden(c.name + ".json", ctl::RenderCheckAccess(*answer, options));
  options.format = ctl::OutputFormat::kTable;
  ExpectGolden(c.name + ".txt", ctl::RenderCheckAccess(*answer, options));
}

INSTANTIATE_TEST_SUITE_P(Cases, PolicyCheckGolden, ::testing::ValuesIn(Cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(PolicyCheck, EveryReasonCodeIsCovered) {
  std::set<std::string> seen;
  for (const Case& c : Cases()) seen.insert(c.reason);
  for (const char* code : {"plaintext_in_strict", "deny_policy_matched", "allow_policy_matched",
                           "no_allow_policy_matched", "l7_rule_ignored", "default_allow"}) {
    EXPECT_TRUE(seen.contains(code)) << code;
  }
}

TEST(PolicyCheck, BadRequestsAreRefusedWithReasons) {
  const Inputs inputs = LoadTestdata();
  auto ask = [&](v1::CheckAccessRequest request) {
    return CheckAccess(*inputs.policies, inputs.workloads, "cluster.local", request);
  };
  v1::CheckAccessRequest request;
  request.set_destination_workload("shop/nope");
  request.set_port(80);
  request.set_plaintext(true);
  EXPECT_EQ(ask(request).status().code(), absl::StatusCode::kNotFound);
  request.set_destination_workload("shop/db");
  request.set_port(70000);
  EXPECT_EQ(ask(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.set_port(80);
  request.set_source_principal("cluster.local/ns/shop/sa/frontend");  // and plaintext: two sources
  EXPECT_EQ(ask(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.set_plaintext(false);
  request.set_source_principal("frontend");
  EXPECT_NE(std::string(ask(request).status().message()).find("TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"),
            std::string::npos);
  request.set_source_principal("cluster.local/ns/shop/sa/frontend");
  request.set_source_ip("not-an-ip");
  EXPECT_EQ(ask(request).status().code(), absl::StatusCode::kInvalidArgument);
}

// Explain() must decide exactly as the data path does (ModeFor + Authorize), for any source.
TEST(PolicyCheck, ExplainedDecisionIsTheDataPathDecision) {
  const Inputs inputs = LoadTestdata();
  std::mt19937 random(7);
  const std::vector<std::string> principals = {"", "cluster.local/ns/shop/sa/frontend", "cluster.local/ns/legacy/sa/x",
                                               "cluster.local/ns/shop/sa/batch-1", "td/ns/shop/sa/reporting",
                                               "cluster.local/ns/open/sa/echo"};
  const std::vector<uint16_t> ports = {22, 80, 5432, 6000, 8080, 9090};
  const std::vector<std::string> ips = {"10.8.0.1", "10.9.0.1", "10.1.0.10"};
  for (int i = 0; i < 2000; ++i) {
    const workload::Workload& w = inputs.workloads.all()[random() % inputs.workloads.size()];
    policy::SourceAttributes source;
    const std::string& principal = principals[random() % principals.size()];
    if (!principal.empty()) {
      source.principal = principal;
      source.namespace_name = principal.substr(principal.find("/ns/") + 4,
                                               principal.find("/sa/") - principal.find("/ns/") - 4);
    }
    source.destination_port = ports[random() % ports.size()];
    source.source_ip = *IpAddress::Parse(ips[random() % ips.size()]);
    const policy::PolicyTarget target{w.namespace_name, w.labels};
    const policy::Explanation explained = inputs.policies->Explain(target, source);
    const policy::Decision decided = inputs.policies->Authorize(target, source);
    const bool refused_plaintext =
        !source.principal && inputs.policies->ModeFor(target, source.destination_port) == policy::MtlsMode::kStrict;
    ASSERT_EQ(explained.allowed, !refused_plaintext && decided.allowed) << w.uid() << " " << principal;
    if (!refused_plaintext) {
      ASSERT_EQ(explained.policy, decided.policy);
      ASSERT_EQ(explained.reason, decided.reason);
    }
    // Every policy that selects the workload is listed, and a matched one names its rule.
    for (const policy::ConsideredPolicy& considered : explained.considered) {
      ASSERT_EQ(considered.matched, considered.rule >= 0);
    }
  }
}

bool HasFinding(const std::vector<v1::Finding>& findings, const std::string& code, const std::string& subject,
                v1::Severity severity) {
  return std::any_of(findings.begin(), findings.end(), [&](const v1::Finding& f) {
    return f.code() == code && f.subject() == subject && f.severity() == severity;
  });
}

std::string Dump(const std::vector<v1::Finding>& findings) {
  std::string out;
  for (const auto& f : findings) out += f.code() + " " + f.subject() + " " + f.detail() + "\n";
  return out;
}

TEST(Audit, PolicyFindingsOnTheTestdata) {
  const Inputs inputs = LoadTestdata();
  const std::vector<v1::Finding> findings = AuditPolicies(*inputs.policies, inputs.workloads);
  SCOPED_TRACE(Dump(findings));
  EXPECT_TRUE(HasFinding(findings, "permissive_mode", "legacy/billing", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "permissive_mode", "shop/cache", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "permissive_mode", "shop/db port 9090", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "mtls_disabled", "open/insecure", v1::SEVERITY_CRITICAL));
  EXPECT_TRUE(HasFinding(findings, "namespace_isolation_gap", "open", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "namespace_isolation_gap", "legacy", v1::SEVERITY_WARNING));
  // shop/frontend and shop/cache have no ALLOW policy; shop/db and shop/api do.
  EXPECT_TRUE(HasFinding(findings, "namespace_isolation_gap", "shop", v1::SEVERITY_WARNING));
  EXPECT_FALSE(HasFinding(findings, "namespace_isolation_gap", "locked", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "rule_never_matches_l4", "shop/allow-get", v1::SEVERITY_WARNING));
  EXPECT_TRUE(HasFinding(findings, "policy_selects_nothing", "shop/allow-ghost", v1::SEVERITY_WARNING));
  // STRICT workloads and policies that select something are not findings.
  EXPECT_FALSE(HasFinding(findings, "permissive_mode", "shop/db", v1::SEVERITY_WARNING));
  EXPECT_FALSE(HasFinding(findings, "policy_selects_nothing", "shop/allow-frontend", v1::SEVERITY_WARNING));
  EXPECT_FALSE(HasFinding(findings, "policy_selects_nothing", "istio-system/deny-ssh", v1::SEVERITY_WARNING));
  // Most severe first.
  ASSERT_FALSE(findings.empty());
  EXPECT_EQ(findings.front().severity(), v1::SEVERITY_CRITICAL);
  ctl::RenderOptions options;
  options.format = ctl::OutputFormat::kTable;
  v1::AuditResponse response;
  for (const auto& f : findings) *response.add_findings() = f;
  ExpectGolden("audit.txt", ctl::RenderAudit(response, options));
}

std::vector<v1::Finding> AuditYaml(const std::string& yaml, std::vector<workload::Workload> list) {
  auto policies = policy::PolicySet::Parse(yaml, "audit.yaml");
  EXPECT_TRUE(policies.ok()) << policies.status();
  auto snapshot = workload::WorkloadSnapshot::Create(std::move(list));
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  return AuditPolicies(**policies, *snapshot);
}

workload::Workload Pod(std::string ns, std::string name, std::map<std::string, std::string> labels, std::string ip) {
  workload::Workload w;
  w.name = std::move(name);
  w.namespace_name = std::move(ns);
  w.service_account = "default";
  w.labels = std::move(labels);
  w.ips = {*IpAddress::Parse(ip)};
  return w;
}

TEST(Audit, StrictAndIsolatedMeshHasNoPolicyFindings) {
  const auto findings = AuditYaml(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]
)",
                                  {Pod("shop", "a", {{"app", "a"}}, "10.0.0.1")});
  EXPECT_TRUE(findings.empty()) << Dump(findings);
}

TEST(Audit, NoPeerAuthenticationAtAllIsPermissive) {
  const auto findings = AuditYaml("", {Pod("shop", "a", {}, "10.0.0.1")});
  EXPECT_TRUE(HasFinding(findings, "permissive_mode", "shop/a", v1::SEVERITY_WARNING)) << Dump(findings);
  EXPECT_NE(Dump(findings).find("Istio's default"), std::string::npos);
}

TEST(Audit, DenyRuleWithL7FieldsIsInfo) {
  const auto findings = AuditYaml(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["POST"]}}]}]
)",
                                  {Pod("shop", "a", {}, "10.0.0.1")});
  EXPECT_TRUE(HasFinding(findings, "rule_never_matches_l4", "shop/deny-post", v1::SEVERITY_INFO)) << Dump(findings);
}

TEST(Audit, PolicyInNamespaceWithoutWorkloadsSelectsNothing) {
  const auto findings = AuditYaml(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: empty}
spec: {mtls: {mode: STRICT}}
)",
                                  {Pod("shop", "a", {}, "10.0.0.1")});
  EXPECT_TRUE(HasFinding(findings, "policy_selects_nothing", "empty/strict", v1::SEVERITY_WARNING)) << Dump(findings);
}

class LiveAudit : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("meshtls-audit-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    auto ca = identity::CertificateAuthority::Init(dir_.string(), "cluster.local");
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    auto id = SpiffeId::Parse("spiffe://cluster.local/ns/shop/sa/web");
    auto svid = ca_->Issue(*id, {});
    ASSERT_TRUE(svid.ok()) << svid.status();
    svid_ = std::make_unique<identity::Svid>(*svid);
    now_ = std::chrono::system_clock::now();
  }
  void TearDown() override { fs::remove_all(dir_); }

  LiveAuditInput Healthy() const {
    LiveAuditInput input;
    input.now = now_;
    input.svids.push_back({svid_->id.ToString(), now_ + std::chrono::hours(12), svid_->not_after, 0, "", svid_->chain_pem});
    input.trust_bundle_pem = ca_->TrustBundlePem();
    input.intermediate_pem = ca_->intermediate_pem();
    return input;
  }

  fs::path dir_;
  std::unique_ptr<identity::CertificateAuthority> ca_;
  std::unique_ptr<identity::Svid> svid_;
  std::chrono::system_clock::time_point now_;
};

TEST_F(LiveAudit, HealthyAgentHasNoFindings) {
  const auto findings = AuditLive(Healthy());
  EXPECT_TRUE(findings.empty()) << Dump(findings);
}

TEST_F(LiveAudit, RotationOverdue) {
  LiveAuditInput input = Healthy();
  input.svids[0].renewal_due = now_ - std::chrono::hours(3);
  input.svids[0].failures = 4;
  input.svids[0].last_error = "CA unreachable";
  auto findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "svid_rotation_overdue", svid_->id.ToString(), v1::SEVERITY_WARNING)) << Dump(findings);
  EXPECT_NE(Dump(findings).find("CA unreachable"), std::string::npos);
  // Within an hour of expiry it is critical.
  input.svids[0].not_after = now_ + std::chrono::minutes(30);
  findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "svid_rotation_overdue", svid_->id.ToString(), v1::SEVERITY_CRITICAL)) << Dump(findings);
}

TEST_F(LiveAudit, CaExpiringWithin30DaysAnd7Days) {
  auto roots = identity::SummarizeCertificates(ca_->TrustBundlePem());
  auto intermediate = identity::SummarizeCertificates(ca_->intermediate_pem());
  ASSERT_TRUE(roots.ok() && intermediate.ok());
  LiveAuditInput input = Healthy();
  input.svids.clear();
  input.now = intermediate->front().not_after - std::chrono::hours(24 * 20);
  auto findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "ca_expiring", "intermediate " + intermediate->front().subject, v1::SEVERITY_WARNING))
      << Dump(findings);
  input.now = intermediate->front().not_after - std::chrono::hours(24 * 3);
  findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "ca_expiring", "intermediate " + intermediate->front().subject, v1::SEVERITY_CRITICAL))
      << Dump(findings);
  input.now = roots->front().not_after - std::chrono::hours(24 * 10);
  findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "ca_expiring", "root " + roots->front().subject, v1::SEVERITY_WARNING)) << Dump(findings);
}

TEST_F(LiveAudit, ChainWithoutItsIntermediate) {
  LiveAuditInput input = Healthy();
  const std::string& chain = input.svids[0].chain_pem;
  const std::string end = "-----END CERTIFICATE-----\n";
  input.svids[0].chain_pem = chain.substr(0, chain.find(end) + end.size());  // the leaf alone
  const auto findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "chain_missing_intermediate", svid_->id.ToString(), v1::SEVERITY_CRITICAL))
      << Dump(findings);
  EXPECT_NE(Dump(findings).find("unable to get local issuer certificate"), std::string::npos);
}

TEST_F(LiveAudit, KtlsFallbackIsInfo) {
  LiveAuditInput input = Healthy();
  input.ktls_fallback = true;
  input.datapath_reason = "no kernel TLS, OpenSSL encrypts: tls ULP not available";
  const auto findings = AuditLive(input);
  EXPECT_TRUE(HasFinding(findings, "ktls_fallback", "node", v1::SEVERITY_INFO)) << Dump(findings);
}

}  // namespace
}  // namespace meshtls::inspect
