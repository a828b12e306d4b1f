#include "meshtls/telemetry/metrics_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <civetweb.h>
#include <gtest/gtest.h>

#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "telemetry/scrape.h"

namespace meshtls::telemetry {
namespace {

using testing::FreePort;
using testing::HttpRequest;
using testing::ParseScrape;
using testing::Value;

// Readiness the test flips while the server runs.
class FakeReadiness {
 public:
  std::function<ReadinessReport()> Callback() {
    return [this] {
      std::lock_guard lock(mutex_);
      return report_;
    };
  }
  void Set(ReadinessReport report) {
    std::lock_guard lock(mutex_);
    report_ = std::move(report);
  }

 private:
  std::mutex mutex_;
  ReadinessReport report_;
};

MetricsServerOptions FreePorts() {
  MetricsServerOptions options;
  options.metrics_port = FreePort();
  do {
    options.readiness_port = FreePort();
  } while (options.readiness_port == options.metrics_port);
  return options;
}

// A listening socket holding `port` on 127.0.0.1, as another agent would.
UniqueFd Occupy(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)), 0)
      << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), 1), 0) << std::strerror(errno);
  return fd;
}

// promtool from PATH, or "" (the caller fails the test: it is a declared dependency).
std::string FindPromtool() {
  const char* path = std::getenv("PATH");
  for (std::string_view dir : Split(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = StrCat(dir, "/promtool");
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

// Runs `promtool check metrics` with `exposition` on stdin.
CommandResult PromtoolCheckMetrics(const std::string& promtool, const std::string& exposition) {
  std::filesystem::path input = std::filesystem::temp_directory_path() /
                                StrCat("meshtls-scrape-", ::getpid(), ".txt");
  std::ofstream(input) << exposition;
  std::string command = StrCat("'", promtool, "' check metrics < '", input.string(), "' 2>&1");
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    result.output = StrCat("popen: ", std::strerror(errno));
    return result;
  }
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  int status = ::pclose(pipe);
  std::filesystem::remove(input);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void UseEveryFamily(Metrics& metrics) {
  ConnectionLabels labels{.reporter = "destination",
                          .source_workload = "frontend",
                          .source_namespace = "shop",
                          .source_principal = "spiffe://cluster.local/ns/shop/sa/frontend",
                          .destination_workload = "backend",
                          .destination_namespace = "shop",
                          .destination_principal = "spiffe://cluster.local/ns/shop/sa/backend",
                          .mtls = true};
  metrics.ConnectionOpened(labels);
  metrics.BytesTransferred(labels, 4096, 512);
  metrics.ConnectionClosed(labels, 100, 10);
  metrics.Handshake(true, "");
  metrics.Handshake(false, "unknown_ca");
  metrics.HandshakeDuration(std::chrono::microseconds(1500));
  metrics.ConnectionsActive("ktls-splice", 1);
  metrics.PolicyDenial("policy_denied");
  metrics.KtlsUnavailable(false);
  metrics.BuildInfo("0.1.0", "ktls-splice");
  metrics.EventsDropped(1);
  metrics.SvidRenewal(true);
  metrics.SvidExpiry("spiffe://cluster.local/ns/shop/sa/backend",
                     std::chrono::system_clock::from_time_t(1'900'000'000));
}

TEST(MetricsServerTest, LiveScrapeMovesAndPassesPromtool) {
  auto metrics = std::make_shared<Metrics>();
  FakeReadiness readiness;
  const MetricsServerOptions options = FreePorts();
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start(options, metrics, readiness.Callback());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->metrics_port(), options.metrics_port);
  EXPECT_EQ((*server)->readiness_port(), options.readiness_port);

  testing::HttpResponse before = HttpRequest(options.metrics_port, "/metrics");
  ASSERT_EQ(before.status, 200) << before.body;
  EXPECT_EQ(Value(ParseScrape(before.body), "meshtls_events_dropped_total"), 0);

  UseEveryFamily(*metrics);
  testing::HttpResponse after = HttpRequest(options.metrics_port, "/metrics");
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_NE(after.headers["content-type"].find("text/plain"), std::string::npos);
  auto scrape = ParseScrape(after.body);
  EXPECT_EQ(Value(scrape, "meshtls_events_dropped_total"), 1);
  EXPECT_EQ(Value(scrape, "istio_tcp_sent_bytes_total", {{"reporter", "destination"}}), 4196);
  EXPECT_EQ(Value(scrape, "meshtls_handshake_duration_seconds_count"), 1);
  EXPECT_EQ(Value(scrape, "meshtls_build_info", {{"datapath", "ktls-splice"}}), 1);

  const std::string promtool = FindPromtool();
  ASSERT_FALSE(promtool.empty())
      << "promtool not found on PATH: install the Debian package 'prometheus' (it is in "
         "tools/install-deps.sh; run 'sudo make deps')";
  CommandResult check = PromtoolCheckMetrics(promtool, after.body);
  EXPECT_EQ(check.exit_code, 0) << "promtool check metrics:\n" << check.output << "\nscrape:\n" << after.body;
}

TEST(MetricsServerTest, ReadinessIs503WithReasonsUntilReady) {
  FakeReadiness readiness;
  readiness.Set({.ready = false,
                 .not_ready_reasons = {"certificates not loaded", "BPF not attached", "listeners not up"}});
  const MetricsServerOptions options = FreePorts();
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), readiness.Callback());
  ASSERT_TRUE(server.ok()) << server.status();

  testing::HttpResponse response = HttpRequest(options.readiness_port, "/healthz/ready");
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, "certificates not loaded\nBPF not attached\nlisteners not up\n");
  EXPECT_NE(response.headers["content-type"].find("text/plain"), std::string::npos);

  readiness.Set({.ready = false, .not_ready_reasons = {"listeners not up"}});
  response = HttpRequest(options.readiness_port, "/healthz/ready");
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, "listeners not up\n");

  readiness.Set({.ready = false, .not_ready_reasons = {}});
  response = HttpRequest(options.readiness_port, "/healthz/ready");
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, "not ready\n");

  readiness.Set({.ready = true, .not_ready_reasons = {}});
  response = HttpRequest(options.readiness_port, "/healthz/ready");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "ready\n");

  response = HttpRequest(options.readiness_port, "/healthz/ready", "HEAD");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "");
  EXPECT_EQ(HttpRequest(options.readiness_port, "/healthz/ready", "POST").status, 405);
}

TEST(MetricsServerTest, EachPortServesOnlyItsEndpoint) {
  FakeReadiness readiness;
  readiness.Set({.ready = true, .not_ready_reasons = {}});
  const MetricsServerOptions options = FreePorts();
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), readiness.Callback());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(HttpRequest(options.readiness_port, "/metrics").status, 404);
  EXPECT_EQ(HttpRequest(options.metrics_port, "/healthz/ready").status, 404);
  EXPECT_EQ(HttpRequest(options.metrics_port, "/").status, 404);
}

TEST(MetricsServerTest, ReadinessCallbackExceptionIsA503) {
  const MetricsServerOptions options = FreePorts();
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), []() -> ReadinessReport {
    throw std::runtime_error("policy store gone");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  testing::HttpResponse response = HttpRequest(options.readiness_port, "/healthz/ready");
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, "readiness check failed: policy store gone\n");
}

TEST(MetricsServerTest, BusyMetricsPortIsAClearError) {
  const MetricsServerOptions options = FreePorts();
  UniqueFd holder = Occupy(options.metrics_port);
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), [] { return ReadinessReport{}; });
  ASSERT_FALSE(server.ok());
  const std::string message(server.status().message());
  EXPECT_NE(message.find(StrCat("127.0.0.1:", options.metrics_port)), std::string::npos) << message;
  EXPECT_NE(message.find("Address already in use"), std::string::npos) << message;
  EXPECT_NE(message.find("/metrics"), std::string::npos) << message;
  std::cout << "busy metrics port: " << server.status() << "\n";
}

TEST(MetricsServerTest, BusyReadinessPortIsAClearErrorAndReleasesTheMetricsPort) {
  const MetricsServerOptions options = FreePorts();
  {
    UniqueFd holder = Occupy(options.readiness_port);
    auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), [] { return ReadinessReport{}; });
    ASSERT_FALSE(server.ok());
    const std::string message(server.status().message());
    EXPECT_NE(message.find(StrCat("127.0.0.1:", options.readiness_port)), std::string::npos) << message;
    EXPECT_NE(message.find("Address already in use"), std::string::npos) << message;
    EXPECT_NE(message.find("/healthz/ready"), std::string::npos) << message;
  }
  // The failed start must not keep the metrics port bound.
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), [] { return ReadinessReport{}; });
  EXPECT_TRUE(server.ok()) << server.status();
}

TEST(MetricsServerTest, SamePortTwiceIsRejected) {
  MetricsServerOptions options = FreePorts();
  options.readiness_port = options.metrics_port;
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(), [] { return ReadinessReport{}; });
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
}

TEST(MetricsServerTest, PortZeroPicksFreePorts) {
  MetricsServerOptions options;
  options.metrics_port = 0;
  options.readiness_port = 0;
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(),
                                     [] { return ReadinessReport{.ready = true, .not_ready_reasons = {}}; });
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_NE((*server)->metrics_port(), 0);
  ASSERT_NE((*server)->readiness_port(), 0);
  EXPECT_EQ(HttpRequest((*server)->metrics_port(), "/metrics").status, 200);
  EXPECT_EQ(HttpRequest((*server)->readiness_port(), "/healthz/ready").status, 200);
}

// Debian 12's civetweb (1.15) is built without USE_IPV6, so an IPv6 address must be refused
// up front with a clear reason rather than as a failed bind.
TEST(MetricsServerTest, Ipv6ServesOrIsAClearError) {
  UniqueFd probe(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 loopback{};
  loopback.sin6_family = AF_INET6;
  loopback.sin6_addr = in6addr_loopback;
  if (!probe || ::bind(probe.get(), reinterpret_cast<const sockaddr*>(&loopback), sizeof(loopback)) != 0) {
    GTEST_SKIP() << "no IPv6 loopback in this environment";
  }
  probe.reset();
  MetricsServerOptions options;
  options.address = *IpAddress::Parse("::1");
  options.metrics_port = FreePort("::1");
  do {
    options.readiness_port = FreePort("::1");
  } while (options.readiness_port == options.metrics_port);
  auto server = MetricsServer::Start(options, std::make_shared<Metrics>(),
                                     [] { return ReadinessReport{.ready = true, .not_ready_reasons = {}}; });
  if (mg_check_feature(MG_FEATURES_IPV6) == 0) {
    ASSERT_EQ(server.status().code(), absl::StatusCode::kUnimplemented) << server.status();
    EXPECT_NE(std::string(server.status().message()).find("IPv6"), std::string::npos) << server.status();
    return;
  }
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(HttpRequest(options.metrics_port, "/metrics", "GET", "::1").status, 200);
  EXPECT_EQ(HttpRequest(options.readiness_port, "/healthz/ready", "GET", "::1").status, 200);
}

}  // namespace
}  // namespace meshtls::telemetry
