#include "meshtls/inspect/event_bus.h"

#include <algorithm>
#include <atomic>
#include <shared_mutex>
#include <utility>

#include "google/protobuf/util/time_util.h"

namespace meshtls::inspect {

namespace internal {

struct BusCore {
  // Publishers share the lock; only (un)subscribing takes it exclusively, so publishers on
  // different threads never wait for one another.
  std::shared_mutex mutex;
  std::vector<Subscription*> subscriptions;
  // Read without the lock so Publish() with nobody listening costs two atomics.
  std::atomic<size_t> subscriber_count{0};
  std::atomic<uint64_t> published{0};
  std::atomic<uint64_t> dropped{0};
  std::atomic<size_t> peak{0};
};

}  // namespace internal

namespace {

std::vector<int> Kinds(const v1::WatchEventsRequest& filter) {
  std::vector<int> kinds(filter.kinds().begin(), filter.kinds().end());
  std::sort(kinds.begin(), kinds.end());
  kinds.erase(std::unique(kinds.begin(), kinds.end()), kinds.end());
  return kinds;
}

}  // namespace

Subscription::Subscription(std::shared_ptr<internal::BusCore> core, v1::WatchEventsRequest filter,
                           size_t capacity)
    : core_(core),
      kinds_(Kinds(filter)),
      workload_(filter.workload()),
      capacity_(std::max<size_t>(capacity, 1)) {}

Subscription::~Subscription() { Close(); }

bool Subscription::Matches(const v1::Event& event) const {
  if (!kinds_.empty() && !std::binary_search(kinds_.begin(), kinds_.end(), event.kind())) {
    return false;
  }
  return workload_.empty() || event.workload() == workload_;
}

bool Subscription::Push(std::shared_ptr<const v1::Event> event, size_t* depth) {
  std::shared_ptr<const v1::Event> evicted;  // freed after the lock is released
  {
    std::lock_guard lock(mutex_);
    *depth = queue_.size();
    if (closed_) return false;
    if (queue_.size() >= capacity_) {
      evicted = std::move(queue_.front());
      queue_.pop_front();
      ++dropped_since_delivery_;
      ++dropped_total_;
    }
    queue_.push_back(std::move(event));
    *depth = queue_.size();
    peak_ = std::max(peak_, *depth);
  }
  ready_.notify_one();
  return evicted != nullptr;
}

std::optional<v1::Event> Subscription::Next(std::chrono::milliseconds timeout) {
  std::shared_ptr<const v1::Event> next;
  uint64_t dropped_before = 0;
  {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [this] { return !queue_.empty() || closed_; });
    if (queue_.empty()) return std::nullopt;
    next = std::move(queue_.front());
    queue_.pop_front();
    dropped_before = std::exchange(dropped_since_delivery_, 0);
  }
  // The copy is made outside the lock so that publishers are not held up by it.
  v1::Event out = *next;
  out.set_dropped_before(dropped_before);
  return out;
}

void Subscription::CloseQueue() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  ready_.notify_all();
}

void Subscription::Close() {
  if (std::shared_ptr<internal::BusCore> core = core_.lock()) {
    std::unique_lock lock(core->mutex);
    auto it = std::find(core->subscriptions.begin(), core->subscriptions.end(), this);
    if (it != core->subscriptions.end()) {
      core->subscriptions.erase(it);
      core->subscriber_count.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  CloseQueue();
}

bool Subscription::closed() const {
  std::lock_guard lock(mutex_);
  return closed_;
}

size_t Subscription::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

size_t Subscription::peak_queued() const {
  std::lock_guard lock(mutex_);
  return peak_;
}

uint64_t Subscription::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_total_;
}

EventBus::EventBus() : core_(std::make_shared<internal::BusCore>()) {}

EventBus::~EventBus() {
  std::unique_lock lock(core_->mutex);
  for (Subscription* subscription : core_->subscriptions) subscription->CloseQueue();
  core_->subscriptions.clear();
  core_->subscriber_count.store(0, std::memory_order_relaxed);
}

void EventBus::Publish(v1::Event event) {
  core_->published.fetch_add(1, std::memory_order_relaxed);
  if (core_->subscriber_count.load(std::memory_order_relaxed) == 0) return;
  if (!event.has_time()) {
    *event.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  }
  event.clear_dropped_before();
  auto shared = std::make_shared<const v1::Event>(std::move(event));
  std::shared_lock lock(core_->mutex);
  for (Subscription* subscription : core_->subscriptions) {
    if (!subscription->Matches(*shared)) continue;
    size_t depth = 0;
    if (subscription->Push(shared, &depth)) {
      core_->dropped.fetch_add(1, std::memory_order_relaxed);
    }
    size_t peak = core_->peak.load(std::memory_order_relaxed);
    while (depth > peak &&
           !core_->peak.compare_exchange_weak(peak, depth, std::memory_order_relaxed)) {
    }
  }
}

std::shared_ptr<Subscription> EventBus::Subscribe(const v1::WatchEventsRequest& filter,
                                                  size_t capacity) {
  // The constructor is private (only the bus registers subscriptions), so no make_shared.
  std::shared_ptr<Subscription> subscription(new Subscription(core_, filter, capacity));
  std::unique_lock lock(core_->mutex);
  core_->subscriptions.push_back(subscription.get());
  core_->subscriber_count.fetch_add(1, std::memory_order_relaxed);
  return subscription;
}

size_t EventBus::subscriber_count() const {
  return core_->subscriber_count.load(std::memory_order_relaxed);
}

uint64_t EventBus::published_total() const {
  return core_->published.load(std::memory_order_relaxed);
}

uint64_t EventBus::dropped_total() const { return core_->dropped.load(std::memory_order_relaxed); }

size_t EventBus::peak_queued() const { return core_->peak.load(std::memory_order_relaxed); }

}  // namespace meshtls::inspect
