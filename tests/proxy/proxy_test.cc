// The proxy's building blocks without root: the preamble exchange over a real TLS session, and
// the access-log line.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <future>

#include "meshtls/proxy/access_log.h"
#include "meshtls/proxy/tunnel_exchange.h"
#include "meshtls/tunnel/preamble.h"
#include "nlohmann/json.hpp"
#include "testing/test_util.h"

namespace meshtls::proxy {
namespace {

using meshtls::testing::Context;
using meshtls::testing::Handshake;
using meshtls::testing::LoopThread;

struct Exchanged {
  absl::Status status;
  std::string received;
};

Exchanged RunExchange(LoopThread& thread, tls::TlsSession& session, std::string out, size_t header,
                      TunnelExchange::LengthFn length) {
  std::promise<Exchanged> done;
  thread.Run([&] {
    TunnelExchange::Start(thread.loop(), session, std::move(out), header, std::move(length),
                          std::chrono::steady_clock::now() + std::chrono::seconds(5),
                          [&done](absl::Status status, std::string received) {
                            done.set_value({std::move(status), std::move(received)});
                          });
  });
  return done.get_future().get();
}

TEST(TunnelExchangeTest, ThePreambleAndResponseCrossAndTheFirstAppBytesStayBehind) {
  LoopThread thread;
  tls::SessionOptions client_options;
  client_options.role = tls::Role::kClient;
  tls::SessionOptions server_options;
  server_options.role = tls::Role::kServer;
  auto ends = Handshake(thread, Context("client"), Context("server"), client_options, server_options);
  ASSERT_TRUE(ends.client->handshake_done());
  ASSERT_TRUE(ends.server->handshake_done());

  tunnel::Preamble preamble;
  preamble.destination = *IpAddress::Parse("10.0.2.2");
  preamble.destination_port = 8080;
  preamble.source_workload = "default/sleep";
  // The client's first application bytes follow the preamble in the same flight.
  std::string flight = *tunnel::EncodePreamble(preamble) + "app-bytes";
  auto sent = RunExchange(thread, *ends.client, flight, 0, nullptr);
  ASSERT_TRUE(sent.status.ok()) << sent.status;

  auto got = RunExchange(thread, *ends.server, "", kPreambleHeader, PreambleLength);
  ASSERT_TRUE(got.status.ok()) << got.status;
  tunnel::PreambleParser parser;
  EXPECT_EQ(parser.Feed(got.received), got.received.size()) << "exactly one preamble was read";
  ASSERT_EQ(parser.state(), tunnel::PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(parser.preamble(), preamble);

  // What follows the preamble is still in the session, for the relay.
  char rest[64] = {};
  ssize_t n = 0;
  thread.Run([&] { n = TunnelRead(*ends.server, rest, sizeof(rest)); });
  ASSERT_EQ(n, 9);
  EXPECT_EQ(std::string(rest, 9), "app-bytes");

  auto answered = RunExchange(thread, *ends.server,
                              tunnel::EncodeResponse({tunnel::ResponseStatus::kDenied,
                                                      tunnel::ReasonCode::kPolicyDenied, "denied by DENY policy x"}),
                              0, nullptr);
  ASSERT_TRUE(answered.status.ok());
  auto response = RunExchange(thread, *ends.client, "", kResponseHeader, ResponseLength);
  ASSERT_TRUE(response.status.ok()) << response.status;
  tunnel::ResponseParser response_parser;
  response_parser.Feed(response.received);
  ASSERT_EQ(response_parser.state(), tunnel::ResponseParser::State::kDone);
  EXPECT_EQ(response_parser.response().reason, tunnel::ReasonCode::kPolicyDenied);
  EXPECT_EQ(response_parser.response().message, "denied by DENY policy x");
  thread.Run([&] {
    ends.client.reset();
    ends.server.reset();
  });
}

TEST(TunnelExchangeTest, APeerThatSendsNothingTimesOut) {
  LoopThread thread;
  tls::SessionOptions client_options;
  client_options.role = tls::Role::kClient;
  tls::SessionOptions server_options;
  server_options.role = tls::Role::kServer;
  auto ends = Handshake(thread, Context("client"), Context("server"), client_options, server_options);
  std::promise<absl::Status> done;
  thread.Run([&] {
    TunnelExchange::Start(thread.loop(), *ends.server, "", kPreambleHeader, PreambleLength,
                          std::chrono::steady_clock::now() + std::chrono::milliseconds(200),
                          [&done](absl::Status status, std::string) { done.set_value(status); });
  });
  absl::Status status = done.get_future().get();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  thread.Run([&] {
    ends.client.reset();
    ends.server.reset();
  });
}

TEST(MessageLengthTest, LengthsComeFromTheHeaders) {
  EXPECT_EQ(PreambleLength("MTLP"), 0u);
  EXPECT_EQ(PreambleLength(std::string("MTLP\x01\x00\x01\x02", 8)), 8u + 0x0102);
  EXPECT_EQ(ResponseLength(std::string("MTLR\x01\x00\x00\x00", 8)), 0u);
  EXPECT_EQ(ResponseLength(std::string("MTLR\x01\x00\x00\x00\x05", 9)), 14u);
}

TEST(AccessLogTest, OneJsonLinePerConnectionWithEveryField) {
  char path[] = "/tmp/meshtls-access-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    auto log = AccessLog::Create(path);
    ASSERT_TRUE(log.ok()) << log.status();
    ConnectionRecord record;
    record.direction = "inbound";
    record.source_identity = "spiffe://cluster.local/ns/default/sa/sleep";
    record.destination_address = "10.0.2.2:8080";
    record.bytes_sent = 12;
    record.bytes_received = 34;
    record.tls = true;
    record.result = "denied";
    record.reason = "policy_denied";
    record.detail = std::string("bad utf-8 \xff from a peer");
    (*log)->Write(record);
  }
  std::string line = meshtls::testing::ReadFile(path);
  unlink(path);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "exactly one line";
  auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["direction"], "inbound");
  EXPECT_EQ(json["src_identity"], "spiffe://cluster.local/ns/default/sa/sleep");
  EXPECT_EQ(json["bytes_sent"], 12);
  EXPECT_EQ(json["bytes_received"], 34);
  EXPECT_EQ(json["tls"], true);
  EXPECT_EQ(json["reason"], "policy_denied");
  EXPECT_TRUE(json.contains("duration_ms"));
  EXPECT_TRUE(json.contains("time"));
}

TEST(AccessLogTest, HandshakeEventLineHasTheIssuesFields) {
  char path[] = "/tmp/meshtls-access-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    auto log = AccessLog::Create(path);
    ASSERT_TRUE(log.ok()) << log.status();
    ConnectionRecord record;
    record.connection_id = 42;
    record.direction = "inbound";
    record.source_workload = "default/sleep";
    record.source_identity = "spiffe://other.example/ns/default/sa/sleep";
    record.destination_workload = "default/httpbin";
    record.reason = "unknown_ca";
    EXPECT_TRUE((*log)->WriteHandshake(record, false, std::chrono::microseconds(2500)));
  }
  const std::string line = meshtls::testing::ReadFile(path);
  unlink(path);
  auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["event"], "mtls_handshake");
  EXPECT_EQ(json["connection_id"], 42);
  EXPECT_EQ(json["src_workload"], "default/sleep");
  EXPECT_EQ(json["src_identity"], "spiffe://other.example/ns/default/sa/sleep");
  EXPECT_EQ(json["dst_workload"], "default/httpbin");
  EXPECT_EQ(json["result"], "failure");
  EXPECT_EQ(json["failure_reason"], "unknown_ca");
  EXPECT_TRUE(json.contains("tls_version"));
  EXPECT_DOUBLE_EQ(json["duration_ms"].get<double>(), 2.5);
}

// A flood of failing handshakes (a scanner, a peer with the wrong CA) writes a bounded number of
// lines; the rest are counted, none is lost without a trace.
TEST(AccessLogTest, HandshakeEventFloodIsBoundedAndCounted) {
  char path[] = "/tmp/meshtls-access-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  constexpr int kAttempts = 10'000;
  const HandshakeEventBudget budget{.per_second = 50, .burst = 200};
  uint64_t suppressed = 0;
  int refused = 0;
  const auto started = std::chrono::steady_clock::now();
  {
    auto log = AccessLog::Create(path, budget);
    ASSERT_TRUE(log.ok()) << log.status();
    ConnectionRecord record;
    record.direction = "inbound";
    record.reason = "not_tls";
    for (int i = 0; i < kAttempts; ++i) {
      record.connection_id = static_cast<uint64_t>(i + 1);
      if (!(*log)->WriteHandshake(record, false, std::chrono::microseconds(10))) ++refused;
    }
    suppressed = (*log)->handshake_events_suppressed();
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const std::string text = meshtls::testing::ReadFile(path);
  unlink(path);
  const auto lines = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  EXPECT_GE(lines, 200) << "the burst is written";
  EXPECT_LE(lines, 200 + static_cast<int>(50 * elapsed) + 1) << "after " << elapsed << " s";
  EXPECT_EQ(static_cast<int>(suppressed), kAttempts - lines);
  EXPECT_EQ(refused, kAttempts - lines);
}

TEST(AccessLogTest, BadTargetsAreClearErrors) {
  EXPECT_FALSE(AccessLog::Create("relative/path.log").ok());
  EXPECT_FALSE(AccessLog::Create("/dev/null/access.log").ok());  // a parent that is a file
  EXPECT_TRUE(AccessLog::Create("off").ok());
}

}  // namespace
}  // namespace meshtls::proxy
