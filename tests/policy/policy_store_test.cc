#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/policy/policy.h"

namespace meshtls::policy {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr char kStrictMesh[] = R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
)";
constexpr char kDenyAll[] = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec: {}
)";
constexpr char kBad[] = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec:
  rules:
  - from:
    - source: {principal: [x]}
)";

class PolicyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-policy-store-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    loop_ = *EventLoop::Create();
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }
  // Written under a temporary name and renamed, as kubectl cp or an editor would.
  void Write(const std::string& name, const std::string& content) {
    std::string temporary = dir_ + "/." + name + ".tmp";
    std::ofstream(temporary) << content;
    fs::rename(temporary, dir_ + "/" + name);
  }
  void CreateStore() {
    auto store = PolicyStore::Create(*loop_, dir_, "istio-system",
                                     [this](const std::shared_ptr<const PolicySet>& set) {
                                       ++reloads_;
                                       last_ = set;
                                     });
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  // Runs the loop until `done` or 5 s.
  bool RunUntil(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      loop_->RunOnce(50ms);
    }
    return true;
  }

  std::string dir_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<PolicyStore> store_;
  int reloads_ = 0;
  std::shared_ptr<const PolicySet> last_;
};

TEST_F(PolicyStoreTest, HotReloadPicksUpANewFile) {
  Write("mesh.yaml", kStrictMesh);
  CreateStore();
  auto initial = store_->Current();
  EXPECT_EQ(initial->peer_authentication_count(), 1u);
  EXPECT_EQ(initial->authorization_policy_count(), 0u);
  EXPECT_EQ(reloads_, 0);

  Write("deny.yaml", kDenyAll);
  ASSERT_TRUE(RunUntil([&] { return reloads_ > 0; }));
  EXPECT_EQ(store_->Current(), last_);
  EXPECT_EQ(store_->Current()->authorization_policy_count(), 1u);
  EXPECT_FALSE(store_->Current()->Authorize(PolicyTarget{"foo", {}}, SourceAttributes{}).allowed);
  // The old snapshot is untouched for whoever still holds it.
  EXPECT_EQ(initial->authorization_policy_count(), 0u);
  EXPECT_FALSE(store_->last_error().has_value());

  fs::remove(dir_ + "/deny.yaml");
  ASSERT_TRUE(RunUntil([&] { return store_->Current()->authorization_policy_count() == 0; }));
}

TEST_F(PolicyStoreTest, BadFileKeepsTheLastGoodSetUntilFixed) {
  Write("mesh.yaml", kStrictMesh);
  CreateStore();
  auto good = store_->Current();

  Write("deny.yaml", kBad);
  ASSERT_TRUE(RunUntil([&] { return store_->last_error().has_value(); }));
  EXPECT_EQ(store_->Current(), good);
  EXPECT_EQ(reloads_, 0);
  EXPECT_NE(store_->last_error()->find(dir_ + "/deny.yaml:7: AuthorizationPolicy foo/deny-all: unknown field "
                                              "'principal' in source (did you mean 'principals'?)"),
            std::string::npos)
      << *store_->last_error();
  // SIGHUP path: same error, same set.
  absl::Status explicit_reload = store_->Reload();
  EXPECT_FALSE(explicit_reload.ok());
  EXPECT_EQ(store_->Current(), good);

  Write("deny.yaml", kDenyAll);
  ASSERT_TRUE(RunUntil([&] { return reloads_ > 0; }));
  EXPECT_FALSE(store_->last_error().has_value());
  EXPECT_EQ(store_->Current()->authorization_policy_count(), 1u);

  EXPECT_TRUE(store_->Reload().ok());
  EXPECT_EQ(reloads_, 2);
}

TEST_F(PolicyStoreTest, InitialLoadFailureIsAnError) {
  Write("bad.yaml", kBad);
  auto store = PolicyStore::Create(*loop_, dir_, "istio-system", nullptr);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(std::string(store.status().message()).find("bad.yaml:7:"), std::string::npos) << store.status();
  auto missing = PolicyStore::Create(*loop_, dir_ + "/missing", "istio-system", nullptr);
  EXPECT_FALSE(missing.ok());
}

TEST_F(PolicyStoreTest, ConfigMapSymlinkSwapIsSeen) {
  // The layout kubelet gives a ConfigMap volume, and its atomic update by renaming "..data".
  fs::create_directory(dir_ + "/..v1");
  std::ofstream(dir_ + "/..v1/policy.yaml") << kStrictMesh;
  fs::create_directory_symlink("..v1", dir_ + "/..data");
  fs::create_symlink("..data/policy.yaml", dir_ + "/policy.yaml");
  CreateStore();
  EXPECT_EQ(store_->Current()->authorization_policy_count(), 0u);

  fs::create_directory(dir_ + "/..v2");
  std::ofstream(dir_ + "/..v2/policy.yaml") << kStrictMesh << "---\n" << kDenyAll;
  fs::create_directory_symlink("..v2", dir_ + "/..data_tmp");
  fs::rename(dir_ + "/..data_tmp", dir_ + "/..data");
  ASSERT_TRUE(RunUntil([&] { return reloads_ > 0; }));
  EXPECT_EQ(store_->Current()->authorization_policy_count(), 1u);
}

}  // namespace
}  // namespace meshtls::policy
