#include "meshtls/workload/registry.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "meshtls/common/strings.h"

namespace meshtls::workload {
namespace {

IpAddress Ip(const char* text) { return *IpAddress::Parse(text); }

Workload Make(std::string ns, std::string name, std::vector<IpAddress> ips,
              std::string node = "node-1") {
  Workload w;
  w.name = std::move(name);
  w.namespace_name = std::move(ns);
  w.service_account = "sa";
  w.node = std::move(node);
  w.ips = std::move(ips);
  return w;
}

// A source whose next answer the test sets.
class FakeSource : public WorkloadSource {
 public:
  explicit FakeSource(absl::StatusOr<std::vector<Workload>>* next) : next_(next) {}
  absl::StatusOr<std::vector<Workload>> Load() override { return *next_; }
  std::string Describe() const override { return "fake"; }

 private:
  absl::StatusOr<std::vector<Workload>>* next_;
};

TEST(WorkloadSnapshotTest, LooksUpByIpUidAndNode) {
  auto snapshot = WorkloadSnapshot::Create({Make("shop", "cart", {Ip("10.0.0.2"), Ip("fd00::2")}),
                                            Make("default", "sleep", {Ip("10.0.0.1")}),
                                            Make("default", "remote", {Ip("10.9.0.1")}, "node-2"),
                                            Make("default", "unclaimed", {Ip("10.9.0.2")}, "")});
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_NE(snapshot->FindByIp(Ip("fd00::2")), nullptr);
  EXPECT_EQ(snapshot->FindByIp(Ip("fd00::2"))->uid(), "shop/cart");
  EXPECT_EQ(snapshot->FindByIp(Ip("10.0.0.1"))->uid(), "default/sleep");
  EXPECT_EQ(snapshot->FindByIp(Ip("10.0.0.3")), nullptr);
  // The v4-mapped form is another address, not 10.0.0.1.
  EXPECT_EQ(snapshot->FindByIp(Ip("::ffff:10.0.0.1")), nullptr);

  ASSERT_NE(snapshot->Find("shop/cart"), nullptr);
  EXPECT_EQ(snapshot->Find("shop/cart")->ips.size(), 2u);
  EXPECT_EQ(snapshot->Find("default/remote")->node, "node-2");
  EXPECT_EQ(snapshot->Find("shop/sleep"), nullptr);
  EXPECT_EQ(snapshot->Find("sleep"), nullptr);
  EXPECT_EQ(snapshot->Find(""), nullptr);

  std::vector<std::string> on_node_1;
  for (const Workload* w : snapshot->OnNode("node-1")) on_node_1.push_back(w->uid());
  EXPECT_EQ(on_node_1, (std::vector<std::string>{"default/sleep", "shop/cart"}));
  EXPECT_EQ(snapshot->OnNode("node-2").size(), 1u);
  EXPECT_TRUE(snapshot->OnNode("").empty());  // unclaimed pods belong to no agent
  EXPECT_EQ(snapshot->size(), 4u);
  EXPECT_EQ(snapshot->all().front().uid(), "default/remote");  // sorted
}

TEST(WorkloadSnapshotTest, SortOrderAndLookupAgreeWhenNamespacesArePrefixes) {
  // "a-x/c" < "a/b" as strings, but (a, b) < (a-x, c): lookups must follow the stored order.
  auto snapshot = WorkloadSnapshot::Create(
      {Make("a-x", "c", {Ip("10.0.0.1")}), Make("a", "b", {Ip("10.0.0.2")}),
       Make("a", "z", {Ip("10.0.0.3")}), Make("ab", "a", {Ip("10.0.0.4")})});
  ASSERT_TRUE(snapshot.ok());
  for (const char* uid : {"a-x/c", "a/b", "a/z", "ab/a"}) {
    ASSERT_NE(snapshot->Find(uid), nullptr) << uid;
    EXPECT_EQ(snapshot->Find(uid)->uid(), uid);
  }
}

TEST(WorkloadSnapshotTest, RejectsAmbiguousSets) {
  auto dup = WorkloadSnapshot::Create(
      {Make("a", "b", {Ip("10.0.0.1")}), Make("a", "b", {Ip("10.0.0.2")})});
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(std::string(dup.status().message()), "workload a/b appears twice");
  auto shared = WorkloadSnapshot::Create(
      {Make("a", "b", {Ip("10.0.0.1")}), Make("a", "c", {Ip("10.0.0.1")})});
  ASSERT_FALSE(shared.ok());
  EXPECT_EQ(std::string(shared.status().message()), "IP 10.0.0.1 is claimed by both a/b and a/c");
}

TEST(DiffTest, FindsAddedRemovedAndChangedByUid) {
  Workload kept = Make("d", "kept", {Ip("10.0.0.1")});
  Workload before_change = Make("d", "moved", {Ip("10.0.0.2")});
  Workload after_change = before_change;
  after_change.ips = {Ip("10.0.0.3")};
  after_change.labels["app"] = "x";
  auto before =
      *WorkloadSnapshot::Create({kept, before_change, Make("d", "gone", {Ip("10.0.0.4")})});
  auto after = *WorkloadSnapshot::Create({Make("d", "new", {Ip("10.0.0.4")}), after_change, kept});

  WorkloadDiff diff = Diff(before, after);
  ASSERT_EQ(diff.added.size(), 1u);
  EXPECT_EQ(diff.added[0].uid(), "d/new");
  ASSERT_EQ(diff.removed.size(), 1u);
  EXPECT_EQ(diff.removed[0].uid(), "d/gone");
  ASSERT_EQ(diff.changed.size(), 1u);
  EXPECT_EQ(diff.changed[0].first, before_change);
  EXPECT_EQ(diff.changed[0].second, after_change);
  EXPECT_FALSE(diff.empty());
  EXPECT_TRUE(Diff(after, after).empty());
  EXPECT_EQ(Diff(WorkloadSnapshot(), after).added.size(), 3u);
}

TEST(WorkloadRegistryTest, AFailedReloadKeepsTheLastGoodSnapshot) {
  absl::StatusOr<std::vector<Workload>> next = absl::NotFoundError("no file yet");
  EXPECT_EQ(WorkloadRegistry::Create(std::make_unique<FakeSource>(&next)).status().code(),
            absl::StatusCode::kNotFound);

  next = std::vector<Workload>{Make("d", "a", {Ip("10.0.0.1")})};
  auto registry = WorkloadRegistry::Create(std::make_unique<FakeSource>(&next));
  ASSERT_TRUE(registry.ok()) << registry.status();
  std::shared_ptr<const WorkloadSnapshot> first = (*registry)->Current();
  EXPECT_EQ(first->size(), 1u);
  EXPECT_EQ((*registry)->last_error(), std::nullopt);

  next = absl::InvalidArgumentError("w.yaml:3: broken");
  auto failed = (*registry)->Reload();
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ((*registry)->Current(), first);
  EXPECT_EQ((*registry)->last_error(), "w.yaml:3: broken");

  // The snapshot's own checks fail a reload the same way.
  next = std::vector<Workload>{Make("d", "a", {Ip("10.0.0.1")}), Make("d", "b", {Ip("10.0.0.1")})};
  failed = (*registry)->Reload();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(std::string(failed.status().message()),
            "fake: IP 10.0.0.1 is claimed by both d/a and d/b");
  EXPECT_EQ((*registry)->Current(), first);

  next = std::vector<Workload>{Make("d", "a", {Ip("10.0.0.1")}), Make("d", "b", {Ip("10.0.0.2")})};
  auto reloaded = (*registry)->Reload();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  ASSERT_EQ(reloaded->added.size(), 1u);
  EXPECT_EQ(reloaded->added[0].uid(), "d/b");
  EXPECT_EQ((*registry)->last_error(), std::nullopt);
  EXPECT_EQ((*registry)->Current()->size(), 2u);
  EXPECT_EQ(first->size(), 1u);  // a holder of the old snapshot still sees it whole
}

class WorkloadFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/meshtls-registry-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/workloads.yaml";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Replaces the file the way kubectl and editors do: write aside, rename over.
  void Write(const std::string& text) {
    std::ofstream(path_ + ".tmp") << text;
    std::filesystem::rename(path_ + ".tmp", path_);
  }
  static std::string File(int count) {
    std::string text = "workloads:\n";
    for (int i = 0; i < count; ++i) {
      StrAppend(&text, "  - {name: w", i,
                ", namespace: d, serviceAccount: s, node: node-1, ips: [10.0.", i / 250, ".",
                i % 250 + 1, "]}\n");
    }
    return text;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(WorkloadFileTest, EditingTheFileReloadsAndReportsTheDiff) {
  Write(File(1));
  auto registry = WorkloadRegistry::Create(std::make_unique<StaticWorkloadFile>(path_));
  ASSERT_TRUE(registry.ok()) << registry.status();
  auto loop = *EventLoop::Create();
  std::vector<absl::StatusOr<WorkloadDiff>> reloads;
  auto watcher = WatchWorkloadFile(
      *loop, **registry, path_,
      [&](const absl::StatusOr<WorkloadDiff>& r) { reloads.push_back(r); },
      std::chrono::milliseconds(10));
  ASSERT_TRUE(watcher.ok()) << watcher.status();

  auto run_until = [&](size_t count) {
    const auto deadline = EventLoop::Clock::now() + std::chrono::seconds(5);
    while (reloads.size() < count && EventLoop::Clock::now() < deadline)
      loop->RunOnce(std::chrono::milliseconds(10));
    ASSERT_EQ(reloads.size(), count);
  };

  Write(File(3));
  run_until(1);
  ASSERT_TRUE(reloads[0].ok()) << reloads[0].status();
  EXPECT_EQ(reloads[0]->added.size(), 2u);
  EXPECT_EQ((*registry)->Current()->size(), 3u);

  Write("workloads:\n  - name: x\n    bogus: 1\n");
  run_until(2);
  EXPECT_FALSE(reloads[1].ok());
  EXPECT_EQ((*registry)->Current()->size(), 3u);
  ASSERT_TRUE((*registry)->last_error().has_value());
  EXPECT_NE((*registry)->last_error()->find(path_ + ":3: unknown key 'bogus'"), std::string::npos);

  std::ofstream(path_) << File(2);  // an in-place write this time
  run_until(3);
  ASSERT_TRUE(reloads[2].ok()) << reloads[2].status();
  EXPECT_EQ(reloads[2]->removed.size(), 1u);
  EXPECT_EQ((*registry)->last_error(), std::nullopt);
}

TEST_F(WorkloadFileTest, ReadersNeverSeeAHalfAppliedReload) {
  Write(File(10));
  auto registry = WorkloadRegistry::Create(std::make_unique<StaticWorkloadFile>(path_));
  ASSERT_TRUE(registry.ok()) << registry.status();
  std::atomic<bool> stop = false;
  std::atomic<int> reads = 0;
  std::thread reader([&] {
    while (!stop) {
      std::shared_ptr<const WorkloadSnapshot> s = (*registry)->Current();
      // Every file version is internally consistent: all n workloads and their n addresses.
      size_t ips = 0;
      for (const Workload& w : s->all()) ips += w.ips.size();
      EXPECT_EQ(ips, s->size());
      const Workload* first = s->FindByIp(Ip("10.0.0.1"));
      EXPECT_TRUE(first != nullptr && first->name == "w0");
      EXPECT_EQ((*registry)->last_error(), std::nullopt);
      ++reads;
    }
  });
  for (int i = 0; i < 100; ++i) {
    Write(File(10 + i % 7 * 40));
    ASSERT_TRUE((*registry)->Reload().ok());
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
}

}  // namespace
}  // namespace meshtls::workload
