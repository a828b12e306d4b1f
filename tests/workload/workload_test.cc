#include "meshtls/workload/workload.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "meshtls/common/strings.h"
#include "meshtls/workload/names.h"

namespace meshtls::workload {
namespace {

IpAddress Ip(const char* text) { return *IpAddress::Parse(text); }

// The error text for `yaml`, which must fail to parse.
std::string ErrorOf(const std::string& yaml) {
  auto parsed = ParseWorkloads(yaml, "w.yaml");
  EXPECT_FALSE(parsed.ok()) << yaml;
  return parsed.ok() ? "" : std::string(parsed.status().message());
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(ParseWorkloadsTest, ReadsEveryFieldIncludingIpv6) {
  auto parsed = ParseWorkloads(
      "# two pods\n"
      "workloads:\n"
      "  - name: sleep-7f9c\n"
      "    namespace: default\n"
      "    serviceAccount: sleep\n"
      "    node: node-1\n"
      "    labels: {app: sleep, app.kubernetes.io/version: v1}\n"
      "    netns: /run/netns/pod-sleep\n"
      "    cgroup: /sys/fs/cgroup/unified/meshtls/pod-sleep\n"
      "    ips: [10.0.1.2, fd00::1:2]\n"
      "  - name: httpbin-1.x\n"
      "    namespace: shop\n"
      "    serviceAccount: httpbin\n"
      "    ips:\n"
      "      - 10.0.2.7\n"
      "      - '::1'\n",
      "w.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 2u);
  const Workload& sleep = (*parsed)[0];
  EXPECT_EQ(sleep.name, "sleep-7f9c");
  EXPECT_EQ(sleep.namespace_name, "default");
  EXPECT_EQ(sleep.service_account, "sleep");
  EXPECT_EQ(sleep.node, "node-1");
  EXPECT_EQ(sleep.labels, (std::map<std::string, std::string>{
                              {"app", "sleep"}, {"app.kubernetes.io/version", "v1"}}));
  EXPECT_EQ(sleep.netns_path, "/run/netns/pod-sleep");
  EXPECT_EQ(sleep.cgroup_path, "/sys/fs/cgroup/unified/meshtls/pod-sleep");
  EXPECT_EQ(sleep.ips, (std::vector<IpAddress>{Ip("10.0.1.2"), Ip("fd00::1:2")}));
  EXPECT_EQ(sleep.uid(), "default/sleep-7f9c");
  EXPECT_EQ(sleep.Identity("cluster.local").ToString(),
            "spiffe://cluster.local/ns/default/sa/sleep");

  // A pod on another node: identity and addresses only.
  const Workload& remote = (*parsed)[1];
  EXPECT_EQ(remote.node, "");
  EXPECT_TRUE(remote.netns_path.empty());
  EXPECT_TRUE(remote.cgroup_path.empty());
  EXPECT_EQ(remote.ips, (std::vector<IpAddress>{Ip("10.0.2.7"), Ip("::1")}));
}

TEST(ParseWorkloadsTest, AnExplicitlyEmptyListIsValidButAnEmptyFileIsNot) {
  auto empty_list = ParseWorkloads("workloads: []\n", "w.yaml");
  ASSERT_TRUE(empty_list.ok()) << empty_list.status();
  EXPECT_TRUE(empty_list->empty());
  // A half-written file must not read as "no pods".
  EXPECT_CONTAINS(ErrorOf(""), "w.yaml:1: the file has no 'workloads' list (write 'workloads: []'");
  EXPECT_CONTAINS(ErrorOf("# nothing\n"), "w.yaml:1:");
  EXPECT_CONTAINS(ErrorOf("\nworkloads:\n"), "w.yaml:2: 'workloads' has no value");
  EXPECT_CONTAINS(ErrorOf("workloads: {a: 1}\n"), "w.yaml:1: 'workloads' must be a list");
  EXPECT_CONTAINS(ErrorOf("- a\n"), "w.yaml:1: the top level must be a map");
}

TEST(ParseWorkloadsTest, YamlSyntaxErrorsNameTheLine) {
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: a\n    ips: [10.0.0.1\n"),
                  "w.yaml:4: YAML syntax error:");
  std::string tabs = ErrorOf("workloads:\n  - name: a\n\tnamespace: b\n");
  EXPECT_CONTAINS(tabs, "YAML syntax error");
  EXPECT_CONTAINS(tabs, "(check indentation");
}

constexpr const char* kHead = "workloads:\n  - name: a\n    namespace: default\n";  // lines 1-3

TEST(ParseWorkloadsTest, UnknownKeysSuggestTheNearestKnownOne) {
  std::string e = ErrorOf(StrCat(kHead, "    serviceaccount: sleep\n    ips: [10.0.0.1]\n"));
  EXPECT_CONTAINS(
      e, "w.yaml:4: unknown key 'serviceaccount' in a workload (did you mean 'serviceAccount'?)");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead, "    service_account: sleep\n")),
      "w.yaml:4: unknown key 'service_account' in a workload (did you mean 'serviceAccount'?)");
  EXPECT_CONTAINS(ErrorOf(StrCat(kHead, "    serviceAccountName: sleep\n")),
                  "did you mean 'serviceAccount'?");
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: a\n    namspace: x\n"),
                  "w.yaml:3: unknown key 'namspace' in a workload (did you mean 'namespace'?)");
  EXPECT_CONTAINS(ErrorOf(StrCat(kHead, "    ip: [10.0.0.1]\n")),
                  "w.yaml:4: unknown key 'ip' in a workload (did you mean 'ips'?)");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead, "    colour: blue\n")),
      "w.yaml:4: unknown key 'colour' in a workload (known keys: name, namespace, serviceAccount");
  EXPECT_CONTAINS(ErrorOf("workload:\n  - name: a\n"),
                  "w.yaml:1: unknown key 'workload' in the top level (did you mean 'workloads'?)");
}

TEST(ParseWorkloadsTest, MissingRequiredFieldsPointAtTheWorkload) {
  std::string e = ErrorOf(
      "workloads:\n"
      "  - name: a\n"
      "    namespace: default\n"
      "    serviceAccount: a\n"
      "    ips: [10.0.0.1]\n"
      "  - namespace: default\n"  // line 6
      "    ips: [10.0.0.2]\n");
  EXPECT_CONTAINS(e, "w.yaml:6: workload is missing 'name'");
  EXPECT_CONTAINS(e, "w.yaml:6: workload is missing 'serviceAccount'");
  EXPECT_EQ(e.find("missing 'namespace'"), std::string::npos) << e;
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: a\n    serviceAccount: a\n    ips: [10.0.0.1]\n"),
                  "w.yaml:2: workload is missing 'namespace'");
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: a\n    namespace: b\n    serviceAccount: a\n"),
                  "w.yaml:2: workload is missing 'ips' (the pod's addresses");
  EXPECT_CONTAINS(
      ErrorOf("workloads:\n  - name: a\n    namespace: b\n    serviceAccount: a\n    ips: []\n"),
      "w.yaml:5: 'ips' is empty");
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name:\n    namespace: b\n"),
                  "w.yaml:2: 'name' has no value (e.g. name: sleep-7f9c)");
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - just-a-string\n"),
                  "w.yaml:2: a workload must be a map of fields");
}

TEST(ParseWorkloadsTest, NamesMustBeKubernetesNames) {
  const std::string tail = "    serviceAccount: a\n    ips: [10.0.0.1]\n";
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: Sleep_1\n    namespace: default\n" + tail),
                  "w.yaml:2: name 'Sleep_1' is not a valid pod name (lowercase letters");
  // Pod names may have dots (a subdomain); namespaces and service accounts may not (a label).
  EXPECT_CONTAINS(ErrorOf("workloads:\n  - name: a.b\n    namespace: de.fault\n" + tail),
                  "w.yaml:3: namespace 'de.fault' is not a valid namespace name");
  EXPECT_CONTAINS(ErrorOf(StrCat(kHead, "    serviceAccount: -sa\n    ips: [10.0.0.1]\n")),
                  "w.yaml:4: serviceAccount '-sa' is not a valid service account name");
  EXPECT_CONTAINS(ErrorOf(StrCat(kHead, "    serviceAccount: [a]\n")),
                  "w.yaml:4: 'serviceAccount' must be a single string, not a list");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead, "    serviceAccount: a\n    node: Node_1\n    ips: [10.0.0.1]\n")),
      "w.yaml:5: node 'Node_1' is not a valid node name");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead,
                     "    serviceAccount: a\n    labels: {'bad key!': x}\n    ips: [10.0.0.1]\n")),
      "w.yaml:5: label key 'bad key!' is not a valid Kubernetes label key");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead,
                     "    serviceAccount: a\n    labels:\n      app: -x\n    ips: [10.0.0.1]\n")),
      "w.yaml:6: label value '-x' of 'app' is not valid");
  EXPECT_CONTAINS(
      ErrorOf(StrCat(kHead, "    serviceAccount: a\n    labels: [app]\n    ips: [10.0.0.1]\n")),
      "w.yaml:5: 'labels' must be a map, not a list");
}

TEST(ParseWorkloadsTest, BadAddressesAndPathsNameTheirLine) {
  const std::string head = StrCat(kHead, "    serviceAccount: a\n");  // lines 1-4
  EXPECT_CONTAINS(
      ErrorOf(head + "    ips:\n      - 10.0.0.1\n      - 10.0.0.300\n"),
      "w.yaml:7: '10.0.0.300' is not an IP address (write a plain IPv4 or IPv6 address");
  EXPECT_CONTAINS(ErrorOf(head + "    ips: [10.0.0.0/24]\n"),
                  "w.yaml:5: '10.0.0.0/24' is not an IP address");
  EXPECT_CONTAINS(
      ErrorOf(head + "    ips: 10.0.0.1\n"),
      "w.yaml:5: 'ips' must be a list, not '10.0.0.1' (e.g. ips: [10.0.1.2, fd00::1:2])");
  EXPECT_CONTAINS(ErrorOf(head + "    ips: [10.0.0.1, 10.0.0.1]\n"),
                  "w.yaml:5: IP 10.0.0.1 is listed twice");
  EXPECT_CONTAINS(
      ErrorOf(head + "    netns: run/netns/a\n    ips: [10.0.0.1]\n"),
      "w.yaml:5: netns 'run/netns/a' is not an absolute path (e.g. /run/netns/pod-sleep");
  EXPECT_CONTAINS(ErrorOf(head + "    ips: [10.0.0.1]\n    cgroup: pod-a\n"),
                  "w.yaml:6: cgroup 'pod-a' is not an absolute path");
  EXPECT_CONTAINS(ErrorOf(head + "    ips: [10.0.0.1]\n    ips: [10.0.0.2]\n"),
                  "w.yaml:6: 'ips' is given twice in this workload");
}

TEST(ParseWorkloadsTest, DuplicateUidsAndSharedIpsAreRejected) {
  const std::string a =
      "  - name: a\n    namespace: default\n    serviceAccount: a\n    ips: [10.0.0.1, fd00::1]\n";
  std::string dup = ErrorOf("workloads:\n" + a + a);
  EXPECT_CONTAINS(dup,
                  "w.yaml:6: workload default/a is defined twice (first at line 2) (namespace/name "
                  "must be unique");
  std::string shared =
      ErrorOf("workloads:\n" + a +
              "  - name: b\n    namespace: default\n    serviceAccount: b\n    ips:\n"
              "      - 10.0.0.9\n      - fd00:0::1\n");  // line 11: the same address as fd00::1
  EXPECT_CONTAINS(shared,
                  "w.yaml:11: IP fd00::1 of default/b is already claimed by default/a (line 5) "
                  "(each pod IP belongs to "
                  "exactly one workload)");
  // The same name in two namespaces is two workloads.
  auto ok = ParseWorkloads(
      "workloads:\n" + a +
          "  - name: a\n    namespace: other\n    serviceAccount: a\n    ips: [10.0.0.2]\n",
      "w.yaml");
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST(ParseWorkloadsTest, ReportsEveryErrorNotJustTheFirst) {
  std::string e = ErrorOf(
      "workloads:\n"
      "  - name: a\n"
      "    namespace: Bad\n"  // 3
      "    serviceAccount: a\n"
      "    ips: [x]\n"  // 5
      "  - name: b\n"
      "    namespace: b\n"
      "    serviceAcount: b\n"  // 8
      "    ips: [10.0.0.1]\n");
  EXPECT_CONTAINS(e, "w.yaml:3:");
  EXPECT_CONTAINS(e, "w.yaml:5:");
  EXPECT_CONTAINS(
      e, "w.yaml:8: unknown key 'serviceAcount' in a workload (did you mean 'serviceAccount'?)");
  EXPECT_CONTAINS(e, "w.yaml:6: workload is missing 'serviceAccount'");
}

TEST(ParseWorkloadsTest, ErrorsComeInFileOrderAndAreCapped) {
  std::string yaml = "workloads:\n";
  for (int i = 0; i < 25; ++i)
    yaml += "  - {name: a, namespace: b, serviceAccount: c, ips: [bad]}\n";
  std::string e = ErrorOf(yaml);
  EXPECT_EQ(e.find("w.yaml:2:"), 0u) << e;
  EXPECT_CONTAINS(e, "w.yaml:21: 'bad' is not an IP address");
  EXPECT_EQ(e.find("w.yaml:22:"), std::string::npos) << e;
  EXPECT_CONTAINS(e, "w.yaml: 5 more errors not shown");
}

TEST(StaticWorkloadFileTest, LoadsTheFileAndNamesItInErrors) {
  char pattern[] = "/tmp/meshtls-workload-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const std::string dir = pattern;
  const std::string path = dir + "/workloads.yaml";
  StaticWorkloadFile file(path);
  EXPECT_EQ(file.Describe(), "static file " + path);

  auto missing = file.Load();
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_CONTAINS(std::string(missing.status().message()), "cannot read workload file " + path);

  std::ofstream(path)
      << "workloads:\n  - name: a\n    namespace: b\n    serviceAccount: c\n    ips: [10.1.1.1]\n";
  auto loaded = file.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->size(), 1u);

  std::ofstream(path) << "workloads:\n  - name: a\n    nmespace: b\n";
  auto bad = file.Load();
  ASSERT_FALSE(bad.ok());
  EXPECT_CONTAINS(std::string(bad.status().message()), path + ":3: unknown key 'nmespace'");
  std::filesystem::remove_all(dir);
}

TEST(ExampleFileTest, TheDocumentedExampleParses) {
  auto loaded = StaticWorkloadFile(MESHTLS_EXAMPLES_DIR "/workloads.yaml").Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_GE(loaded->size(), 2u);
}

TEST(NamesTest, KubernetesNameRules) {
  EXPECT_TRUE(IsDns1123Label("a"));
  EXPECT_TRUE(IsDns1123Label("a-1"));
  EXPECT_FALSE(IsDns1123Label(""));
  EXPECT_FALSE(IsDns1123Label("a."));
  EXPECT_FALSE(IsDns1123Label("A"));
  EXPECT_FALSE(IsDns1123Label(std::string(64, 'a')));
  EXPECT_TRUE(IsDns1123Label(std::string(63, 'a')));
  EXPECT_TRUE(IsDns1123Subdomain("a.b-c.d"));
  EXPECT_FALSE(IsDns1123Subdomain("a..b"));
  EXPECT_FALSE(IsDns1123Subdomain(".a"));
  EXPECT_TRUE(IsLabelKey("app"));
  EXPECT_TRUE(IsLabelKey("example.com/My_Key.1"));
  EXPECT_FALSE(IsLabelKey("/x"));
  EXPECT_FALSE(IsLabelKey("Example.com/x"));
  EXPECT_TRUE(IsLabelValue(""));
  EXPECT_FALSE(IsLabelValue("a b"));
  EXPECT_EQ(SuggestKey("namepsace", {"name", "namespace"}), "namespace");
  EXPECT_EQ(SuggestKey("zzz", {"name", "namespace"}), std::nullopt);
}

}  // namespace
}  // namespace meshtls::workload
