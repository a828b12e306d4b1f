#include "meshtls/common/event_loop.h"

#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"

namespace meshtls {
namespace {

constexpr int kWakeFdKey = -1;

uint64_t PackKey(uint32_t generation, int fd) {
  return (static_cast<uint64_t>(generation) << 32) | static_cast<uint32_t>(fd);
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd epoll_fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd wake_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd) return ErrnoStatus(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = PackKey(0, kWakeFdKey);
  if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, wake_fd.get(), &ev) != 0) {
    return ErrnoStatus(errno, "epoll_ctl(eventfd)");
  }
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(epoll_fd), std::move(wake_fd)));
}

EventLoop::EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd)
    : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() {
  // Callbacks may own objects (relays, handshakes) whose destructors call Remove() or
  // CancelTimer(): empty the members first, then destroy the callbacks.
  auto watches = std::move(watches_);
  watches_.clear();
  auto timers = std::move(timers_);
  timers_.clear();
  timer_index_.clear();
  watches.clear();
  timers.clear();
}

absl::Status EventLoop::Add(int fd, uint32_t events, IoCallback callback) {
  if (watches_.contains(fd)) {
    return absl::AlreadyExistsError(StrCat("fd ", fd, " is already watched"));
  }
  const uint32_t generation = next_generation_++;
  if (next_generation_ == 0) next_generation_ = 1;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = PackKey(generation, fd);
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return ErrnoStatus(errno, StrCat("epoll_ctl(ADD, fd ", fd, ")"));
  }
  watches_[fd] = std::make_shared<Watch>(Watch{generation, std::move(callback)});
  return absl::OkStatus();
}

absl::Status EventLoop::Modify(int fd, uint32_t events) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return absl::NotFoundError(StrCat("fd ", fd, " not watched"));
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = PackKey(it->second->generation, fd);
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return ErrnoStatus(errno, StrCat("epoll_ctl(MOD, fd ", fd, ")"));
  }
  return absl::OkStatus();
}

void EventLoop::Remove(int fd) {
  if (watches_.erase(fd) == 0) return;
  // Fails harmlessly when the fd was already closed (the kernel dropped it from the set).
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

EventLoop::TimerId EventLoop::AddTimer(Clock::time_point when, std::function<void()> callback) {
  const TimerId id = next_timer_id_++;
  auto it = timers_.emplace(when, Timer{id, std::move(callback)});
  timer_index_[id] = it;
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_index_.find(id);
  if (it == timer_index_.end()) return;
  timers_.erase(it->second);
  timer_index_.erase(it);
}

void EventLoop::Post(std::function<void()> task) {
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(task));
  }
  const uint64_t one = 1;
  // A full eventfd counter still wakes the loop, so a failed write needs no handling.
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void EventLoop::Stop() {
  Post([this] {
    std::lock_guard lock(posted_mutex_);
    stopped_ = true;
  });
}

void EventLoop::Run() {
  while (RunOnce(std::chrono::hours(1))) {
  }
}

void EventLoop::DrainPosted() {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(wake_fd_.get(), &count, sizeof(count));
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(posted_mutex_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) task();
}

int EventLoop::NextTimeoutMs(std::chrono::milliseconds cap) const {
  if (timers_.empty()) return static_cast<int>(cap.count());
  auto until = std::chrono::ceil<std::chrono::milliseconds>(timers_.begin()->first - Clock::now());
  return static_cast<int>(std::clamp(until, std::chrono::milliseconds(0), cap).count());
}

void EventLoop::FireDueTimers() {
  const auto now = Clock::now();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_index_.erase(node.mapped().id);
    node.mapped().callback();
  }
}

bool EventLoop::RunOnce(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(posted_mutex_);
    if (stopped_) return false;
  }
  epoll_event events[64];
  const int n = ::epoll_wait(epoll_fd_.get(), events, 64, NextTimeoutMs(timeout));
  for (int i = 0; i < n; ++i) {
    const int fd = static_cast<int>(static_cast<uint32_t>(events[i].data.u64));
    const uint32_t generation = static_cast<uint32_t>(events[i].data.u64 >> 32);
    if (fd == kWakeFdKey) {
      DrainPosted();
      continue;
    }
    auto it = watches_.find(fd);
    // Skip events for watches removed (or replaced by a new watch on a reused fd) earlier in
    // this batch.
    if (it == watches_.end() || it->second->generation != generation) continue;
    std::shared_ptr<Watch> watch = it->second;  // keeps the callback alive if it removes itself
    watch->callback(events[i].events);
  }
  FireDueTimers();
  std::lock_guard lock(posted_mutex_);
  return !stopped_;
}

}  // namespace meshtls
