// Relay correctness for both datapaths: random payloads both ways, half-close, an empty stream,
// a large stream with a checksum, backpressure, and resets that must not look like clean ends.
// ktls-splice needs kTLS: on a kernel without it the test skips loudly, and tests/vm runs it.
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/socket.h>

#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/relay.h"
#include "testing/test_util.h"

namespace meshtls::tls {
namespace {

using meshtls::testing::LoopThread;
using meshtls::testing::RelayPair;
using namespace std::chrono_literals;

// Deterministic pseudo-random bytes (xorshift64*): cheap enough for gigabytes.
class ByteStream {
 public:
  explicit ByteStream(uint64_t seed) : state_(seed | 1) {}
  void Fill(uint8_t* out, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (avail_ == 0) {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        word_ = state_ * 0x2545F4914F6CDD1DULL;
        avail_ = 8;
      }
      out[i] = static_cast<uint8_t>(word_);
      word_ >>= 8;
      --avail_;
    }
  }

 private:
  uint64_t state_;
  uint64_t word_ = 0;
  int avail_ = 0;
};

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  void Update(const uint8_t* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }
  std::string Final() {
    unsigned char md[32];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    return std::string(reinterpret_cast<char*>(md), len);
  }

 private:
  EVP_MD_CTX* ctx_;
};

struct StreamDigest {
  uint64_t bytes = 0;
  std::string sha256;
};

// Writes `total` pseudo-random bytes in random-sized chunks, then half-closes if asked.
StreamDigest WriteStream(int fd, uint64_t total, uint64_t seed, bool half_close) {
  ByteStream bytes(seed);
  std::mt19937 sizes(static_cast<uint32_t>(seed));
  std::vector<uint8_t> buf(256 * 1024);
  Sha256 sha;
  uint64_t sent = 0;
  while (sent < total) {
    const size_t chunk = std::min<uint64_t>(total - sent, 1 + sizes() % buf.size());
    bytes.Fill(buf.data(), chunk);
    sha.Update(buf.data(), chunk);
    size_t off = 0;
    while (off < chunk) {
      const ssize_t n = ::send(fd, buf.data() + off, chunk - off, MSG_NOSIGNAL);
      if (n <= 0) return {sent + off, "<send failed>"};
      off += static_cast<size_t>(n);
    }
    sent += chunk;
  }
  if (half_close) ::shutdown(fd, SHUT_WR);
  return {sent, sha.Final()};
}

// Reads until EOF. `error` is set if the stream ended with an error instead of EOF.
StreamDigest ReadStream(int fd, int* error = nullptr) {
  std::vector<uint8_t> buf(256 * 1024);
  Sha256 sha;
  uint64_t total = 0;
  while (true) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n == 0) break;
    if (n < 0) {
      if (error) *error = errno;
      break;
    }
    sha.Update(buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  return {total, sha.Final()};
}

RelayResult Await(std::future<RelayResult>& f) {
  if (f.wait_for(60s) != std::future_status::ready) {
    ADD_FAILURE() << "relay did not close within 60 s";
    return RelayResult{FailureReason::kInternal, "timeout", {}, {}};
  }
  return f.get();
}

class RelayTest : public ::testing::TestWithParam<Datapath> {
 protected:
  void SetUp() override {
    if (!meshtls::testing::RequireDatapath(GetParam())) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  }
  LoopThread loop_;
};

TEST_P(RelayTest, RandomPayloadsBothWaysAtOnce) {
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  constexpr uint64_t kUp = 8 << 20, kDown = 5 << 20;
  StreamDigest up_sent, down_sent, up_got, down_got;
  std::thread client_writer([&] { up_sent = WriteStream(pair.app_client.get(), kUp, 1, true); });
  std::thread server_writer([&] { down_sent = WriteStream(pair.app_server.get(), kDown, 2, true); });
  std::thread client_reader([&] { down_got = ReadStream(pair.app_client.get()); });
  up_got = ReadStream(pair.app_server.get());
  client_writer.join();
  server_writer.join();
  client_reader.join();
  EXPECT_EQ(up_got.bytes, kUp);
  EXPECT_EQ(up_got.sha256, up_sent.sha256);
  EXPECT_EQ(down_got.bytes, kDown);
  EXPECT_EQ(down_got.sha256, down_sent.sha256);
  RelayResult client = Await(pair.client_result), server = Await(pair.server_result);
  EXPECT_EQ(client.reason, FailureReason::kNone) << client.detail;
  EXPECT_EQ(server.reason, FailureReason::kNone) << server.detail;
  EXPECT_EQ(client.stats.bytes_to_tunnel, kUp);
  EXPECT_EQ(client.stats.bytes_from_tunnel, kDown);
  EXPECT_EQ(server.stats.bytes_from_tunnel, kUp);
  EXPECT_EQ(server.stats.bytes_to_tunnel, kDown);
}

TEST_P(RelayTest, HalfCloseKeepsTheOtherDirectionOpen) {
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  StreamDigest sent = WriteStream(pair.app_client.get(), 1 << 20, 3, /*half_close=*/true);
  StreamDigest got = ReadStream(pair.app_server.get());  // ends at the client's FIN
  EXPECT_EQ(got.sha256, sent.sha256);
  // The server answers after the client finished sending: the reverse direction still flows.
  std::this_thread::sleep_for(50ms);
  StreamDigest reply = WriteStream(pair.app_server.get(), 3 << 20, 4, true);
  StreamDigest reply_got = ReadStream(pair.app_client.get());
  EXPECT_EQ(reply_got.bytes, 3u << 20);
  EXPECT_EQ(reply_got.sha256, reply.sha256);
  EXPECT_EQ(Await(pair.client_result).reason, FailureReason::kNone);
  EXPECT_EQ(Await(pair.server_result).reason, FailureReason::kNone);
}

TEST_P(RelayTest, EmptyStreamClosesCleanly) {
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  ::shutdown(pair.app_client.get(), SHUT_WR);
  EXPECT_EQ(ReadStream(pair.app_server.get()).bytes, 0u);
  ::shutdown(pair.app_server.get(), SHUT_WR);
  EXPECT_EQ(ReadStream(pair.app_client.get()).bytes, 0u);
  RelayResult client = Await(pair.client_result), server = Await(pair.server_result);
  EXPECT_EQ(client.reason, FailureReason::kNone) << client.detail;
  EXPECT_EQ(server.reason, FailureReason::kNone) << server.detail;
  EXPECT_EQ(client.stats.bytes_to_tunnel + client.stats.bytes_from_tunnel, 0u);
}

TEST_P(RelayTest, LargeStreamWithChecksum) {
  // 1 GiB on the host; the VM harness sets a smaller size (TCG emulates the crypto).
  uint64_t total = 1ULL << 30;
  if (const char* env = std::getenv("MESHTLS_LARGE_STREAM_BYTES")) total = std::strtoull(env, nullptr, 10);
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  StreamDigest sent;
  std::thread writer([&] { sent = WriteStream(pair.app_client.get(), total, 5, true); });
  StreamDigest got = ReadStream(pair.app_server.get());
  writer.join();
  ::shutdown(pair.app_server.get(), SHUT_WR);
  EXPECT_EQ(got.bytes, total);
  EXPECT_EQ(got.sha256, sent.sha256);
  EXPECT_EQ(Await(pair.client_result).reason, FailureReason::kNone);
  RelayResult server = Await(pair.server_result);
  EXPECT_EQ(server.reason, FailureReason::kNone) << server.detail;
  EXPECT_EQ(server.stats.bytes_from_tunnel, total);
}

TEST_P(RelayTest, BackpressureBoundsBufferingWhenTheReaderStalls) {
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  const int flags = ::fcntl(pair.app_client.get(), F_GETFL);
  ASSERT_EQ(::fcntl(pair.app_client.get(), F_SETFL, flags | O_NONBLOCK), 0);
  std::vector<uint8_t> chunk(64 * 1024, 0x5a);
  uint64_t accepted = 0;
  // Nobody reads at the server: the writer must eventually see EAGAIN, far below what it offered.
  for (int stalls = 0; stalls < 20 && accepted < (512ULL << 20);) {
    const ssize_t n = ::send(pair.app_client.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0) {
      accepted += static_cast<uint64_t>(n);
      stalls = 0;
    } else {
      ++stalls;
      std::this_thread::sleep_for(10ms);
    }
  }
  EXPECT_LT(accepted, 128ULL << 20) << "the relays buffered without bound";
  ASSERT_EQ(::fcntl(pair.app_client.get(), F_SETFL, flags), 0);
  ::shutdown(pair.app_client.get(), SHUT_WR);
  EXPECT_EQ(ReadStream(pair.app_server.get()).bytes, accepted);  // nothing lost
  ::shutdown(pair.app_server.get(), SHUT_WR);
  EXPECT_EQ(Await(pair.client_result).reason, FailureReason::kNone);
}

TEST_P(RelayTest, AbortResetsBothAppsInsteadOfEndingCleanly) {
  RelayPair pair = meshtls::testing::StartRelayPair(loop_, GetParam());
  WriteStream(pair.app_client.get(), 4096, 6, false);
  loop_.Run([&] { pair.client_relay->Abort(FailureReason::kInternal, "test abort"); });
  int client_error = 0, server_error = 0;
  ReadStream(pair.app_client.get(), &client_error);
  ReadStream(pair.app_server.get(), &server_error);
  EXPECT_EQ(client_error, ECONNRESET);
  EXPECT_EQ(server_error, ECONNRESET) << "the far app must not mistake a broken tunnel for EOF";
  EXPECT_EQ(Await(pair.client_result).reason, FailureReason::kInternal);
  RelayResult server = Await(pair.server_result);
  EXPECT_TRUE(server.reason == FailureReason::kPeerReset || server.reason == FailureReason::kTruncated)
      << FailureReasonName(server.reason) << ": " << server.detail;
}

INSTANTIATE_TEST_SUITE_P(Datapaths, RelayTest,
                         ::testing::Values(Datapath::kUserspaceTls, Datapath::kKtlsSplice),
                         [](const auto& test_info) {
                           return test_info.param == Datapath::kKtlsSplice ? std::string("KtlsSplice")
                                                                           : std::string("UserspaceTls");
                         });

}  // namespace
}  // namespace meshtls::tls

namespace meshtls::tls {
namespace {

// A relay of ours as the TLS server, against a plain OpenSSL client that finishes the handshake
// and then writes raw bytes on the socket, bypassing its TLS layer.
struct HostileRecordCase {
  std::string name;
  std::string bytes;
  FailureReason expected;
};

class HostileRecordTest
    : public ::testing::TestWithParam<std::tuple<Datapath, HostileRecordCase>> {};

TEST_P(HostileRecordTest, RelayClosesWithReasonAndResetsTheApp) {
  const auto& [datapath, c] = GetParam();
  if (!meshtls::testing::RequireDatapath(datapath)) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  LoopThread loop;
  auto [peer_fd, tunnel_fd] = meshtls::testing::TcpPair();
  auto [relay_plain, app] = meshtls::testing::TcpPair();
  meshtls::testing::RawPeerOptions raw;
  raw.identity = "client";
  auto raw_ctx = meshtls::testing::RawContext(raw);
  SslPtr peer;
  std::thread raw_client([&, fd = peer_fd.get()] { peer = meshtls::testing::RawHandshake(raw_ctx.get(), fd, true); });
  SessionOptions options;
  options.role = Role::kServer;
  options.capture_traffic_secrets = datapath == Datapath::kKtlsSplice;
  auto session = TlsSession::Create(meshtls::testing::Context("server"), std::move(tunnel_fd), options);
  ASSERT_TRUE(session.ok());
  std::promise<std::unique_ptr<TlsSession>> done;
  loop.Run([&] {
    DriveHandshake(loop.loop(), *std::move(session), [&](auto s) { done.set_value(std::move(s)); });
  });
  auto tunnel = done.get_future().get();
  raw_client.join();
  ASSERT_TRUE(tunnel->handshake_done() && peer);
  std::promise<RelayResult> closed;
  loop.Run([&] {
    ASSERT_TRUE(Relay::Start(loop.loop(), std::move(relay_plain), std::move(tunnel), datapath, {},
                             [&](const RelayResult& r) { closed.set_value(r); })
                    .ok());
  });
  ASSERT_EQ(::send(peer_fd.get(), c.bytes.data(), c.bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(c.bytes.size()));
  auto result = closed.get_future();
  ASSERT_EQ(result.wait_for(30s), std::future_status::ready);
  RelayResult r = result.get();
  EXPECT_EQ(FailureReasonName(r.reason), FailureReasonName(c.expected)) << r.detail;
  int error = 0;
  ReadStream(app.get(), &error);
  EXPECT_EQ(error, ECONNRESET) << "the app must see a reset, not a clean end";
}

std::string Record(uint8_t type, uint16_t length, char fill) {
  std::string r{static_cast<char>(type), 3, 3, static_cast<char>(length >> 8), static_cast<char>(length & 0xff)};
  return r + std::string(std::min<size_t>(length, 20000), fill);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HostileRecordTest,
    ::testing::Combine(
        ::testing::Values(Datapath::kUserspaceTls, Datapath::kKtlsSplice),
        ::testing::Values(
            HostileRecordCase{"oversized_record", Record(23, 0x4800, 'A'), FailureReason::kOversizedRecord},
            HostileRecordCase{"forged_record", Record(23, 64, 'B'), FailureReason::kDecryptError})),
    [](const auto& test_info) {
      return std::string(std::get<0>(test_info.param) == Datapath::kKtlsSplice ? "KtlsSplice_" : "UserspaceTls_") +
             std::get<1>(test_info.param).name;
    });

}  // namespace
}  // namespace meshtls::tls
