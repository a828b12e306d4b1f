#include "meshtls/common/file_watcher.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace meshtls {
namespace {

class FileWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/meshtls-watch-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    loop_ = *EventLoop::Create();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs the loop until `calls` reaches `want` or a second passes.
  void RunUntil(const int& calls, int want) {
    auto deadline = EventLoop::Clock::now() + std::chrono::seconds(1);
    while (calls < want && EventLoop::Clock::now() < deadline) loop_->RunOnce(std::chrono::milliseconds(10));
  }

  std::string dir_;
  std::unique_ptr<EventLoop> loop_;
};

TEST_F(FileWatcherTest, SeesInPlaceWritesAndRenamesOfAWatchedFileButNotItsNeighbours) {
  std::string file = dir_ + "/workloads.yaml";
  std::ofstream(file) << "a";
  int calls = 0;
  auto watcher = FileWatcher::Create(*loop_, {file}, std::chrono::milliseconds(20), [&] { ++calls; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();

  std::ofstream(dir_ + "/other.txt") << "x";
  loop_->RunOnce(std::chrono::milliseconds(100));
  loop_->RunOnce(std::chrono::milliseconds(50));
  EXPECT_EQ(calls, 0);

  std::ofstream(file) << "b";
  RunUntil(calls, 1);
  EXPECT_EQ(calls, 1);

  std::ofstream(dir_ + "/tmp.yaml") << "c";
  std::filesystem::rename(dir_ + "/tmp.yaml", file);
  RunUntil(calls, 2);
  EXPECT_EQ(calls, 2);
}

TEST_F(FileWatcherTest, ABurstOfChangesInADirectoryIsOneCallback) {
  int calls = 0;
  auto watcher = FileWatcher::Create(*loop_, {dir_}, std::chrono::milliseconds(50), [&] { ++calls; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  for (int i = 0; i < 5; ++i) std::ofstream(dir_ + "/p" + std::to_string(i) + ".yaml") << i;
  RunUntil(calls, 1);
  loop_->RunOnce(std::chrono::milliseconds(100));
  EXPECT_EQ(calls, 1);
}

TEST(FileWatcherErrorTest, AMissingDirectoryIsAClearError) {
  auto loop = *EventLoop::Create();
  auto watcher = FileWatcher::Create(*loop, {"/nonexistent/meshtls/policies/"}, std::chrono::milliseconds(10), [] {});
  ASSERT_FALSE(watcher.ok());
  EXPECT_NE(std::string(watcher.status().message()).find("/nonexistent/meshtls/policies"), std::string::npos);
}

}  // namespace
}  // namespace meshtls
