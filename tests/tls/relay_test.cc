// Relay correctness for both datapaths: random payloads both ways, half-close, an empty stream,
// a large stream with a checksum, backpressure, and resets that must not look like clean ends.
// ktls-splice needs kTLS: on a kernel without it the test skips loudly, and tests/vm runs it.
#include <fcntl.h>
#include <signal.h>
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
// A plain OpenSSL client (identity "client") on one end of a tunnel, a relay as the server on the
// other, its plaintext side connected to `app`. `peer` is null if the handshake failed.
struct RawClientRelay {
  UniqueFd peer_fd;
  SslPtr peer;
  UniqueFd app;
  std::future<RelayResult> closed;
};

RawClientRelay StartRelayAgainstRawClient(LoopThread& loop, Datapath datapath, const RelayOptions& relay_options) {
  RawClientRelay out;
  auto [peer_fd, tunnel_fd] = meshtls::testing::TcpPair();
  auto [relay_plain, app] = meshtls::testing::TcpPair();
  out.peer_fd = std::move(peer_fd);
  out.app = std::move(app);
  meshtls::testing::RawPeerOptions raw;
  raw.identity = "client";
  auto raw_ctx = meshtls::testing::RawContext(raw);
  std::thread raw_client([&, fd = out.peer_fd.get()] { out.peer = meshtls::testing::RawHandshake(raw_ctx.get(), fd, true); });
  SessionOptions options;
  options.role = Role::kServer;
  options.capture_traffic_secrets = datapath == Datapath::kKtlsSplice;
  auto session = TlsSession::Create(meshtls::testing::Context("server"), std::move(tunnel_fd), options);
  std::promise<std::unique_ptr<TlsSession>> done;
  if (session.ok()) {
    loop.Run([&] { DriveHandshake(loop.loop(), *std::move(session), [&](auto s) { done.set_value(std::move(s)); }); });
  } else {
    done.set_value(nullptr);
  }
  auto tunnel = done.get_future().get();
  raw_client.join();
  if (!tunnel || !tunnel->handshake_done() || !out.peer) {
    out.peer.reset();
    return out;
  }
  auto closed = std::make_shared<std::promise<RelayResult>>();
  out.closed = closed->get_future();
  loop.Run([&] {
    auto relay = Relay::Start(loop.loop(), std::move(relay_plain), std::move(tunnel), datapath, relay_options,
                              [closed](const RelayResult& r) { closed->set_value(r); });
    if (!relay.ok()) out.peer.reset();
  });
  return out;
}

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
  RawClientRelay t = StartRelayAgainstRawClient(loop, datapath, {});
  ASSERT_TRUE(t.peer);
  UniqueFd& peer_fd = t.peer_fd;
  UniqueFd& app = t.app;
  auto& result = t.closed;
  ASSERT_EQ(::send(peer_fd.get(), c.bytes.data(), c.bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(c.bytes.size()));
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

// ---- Key lifetime (userspace-tls): records counted per key, KeyUpdate at the limit, a peer
// that cannot follow gets a clean key_limit close instead, and a KeyUpdate flood is cut off. ----

const SpiffeId kRelayServerId = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");

std::shared_ptr<const TlsContext> ContextWithSuites(const std::string& name, const std::string& suites) {
  TlsContextOptions options = meshtls::testing::Credentials(name);
  options.cipher_suites = {suites};
  options.export_traffic_secrets = true;  // for the kTLS datapath
  auto ctx = TlsContext::Create(options);
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  return *ctx;
}

RelayOptions KeyOptions(uint64_t records_per_key, bool peer_follows) {
  RelayOptions options;
  options.key_lifetime.max_records_per_key = records_per_key;
  options.peer_follows_key_update = peer_follows;
  // A key per 1,000 records is dozens of legitimate KeyUpdates a second; the flood budget must
  // allow them (the default budget is sized for the default 2^23 records per key).
  options.key_lifetime.peer_key_updates_per_second = 10000;
  options.key_lifetime.peer_key_update_burst = 1000;
  return options;
}

uint64_t LargeStreamBytes() {
  uint64_t total = 1ULL << 30;
  if (const char* env = std::getenv("MESHTLS_LARGE_STREAM_BYTES")) total = std::strtoull(env, nullptr, 10);
  return total;
}

// Two relays at 1,000 records per key move `total` bytes each way at once; both streams must
// arrive intact, each end must have replaced its sending key at least once per 1,000 full
// records (16 KiB), the other end must have followed every replacement, and no key may protect
// more than its limit. Returns the relays' results for datapath-specific checks.
std::pair<RelayResult, RelayResult> ExpectKeysUpdatedBothWays(Datapath datapath, std::shared_ptr<const TlsContext> client_ctx,
                                                              std::shared_ptr<const TlsContext> server_ctx,
                                                              const RelayOptions& options, uint64_t total) {
  LoopThread client_loop, server_loop;
  RelayPair pair = meshtls::testing::StartRelayPair(client_loop, server_loop, datapath, std::move(client_ctx),
                                                    std::move(server_ctx), kRelayServerId, options, options);
  StreamDigest up_sent, down_sent, up_got, down_got;
  std::thread client_writer([&] { up_sent = WriteStream(pair.app_client.get(), total, 11, true); });
  std::thread server_writer([&] { down_sent = WriteStream(pair.app_server.get(), total, 12, true); });
  std::thread client_reader([&] { down_got = ReadStream(pair.app_client.get()); });
  up_got = ReadStream(pair.app_server.get());
  client_writer.join();
  server_writer.join();
  client_reader.join();
  EXPECT_EQ(up_got.bytes, total);
  EXPECT_EQ(up_got.sha256, up_sent.sha256);
  EXPECT_EQ(down_got.bytes, total);
  EXPECT_EQ(down_got.sha256, down_sent.sha256);
  RelayResult client = Await(pair.client_result), server = Await(pair.server_result);
  EXPECT_EQ(client.reason, FailureReason::kNone) << client.detail;
  EXPECT_EQ(server.reason, FailureReason::kNone) << server.detail;
  // At most 16 KiB per record: at least this many key updates each way.
  const uint64_t full_records = total / (16 * 1024);
  const uint64_t expected = full_records >= 1000 ? full_records / 1000 - 1 : 0;
  if (total >= (1ULL << 30)) {
    EXPECT_GE(expected, 50u);
  }
  std::cerr << DatapathName(datapath) << ": " << total << " bytes each way, key generations client tx "
            << client.key_usage.tx_generation << " / server tx " << server.key_usage.tx_generation << "\n";
  EXPECT_GE(client.key_usage.tx_generation, expected);
  EXPECT_GE(server.key_usage.tx_generation, expected);
  EXPECT_EQ(server.key_usage.rx_generation, client.key_usage.tx_generation);
  EXPECT_EQ(client.key_usage.rx_generation, server.key_usage.tx_generation);
  EXPECT_LE(client.key_usage.tx_records, 1000u);
  EXPECT_LE(server.key_usage.tx_records, 1000u);
  return {client, server};
}

// With a limit of 1,000 records per key, 1 GiB each way goes through ~65 key generations per
// direction.
TEST(KeyLifetimeTest, KeysAreUpdatedAtTheLimitBothWaysAndTheStreamsStayIntact) {
  ExpectKeysUpdatedBothWays(Datapath::kUserspaceTls, meshtls::testing::Context("client"),
                            meshtls::testing::Context("server"), KeyOptions(1000, true), LargeStreamBytes());
}

// The relay's record counts equal what a plain OpenSSL peer counts on its side, over random
// record sizes, both ways: OpenSSL's record callback in userspace-tls, the kernel's record
// sequence in ktls-splice.
class RecordCountTest : public ::testing::TestWithParam<Datapath> {
 protected:
  void SetUp() override {
    if (!meshtls::testing::RequireDatapath(GetParam())) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  }
};

TEST_P(RecordCountTest, RecordCountsMatchThePeersCount) {
  LoopThread loop;
  RawClientRelay t = StartRelayAgainstRawClient(loop, GetParam(), {});
  ASSERT_TRUE(t.peer);
  SslPtr& peer = t.peer;
  UniqueFd& app = t.app;
  struct Counts {
    uint64_t written = 0, read = 0;
  } counts;
  SSL_set_msg_callback(peer.get(), [](int write_p, int, int content_type, const void*, size_t, SSL*, void* arg) {
    if (content_type != SSL3_RT_HEADER) return;
    ++(write_p != 0 ? static_cast<Counts*>(arg)->written : static_cast<Counts*>(arg)->read);
  });
  SSL_set_msg_callback_arg(peer.get(), &counts);
  // Peer -> relay: random sizes from 1 byte to 40 KB (up to three records each), then close_notify.
  std::mt19937 random(99);
  std::vector<char> chunk(40000, 'p');
  uint64_t to_app = 0;
  for (int i = 0; i < 300; ++i) {
    const int size = 1 + static_cast<int>(random() % chunk.size());
    ASSERT_EQ(SSL_write(peer.get(), chunk.data(), size), size);
    to_app += static_cast<uint64_t>(size);
  }
  SSL_shutdown(peer.get());
  EXPECT_EQ(ReadStream(app.get()).bytes, to_app);  // ends at the relay's FIN (after close_notify)
  // App -> relay -> peer: random sizes, then FIN (the relay sends close_notify).
  std::thread app_writer([&, fd = app.get()] {
    std::mt19937 sizes(7);
    std::vector<char> buf(100000, 'a');
    for (int i = 0; i < 200; ++i) {
      const size_t size = 1 + sizes() % buf.size();
      ASSERT_EQ(::send(fd, buf.data(), size, MSG_NOSIGNAL), static_cast<ssize_t>(size));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ::shutdown(fd, SHUT_WR);
  });
  std::vector<char> sink(1 << 16);
  while (SSL_read(peer.get(), sink.data(), static_cast<int>(sink.size())) > 0) {
  }
  app_writer.join();
  ASSERT_EQ(t.closed.wait_for(30s), std::future_status::ready);
  const RelayResult r = t.closed.get();
  EXPECT_EQ(r.reason, FailureReason::kNone) << r.detail;
  EXPECT_EQ(r.key_usage.rx_records, counts.written);
  EXPECT_EQ(r.key_usage.tx_records, counts.read);
  EXPECT_GT(counts.written, 300u);
  EXPECT_GT(counts.read, 200u);
}

INSTANTIATE_TEST_SUITE_P(Datapaths, RecordCountTest, ::testing::Values(Datapath::kUserspaceTls, Datapath::kKtlsSplice),
                         [](const auto& param_info) {
                           return std::string(param_info.param == Datapath::kKtlsSplice ? "KtlsSplice" : "UserspaceTls");
                         });

// A peer that said it cannot follow a KeyUpdate (a kTLS end on a kernel that cannot rekey) never
// gets one, and a kTLS relay cannot send one: an AES-GCM connection is closed at the limit with
// key_limit, every byte before it intact; ChaCha20-Poly1305 (no practical limit) keeps flowing.
class KeyLimitTest : public ::testing::TestWithParam<Datapath> {
 protected:
  void SetUp() override {
    if (!meshtls::testing::RequireDatapath(GetParam())) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  }
};

TEST_P(KeyLimitTest, AesGcmClosesAtTheLimitWhenTheKeyCannotBeReplaced) {
  LoopThread loop;
  RelayPair pair = meshtls::testing::StartRelayPair(loop, loop, GetParam(),
                                                    ContextWithSuites("client", "TLS_AES_128_GCM_SHA256"),
                                                    meshtls::testing::Context("server"), kRelayServerId,
                                                    KeyOptions(1000, false), KeyOptions(1000, false));
  std::thread writer([&] { WriteStream(pair.app_client.get(), 256 << 20, 21, true); });
  int error = 0;
  // Re-create the sender's bytes to check the prefix that arrived.
  std::vector<uint8_t> buf(256 * 1024);
  ByteStream expected(21);
  Sha256 got_sha, want_sha;
  uint64_t got = 0;
  while (true) {
    const ssize_t n = ::recv(pair.app_server.get(), buf.data(), buf.size(), 0);
    if (n <= 0) {
      if (n < 0) error = errno;
      break;
    }
    got_sha.Update(buf.data(), static_cast<size_t>(n));
    std::vector<uint8_t> want(static_cast<size_t>(n));
    expected.Fill(want.data(), want.size());
    want_sha.Update(want.data(), want.size());
    got += static_cast<uint64_t>(n);
  }
  writer.join();
  RelayResult client = Await(pair.client_result);
  Await(pair.server_result);
  EXPECT_EQ(FailureReasonName(client.reason), "key_limit") << client.detail;
  EXPECT_EQ(client.key_usage.tx_generation, 0u) << "no KeyUpdate was sent";
  EXPECT_LE(client.key_usage.tx_records, 1000u);
  EXPECT_GT(got, 0u);
  EXPECT_LT(got, 256u << 20);
  EXPECT_EQ(got_sha.Final(), want_sha.Final()) << "the bytes before the close are the sender's, in order";
  EXPECT_EQ(error, ECONNRESET) << "the app sees a reset, not a clean end";
}

TEST_P(KeyLimitTest, ChaChaHasNoRecordLimit) {
  LoopThread loop;
  RelayPair pair = meshtls::testing::StartRelayPair(loop, loop, GetParam(),
                                                    ContextWithSuites("client", "TLS_CHACHA20_POLY1305_SHA256"),
                                                    meshtls::testing::Context("server"), kRelayServerId,
                                                    KeyOptions(1000, false), KeyOptions(1000, false));
  constexpr uint64_t kTotal = 64 << 20;
  StreamDigest sent;
  std::thread writer([&] { sent = WriteStream(pair.app_client.get(), kTotal, 22, true); });
  StreamDigest got = ReadStream(pair.app_server.get());
  writer.join();
  ::shutdown(pair.app_server.get(), SHUT_WR);
  EXPECT_EQ(got.bytes, kTotal);
  EXPECT_EQ(got.sha256, sent.sha256);
  RelayResult client = Await(pair.client_result);
  Await(pair.server_result);
  EXPECT_EQ(client.reason, FailureReason::kNone) << client.detail;
  EXPECT_GT(client.key_usage.tx_records, 1000u);
  EXPECT_EQ(client.key_usage.tx_generation, 0u);
}

INSTANTIATE_TEST_SUITE_P(Datapaths, KeyLimitTest, ::testing::Values(Datapath::kUserspaceTls, Datapath::kKtlsSplice),
                         [](const auto& param_info) {
                           return std::string(param_info.param == Datapath::kKtlsSplice ? "KtlsSplice" : "UserspaceTls");
                         });

// A peer sending KeyUpdates as fast as it can is cut off within its budget; a connection next to
// it on the same loop is unaffected. kTLS needs a kernel that can follow a KeyUpdate at all (on
// the others the first one ends the connection: PeerKeyUpdateTest).
class KeyUpdateFloodTest : public ::testing::TestWithParam<Datapath> {
 protected:
  void SetUp() override {
    if (GetParam() == Datapath::kKtlsSplice && !meshtls::testing::RequireKtlsRekey()) {
      GTEST_SKIP() << "kTLS cannot rekey on this kernel (see stderr)";
    }
  }
};

TEST_P(KeyUpdateFloodTest, AKeyUpdateFloodIsCutOffAndOtherConnectionsFlow) {
  // The flooding peer writes with SSL_write (plain write()) until the relay resets it.
  ::signal(SIGPIPE, SIG_IGN);
  LoopThread loop;
  RelayPair bystander = meshtls::testing::StartRelayPair(loop, GetParam());
  RelayOptions relay_options;
  relay_options.peer_follows_key_update = true;
  relay_options.ktls_rekey = true;
  relay_options.key_lifetime.peer_key_updates_per_second = 1;
  relay_options.key_lifetime.peer_key_update_burst = 16;
  RawClientRelay t = StartRelayAgainstRawClient(loop, GetParam(), relay_options);
  ASSERT_TRUE(t.peer);
  SslPtr& peer = t.peer;
  StreamDigest sent;
  std::thread bystander_writer([&] { sent = WriteStream(bystander.app_client.get(), 64 << 20, 31, true); });
  // 10,000 KeyUpdates a second: one per byte written, until the relay cuts the peer off.
  const auto started = std::chrono::steady_clock::now();
  int updates = 0;
  for (; updates < 10000; ++updates) {
    SSL_key_update(peer.get(), SSL_KEY_UPDATE_NOT_REQUESTED);
    if (SSL_write(peer.get(), "k", 1) != 1) break;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ASSERT_EQ(t.closed.wait_for(30s), std::future_status::ready);
  const RelayResult r = t.closed.get();
  EXPECT_EQ(FailureReasonName(r.reason), "key_update_flood") << r.detail;
  // The budget: 16 at once plus 1 per second since the start.
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_LE(r.key_usage.rx_generation, 17 + static_cast<uint64_t>(elapsed) + 1);
  EXPECT_GE(r.key_usage.rx_generation, 16u);
  StreamDigest got = ReadStream(bystander.app_server.get());
  bystander_writer.join();
  EXPECT_EQ(got.bytes, 64u << 20);
  EXPECT_EQ(got.sha256, sent.sha256);
  ::shutdown(bystander.app_server.get(), SHUT_WR);
  EXPECT_EQ(Await(bystander.client_result).reason, FailureReason::kNone);
  EXPECT_EQ(Await(bystander.server_result).reason, FailureReason::kNone);
}

INSTANTIATE_TEST_SUITE_P(Datapaths, KeyUpdateFloodTest,
                         ::testing::Values(Datapath::kUserspaceTls, Datapath::kKtlsSplice),
                         [](const auto& param_info) {
                           return std::string(param_info.param == Datapath::kKtlsSplice ? "KtlsSplice" : "UserspaceTls");
                         });

// ---- KeyUpdate through kTLS (kernels that can rekey: Debian's 7.x) ----

RelayOptions KtlsKeyOptions(uint64_t records_per_key) {
  RelayOptions options = KeyOptions(records_per_key, true);
  options.ktls_rekey = true;
  return options;
}

class KtlsKeyUpdateTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!meshtls::testing::RequireKtlsRekey()) GTEST_SKIP() << "kTLS cannot rekey on this kernel (see stderr)";
  }
};

// Two kTLS relays at 1,000 records per key: LargeStreamBytes() each way (1 GiB by default: ~65
// key generations per direction), checksums intact, no key past its limit. Under TCG the crypto
// is emulated (about 4 MB/s), so only AES-128-GCM carries the full stream; the other ciphers,
// whose rekeying is the same code with another key length, carry at most 64 MiB.
TEST_P(KtlsKeyUpdateTest, KeysAreUpdatedAtTheLimitBothWaysAndTheStreamsStayIntact) {
  const uint64_t total =
      GetParam() == "TLS_AES_128_GCM_SHA256" ? LargeStreamBytes() : std::min<uint64_t>(LargeStreamBytes(), 64 << 20);
  const auto global_sent = GlobalKeyUpdateCounters().sent.load();
  auto [client, server] = ExpectKeysUpdatedBothWays(Datapath::kKtlsSplice, ContextWithSuites("client", GetParam()),
                                                    ContextWithSuites("server", GetParam()), KtlsKeyOptions(1000), total);
  EXPECT_GE(GlobalKeyUpdateCounters().sent.load() - global_sent,
            client.key_usage.tx_generation + server.key_usage.tx_generation);
}

INSTANTIATE_TEST_SUITE_P(Ciphers, KtlsKeyUpdateTest,
                         ::testing::Values("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           std::erase(name, '_');
                           return name;
                         });

// A plain OpenSSL peer sends KeyUpdates in the middle of a transfer, with and without
// update_requested. Where the kernel can rekey, the kTLS relay follows (and answers a request
// with its own KeyUpdate, which the peer sees); where it cannot, the connection ends with
// peer_key_update_unsupported, every byte before the KeyUpdate delivered intact, never garbage.
class PeerKeyUpdateTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!meshtls::testing::RequireDatapath(Datapath::kKtlsSplice)) GTEST_SKIP() << "kTLS unavailable (see stderr)";
  }
};

TEST_P(PeerKeyUpdateTest, KtlsRelayFollowsOrClosesByName) {
  ::signal(SIGPIPE, SIG_IGN);
  const bool request = GetParam();
  const bool can_rekey = meshtls::testing::KernelCanRekeyKtls();
  LoopThread loop;
  // As the agent sets it: from the kernel probe.
  RelayOptions relay_options = KtlsKeyOptions(1u << 23);
  relay_options.ktls_rekey = can_rekey;
  RawClientRelay t = StartRelayAgainstRawClient(loop, Datapath::kKtlsSplice, relay_options);
  ASSERT_TRUE(t.peer);
  SSL* peer = t.peer.get();
  struct Seen {
    int key_updates_received = 0;
  } seen;
  SSL_set_msg_callback(peer, [](int write_p, int, int content_type, const void* buf, size_t len, SSL*, void* arg) {
    if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
        static_cast<const uint8_t*>(buf)[0] == SSL3_MT_KEY_UPDATE) {
      ++static_cast<Seen*>(arg)->key_updates_received;
    }
  });
  SSL_set_msg_callback_arg(peer, &seen);
  // Peer -> app: 4 MiB in 64 KiB writes, a KeyUpdate after every 16th write (3 in all).
  constexpr int kWrites = 64;
  constexpr int kUpdateEvery = 16;
  StreamDigest got;
  std::thread app_reader([&] { got = ReadStream(t.app.get()); });
  ByteStream bytes(51);
  Sha256 sent_sha, first_sha;
  std::vector<uint8_t> chunk(64 * 1024);
  uint64_t sent = 0, before_first_update = 0;
  int updates = 0;
  for (int i = 0; i < kWrites; ++i) {
    if (i > 0 && i % kUpdateEvery == 0) {
      if (updates == 0) before_first_update = sent;
      ASSERT_EQ(SSL_key_update(peer, request ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED), 1);
      ++updates;
    }
    bytes.Fill(chunk.data(), chunk.size());
    if (SSL_write(peer, chunk.data(), static_cast<int>(chunk.size())) != static_cast<int>(chunk.size())) break;
    sent_sha.Update(chunk.data(), chunk.size());
    if (updates == 0) first_sha.Update(chunk.data(), chunk.size());
    sent += chunk.size();
  }
  if (!can_rekey) {
    // The kernel cannot install the next key: the relay ends the connection by name.
    ASSERT_EQ(t.closed.wait_for(30s), std::future_status::ready);
    const RelayResult r = t.closed.get();
    app_reader.join();
    EXPECT_EQ(FailureReasonName(r.reason), "peer_key_update_unsupported") << r.detail;
    EXPECT_EQ(got.bytes, before_first_update) << "everything before the KeyUpdate, nothing after";
    EXPECT_EQ(got.sha256, first_sha.Final());
    return;
  }
  SSL_shutdown(peer);  // close_notify: the app sees EOF after the last byte
  app_reader.join();
  EXPECT_EQ(got.bytes, sent);
  EXPECT_EQ(got.sha256, sent_sha.Final());
  // App -> peer: the relay's own KeyUpdate (if asked) goes out before these bytes.
  std::thread app_writer([&] { WriteStream(t.app.get(), 1 << 20, 52, true); });
  std::vector<char> sink(1 << 16);
  uint64_t received = 0;
  for (int n; (n = SSL_read(peer, sink.data(), static_cast<int>(sink.size()))) > 0;) received += static_cast<uint64_t>(n);
  app_writer.join();
  EXPECT_EQ(received, 1u << 20);
  ASSERT_EQ(t.closed.wait_for(30s), std::future_status::ready);
  const RelayResult r = t.closed.get();
  EXPECT_EQ(r.reason, FailureReason::kNone) << r.detail;
  EXPECT_EQ(r.key_usage.rx_generation, static_cast<uint64_t>(updates));
  // OpenSSL sends one KeyUpdate per SSL_key_update; asked each time, the relay answers each.
  EXPECT_EQ(r.key_usage.tx_generation, request ? static_cast<uint64_t>(updates) : 0u);
  EXPECT_EQ(seen.key_updates_received, request ? updates : 0);
}

INSTANTIATE_TEST_SUITE_P(UpdateRequested, PeerKeyUpdateTest, ::testing::Bool(),
                         [](const auto& param_info) { return param_info.param ? "Requested" : "NotRequested"; });

}  // namespace
}  // namespace meshtls::tls
