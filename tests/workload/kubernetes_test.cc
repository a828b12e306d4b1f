// The Kubernetes workload source against a replaying API server: list, watch, bookmarks, 410
// Gone, dropped connections and token rotation, asserting the registry after each step.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "fake_api_server.h"
#include "meshtls/workload/kubernetes.h"
#include "meshtls/workload/registry.h"

namespace meshtls::workload {
namespace {

namespace fs = std::filesystem;
using testing::FakeApiServer;
using testing::ReadTestData;

constexpr char kSleepUid[] = "0f3e2b1a-6c5d-4e7f-8a9b-1c2d3e4f5a60";
constexpr char kWebUid[] = "4d5e6f7a-8b9c-4d4e-8f0a-2b3c4d5e6f74";
constexpr char kSleep2Uid[] = "6f7a8b9c-0d1e-4f6a-8b2c-4d5e6f7a8b96";

std::vector<std::string> Lines(const std::string& file) {
  std::istringstream in(ReadTestData(file));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string TempDir() {
  std::string pattern = (fs::temp_directory_path() / "meshtls-kube-XXXXXX").string();
  return ::mkdtemp(pattern.data());
}

// Lays out a pod cgroup as kubelet's systemd driver does, in a plain directory: cgroup.procs is
// an ordinary file holding this test's PID, whose /proc/PID/ns/net then stands for the pod netns.
void MakePodCgroup(const std::string& root, const std::string& uid) {
  std::string underscored = uid;
  std::replace(underscored.begin(), underscored.end(), '-', '_');
  const fs::path dir = fs::path(root) / "kubepods.slice" / "kubepods-besteffort.slice" /
                       ("kubepods-besteffort-pod" + underscored + ".slice") / "cri-containerd-4b1f0c0e.scope";
  fs::create_directories(dir);
  std::ofstream(dir / "cgroup.procs") << ::getpid() << "\n";
}

class KubernetesSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    server_ = FakeApiServer::Start(dir_);
    ASSERT_NE(server_, nullptr) << "could not start the fake API server (is openssl installed?)";
    std::ofstream(dir_ + "/token") << "token-1\n";
    cgroups_ = dir_ + "/cgroup";
    fs::create_directories(cgroups_);
    MakePodCgroup(cgroups_, kSleepUid);
    server_->SetList("namespaces", {ReadTestData("namespaces-list.json")});
    server_->SetList("pods-local", {ReadTestData("pods-local-list-page0.json"), ReadTestData("pods-local-list-page1.json")});
    server_->SetList("pods-remote", {ReadTestData("pods-remote-list.json")});
  }
  void TearDown() override {
    registry_.reset();
    server_.reset();
    fs::remove_all(dir_);
  }

  KubernetesSourceOptions Options() {
    KubernetesSourceOptions options;
    options.api.server = server_->url();
    options.api.ca_file = dir_ + "/ca.crt";
    options.api.token_file = dir_ + "/token";
    options.node_name = "node-1";
    options.locator.cgroup_root = cgroups_;
    options.locator.netns_dir = dir_ + "/no-pinned-netns";
    options.backoff_initial = std::chrono::milliseconds(20);
    options.backoff_max = std::chrono::milliseconds(100);
    options.on_change = [this] { changes_++; };
    return options;
  }

  void StartSource(KubernetesSourceOptions options) {
    auto source = KubernetesWorkloadSource::Create(std::move(options));
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = source->get();
    ASSERT_TRUE(source_->WaitForSync(std::chrono::seconds(10)).ok());
    auto registry = WorkloadRegistry::Create(*std::move(source));
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
  }

  // Reloads until `ready` holds for the current snapshot (watch events arrive asynchronously).
  template <typename Predicate>
  bool ReloadUntil(Predicate ready) {
    for (int i = 0; i < 500; ++i) {
      (void)registry_->Reload();
      if (ready(*registry_->Current())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  static std::vector<std::string> Uids(const WorkloadSnapshot& snapshot) {
    std::vector<std::string> uids;
    for (const Workload& w : snapshot.all()) uids.push_back(w.uid());
    return uids;
  }

  std::string dir_, cgroups_;
  std::unique_ptr<FakeApiServer> server_;
  KubernetesWorkloadSource* source_ = nullptr;
  std::unique_ptr<WorkloadRegistry> registry_;
  std::atomic<int> changes_{0};
};

TEST_F(KubernetesSourceTest, ListsMeshedPodsAndPlacesLocalOnes) {
  StartSource(Options());
  const WorkloadSnapshot& snapshot = *registry_->Current();
  // default and shop are meshed; legacy opted out, node-exporter is hostNetwork, kube-system is not meshed.
  EXPECT_EQ(Uids(snapshot), (std::vector<std::string>{"default/sleep-7f9c5d8b6-x2x9q", "shop/reviews-v2-77bf5c9d7-kp4sd"}));
  const Workload* sleep = snapshot.Find("default/sleep-7f9c5d8b6-x2x9q");
  ASSERT_NE(sleep, nullptr);
  EXPECT_EQ(sleep->service_account, "sleep");
  EXPECT_EQ(sleep->node, "node-1");
  EXPECT_EQ(sleep->labels.at("app"), "sleep");
  ASSERT_EQ(sleep->ips.size(), 2u);
  EXPECT_EQ(sleep->ips[0].ToString(), "10.244.1.12");
  EXPECT_EQ(sleep->ips[1].ToString(), "fd00:10:244:1::c");
  EXPECT_EQ(sleep->netns_path, "/proc/" + std::to_string(::getpid()) + "/ns/net");
  EXPECT_NE(sleep->cgroup_path.find("kubepods-besteffort-pod0f3e2b1a_6c5d_4e7f_8a9b_1c2d3e4f5a60.slice"), std::string::npos)
      << sleep->cgroup_path;
  const Workload* reviews = snapshot.FindByIp(*IpAddress::Parse("10.244.2.5"));
  ASSERT_NE(reviews, nullptr);
  EXPECT_EQ(reviews->node, "node-2");
  EXPECT_TRUE(reviews->netns_path.empty());

  // Both pages of the node's pods were fetched, then the watch resumed from the list's version.
  auto watch = server_->WaitForWatch("pods-local", 1);
  ASSERT_TRUE(watch.has_value());
  EXPECT_EQ(watch->query.at("resourceVersion"), "1210");
  EXPECT_EQ(watch->query.at("fieldSelector"), "spec.nodeName=node-1");
  EXPECT_EQ(watch->query.at("allowWatchBookmarks"), "true");
  EXPECT_EQ(watch->authorization, "Bearer token-1");
  auto remote = server_->WaitForWatch("pods-remote", 1);
  ASSERT_TRUE(remote.has_value());
  EXPECT_EQ(remote->query.at("fieldSelector"), "spec.nodeName!=node-1");
  EXPECT_EQ(server_->ListCount("pods-local"), 2u);
  const std::string health = registry_->source().Health();
  EXPECT_NE(health.find("pods on this node: synced at resourceVersion 1210"), std::string::npos) << health;
  EXPECT_NE(health.find("namespaces: synced"), std::string::npos) << health;
}

TEST_F(KubernetesSourceTest, FollowsWatchEventsBookmarksDropsAndExpiry) {
  StartSource(Options());
  const std::vector<std::string> events = Lines("pods-local-watch.jsonl");
  ASSERT_EQ(events.size(), 6u);
  ASSERT_TRUE(server_->WaitForWatch("pods-local", 1));

  // ADDED while Pending (no IP): not a workload yet. MODIFIED with an IP: a workload, not placed
  // until its cgroup appears.
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[0])});
  ASSERT_TRUE(ReloadUntil([](const WorkloadSnapshot&) { return true; }));
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[1])});
  ASSERT_TRUE(ReloadUntil([](const WorkloadSnapshot& s) { return s.Find("default/web-6d4cf56db6-tq5lk") != nullptr; }));
  const Workload* web = registry_->Current()->Find("default/web-6d4cf56db6-tq5lk");
  EXPECT_TRUE(web->node.empty()) << "an unplaced local pod must not be served yet";
  EXPECT_EQ(source_->unplaced_local_pods(), 1u);
  MakePodCgroup(cgroups_, kWebUid);
  ASSERT_TRUE(registry_->Reload().ok());
  web = registry_->Current()->Find("default/web-6d4cf56db6-tq5lk");
  EXPECT_EQ(web->node, "node-1");
  EXPECT_FALSE(web->netns_path.empty());
  EXPECT_EQ(source_->unplaced_local_pods(), 0u);

  // A BOOKMARK moves the resourceVersion; the server's timeout ends the watch and the next one
  // resumes from the bookmark, without listing again.
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[2]), FakeApiServer::End()});
  auto resumed = server_->WaitForWatch("pods-local", 2);
  ASSERT_TRUE(resumed.has_value());
  EXPECT_EQ(resumed->query.at("resourceVersion"), "1226");
  EXPECT_EQ(server_->ListCount("pods-local"), 2u);

  // Terminating, then DELETED: gone from the registry.
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[3])});
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[4])});
  ASSERT_TRUE(ReloadUntil([](const WorkloadSnapshot& s) { return s.Find("default/sleep-7f9c5d8b6-x2x9q") == nullptr; }));

  // A connection dropped mid-stream: reconnect (after backoff) from the last version seen.
  server_->PushWatch("pods-local", {FakeApiServer::Drop()});
  auto after_drop = server_->WaitForWatch("pods-local", 3);
  ASSERT_TRUE(after_drop.has_value());
  EXPECT_EQ(after_drop->query.at("resourceVersion"), "1234");
  EXPECT_EQ(server_->ListCount("pods-local"), 2u);

  // 410 Gone: list again and replace the cache. The new sleep replica reuses the old one's IP.
  server_->SetList("pods-local", {ReadTestData("pods-local-list-after-expiry.json")});
  server_->PushWatch("pods-local", {FakeApiServer::Line(events[5])});
  auto after_expiry = server_->WaitForWatch("pods-local", 4);
  ASSERT_TRUE(after_expiry.has_value());
  EXPECT_EQ(after_expiry->query.at("resourceVersion"), "1820");
  EXPECT_EQ(server_->ListCount("pods-local"), 3u);
  MakePodCgroup(cgroups_, kSleep2Uid);
  ASSERT_TRUE(ReloadUntil([](const WorkloadSnapshot& s) { return s.Find("default/sleep-7f9c5d8b6-m4nbv") != nullptr; }));
  const WorkloadSnapshot& after = *registry_->Current();
  EXPECT_EQ(Uids(after), (std::vector<std::string>{"default/sleep-7f9c5d8b6-m4nbv", "default/web-6d4cf56db6-tq5lk",
                                                   "shop/reviews-v2-77bf5c9d7-kp4sd"}));
  EXPECT_EQ(after.FindByIp(*IpAddress::Parse("10.244.1.12"))->name, "sleep-7f9c5d8b6-m4nbv");

  bool saw_expiry = false;
  for (const KubeWatchStats& s : source_->Stats()) {
    if (s.resource == "pods on this node") {
      saw_expiry = s.expired == 1 && s.bookmarks == 1 && s.lists == 2 && s.errors >= 1;
      EXPECT_EQ(s.resource_version, "1820");
    }
  }
  EXPECT_TRUE(saw_expiry);
  EXPECT_GT(changes_.load(), 0);
}

TEST_F(KubernetesSourceTest, NamespaceLabelChangesUnmeshItsPods) {
  StartSource(Options());
  ASSERT_NE(registry_->Current()->Find("shop/reviews-v2-77bf5c9d7-kp4sd"), nullptr);
  ASSERT_TRUE(server_->WaitForWatch("namespaces", 1));
  server_->PushWatch("namespaces", {FakeApiServer::Line(Lines("namespaces-watch.jsonl")[0])});
  ASSERT_TRUE(ReloadUntil([](const WorkloadSnapshot& s) { return s.Find("shop/reviews-v2-77bf5c9d7-kp4sd") == nullptr; }));
  EXPECT_NE(registry_->Current()->Find("default/sleep-7f9c5d8b6-x2x9q"), nullptr);
}

TEST_F(KubernetesSourceTest, RereadsARotatedToken) {
  StartSource(Options());
  ASSERT_TRUE(server_->WaitForWatch("pods-local", 1));
  // The API server stops accepting the old token; the next watch is refused until the token file
  // holds the new one, then goes on from where it was, with no relist.
  server_->RequireToken("token-2");
  server_->PushWatch("pods-local", {FakeApiServer::End()});
  auto refused = server_->WaitForWatch("pods-local", 2);
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->authorization, "Bearer token-1");
  std::ofstream(dir_ + "/token") << "token-2\n";
  std::optional<FakeApiServer::Request> accepted;
  for (size_t n = 3; n < 50; ++n) {
    accepted = server_->WaitForWatch("pods-local", n);
    ASSERT_TRUE(accepted.has_value());
    if (accepted->authorization == "Bearer token-2") break;
  }
  EXPECT_EQ(accepted->authorization, "Bearer token-2");
  EXPECT_EQ(accepted->query.at("resourceVersion"), "1210");
  EXPECT_GE(server_->Unauthorized(), 1u);
  EXPECT_EQ(server_->ListCount("pods-local"), 2u);
  bool counted = false;
  for (const KubeWatchStats& s : source_->Stats()) {
    if (s.resource == "pods on this node") counted = s.errors >= 1 && s.last_error.find("401") != std::string::npos;
  }
  EXPECT_TRUE(counted);
}

TEST_F(KubernetesSourceTest, RemotePodsCanBeLeftOut) {
  KubernetesSourceOptions options = Options();
  options.remote_pods = false;
  StartSource(std::move(options));
  EXPECT_EQ(Uids(*registry_->Current()), (std::vector<std::string>{"default/sleep-7f9c5d8b6-x2x9q"}));
  EXPECT_EQ(server_->ListCount("pods-remote"), 0u);
}

TEST_F(KubernetesSourceTest, UnreachableServerFailsTheSyncWithTheReason) {
  KubernetesSourceOptions options = Options();
  options.api.server = "https://127.0.0.1:1";  // nothing listens there
  auto source = KubernetesWorkloadSource::Create(std::move(options));
  ASSERT_TRUE(source.ok());
  absl::Status synced = (*source)->WaitForSync(std::chrono::milliseconds(300));
  EXPECT_TRUE(absl::IsUnavailable(synced));
  EXPECT_NE(std::string(synced.message()).find("did not answer"), std::string::npos) << synced;
  EXPECT_NE(std::string(synced.message()).find("list failed"), std::string::npos) << synced;
  EXPECT_TRUE(absl::IsUnavailable((*source)->Load().status()));
}

TEST_F(KubernetesSourceTest, UntrustedServerCertificateIsRefused) {
  KubernetesSourceOptions options = Options();
  options.api.ca_file = "/etc/ssl/certs/ca-certificates.crt";  // public roots do not sign the fake server
  auto source = KubernetesWorkloadSource::Create(std::move(options));
  ASSERT_TRUE(source.ok());
  absl::Status synced = (*source)->WaitForSync(std::chrono::milliseconds(500));
  EXPECT_FALSE(synced.ok());
  EXPECT_EQ(server_->ListCount("pods-local"), 0u);
}

KubePod Pod(std::string ns, std::string name, std::string ip, std::string node = "node-1") {
  KubePod p;
  p.namespace_name = std::move(ns);
  p.name = std::move(name);
  p.uid = p.namespace_name + "-" + p.name;
  p.service_account = "default";
  p.node = std::move(node);
  p.phase = "Running";
  p.created = "2026-12-01T09:00:00Z";
  if (!ip.empty()) p.ips.push_back(*IpAddress::Parse(ip));
  return p;
}

TEST(BuildWorkloads, MeshSelectionAndIpOwnership) {
  const std::map<std::string, std::map<std::string, std::string>> namespaces = {
      {"meshed", {{"meshtls.io/mode", "enabled"}}}, {"plain", {}}};
  KubePod in = Pod("meshed", "in", "10.0.0.1");
  KubePod opted_out = Pod("meshed", "out", "10.0.0.2");
  opted_out.labels["meshtls.io/mode"] = "disabled";
  KubePod opted_in = Pod("plain", "in", "10.0.0.3", "node-2");
  opted_in.labels["meshtls.io/mode"] = "enabled";
  KubePod plain = Pod("plain", "other", "10.0.0.4");
  KubePod finished = Pod("meshed", "job", "10.0.0.5");
  finished.phase = "Succeeded";
  KubePod pending = Pod("meshed", "pending", "");
  KubePod old = Pod("meshed", "old", "10.0.0.6");
  old.terminating = true;
  old.created = "2026-12-01T10:00:00Z";
  KubePod successor = Pod("meshed", "successor", "10.0.0.6");
  KubePod host = Pod("meshed", "host", "192.168.0.1");
  host.host_network = true;
  KubePod unplaced = Pod("meshed", "starting", "10.0.0.7");

  int located = 0;
  BuildResult result = BuildWorkloads(
      {in, opted_out, opted_in, plain, finished, pending, old, successor, host, unplaced}, namespaces, "node-1", {},
      [&](const KubePod& pod) -> std::optional<PodPlacement> {
        located++;
        if (pod.name == "starting") return std::nullopt;
        return PodPlacement{"/cg/" + pod.name, "/run/netns/" + pod.name, 1, 1};
      });
  std::vector<std::string> names;
  for (const Workload& w : result.workloads) names.push_back(w.uid());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"meshed/in", "meshed/starting", "meshed/successor", "plain/in"}));
  EXPECT_EQ(result.unplaced_local, 1u);
  EXPECT_EQ(located, 3) << "only local pods are located";
  for (const Workload& w : result.workloads) {
    if (w.name == "starting") {
      EXPECT_TRUE(w.node.empty());
    }
    if (w.uid() == "plain/in") {
      EXPECT_EQ(w.node, "node-2");
      EXPECT_TRUE(w.netns_path.empty());
    }
    if (w.uid() == "meshed/in") {
      EXPECT_EQ(w.netns_path, "/run/netns/in");
    }
  }
  // Skipped pods each say why; pods outside the mesh are not mentioned.
  const std::string skipped = [&] {
    std::string all;
    for (const std::string& s : result.skipped) all += s + "\n";
    return all;
  }();
  EXPECT_NE(skipped.find("meshed/job: finished (Succeeded)"), std::string::npos) << skipped;
  EXPECT_NE(skipped.find("meshed/pending: no IP yet"), std::string::npos) << skipped;
  EXPECT_NE(skipped.find("meshed/old: its IPs belong to a newer pod"), std::string::npos) << skipped;
  EXPECT_NE(skipped.find("meshed/host: hostNetwork"), std::string::npos) << skipped;
  EXPECT_EQ(skipped.find("plain/other"), std::string::npos) << skipped;
  EXPECT_EQ(skipped.find("meshed/out"), std::string::npos) << skipped;
}

TEST(KubeApiConfig, ReadsAKubeconfig) {
  const std::string dir = TempDir();
  std::ofstream(dir + "/config") << R"(apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: other
  cluster: {server: "https://10.0.0.9:6443"}
- name: kind
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: LS0tLS1CRUdJTg==
contexts:
- name: dev
  context: {cluster: kind, user: agent}
users:
- name: agent
  user:
    tokenFile: token
)";
  auto config = KubeApiConfig::FromKubeconfig(dir + "/config");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://127.0.0.1:6443");
  EXPECT_EQ(config->ca_pem, "-----BEGIN");
  EXPECT_EQ(config->token_file, dir + "/token");
  EXPECT_NE(config->Describe().find("token from " + dir + "/token"), std::string::npos);

  std::ofstream(dir + "/exec") << R"(current-context: c
clusters: [{name: k, cluster: {server: "https://1.2.3.4"}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {exec: {command: gke-gcloud-auth-plugin}}}]
)";
  auto exec = KubeApiConfig::FromKubeconfig(dir + "/exec");
  EXPECT_FALSE(exec.ok());
  EXPECT_NE(std::string(exec.status().message()).find("exec or auth-provider"), std::string::npos);
  std::ofstream(dir + "/plain-http") << R"(current-context: c
clusters: [{name: k, cluster: {server: "http://1.2.3.4"}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
)";
  EXPECT_FALSE(KubeApiConfig::FromKubeconfig(dir + "/plain-http").ok());
  EXPECT_FALSE(KubeApiConfig::FromKubeconfig(dir + "/missing").ok());
  fs::remove_all(dir);
}

TEST(KubeApiConfig, InClusterNeedsTheServiceAccountAndEnvironment) {
  const std::string dir = TempDir();
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  EXPECT_FALSE(KubeApiConfig::InCluster(dir).ok());
  ::setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  ::setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto missing = KubeApiConfig::InCluster(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("automountServiceAccountToken"), std::string::npos);
  std::ofstream(dir + "/token") << "t";
  std::ofstream(dir + "/ca.crt") << "c";
  auto config = KubeApiConfig::InCluster(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://[fd00::1]:443");
  EXPECT_EQ(config->token_file, dir + "/token");
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  ::unsetenv("KUBERNETES_SERVICE_PORT");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace meshtls::workload
