#include "meshtls/common/event_loop.h"

#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "gtest/gtest.h"

namespace meshtls {
namespace {

using namespace std::chrono_literals;

TEST(EventLoopTest, DispatchesReadinessAndTimers) {
  auto loop = *EventLoop::Create();
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  int reads = 0;
  ASSERT_TRUE(loop->Add(fds[0], EPOLLIN, [&](uint32_t) {
                    char c;
                    ASSERT_EQ(::read(fds[0], &c, 1), 1);
                    ++reads;
                  }).ok());
  bool fired = false;
  loop->AddTimer(EventLoop::Clock::now() + 10ms, [&] { fired = true; });
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  for (int i = 0; i < 20 && (!fired || reads == 0); ++i) loop->RunOnce(50ms);
  EXPECT_EQ(reads, 1);
  EXPECT_TRUE(fired);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(EventLoopTest, RemovedWatchGetsNoEventsFromTheSameBatch) {
  auto loop = *EventLoop::Create();
  int a[2], b[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
  int calls = 0;
  // Whichever fires first removes the other; the other must then never run.
  ASSERT_TRUE(loop->Add(a[0], EPOLLIN, [&](uint32_t) { ++calls; loop->Remove(b[0]); loop->Remove(a[0]); }).ok());
  ASSERT_TRUE(loop->Add(b[0], EPOLLIN, [&](uint32_t) { ++calls; loop->Remove(a[0]); loop->Remove(b[0]); }).ok());
  ASSERT_EQ(::write(a[1], "x", 1), 1);
  ASSERT_EQ(::write(b[1], "x", 1), 1);
  loop->RunOnce(100ms);
  loop->RunOnce(10ms);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(loop->watch_count(), 0u);
  for (int fd : {a[0], a[1], b[0], b[1]}) ::close(fd);
}

TEST(EventLoopTest, CancelledTimerNeverFiresAndPostWorksAcrossThreads) {
  auto loop = *EventLoop::Create();
  bool fired = false;
  auto id = loop->AddTimer(EventLoop::Clock::now() + 5ms, [&] { fired = true; });
  loop->CancelTimer(id);
  std::thread other([&] { loop->Post([&] { loop->Stop(); }); });
  loop->Run();
  other.join();
  loop->RunOnce(20ms);
  EXPECT_FALSE(fired);
}

}  // namespace
}  // namespace meshtls

namespace meshtls {
namespace {

// An object owned by a watch that removes its own watch when destroyed, as a relay does.
struct SelfRemoving {
  EventLoop* loop;
  int fd;
  ~SelfRemoving() { loop->Remove(fd); }
};

TEST(EventLoopTest, DestroyingTheLoopWithLiveWatchesIsSafe) {
  auto loop = *EventLoop::Create();
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto owner = std::make_shared<SelfRemoving>(SelfRemoving{loop.get(), fds[0]});
  ASSERT_TRUE(loop->Add(fds[0], EPOLLIN, [owner](uint32_t) {}).ok());
  loop->AddTimer(EventLoop::Clock::now() + std::chrono::hours(1), [owner] {});
  owner.reset();
  loop.reset();  // must not touch freed memory (ASan) or crash
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace meshtls
