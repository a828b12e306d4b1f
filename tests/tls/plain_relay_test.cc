#include "meshtls/tls/plain_relay.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <future>
#include <string>
#include <thread>

#include "testing/test_util.h"

namespace meshtls::tls {
namespace {

using meshtls::testing::LoopThread;
using meshtls::testing::TcpPair;

std::string ReadToEof(int fd) {
  std::string out;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return n == 0 ? out : out + "<error>";
    out.append(buffer, static_cast<size_t>(n));
  }
}

struct RelayEnds {
  UniqueFd app, server;
  std::promise<PlainRelayResult> done;
};

// app <-> [a relay b] <-> server, over two loopback TCP connections.
void StartRelay(LoopThread& thread, RelayEnds& setup, bool a_read_with_recv) {
  auto [app, relay_a] = TcpPair();
  auto [relay_b, server] = TcpPair();
  setup.app = std::move(app);
  setup.server = std::move(server);
  PlainRelayOptions options;
  options.a_read_with_recv = a_read_with_recv;
  auto a = std::make_shared<UniqueFd>(std::move(relay_a));
  auto b = std::make_shared<UniqueFd>(std::move(relay_b));
  thread.Run([&, a, b] {
    auto relay = PlainRelay::Start(thread.loop(), std::move(*a), std::move(*b), options,
                                   [&setup](const PlainRelayResult& r) { setup.done.set_value(r); });
    ASSERT_TRUE(relay.ok()) << relay.status();
  });
}

class PlainRelayTest : public ::testing::TestWithParam<bool> {};

TEST_P(PlainRelayTest, CarriesBothDirectionsWithHalfCloseAndCountsBytes) {
  LoopThread thread;
  RelayEnds setup;
  StartRelay(thread, setup, GetParam());
  std::string upload(3 << 20, 'u');
  for (size_t i = 0; i < upload.size(); ++i) upload[i] = static_cast<char>('a' + i % 23);
  std::thread client([&] {
    ASSERT_EQ(::send(setup.app.get(), upload.data(), upload.size(), MSG_NOSIGNAL), static_cast<ssize_t>(upload.size()));
    ::shutdown(setup.app.get(), SHUT_WR);
  });
  EXPECT_EQ(ReadToEof(setup.server.get()), upload) << "the upload must arrive whole, then EOF";
  client.join();
  // The other direction still works after the first one closed.
  const std::string reply = "reply after half-close";
  ASSERT_EQ(::send(setup.server.get(), reply.data(), reply.size(), MSG_NOSIGNAL), static_cast<ssize_t>(reply.size()));
  ::shutdown(setup.server.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(setup.app.get()), reply);
  auto result = setup.done.get_future().get();
  EXPECT_EQ(result.reason, FailureReason::kNone) << result.detail;
  EXPECT_EQ(result.bytes_a_to_b, upload.size());
  EXPECT_EQ(result.bytes_b_to_a, reply.size());
}

TEST_P(PlainRelayTest, AResetOnOneSideResetsTheOther) {
  LoopThread thread;
  RelayEnds setup;
  StartRelay(thread, setup, GetParam());
  ASSERT_EQ(::send(setup.app.get(), "x", 1, MSG_NOSIGNAL), 1);
  char c;
  ASSERT_EQ(::recv(setup.server.get(), &c, 1, 0), 1);
  const linger reset{1, 0};
  ::setsockopt(setup.server.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  setup.server.reset();
  auto result = setup.done.get_future().get();
  EXPECT_EQ(result.reason, FailureReason::kPeerReset) << result.detail;
  char buffer[16];
  EXPECT_EQ(::recv(setup.app.get(), buffer, sizeof(buffer), 0), -1);
  EXPECT_EQ(errno, ECONNRESET) << "the application must see a reset, not a clean end";
}

INSTANTIATE_TEST_SUITE_P(ReadModes, PlainRelayTest, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "recv" : "splice"; });

}  // namespace
}  // namespace meshtls::tls
