#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/unique_fd.h"

namespace meshtls {

// A single-threaded, level-triggered epoll loop with timers and a thread-safe Post().
//
// Hand-written rather than libevent/libuv: the data path needs splice() between sockets and pipes,
// kTLS sockets that must never be read through a library's buffers, and exact control over
// which direction is armed (that is how backpressure works). Those libraries' buffered I/O
// layers would have to be bypassed entirely, leaving only their ~100 lines of epoll glue.
class EventLoop {
 public:
  using Clock = std::chrono::steady_clock;
  using IoCallback = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Watches fd for `events` (EPOLLIN, EPOLLOUT, ...). The callback may add, modify or remove any
  // watch, including its own; events for a removed watch are never delivered.
  absl::Status Add(int fd, uint32_t events, IoCallback callback);
  absl::Status Modify(int fd, uint32_t events);
  void Remove(int fd);

  TimerId AddTimer(Clock::time_point when, std::function<void()> callback);
  void CancelTimer(TimerId id);

  // Runs `task` on the loop thread. Safe to call from any thread.
  void Post(std::function<void()> task);

  // Runs until Stop(). Stop() is safe to call from any thread.
  void Run();
  void Stop();
  // One round of waiting (at most `timeout`) and dispatching. Returns false once stopped.
  bool RunOnce(std::chrono::milliseconds timeout);

  size_t watch_count() const { return watches_.size(); }

 private:
  struct Watch {
    uint32_t generation;
    IoCallback callback;
  };
  struct Timer {
    TimerId id;
    std::function<void()> callback;
  };

  EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd);
  void DrainPosted();
  int NextTimeoutMs(std::chrono::milliseconds cap) const;
  void FireDueTimers();

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  uint32_t next_generation_ = 1;
  std::unordered_map<int, std::shared_ptr<Watch>> watches_;
  std::multimap<Clock::time_point, Timer> timers_;
  std::unordered_map<TimerId, std::multimap<Clock::time_point, Timer>::iterator> timer_index_;
  TimerId next_timer_id_ = 1;

  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  bool stopped_ = false;  // guarded by posted_mutex_ for cross-thread Stop()
};

}  // namespace meshtls
