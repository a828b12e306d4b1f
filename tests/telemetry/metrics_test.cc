#include "meshtls/telemetry/metrics.h"

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "meshtls/common/strings.h"
#include "telemetry/scrape.h"

namespace meshtls::telemetry {
namespace {

using testing::Find;
using testing::ParseScrape;
using testing::Value;

ConnectionLabels FrontendToBackend() {
  return {.reporter = "source",
          .source_workload = "frontend",
          .source_namespace = "shop",
          .source_principal = "spiffe://cluster.local/ns/shop/sa/frontend",
          .destination_workload = "backend",
          .destination_namespace = "shop",
          .destination_principal = "spiffe://cluster.local/ns/shop/sa/backend",
          .mtls = true};
}

const std::map<std::string, std::string> kFrontendToBackend = {
    {"reporter", "source"},
    {"source_workload", "frontend"},
    {"source_workload_namespace", "shop"},
    {"source_principal", "spiffe://cluster.local/ns/shop/sa/frontend"},
    {"destination_workload", "backend"},
    {"destination_workload_namespace", "shop"},
    {"destination_principal", "spiffe://cluster.local/ns/shop/sa/backend"},
    {"connection_security_policy", "mutual_tls"}};

const char* const kIstioFamilies[] = {"istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
                                      "istio_tcp_connections_opened_total",
                                      "istio_tcp_connections_closed_total"};

TEST(MetricsTest, ConnectionCountersMoveWithTheApi) {
  Metrics metrics;
  const ConnectionLabels labels = FrontendToBackend();
  metrics.ConnectionOpened(labels);
  metrics.ConnectionOpened(labels);
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total", kFrontendToBackend), 2);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_closed_total", kFrontendToBackend), 0);
  EXPECT_EQ(Value(scrape, "istio_tcp_sent_bytes_total", kFrontendToBackend), 0);

  // A long connection reports as it goes, then only the remainder at close.
  metrics.BytesTransferred(labels, 1000, 50);
  metrics.ConnectionClosed(labels, 24, 6);
  metrics.ConnectionClosed(labels, 100, 200);
  scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total", kFrontendToBackend), 2);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_closed_total", kFrontendToBackend), 2);
  EXPECT_EQ(Value(scrape, "istio_tcp_sent_bytes_total", kFrontendToBackend), 1124);
  EXPECT_EQ(Value(scrape, "istio_tcp_received_bytes_total", kFrontendToBackend), 256);
}

TEST(MetricsTest, ReporterAndSecurityPolicyAreSeparateSeries) {
  Metrics metrics;
  ConnectionLabels labels = FrontendToBackend();
  metrics.ConnectionOpened(labels);
  labels.reporter = "destination";
  metrics.ConnectionOpened(labels);
  labels.mtls = false;
  metrics.ConnectionOpened(labels);
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Find(scrape, "istio_tcp_connections_opened_total").size(), 3u);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total",
                  {{"reporter", "destination"}, {"connection_security_policy", "none"}}),
            1);
}

TEST(MetricsTest, MissingIdentitiesAreUnknownAsInIstio) {
  Metrics metrics;
  metrics.ConnectionOpened({.reporter = "destination", .destination_workload = "backend"});
  metrics.ConnectionOpened({.reporter = "sideways"});  // not a reporter: must not add a value
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total",
                  {{"reporter", "destination"},
                   {"source_workload", "unknown"},
                   {"source_principal", "unknown"},
                   {"destination_workload", "backend"},
                   {"connection_security_policy", "none"}}),
            1);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total",
                  {{"reporter", "unknown"}, {"destination_workload", "unknown"}}),
            1);
}

TEST(MetricsTest, ThousandConnectionsBetweenTwoWorkloadsAreOneSeriesPerFamily) {
  Metrics metrics;
  for (int i = 0; i < 1000; ++i) {
    ConnectionLabels labels = FrontendToBackend();  // a fresh copy per connection, as callers do
    metrics.ConnectionOpened(labels);
    metrics.BytesTransferred(labels, 10, 1);
    metrics.ConnectionClosed(labels, 90, 9);
  }
  const std::string text = metrics.Serialize();
  auto scrape = ParseScrape(text);
  for (const char* family : kIstioFamilies) {
    EXPECT_EQ(Find(scrape, family).size(), 1u) << family << " in\n" << text;
  }
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total"), 1000);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_closed_total"), 1000);
  EXPECT_EQ(Value(scrape, "istio_tcp_sent_bytes_total"), 100'000);
  EXPECT_EQ(Value(scrape, "istio_tcp_received_bytes_total"), 10'000);
}

TEST(MetricsTest, ConnectionLabelSetsAreCapped) {
  Metrics metrics;
  const size_t extra = 50;
  for (size_t i = 0; i < Metrics::kMaxConnectionLabelSets + extra; ++i) {
    ConnectionLabels labels = FrontendToBackend();
    labels.source_workload = StrCat("client-", i);
    metrics.ConnectionOpened(labels);
  }
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Find(scrape, "istio_tcp_connections_opened_total").size(),
            Metrics::kMaxConnectionLabelSets + 1);
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total",
                  {{"source_workload", "other"}, {"destination_principal", "other"}}),
            static_cast<double>(extra));
  // A label set seen before the cap keeps its own series.
  ConnectionLabels first = FrontendToBackend();
  first.source_workload = "client-0";
  metrics.ConnectionOpened(first);
  scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "istio_tcp_connections_opened_total", {{"source_workload", "client-0"}}), 2);
}

TEST(MetricsTest, HandshakesByResultAndReason) {
  Metrics metrics;
  auto scrape = ParseScrape(metrics.Serialize());
  // Present before the first handshake, so that rate() is 0 rather than absent.
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "success"}, {"reason", "none"}}), 0);

  metrics.Handshake(true, "");
  metrics.Handshake(true, "none");
  metrics.Handshake(false, "expired");
  metrics.Handshake(false, "unknown_ca");
  metrics.Handshake(false, "expired");
  scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "success"}, {"reason", "none"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "failure"}, {"reason", "expired"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "failure"}, {"reason", "unknown_ca"}}), 1);
}

TEST(MetricsTest, FreeTextReasonsAreCapped) {
  Metrics metrics;
  const int kReasons = 200;
  for (int i = 0; i < kReasons; ++i) {
    metrics.Handshake(false, StrCat("error message ", i));
    metrics.PolicyDenial(StrCat("denied by rule ", i));
  }
  auto scrape = ParseScrape(metrics.Serialize());
  std::vector<testing::Sample> failures = Find(scrape, "meshtls_handshakes_total", {{"result", "failure"}});
  // "none" counts as one of the values already.
  EXPECT_EQ(failures.size(), Metrics::kMaxValuesPerLabel);
  double total = 0;
  for (const auto& s : failures) total += s.value;
  EXPECT_EQ(total, kReasons);
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "failure"}, {"reason", "other"}}),
            kReasons - static_cast<int>(Metrics::kMaxValuesPerLabel - 1));
  EXPECT_EQ(Find(scrape, "meshtls_policy_denials_total").size(), Metrics::kMaxValuesPerLabel + 1);
  EXPECT_EQ(Value(scrape, "meshtls_policy_denials_total", {{"reason", "denied by rule 0"}}), 1);
}

TEST(MetricsTest, HandshakeDurationHistogramSpansHalfAMillisecondToTenSeconds) {
  Metrics metrics;
  metrics.HandshakeDuration(std::chrono::microseconds(300));   // under the first bucket
  metrics.HandshakeDuration(std::chrono::milliseconds(3));     // 5 ms bucket
  metrics.HandshakeDuration(std::chrono::seconds(30));         // only +Inf
  auto scrape = ParseScrape(metrics.Serialize());
  std::vector<testing::Sample> buckets = Find(scrape, "meshtls_handshake_duration_seconds_bucket");
  ASSERT_FALSE(buckets.empty());
  EXPECT_EQ(std::stod(buckets.front().labels.at("le")), 0.0005);
  EXPECT_EQ(buckets.back().labels.at("le"), "+Inf");
  EXPECT_EQ(std::stod(buckets[buckets.size() - 2].labels.at("le")), 10);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_bucket", {{"le", "0.0005"}}), 1);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_bucket", {{"le", "0.005"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_bucket", {{"le", "10"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_count"), 3);
  EXPECT_NEAR(*Value(scrape, "meshtls_handshake_duration_seconds_sum"), 30.0033, 1e-9);
}

TEST(MetricsTest, GaugesAndOtherCounters) {
  Metrics metrics;
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "meshtls_ktls_unavailable"), 0);
  EXPECT_EQ(Value(scrape, "meshtls_events_dropped_total"), 0);
  EXPECT_EQ(Value(scrape, "meshtls_build_info"), std::nullopt);

  metrics.ConnectionsActive("ktls-splice", 3);
  metrics.ConnectionsActive("ktls-splice", -1);
  metrics.ConnectionsActive("userspace-tls", 1);
  metrics.KtlsUnavailable(true);
  metrics.EventsDropped(7);
  metrics.EventsDropped(3);
  metrics.BuildInfo("0.1.0", "userspace-tls");
  metrics.BuildInfo("0.1.0", "ktls-splice");  // replaces, never two build_info series
  scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "meshtls_connections_active", {{"datapath", "ktls-splice"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_connections_active", {{"datapath", "userspace-tls"}}), 1);
  EXPECT_EQ(Value(scrape, "meshtls_ktls_unavailable"), 1);
  EXPECT_EQ(Value(scrape, "meshtls_events_dropped_total"), 10);
  ASSERT_EQ(Find(scrape, "meshtls_build_info").size(), 1u);
  EXPECT_EQ(Value(scrape, "meshtls_build_info", {{"version", "0.1.0"}, {"datapath", "ktls-splice"}}), 1);

  metrics.KtlsUnavailable(false);
  EXPECT_EQ(Value(ParseScrape(metrics.Serialize()), "meshtls_ktls_unavailable"), 0);
}

TEST(MetricsTest, SvidFamiliesStillWork) {
  Metrics metrics;
  metrics.SvidRenewal(true);
  metrics.SvidRenewal(false);
  metrics.SvidRenewal(true);
  const std::string id = "spiffe://cluster.local/ns/shop/sa/frontend";
  metrics.SvidExpiry(id, std::chrono::system_clock::from_time_t(1'900'000'000));
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Value(scrape, "meshtls_svid_rotations_total", {{"result", "success"}}), 2);
  EXPECT_EQ(Value(scrape, "meshtls_svid_rotations_total", {{"result", "failure"}}), 1);
  EXPECT_EQ(Value(scrape, "meshtls_certificate_expiration_timestamp_seconds", {{"spiffe_id", id}}),
            1'900'000'000);
  metrics.ForgetSvid(id);
  EXPECT_EQ(Value(ParseScrape(metrics.Serialize()), "meshtls_certificate_expiration_timestamp_seconds"),
            std::nullopt);
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  Metrics metrics;
  const int kThreads = 4, kPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      ConnectionLabels labels = FrontendToBackend();
      labels.destination_workload = StrCat("backend-", t % 2);
      for (int i = 0; i < kPerThread; ++i) {
        metrics.ConnectionOpened(labels);
        metrics.ConnectionsActive("userspace-tls", 1);
        metrics.Handshake(i % 2 == 0, i % 2 == 0 ? "" : "peer_reset");
        metrics.ConnectionClosed(labels, 1, 2);
        metrics.ConnectionsActive("userspace-tls", -1);
      }
    });
  }
  for (int i = 0; i < 20; ++i) ParseScrape(metrics.Serialize());  // scrapes race the updates
  for (auto& thread : threads) thread.join();
  auto scrape = ParseScrape(metrics.Serialize());
  EXPECT_EQ(Find(scrape, "istio_tcp_connections_opened_total").size(), 2u);
  double opened = 0;
  for (const auto& s : Find(scrape, "istio_tcp_connections_opened_total")) opened += s.value;
  EXPECT_EQ(opened, kThreads * kPerThread);
  EXPECT_EQ(Value(scrape, "meshtls_connections_active", {{"datapath", "userspace-tls"}}), 0);
  EXPECT_EQ(Value(scrape, "meshtls_handshakes_total", {{"result", "failure"}, {"reason", "peer_reset"}}),
            kThreads * kPerThread / 2);
}

}  // namespace
}  // namespace meshtls::telemetry
