#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "meshtls/policy/policy.h"

namespace meshtls::policy {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<const PolicySet> Load(std::string_view yaml) {
  auto set = PolicySet::Parse(yaml, "p.yaml", "istio-system");
  EXPECT_TRUE(set.ok()) << set.status();
  if (!set.ok()) return nullptr;
  return *set;
}

std::string LoadError(std::string_view yaml) {
  auto set = PolicySet::Parse(yaml, "p.yaml", "istio-system");
  EXPECT_FALSE(set.ok()) << yaml;
  return set.ok() ? std::string() : std::string(set.status().message());
}

PolicyTarget Target(std::string ns, std::map<std::string, std::string> labels = {}) {
  return PolicyTarget{std::move(ns), std::move(labels)};
}

// principal "cluster.local/ns/NS/sa/SA": the namespace is taken from it, as the agent does.
SourceAttributes Mtls(const std::string& principal, uint16_t port = 8080, const std::string& ip = "10.1.2.3") {
  SourceAttributes source;
  source.principal = principal;
  auto ns = principal.find("/ns/");
  source.namespace_name = principal.substr(ns + 4, principal.find('/', ns + 4) - (ns + 4));
  source.source_ip = *IpAddress::Parse(ip);
  source.destination_port = port;
  return source;
}

SourceAttributes Plain(const std::string& ip = "10.1.2.3", uint16_t port = 8080) {
  SourceAttributes source;
  source.source_ip = *IpAddress::Parse(ip);
  source.destination_port = port;
  return source;
}

bool HasWarning(const PolicySet& set, std::string_view needle) {
  for (const std::string& warning : set.warnings()) {
    if (warning.find(needle) != std::string::npos) return true;
  }
  return false;
}

std::string Warnings(const PolicySet& set) {
  std::string all;
  for (const std::string& warning : set.warnings()) all += warning + "\n";
  return all;
}

// An AuthorizationPolicy document; `spec` is indented under "spec:".
std::string Authz(const std::string& ns, const std::string& name, const std::string& spec) {
  return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name +
         "\n  namespace: " + ns + "\nspec:\n" + spec + "---\n";
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

constexpr char kModes[] = R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: foo}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bar}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: bar}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls:
    8080: {mode: DISABLE}
    "9090": {mode: UNSET}
    9443: {mode: PERMISSIVE}
)";

TEST(PeerAuthenticationTest, MostSpecificWinsAndUnsetInherits) {
  auto set = Load(kModes);
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(set->peer_authentication_count(), 5u);
  struct Case {
    std::string ns;
    std::map<std::string, std::string> labels;
    uint16_t port;
    MtlsMode want;
    std::string decided;
  } cases[] = {
      {"baz", {}, 80, MtlsMode::kStrict, "istio-system/default"},               // mesh only
      {"istio-system", {}, 80, MtlsMode::kStrict, "istio-system/default"},      // root namespace itself
      {"foo", {{"app", "web"}}, 80, MtlsMode::kPermissive, "foo/default"},      // namespace beats mesh
      {"foo", {{"app", "db"}, {"v", "1"}}, 80, MtlsMode::kDisable, "foo/db"},   // workload beats namespace
      {"bar", {{"app", "x"}}, 80, MtlsMode::kStrict, "istio-system/default"},   // namespace UNSET → mesh
      {"bar", {{"app", "web"}}, 80, MtlsMode::kStrict, "istio-system/default"}, // workload UNSET (absent)
      {"bar", {{"app", "web"}}, 8080, MtlsMode::kDisable, "istio-system/default"},    // port level
      {"bar", {{"app", "web"}}, 9090, MtlsMode::kStrict, "istio-system/default"},     // port UNSET
      {"bar", {{"app", "web"}}, 9443, MtlsMode::kPermissive, "istio-system/default"},
      {"baz", {{"app", "db"}}, 80, MtlsMode::kStrict, "istio-system/default"},  // selector is namespaced
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.ns + " port " + std::to_string(c.port));
    EXPECT_EQ(MtlsModeName(set->ModeFor(Target(c.ns, c.labels), c.port)), MtlsModeName(c.want));
    EXPECT_EQ(set->Describe(Target(c.ns, c.labels)).peer_authentication, c.decided);
  }
  auto web = set->Describe(Target("bar", {{"app", "web"}}));
  EXPECT_EQ(web.mode, MtlsMode::kStrict);
  EXPECT_EQ(web.port_modes, (std::map<uint16_t, MtlsMode>{
                                {8080, MtlsMode::kDisable}, {9090, MtlsMode::kStrict}, {9443, MtlsMode::kPermissive}}));
  EXPECT_NE(web.summary.find("8080: DISABLE"), std::string::npos) << web.summary;
}

TEST(PeerAuthenticationTest, DefaultIsPermissive) {
  auto empty = Load("");
  EXPECT_EQ(empty->ModeFor(Target("foo"), 80), MtlsMode::kPermissive);
  EXPECT_EQ(empty->Describe(Target("foo")).peer_authentication, "");
  auto unset = Load(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {}
)");
  EXPECT_EQ(unset->ModeFor(Target("foo"), 80), MtlsMode::kPermissive);
  auto other_ns = Load(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
)");
  EXPECT_EQ(other_ns->ModeFor(Target("bar"), 80), MtlsMode::kPermissive);
  EXPECT_EQ(other_ns->ModeFor(Target("foo"), 80), MtlsMode::kStrict);
}

TEST(PeerAuthenticationTest, PortLevelWithoutSelectorIsIgnoredWithAWarning) {
  auto set = Load(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
)");
  EXPECT_EQ(set->ModeFor(Target("foo"), 8080), MtlsMode::kStrict);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:6: PeerAuthentication foo/default: portLevelMtls is ignored")) << Warnings(*set);
  EXPECT_TRUE(set->Describe(Target("foo")).port_modes.empty());
}

TEST(PeerAuthenticationTest, EqualPoliciesFirstByNameWinsWithAWarning) {
  auto set = Load(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: zz, namespace: foo}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: aa, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: w2, namespace: foo}
spec: {selector: {matchLabels: {app: a}}, mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: w1, namespace: foo}
spec: {selector: {matchLabels: {tier: x}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: w0, namespace: foo}
spec: {selector: {matchLabels: {app: b}}, mtls: {mode: STRICT}}
)");
  EXPECT_EQ(set->ModeFor(Target("foo"), 80), MtlsMode::kStrict);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:1: PeerAuthentication foo/zz is ignored: foo/aa")) << Warnings(*set);
  EXPECT_EQ(set->ModeFor(Target("foo", {{"app", "a"}, {"tier", "x"}}), 80), MtlsMode::kPermissive);
  EXPECT_TRUE(HasWarning(*set, "foo/w2 and foo/w1 can select the same workload")) << Warnings(*set);
  // w0 and w2 require different values of app: they never overlap, so no warning.
  EXPECT_FALSE(HasWarning(*set, "foo/w2 and foo/w0")) << Warnings(*set);
}

TEST(PeerAuthenticationTest, SelectorInRootNamespaceIsNotMeshWide) {
  auto set = Load(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {matchLabels: {app: gw}}
  mtls: {mode: STRICT}
)");
  EXPECT_EQ(set->ModeFor(Target("foo", {{"app", "gw"}}), 80), MtlsMode::kPermissive);
  EXPECT_EQ(set->ModeFor(Target("istio-system", {{"app", "gw"}}), 80), MtlsMode::kStrict);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:5:")) << Warnings(*set);
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy

TEST(AuthorizationTest, NoPolicyAllows) {
  auto set = Load("");
  Decision d = set->Authorize(Target("foo"), Plain());
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.policy, "");
  EXPECT_EQ(d.reason, "allowed: no ALLOW policy selects this workload");
}

TEST(AuthorizationTest, DenyWinsOverAllow) {
  auto set = Load(Authz("foo", "allow-all", "  rules: [{}]\n") +
                  Authz("foo", "deny-evil", "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [evil]}\n"));
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(set->authorization_policy_count(), 2u);
  Decision evil = set->Authorize(Target("foo"), Mtls("cluster.local/ns/evil/sa/x"));
  EXPECT_FALSE(evil.allowed);
  EXPECT_EQ(evil.policy, "foo/deny-evil");
  EXPECT_EQ(evil.reason, "denied by DENY policy foo/deny-evil rule 0");
  Decision good = set->Authorize(Target("foo"), Mtls("cluster.local/ns/good/sa/x"));
  EXPECT_TRUE(good.allowed);
  EXPECT_EQ(good.policy, "foo/allow-all");
  EXPECT_EQ(good.reason, "allowed by ALLOW policy foo/allow-all rule 0");
  EXPECT_TRUE(set->Authorize(Target("foo"), Plain()).allowed);
  auto described = set->Describe(Target("foo"));
  EXPECT_EQ(described.authorization_policies, (std::vector<std::string>{"foo/deny-evil", "foo/allow-all"}));
  EXPECT_NE(described.summary.find("foo/deny-evil  # DENY"), std::string::npos) << described.summary;
}

TEST(AuthorizationTest, EmptySpecDeniesAllAndEmptyRuleAllowsAll) {
  auto deny_all = Load(Authz("foo", "deny-all", "  {}\n"));
  Decision d = deny_all->Authorize(Target("foo"), Mtls("cluster.local/ns/foo/sa/a"));
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "no ALLOW policy matched (1 selects this workload)");
  EXPECT_TRUE(deny_all->Authorize(Target("bar"), Plain()).allowed);  // namespaced

  auto no_spec = Load("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\n");
  EXPECT_FALSE(no_spec->Authorize(Target("foo"), Plain()).allowed);

  auto allow_all = Load(Authz("foo", "deny-all", "  {}\n") + Authz("foo", "allow-all", "  rules: [{}]\n"));
  EXPECT_TRUE(allow_all->Authorize(Target("foo"), Plain()).allowed);

  // A DENY without rules matches nothing.
  auto empty_deny = Load(Authz("foo", "d", "  action: DENY\n"));
  EXPECT_TRUE(empty_deny->Authorize(Target("foo"), Plain()).allowed);

  auto two = Load(Authz("foo", "a", "  {}\n") + Authz("istio-system", "b", "  rules: []\n"));
  EXPECT_EQ(two->Authorize(Target("foo"), Plain()).reason, "no ALLOW policy matched (2 select this workload)");
}

struct MatchCase {
  std::string name;
  std::string spec;
  SourceAttributes source;
  bool allowed;
};

class AuthorizationMatchTest : public ::testing::TestWithParam<MatchCase> {};

TEST_P(AuthorizationMatchTest, Decides) {
  const MatchCase& c = GetParam();
  auto set = Load(Authz("foo", "p", c.spec));
  ASSERT_NE(set, nullptr);
  Decision d = set->Authorize(Target("foo", {{"app", "web"}}), c.source);
  EXPECT_EQ(d.allowed, c.allowed) << d.reason;
}

const char kAllowPrincipals[] = "  rules:\n  - from:\n    - source:\n        principals: ";
const char kAllowFrom[] = "  rules:\n  - from:\n    - source:\n        ";
const char kDenyFrom[] = "  action: DENY\n  rules:\n  - from:\n    - source:\n        ";
const char kAllowTo[] = "  rules:\n  - to:\n    - operation:\n        ";
const char kAllowWhen[] = "  rules:\n  - when:\n    - ";

std::string S(std::string_view a, std::string_view b) { return std::string(a) + std::string(b) + "\n"; }

INSTANTIATE_TEST_SUITE_P(
    Principals, AuthorizationMatchTest,
    ::testing::Values(
        MatchCase{"exact", S(kAllowPrincipals, "[cluster.local/ns/foo/sa/web]"), Mtls("cluster.local/ns/foo/sa/web"), true},
        MatchCase{"exact_other", S(kAllowPrincipals, "[cluster.local/ns/foo/sa/web]"), Mtls("cluster.local/ns/foo/sa/db"), false},
        MatchCase{"prefix", S(kAllowPrincipals, "[\"cluster.local/ns/foo/*\"]"), Mtls("cluster.local/ns/foo/sa/db"), true},
        MatchCase{"prefix_other", S(kAllowPrincipals, "[\"cluster.local/ns/foo/*\"]"), Mtls("cluster.local/ns/bar/sa/db"), false},
        MatchCase{"suffix", S(kAllowPrincipals, "[\"*/sa/db\"]"), Mtls("td2/ns/bar/sa/db"), true},
        MatchCase{"suffix_other", S(kAllowPrincipals, "[\"*/sa/db\"]"), Mtls("td2/ns/bar/sa/web"), false},
        MatchCase{"any_mtls", S(kAllowPrincipals, "[\"*\"]"), Mtls("x/ns/y/sa/z"), true},
        MatchCase{"any_not_plaintext", S(kAllowPrincipals, "[\"*\"]"), Plain(), false},
        MatchCase{"exact_not_plaintext", S(kAllowPrincipals, "[cluster.local/ns/foo/sa/web]"), Plain(), false},
        MatchCase{"list_any", S(kAllowPrincipals, "[a/ns/b/sa/c, cluster.local/ns/foo/sa/web]"), Mtls("cluster.local/ns/foo/sa/web"), true},
        MatchCase{"service_account", S(kAllowFrom, "serviceAccounts: [foo/web]"), Mtls("other.td/ns/foo/sa/web"), true},
        MatchCase{"service_account_other", S(kAllowFrom, "serviceAccounts: [foo/web]"), Mtls("cluster.local/ns/foo/sa/webx"), false},
        // notPrincipals: plaintext never matches for ALLOW (deny more), always for DENY (deny more).
        MatchCase{"not_principals_other", S(kAllowFrom, "notPrincipals: [cluster.local/ns/foo/sa/bad]"), Mtls("cluster.local/ns/foo/sa/ok"), true},
        MatchCase{"not_principals_listed", S(kAllowFrom, "notPrincipals: [cluster.local/ns/foo/sa/bad]"), Mtls("cluster.local/ns/foo/sa/bad"), false},
        MatchCase{"not_principals_plaintext_allow", S(kAllowFrom, "notPrincipals: [cluster.local/ns/foo/sa/bad]"), Plain(), false},
        MatchCase{"deny_not_principals_star_plaintext", S(kDenyFrom, "notPrincipals: [\"*\"]"), Plain(), false},
        MatchCase{"deny_not_principals_star_mtls", S(kDenyFrom, "notPrincipals: [\"*\"]"), Mtls("cluster.local/ns/a/sa/b"), true},
        MatchCase{"deny_principals_plaintext", S(kDenyFrom, "principals: [\"*\"]"), Plain(), true}),
    [](const auto& param_info) { return param_info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Namespaces, AuthorizationMatchTest,
    ::testing::Values(
        MatchCase{"namespace", S(kAllowFrom, "namespaces: [foo]"), Mtls("cluster.local/ns/foo/sa/x"), true},
        MatchCase{"namespace_other", S(kAllowFrom, "namespaces: [foo]"), Mtls("cluster.local/ns/bar/sa/x"), false},
        MatchCase{"namespace_prefix", S(kAllowFrom, "namespaces: [\"team-*\"]"), Mtls("cluster.local/ns/team-a/sa/x"), true},
        MatchCase{"namespace_plaintext", S(kAllowFrom, "namespaces: [foo]"), Plain(), false},
        MatchCase{"not_namespace", S(kAllowFrom, "notNamespaces: [bar]"), Mtls("cluster.local/ns/foo/sa/x"), true},
        MatchCase{"not_namespace_listed", S(kAllowFrom, "notNamespaces: [bar]"), Mtls("cluster.local/ns/bar/sa/x"), false},
        MatchCase{"not_namespace_plaintext", S(kAllowFrom, "notNamespaces: [bar]"), Plain(), false},
        MatchCase{"deny_not_namespace_plaintext", S(kDenyFrom, "notNamespaces: [foo]"), Plain(), false},
        MatchCase{"deny_not_namespace_same", S(kDenyFrom, "notNamespaces: [foo]"), Mtls("cluster.local/ns/foo/sa/x"), true},
        MatchCase{"both_fields_and", S(kAllowFrom, "namespaces: [foo]\n        principals: [\"*/sa/web\"]"), Mtls("cluster.local/ns/foo/sa/db"), false}),
    [](const auto& param_info) { return param_info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    IpBlocks, AuthorizationMatchTest,
    ::testing::Values(
        MatchCase{"v4_in", S(kAllowFrom, "ipBlocks: [10.0.0.0/8]"), Plain("10.9.9.9"), true},
        MatchCase{"v4_out", S(kAllowFrom, "ipBlocks: [10.0.0.0/8]"), Plain("11.0.0.1"), false},
        MatchCase{"v4_single", S(kAllowFrom, "ipBlocks: [192.168.1.5]"), Plain("192.168.1.5"), true},
        MatchCase{"v4_not_v6", S(kAllowFrom, "ipBlocks: [0.0.0.0/0]"), Plain("fd00::1"), false},
        MatchCase{"v6_in", S(kAllowFrom, "ipBlocks: [\"fd00:1::/64\"]"), Plain("fd00:1::5"), true},
        MatchCase{"v6_out", S(kAllowFrom, "ipBlocks: [\"fd00:1::/64\"]"), Plain("fd00:2::5"), false},
        MatchCase{"not_v4", S(kAllowFrom, "notIpBlocks: [10.0.0.0/8]"), Plain("10.1.1.1"), false},
        MatchCase{"not_v4_other", S(kAllowFrom, "notIpBlocks: [10.0.0.0/8]"), Plain("172.16.0.1"), true},
        MatchCase{"not_v6", S(kAllowFrom, "notIpBlocks: [\"::1/128\"]"), Plain("::1"), false},
        MatchCase{"ip_and_not_ip", S(kAllowFrom, "ipBlocks: [10.0.0.0/8]\n        notIpBlocks: [10.1.0.0/16]"), Plain("10.1.0.7"), false},
        MatchCase{"remote", S(kAllowFrom, "remoteIpBlocks: [10.0.0.0/8]"), Plain("10.1.0.7"), true},
        MatchCase{"not_remote", S(kAllowFrom, "notRemoteIpBlocks: [10.0.0.0/8]"), Plain("10.1.0.7"), false}),
    [](const auto& param_info) { return param_info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Ports, AuthorizationMatchTest,
    ::testing::Values(
        MatchCase{"port_string", S(kAllowTo, "ports: [\"8080\"]"), Plain("10.0.0.1", 8080), true},
        MatchCase{"port_number", S(kAllowTo, "ports: [8080, 9090]"), Plain("10.0.0.1", 9090), true},
        MatchCase{"port_other", S(kAllowTo, "ports: [\"8080\"]"), Plain("10.0.0.1", 8081), false},
        MatchCase{"not_port", S(kAllowTo, "notPorts: [\"22\"]"), Plain("10.0.0.1", 22), false},
        MatchCase{"not_port_other", S(kAllowTo, "notPorts: [\"22\"]"), Plain("10.0.0.1", 80), true},
        MatchCase{"from_and_to", "  rules:\n  - from: [{source: {namespaces: [foo]}}]\n    to: [{operation: {ports: [\"80\"]}}]\n",
                  Mtls("cluster.local/ns/foo/sa/a", 443), false},
        MatchCase{"from_and_to_both", "  rules:\n  - from: [{source: {namespaces: [foo]}}]\n    to: [{operation: {ports: [\"80\"]}}]\n",
                  Mtls("cluster.local/ns/foo/sa/a", 80), true},
        MatchCase{"second_rule", "  rules:\n  - to: [{operation: {ports: [\"80\"]}}]\n  - to: [{operation: {ports: [\"443\"]}}]\n",
                  Plain("10.0.0.1", 443), true}),
    [](const auto& param_info) { return param_info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    When, AuthorizationMatchTest,
    ::testing::Values(
        MatchCase{"source_ip", S(kAllowWhen, "key: source.ip\n      values: [10.0.0.0/8]"), Plain("10.0.0.1"), true},
        MatchCase{"source_ip_out", S(kAllowWhen, "key: source.ip\n      values: [10.0.0.0/8]"), Plain("11.0.0.1"), false},
        MatchCase{"source_ip_not", S(kAllowWhen, "key: source.ip\n      notValues: [\"fd00::/8\"]"), Plain("fd00::1"), false},
        MatchCase{"remote_ip", S(kAllowWhen, "key: remote.ip\n      values: [10.0.0.0/8]"), Plain("10.0.0.1"), true},
        MatchCase{"source_namespace", S(kAllowWhen, "key: source.namespace\n      values: [foo]"), Mtls("cluster.local/ns/foo/sa/a"), true},
        MatchCase{"source_namespace_other", S(kAllowWhen, "key: source.namespace\n      values: [foo]"), Mtls("cluster.local/ns/bar/sa/a"), false},
        MatchCase{"source_namespace_not_plaintext", S(kAllowWhen, "key: source.namespace\n      notValues: [foo]"), Plain(), false},
        MatchCase{"source_principal", S(kAllowWhen, "key: source.principal\n      values: [\"*/sa/a\"]"), Mtls("cluster.local/ns/bar/sa/a"), true},
        MatchCase{"source_principal_not", S(kAllowWhen, "key: source.principal\n      notValues: [\"*/sa/a\"]"), Mtls("cluster.local/ns/bar/sa/a"), false},
        MatchCase{"destination_port", S(kAllowWhen, "key: destination.port\n      values: [\"8080\"]"), Plain("10.0.0.1", 8080), true},
        MatchCase{"destination_port_other", S(kAllowWhen, "key: destination.port\n      values: [\"8080\"]"), Plain("10.0.0.1", 80), false},
        MatchCase{"destination_port_not", S(kAllowWhen, "key: destination.port\n      notValues: [\"8080\"]"), Plain("10.0.0.1", 80), true},
        MatchCase{"all_conditions", S(kAllowWhen, "key: destination.port\n      values: [\"80\"]\n    - key: source.ip\n      values: [10.0.0.0/8]"),
                  Plain("11.0.0.1", 80), false}),
    [](const auto& param_info) { return param_info.param.name; });

TEST(AuthorizationTest, L7OnlyAllowRuleNeverMatches) {
  auto set = Load(Authz("foo", "http-only", "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        ports: [\"8080\"]\n"));
  ASSERT_NE(set, nullptr);
  Decision d = set->Authorize(Target("foo"), Mtls("cluster.local/ns/foo/sa/a", 8080));
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "no ALLOW policy matched (1 selects this workload; 1 rule(s) using L7 fields never match)");
  EXPECT_TRUE(HasWarning(*set, "p.yaml:10: AuthorizationPolicy foo/http-only: rule 0: 'methods' is an L7 (HTTP) "
                               "attribute that meshtls cannot enforce; this ALLOW rule never matches"))
      << Warnings(*set);

  // The L4 rule next to it still allows.
  auto mixed = Load(Authz("foo", "mixed",
                          "  rules:\n  - from: [{source: {requestPrincipals: [\"*\"]}}]\n"
                          "  - from: [{source: {namespaces: [foo]}}]\n"));
  EXPECT_EQ(mixed->Authorize(Target("foo"), Mtls("cluster.local/ns/foo/sa/a")).reason,
            "allowed by ALLOW policy foo/mixed rule 1");
  auto when = Load(Authz("foo", "w", "  rules:\n  - when:\n    - key: request.headers[x-user]\n      values: [a]\n"));
  EXPECT_FALSE(when->Authorize(Target("foo"), Plain()).allowed);
  EXPECT_TRUE(HasWarning(*when, "p.yaml:9:")) << Warnings(*when);
  auto typo = Load(Authz("foo", "t", "  rules:\n  - when:\n    - key: source.ipp\n      values: [10.0.0.0/8]\n"));
  EXPECT_TRUE(HasWarning(*typo, "(did you mean 'source.ip'?)")) << Warnings(*typo);
}

TEST(AuthorizationTest, DenyWithL7FieldsDeniesOnItsL4Fields) {
  auto set = Load(Authz("foo", "allow", "  rules: [{}]\n") +
                  Authz("foo", "no-admin", R"(  action: DENY
  rules:
  - from:
    - source:
        namespaces: [bad]
    to:
    - operation:
        paths: ["/admin"]
        methods: [POST]
    when:
    - key: request.headers[x-debug]
      values: ["1"]
)"));
  ASSERT_NE(set, nullptr);
  Decision bad = set->Authorize(Target("foo"), Mtls("cluster.local/ns/bad/sa/a"));
  EXPECT_FALSE(bad.allowed);
  EXPECT_EQ(bad.reason, "denied by DENY policy foo/no-admin rule 0");
  EXPECT_TRUE(set->Authorize(Target("foo"), Mtls("cluster.local/ns/good/sa/a")).allowed);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:22: AuthorizationPolicy foo/no-admin: rule 0: 'paths'")) << Warnings(*set);
  EXPECT_TRUE(HasWarning(*set, "this DENY rule is enforced on its L4 fields only")) << Warnings(*set);
  EXPECT_TRUE(HasWarning(*set, "condition 'request.headers[x-debug]'")) << Warnings(*set);

  // Only L7: denies everything.
  auto only = Load(Authz("foo", "d", "  action: DENY\n  rules:\n  - to: [{operation: {methods: [DELETE]}}]\n"));
  EXPECT_FALSE(only->Authorize(Target("foo"), Plain()).allowed);
}

TEST(AuthorizationTest, RootNamespacePoliciesApplyEverywhere) {
  auto set = Load(Authz("istio-system", "deny-legacy",
                        "  action: DENY\n  rules:\n  - from: [{source: {ipBlocks: [192.168.0.0/16]}}]\n") +
                  Authz("istio-system", "web-only-foo",
                        "  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {namespaces: [foo]}}]\n"));
  ASSERT_NE(set, nullptr);
  Decision legacy = set->Authorize(Target("bar", {{"app", "db"}}), Plain("192.168.3.4"));
  EXPECT_FALSE(legacy.allowed);
  EXPECT_EQ(legacy.policy, "istio-system/deny-legacy");
  EXPECT_TRUE(set->Authorize(Target("bar", {{"app", "db"}}), Plain("10.0.0.1")).allowed);
  EXPECT_FALSE(set->Authorize(Target("bar", {{"app", "web"}}), Mtls("cluster.local/ns/bar/sa/x")).allowed);
  EXPECT_TRUE(set->Authorize(Target("bar", {{"app", "web"}}), Mtls("cluster.local/ns/foo/sa/x")).allowed);
  EXPECT_TRUE(set->Authorize(Target("istio-system", {{"app", "web"}}), Mtls("cluster.local/ns/foo/sa/x")).allowed);
  EXPECT_EQ(set->Describe(Target("bar", {{"app", "web"}})).authorization_policies,
            (std::vector<std::string>{"istio-system/deny-legacy", "istio-system/web-only-foo"}));
  // With another root namespace, these are ordinary namespaced policies.
  auto other_root = PolicySet::Parse(Authz("istio-system", "deny-all", "  {}\n"), "p.yaml", "mesh-root");
  ASSERT_TRUE(other_root.ok());
  EXPECT_TRUE((*other_root)->Authorize(Target("bar"), Plain()).allowed);
}

TEST(AuthorizationTest, SelectorMismatchDoesNotSelect) {
  auto set = Load(Authz("foo", "db-only", "  selector:\n    matchLabels: {app: db, version: v1}\n  rules:\n"
                                          "  - from: [{source: {namespaces: [foo]}}]\n"));
  ASSERT_NE(set, nullptr);
  EXPECT_TRUE(set->Authorize(Target("foo", {{"app", "web"}}), Plain()).allowed);
  EXPECT_TRUE(set->Authorize(Target("foo", {{"app", "db"}}), Plain()).allowed);  // version missing
  EXPECT_FALSE(set->Authorize(Target("foo", {{"app", "db"}, {"version", "v1"}}), Plain()).allowed);
  EXPECT_TRUE(set->Describe(Target("foo", {{"app", "web"}})).authorization_policies.empty());
}

TEST(AuthorizationTest, AuditIgnoredAndTargetRefSkipped) {
  auto set = Load(Authz("foo", "audit", "  action: AUDIT\n  rules: [{}]\n") +
                  Authz("foo", "waypoint", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}]\n"));
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(set->authorization_policy_count(), 0u);
  EXPECT_TRUE(set->Authorize(Target("foo"), Plain()).allowed);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:7: AuthorizationPolicy foo/audit: action AUDIT is ignored")) << Warnings(*set);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:16: AuthorizationPolicy foo/waypoint: skipped: targetRefs")) << Warnings(*set);
}

// ---------------------------------------------------------------------------------------------
// Loading

TEST(LoadTest, SkipsOtherKindsAndReadsEveryDocument) {
  auto set = Load(R"(---
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data: {a: b}
---
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: old, namespace: foo}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-foo}
spec:
  rules: [{from: [{source: {namespaces: [foo]}}]}]
---
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: istio-system}
  spec: {mtls: {mode: STRICT}}
)");
  ASSERT_NE(set, nullptr);
  EXPECT_EQ(set->peer_authentication_count(), 1u);
  EXPECT_EQ(set->authorization_policy_count(), 1u);
  EXPECT_EQ(set->ModeFor(Target("x"), 1), MtlsMode::kStrict);
  // metadata.namespace defaults to "default".
  EXPECT_FALSE(set->Authorize(Target("default"), Mtls("cluster.local/ns/bar/sa/a")).allowed);
  EXPECT_TRUE(set->Authorize(Target("default"), Mtls("cluster.local/ns/foo/sa/a")).allowed);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:2: skipped ConfigMap (apiVersion 'v1')")) << Warnings(*set);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:8: skipped RequestAuthentication")) << Warnings(*set);
  EXPECT_TRUE(HasWarning(*set, "p.yaml:13: skipped AuthorizationPolicy with apiVersion 'security.istio.io/v1alpha1'"))
      << Warnings(*set);
}

struct ErrorCase {
  std::string name;
  std::string yaml;
  std::string want;  // a substring of the message, starting with FILE:LINE
};

class LoadErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(LoadErrorTest, NamesFileAndLine) {
  std::string message = LoadError(GetParam().yaml);
  EXPECT_NE(message.find(GetParam().want), std::string::npos) << message;
}

const char kApHead[] = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n";
const char kPaHead[] = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\n";

INSTANTIATE_TEST_SUITE_P(
    Errors, LoadErrorTest,
    ::testing::Values(
        ErrorCase{"syntax", S(kApHead, "spec:\n  rules: [{]\n"), "p.yaml:5: YAML syntax error"},
        ErrorCase{"syntax_indent", S(kApHead, "spec:\n  rules:\n  - from:\n   bad: [\n"), "p.yaml:"},
        ErrorCase{"not_a_map", "- a\n- b\n", "p.yaml:1: expected a Kubernetes object"},
        ErrorCase{"missing_name", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: foo\nspec: {}\n",
                  "p.yaml:4: AuthorizationPolicy has no metadata.name"},
        ErrorCase{"missing_metadata", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nspec: {}\n",
                  "p.yaml:1: PeerAuthentication has no metadata"},
        ErrorCase{"unknown_top_level", S(kApHead, "specs: {}"), "p.yaml:4: unknown field 'specs' in the object (did you mean 'spec'?)"},
        ErrorCase{"unknown_metadata", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: a\n  namespce: foo\n",
                  "p.yaml:5: unknown field 'namespce' in metadata (did you mean 'namespace'?)"},
        ErrorCase{"unknown_spec", S(kApHead, "spec:\n  rule: [{}]"), "p.yaml:5: AuthorizationPolicy foo/p: unknown field 'rule' in spec (did you mean 'rules'?)"},
        ErrorCase{"unknown_rule", S(kApHead, "spec:\n  rules:\n  - form: []"), "p.yaml:6: AuthorizationPolicy foo/p: unknown field 'form' in a rule (did you mean 'from'?)"},
        ErrorCase{"unknown_source", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        principal: [a]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: unknown field 'principal' in source (did you mean 'principals'?)"},
        ErrorCase{"unknown_operation", S(kApHead, "spec:\n  rules:\n  - to:\n    - operation:\n        port: [\"80\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: unknown field 'port' in operation (did you mean 'ports'?)"},
        ErrorCase{"unknown_far", S(kApHead, "spec:\n  rules:\n  - to:\n    - operation:\n        xyzzy: [\"80\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: unknown field 'xyzzy' in operation (expected one of: hosts,"},
        ErrorCase{"unknown_condition_field", S(kApHead, "spec:\n  rules:\n  - when:\n    - key: source.ip\n      value: [1.2.3.4]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: unknown field 'value' in when (did you mean 'values'?)"},
        ErrorCase{"unknown_selector", S(kApHead, "spec:\n  selector:\n    labels: {a: b}"), "p.yaml:6: AuthorizationPolicy foo/p: unknown field 'labels' in selector"},
        ErrorCase{"unknown_mtls", S(kPaHead, "spec:\n  mtls:\n    mod: STRICT"), "p.yaml:6: PeerAuthentication foo/p: unknown field 'mod' in mtls (did you mean 'mode'?)"},
        ErrorCase{"wrong_type_list", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        principals: cluster.local/ns/a/sa/b"),
                  "p.yaml:8: AuthorizationPolicy foo/p: 'principals' must be a list"},
        ErrorCase{"wrong_type_rules", S(kApHead, "spec:\n  rules: {from: []}"), "p.yaml:5: AuthorizationPolicy foo/p: 'rules' must be a list"},
        ErrorCase{"wrong_type_spec", S(kApHead, "spec: [a]"), "p.yaml:4: AuthorizationPolicy foo/p: spec must be a map"},
        ErrorCase{"wrong_type_entry", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        ports: [[1]]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: unknown field 'ports' in source"},
        ErrorCase{"bad_mode", S(kPaHead, "spec:\n  mtls: {mode: strict}"), "p.yaml:5: PeerAuthentication foo/p: bad mtls mode 'strict' (did you mean 'STRICT'?)"},
        ErrorCase{"bad_port_mode", S(kPaHead, "spec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    80: {mode: OFF}"),
                  "p.yaml:7: PeerAuthentication foo/p: bad mtls mode 'OFF' (expected one of: STRICT, PERMISSIVE, DISABLE, UNSET)"},
        ErrorCase{"bad_port_level_port", S(kPaHead, "spec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls:\n    http: {mode: STRICT}"),
                  "p.yaml:7: PeerAuthentication foo/p: bad port 'http' in portLevelMtls: must be a number from 1 to 65535"},
        ErrorCase{"bad_port", S(kApHead, "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"80\", \"70000\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: bad port '70000' in ports"},
        ErrorCase{"bad_not_port", S(kApHead, "spec:\n  rules:\n  - to:\n    - operation:\n        notPorts:\n        - \"8080-8090\""),
                  "p.yaml:9: AuthorizationPolicy foo/p: bad port '8080-8090' in notPorts"},
        ErrorCase{"bad_when_port", S(kApHead, "spec:\n  rules:\n  - when:\n    - key: destination.port\n      values: [\"0\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: bad port '0' in destination.port"},
        ErrorCase{"bad_cidr", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks:\n        - 10.0.0.0/8\n        - 10.0.0.0/33"),
                  "p.yaml:10: AuthorizationPolicy foo/p: bad address block '10.0.0.0/33' in ipBlocks: the prefix length must be a number from 0 to 32"},
        ErrorCase{"bad_cidr_v6", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        notIpBlocks: [\"fd00::zz/64\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: bad address block 'fd00::zz/64' in notIpBlocks"},
        ErrorCase{"bad_when_ip", S(kApHead, "spec:\n  rules:\n  - when:\n    - key: source.ip\n      values: [nope]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: bad address block 'nope' in source.ip"},
        ErrorCase{"bad_action", S(kApHead, "spec:\n  action: ALOW"), "p.yaml:5: AuthorizationPolicy foo/p: bad action 'ALOW' (did you mean 'ALLOW'?)"},
        ErrorCase{"custom", S(kApHead, "spec:\n  action: CUSTOM\n  provider: {name: ext}"), "p.yaml:5: AuthorizationPolicy foo/p: action CUSTOM"},
        ErrorCase{"empty_source", S(kApHead, "spec:\n  rules:\n  - from:\n    - source: {}"), "p.yaml:7: AuthorizationPolicy foo/p: source must not be empty"},
        ErrorCase{"missing_source", S(kApHead, "spec:\n  rules:\n  - from:\n    - {}"), "p.yaml:7: AuthorizationPolicy foo/p: a 'from' entry needs a source"},
        ErrorCase{"empty_operation", S(kApHead, "spec:\n  rules:\n  - to:\n    - operation: {ports: []}"), "p.yaml:7: AuthorizationPolicy foo/p: operation must not be empty"},
        ErrorCase{"when_no_values", S(kApHead, "spec:\n  rules:\n  - when:\n    - key: source.ip"), "p.yaml:7: AuthorizationPolicy foo/p: condition 'source.ip' needs values"},
        ErrorCase{"when_no_key", S(kApHead, "spec:\n  rules:\n  - when:\n    - values: [a]"), "p.yaml:7: AuthorizationPolicy foo/p: a 'when' condition needs a key"},
        ErrorCase{"bad_wildcard", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/*/sa/x\"]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: 'cluster.local/*/sa/x' in principals: only '*', 'prefix*' and '*suffix'"},
        ErrorCase{"bad_service_account", S(kApHead, "spec:\n  rules:\n  - from:\n    - source:\n        serviceAccounts: [web]"),
                  "p.yaml:8: AuthorizationPolicy foo/p: 'web' in serviceAccounts: expected NAMESPACE/SERVICEACCOUNT"},
        ErrorCase{"duplicate", S(kApHead, "spec: {}\n---\n" + std::string(kApHead)), "p.yaml:6: duplicate AuthorizationPolicy foo/p (also defined at p.yaml:1)"},
        ErrorCase{"second_document", S(kPaHead, "spec: {}\n---\n" + std::string(kPaHead) + "spec: {mtls: {mode: NOPE}}"),
                  "p.yaml:9: PeerAuthentication foo/p: bad mtls mode 'NOPE'"}),
    [](const auto& param_info) { return param_info.param.name; });

class DirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-policy-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& content) {
    fs::create_directories(fs::path(dir_ + "/" + name).parent_path());
    std::ofstream(dir_ + "/" + name) << content;
  }
  std::string dir_;
};

TEST_F(DirectoryTest, ReadsYamlFilesOnlyAndNamesTheBadFile) {
  Write("a.yaml", Authz("foo", "a", "  rules: [{}]\n"));
  Write("b.yml", Authz("foo", "b", "  {}\n"));
  Write("notes.txt", "not: [yaml");
  Write(".hidden.yaml", "not: [yaml");
  Write("sub/c.yaml", "not: [yaml");
  // A ConfigMap volume: visible symlinks into "..data", which is itself a symlink.
  Write("..2024_01_01/d.yaml", Authz("bar", "d", "  {}\n"));
  fs::create_directory_symlink("..2024_01_01", dir_ + "/..data");
  fs::create_symlink("..data/d.yaml", dir_ + "/d.yaml");
  auto set = PolicySet::LoadDirectory(dir_);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ((*set)->authorization_policy_count(), 3u);
  EXPECT_FALSE((*set)->Authorize(Target("bar"), Plain()).allowed);

  Write("e.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  mtls: {mode: STRIKT}\n");
  auto bad = PolicySet::LoadDirectory(dir_);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find(dir_ + "/e.yaml:5: PeerAuthentication default/x: bad mtls mode 'STRIKT'"),
            std::string::npos)
      << bad.status();

  auto missing = PolicySet::LoadDirectory(dir_ + "/nope");
  EXPECT_FALSE(missing.ok());
}

TEST_F(DirectoryTest, DuplicateAcrossFilesNamesBoth) {
  Write("a.yaml", Authz("foo", "x", "  {}\n"));
  Write("b.yaml", "# comment\n" + Authz("foo", "x", "  {}\n"));
  auto set = PolicySet::LoadDirectory(dir_);
  ASSERT_FALSE(set.ok());
  EXPECT_NE(std::string(set.status().message())
                .find(dir_ + "/b.yaml:2: duplicate AuthorizationPolicy foo/x (also defined at " + dir_ + "/a.yaml:1)"),
            std::string::npos)
      << set.status();
}

}  // namespace
}  // namespace meshtls::policy
