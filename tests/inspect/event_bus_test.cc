#include "meshtls/inspect/event_bus.h"

#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace meshtls::inspect {
namespace {

using namespace std::chrono_literals;

v1::Event Ev(v1::EventKind kind, const std::string& workload, const std::string& detail = "") {
  v1::Event event;
  event.set_kind(kind);
  event.set_workload(workload);
  event.set_detail(detail);
  return event;
}

v1::WatchEventsRequest Filter(std::vector<v1::EventKind> kinds, const std::string& workload = "") {
  v1::WatchEventsRequest filter;
  for (v1::EventKind kind : kinds) filter.add_kinds(kind);
  filter.set_workload(workload);
  return filter;
}

std::vector<std::string> Drain(Subscription& subscription) {
  std::vector<std::string> details;
  while (auto event = subscription.Next(0ms)) details.push_back(event->detail());
  return details;
}

TEST(EventBusTest, DeliversInOrderAndStampsTime) {
  EventBus bus;
  auto subscription = bus.Subscribe({});
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", "1"));
  v1::Event stamped = Ev(v1::EVENT_KIND_DENIAL, "default/web", "2");
  stamped.mutable_time()->set_seconds(1234);
  bus.Publish(stamped);

  auto first = subscription->Next(1s);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->detail(), "1");
  EXPECT_GT(first->time().seconds(), 1600000000);  // stamped with now
  EXPECT_EQ(first->dropped_before(), 0u);
  auto second = subscription->Next(1s);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->detail(), "2");
  EXPECT_EQ(second->time().seconds(), 1234);  // the publisher's time is kept
  EXPECT_EQ(bus.published_total(), 2u);
}

TEST(EventBusTest, NextTimesOutWhenNothingComes) {
  EventBus bus;
  auto subscription = bus.Subscribe({});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(subscription->Next(50ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 45ms);
  EXPECT_FALSE(subscription->closed());
}

TEST(EventBusTest, FiltersByKind) {
  EventBus bus;
  auto denials = bus.Subscribe(Filter({v1::EVENT_KIND_DENIAL}));
  auto rotations_and_reloads =
      bus.Subscribe(Filter({v1::EVENT_KIND_ROTATION, v1::EVENT_KIND_RELOAD}));
  auto everything = bus.Subscribe({});
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", "handshake"));
  bus.Publish(Ev(v1::EVENT_KIND_DENIAL, "default/web", "denial"));
  bus.Publish(Ev(v1::EVENT_KIND_ROTATION, "", "rotation"));
  bus.Publish(Ev(v1::EVENT_KIND_RELOAD, "", "reload"));
  bus.Publish(Ev(v1::EVENT_KIND_CLOSE, "default/web", "close"));

  EXPECT_EQ(Drain(*denials), std::vector<std::string>({"denial"}));
  EXPECT_EQ(Drain(*rotations_and_reloads), std::vector<std::string>({"rotation", "reload"}));
  EXPECT_EQ(Drain(*everything),
            std::vector<std::string>({"handshake", "denial", "rotation", "reload", "close"}));
}

TEST(EventBusTest, FiltersByWorkloadAndBoth) {
  EventBus bus;
  auto web = bus.Subscribe(Filter({}, "default/web"));
  auto web_denials = bus.Subscribe(Filter({v1::EVENT_KIND_DENIAL}, "default/web"));
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", "web handshake"));
  bus.Publish(Ev(v1::EVENT_KIND_DENIAL, "default/web", "web denial"));
  bus.Publish(Ev(v1::EVENT_KIND_DENIAL, "data/db", "db denial"));
  bus.Publish(Ev(v1::EVENT_KIND_DENIAL, "default/web2", "web2 denial"));  // no prefix match

  EXPECT_EQ(Drain(*web), std::vector<std::string>({"web handshake", "web denial"}));
  EXPECT_EQ(Drain(*web_denials), std::vector<std::string>({"web denial"}));
}

TEST(EventBusTest, FullQueueDropsOldestAndReportsDroppedBefore) {
  EventBus bus;
  auto subscription = bus.Subscribe({}, 3);
  for (int i = 1; i <= 10; ++i) {
    bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", std::to_string(i)));
  }
  EXPECT_EQ(subscription->queued(), 3u);
  EXPECT_EQ(subscription->peak_queued(), 3u);
  EXPECT_EQ(subscription->dropped(), 7u);
  EXPECT_EQ(bus.dropped_total(), 7u);
  EXPECT_EQ(bus.peak_queued(), 3u);

  auto eight = subscription->Next(0ms);
  ASSERT_TRUE(eight.has_value());
  EXPECT_EQ(eight->detail(), "8");
  EXPECT_EQ(eight->dropped_before(), 7u);
  auto nine = subscription->Next(0ms);
  ASSERT_TRUE(nine.has_value());
  EXPECT_EQ(nine->detail(), "9");
  EXPECT_EQ(nine->dropped_before(), 0u);  // the gap is reported once

  // A second gap: 10 is still queued, 11..15 push out 10..12.
  for (int i = 11; i <= 15; ++i) {
    bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", std::to_string(i)));
  }
  auto thirteen = subscription->Next(0ms);
  ASSERT_TRUE(thirteen.has_value());
  EXPECT_EQ(thirteen->detail(), "13");
  EXPECT_EQ(thirteen->dropped_before(), 3u);
  EXPECT_EQ(subscription->dropped(), 10u);
  EXPECT_EQ(subscription->peak_queued(), 3u);
}

TEST(EventBusTest, DropsAreCountedPerSubscription) {
  EventBus bus;
  auto small = bus.Subscribe({}, 2);
  auto large = bus.Subscribe({}, 100);
  auto filtered = bus.Subscribe(Filter({v1::EVENT_KIND_DENIAL}), 1);
  for (int i = 0; i < 10; ++i) bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", std::to_string(i)));
  EXPECT_EQ(small->dropped(), 8u);
  EXPECT_EQ(large->dropped(), 0u);
  EXPECT_EQ(filtered->dropped(), 0u);  // events its filter rejects never take room
  EXPECT_EQ(filtered->queued(), 0u);
  EXPECT_EQ(bus.dropped_total(), 8u);
  // Publishers may not forge the count.
  v1::Event forged = Ev(v1::EVENT_KIND_HANDSHAKE, "");
  forged.set_dropped_before(99);
  bus.Publish(forged);
  EXPECT_EQ(Drain(*large).size(), 11u);
  auto last = small->Next(0ms);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->dropped_before(), 9u);
}

TEST(EventBusTest, ZeroCapacityMeansOne) {
  EventBus bus;
  auto subscription = bus.Subscribe({}, 0);
  EXPECT_EQ(subscription->capacity(), 1u);
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "a"));
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "b"));
  auto event = subscription->Next(0ms);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->detail(), "b");
  EXPECT_EQ(event->dropped_before(), 1u);
}

// Every event a subscription accepted is accounted for: delivered, or reported as dropped on a
// later delivery, and each publisher's events arrive in the order it published them.
void RunManyPublishers(size_t capacity, bool slow_reader) {
  constexpr int kPublishers = 8;
  constexpr int kPerPublisher = 20000;
  EventBus bus;
  auto subscription = bus.Subscribe(Filter({v1::EVENT_KIND_HANDSHAKE}), capacity);
  std::atomic<int> running{kPublishers};
  std::vector<std::thread> publishers;
  for (int p = 0; p < kPublishers; ++p) {
    publishers.emplace_back([&bus, &running, p] {
      for (int i = 0; i < kPerPublisher; ++i) {
        bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, std::to_string(p), std::to_string(i)));
        bus.Publish(Ev(v1::EVENT_KIND_CLOSE, std::to_string(p), "filtered out"));
      }
      --running;
    });
  }
  uint64_t delivered = 0;
  uint64_t reported_dropped = 0;
  std::map<std::string, int> last_seen;
  auto consume = [&](const v1::Event& event) {
    ++delivered;
    reported_dropped += event.dropped_before();
    const int seq = std::stoi(event.detail());
    auto [it, inserted] = last_seen.try_emplace(event.workload(), seq);
    if (!inserted) {
      EXPECT_GT(seq, it->second) << "publisher " << event.workload() << " out of order";
      it->second = seq;
    }
  };
  while (running.load() > 0) {
    if (auto event = subscription->Next(10ms)) consume(*event);
    if (slow_reader) std::this_thread::sleep_for(50us);
  }
  for (std::thread& t : publishers) t.join();
  while (auto event = subscription->Next(0ms)) consume(*event);

  const uint64_t accepted = uint64_t{kPublishers} * kPerPublisher;
  EXPECT_EQ(delivered + reported_dropped, accepted);
  EXPECT_EQ(reported_dropped, subscription->dropped());
  EXPECT_EQ(bus.dropped_total(), subscription->dropped());
  EXPECT_LE(subscription->peak_queued(), capacity);
  EXPECT_LE(bus.peak_queued(), capacity);
  EXPECT_EQ(bus.published_total(), 2 * accepted);
  if (slow_reader) {
    EXPECT_GT(subscription->dropped(), 0u);
  }
}

TEST(EventBusTest, ManyPublishersOneSubscriberLosesNothingWithRoom) {
  RunManyPublishers(/*capacity=*/200000, /*slow_reader=*/false);
}

TEST(EventBusTest, ManyPublishersOneSlowSubscriberStaysBounded) {
  RunManyPublishers(/*capacity=*/64, /*slow_reader=*/true);
}

TEST(EventBusTest, CloseUnsubscribesAndWakesTheReader) {
  EventBus bus;
  auto subscription = bus.Subscribe({});
  EXPECT_EQ(bus.subscriber_count(), 1u);
  std::atomic<bool> woke{false};
  std::thread reader([&] {
    EXPECT_FALSE(subscription->Next(30s).has_value());
    woke = true;
  });
  std::this_thread::sleep_for(50ms);
  const auto start = std::chrono::steady_clock::now();
  subscription->Close();
  reader.join();
  EXPECT_TRUE(woke.load());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_TRUE(subscription->closed());
  EXPECT_EQ(bus.subscriber_count(), 0u);
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "after close"));
  EXPECT_EQ(subscription->queued(), 0u);
  subscription->Close();  // idempotent
  EXPECT_EQ(bus.subscriber_count(), 0u);
}

TEST(EventBusTest, DestructionUnsubscribes) {
  EventBus bus;
  auto keep = bus.Subscribe({});
  {
    auto temporary = bus.Subscribe({});
    EXPECT_EQ(bus.subscriber_count(), 2u);
  }
  EXPECT_EQ(bus.subscriber_count(), 1u);
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "x"));
  EXPECT_EQ(keep->queued(), 1u);
}

TEST(EventBusTest, QueuedEventsSurviveCloseButNothingNewArrives) {
  EventBus bus;
  auto subscription = bus.Subscribe({});
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "before"));
  subscription->Close();
  bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "after"));
  EXPECT_EQ(Drain(*subscription), std::vector<std::string>({"before"}));
}

TEST(EventBusTest, SubscriptionMayOutliveTheBus) {
  std::shared_ptr<Subscription> subscription;
  {
    EventBus bus;
    subscription = bus.Subscribe({});
    bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", "last"));
  }
  EXPECT_TRUE(subscription->closed());
  EXPECT_EQ(Drain(*subscription), std::vector<std::string>({"last"}));
  EXPECT_FALSE(subscription->Next(10ms).has_value());
  subscription->Close();
}

TEST(EventBusTest, PublishingWithoutSubscribersOnlyCounts) {
  EventBus bus;
  for (int i = 0; i < 1000; ++i) bus.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "", ""));
  EXPECT_EQ(bus.published_total(), 1000u);
  EXPECT_EQ(bus.dropped_total(), 0u);
  EXPECT_EQ(bus.subscriber_count(), 0u);
}

}  // namespace
}  // namespace meshtls::inspect
