#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "meshtls/v1/status.pb.h"

namespace meshtls::inspect {

class EventBus;

namespace internal {
struct BusCore;
}  // namespace internal

// One reader's view of the bus: a bounded queue of the events its filter accepts. A reader that
// falls behind loses the oldest events, never the agent's memory; the loss is reported on the
// next event it gets (Event.dropped_before). Unsubscribes on Close() or destruction. Next() is
// meant for one reader thread; everything else is thread-safe.
class Subscription {
 public:
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // The oldest queued event, waiting up to `timeout` for one. nullopt on timeout or once closed
  // (queued events are still handed out after Close()).
  std::optional<v1::Event> Next(std::chrono::milliseconds timeout);
  // Unsubscribes and wakes a waiting Next(). Idempotent.
  void Close();

  bool closed() const;
  size_t capacity() const { return capacity_; }
  size_t queued() const;
  // The deepest the queue has been: never above capacity().
  size_t peak_queued() const;
  // Events this subscription lost to a full queue, in total.
  uint64_t dropped() const;

 private:
  friend class EventBus;
  Subscription(std::shared_ptr<internal::BusCore> core, v1::WatchEventsRequest filter,
               size_t capacity);
  bool Matches(const v1::Event& event) const;
  // Returns whether the oldest event had to make room; `depth`: the queue's length after.
  bool Push(std::shared_ptr<const v1::Event> event, size_t* depth);
  void CloseQueue();

  const std::weak_ptr<internal::BusCore> core_;
  const std::vector<int> kinds_;  // empty: all
  const std::string workload_;    // empty: all
  const size_t capacity_;

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  // Shared between subscribers: a published event is built once however many readers get it.
  std::deque<std::shared_ptr<const v1::Event>> queue_;
  uint64_t dropped_since_delivery_ = 0;
  uint64_t dropped_total_ = 0;
  size_t peak_ = 0;
  bool closed_ = false;
};

// Fans agent events (handshakes, denials, rotations, reloads) out to WatchEvents streams.
// Publish() is cheap and never waits on a reader: with no subscriber it does next to nothing,
// and a full subscription drops its oldest event instead of growing. Subscriptions may outlive
// the bus (they are closed when it goes).
class EventBus {
 public:
  EventBus();
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;

  // From any thread. Stamps Event.time with now when it is unset; clears dropped_before, which
  // only the bus sets.
  void Publish(v1::Event event);
  // `filter`: kinds (empty: all) and workload (exact Event.workload; empty: all). A capacity of
  // 0 is taken as 1.
  std::shared_ptr<Subscription> Subscribe(const v1::WatchEventsRequest& filter,
                                          size_t capacity = 1024);

  size_t subscriber_count() const;
  uint64_t published_total() const;
  // Events lost to slow readers, over every subscription past and present (for a metric).
  uint64_t dropped_total() const;
  // The deepest any subscription's queue has been (each stays within its capacity).
  size_t peak_queued() const;

 private:
  std::shared_ptr<internal::BusCore> core_;
};

}  // namespace meshtls::inspect
