// Kernel TLS against plain OpenSSL, on a kernel that has kTLS (the VM harness runs this on
// Debian's kernels; the host kernel has none, so here it skips loudly):
//  - interop for every cipher, both roles: the kTLS end talks to an OpenSSL end, which proves the
//    record format, the key schedule and the sequence numbers;
//  - close_notify in both directions through the record-type cmsg;
//  - a raw capture of the tunnel bytes between two ktls-splice relays: TLS records only, and never
//    the plaintext marker.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/ktls_selftest.h"
#include "meshtls/tls/relay.h"
#include "testing/test_util.h"

namespace meshtls::tls {
namespace {

using meshtls::testing::Context;
using meshtls::testing::LoopThread;
using meshtls::testing::RawContext;
using meshtls::testing::RawHandshake;
using meshtls::testing::RawPeerOptions;
using namespace std::chrono_literals;

const SpiffeId kServerId = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
constexpr size_t kTransfer = 4 << 20;

bool RequireKtls() { return meshtls::testing::RequireDatapath(Datapath::kKtlsSplice); }

void SetBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK); }

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 31 + (i >> 12));
  return s;
}

// Our engine does the handshake on one end, then switches to kTLS; OpenSSL stays on the other.
struct InteropCase {
  std::string cipher;
  bool ktls_is_client;
};

class KtlsInteropTest : public ::testing::TestWithParam<InteropCase> {
 protected:
  void SetUp() override {
    if (!RequireKtls()) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  }
};

TEST_P(KtlsInteropTest, KernelEndAndOpenSslEndExchangeData) {
  const InteropCase& c = GetParam();
  LoopThread loop;
  auto [client_fd, server_fd] = meshtls::testing::TcpPair();
  UniqueFd& ours = c.ktls_is_client ? client_fd : server_fd;
  UniqueFd& theirs = c.ktls_is_client ? server_fd : client_fd;

  RawPeerOptions raw;
  raw.identity = c.ktls_is_client ? "server" : "client";
  raw.cipher_suites = c.cipher;
  auto raw_ctx = RawContext(raw);
  auto raw_done = std::async(std::launch::async, [&, fd = theirs.get()] {
    return RawHandshake(raw_ctx.get(), fd, !c.ktls_is_client);
  });

  auto options = meshtls::testing::Credentials(c.ktls_is_client ? "client" : "server");
  options.cipher_suites = {c.cipher};
  SessionOptions session_options;
  session_options.role = c.ktls_is_client ? Role::kClient : Role::kServer;
  if (c.ktls_is_client) session_options.expected_peer = kServerId;
  session_options.capture_traffic_secrets = true;
  auto session = TlsSession::Create(*TlsContext::Create(options), std::move(ours), session_options);
  ASSERT_TRUE(session.ok());
  std::promise<std::unique_ptr<TlsSession>> done;
  loop.Run([&] {
    DriveHandshake(loop.loop(), *std::move(session),
                   [&](std::unique_ptr<TlsSession> s) { done.set_value(std::move(s)); });
  });
  std::unique_ptr<TlsSession> tls = done.get_future().get();
  SslPtr peer = raw_done.get();
  ASSERT_TRUE(tls->handshake_done()) << tls->failure_detail();
  ASSERT_NE(peer, nullptr);
  ASSERT_EQ(tls->cipher_name(), c.cipher);

  ASSERT_TRUE(SwitchToKtls(*tls).ok());
  const int fd = tls->fd();
  SetBlocking(fd);

  // kTLS -> OpenSSL.
  const std::string out = Pattern(kTransfer, 'a');
  std::thread writer([&] {
    size_t off = 0;
    while (off < out.size()) {
      const ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
      ASSERT_GT(n, 0) << std::strerror(errno);
      off += static_cast<size_t>(n);
    }
  });
  std::string got;
  std::vector<char> buf(64 * 1024);
  while (got.size() < out.size()) {
    const int n = SSL_read(peer.get(), buf.data(), static_cast<int>(buf.size()));
    ASSERT_GT(n, 0) << "OpenSSL could not read what the kernel encrypted";
    got.append(buf.data(), static_cast<size_t>(n));
  }
  writer.join();
  EXPECT_TRUE(got == out) << "OpenSSL decrypted different bytes than the kernel sent";

  // OpenSSL -> kTLS.
  const std::string back = Pattern(kTransfer, 'q');
  std::thread peer_writer([&] {
    ASSERT_EQ(SSL_write(peer.get(), back.data(), static_cast<int>(back.size())),
              static_cast<int>(back.size()));
  });
  std::string received;
  while (received.size() < back.size()) {
    uint8_t type = 0;
    const ssize_t n = KtlsReceive(fd, buf.data(), buf.size(), &type);
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    ASSERT_GT(n, 0) << std::strerror(errno);
    ASSERT_EQ(type, kRecordApplicationData);
    received.append(buf.data(), static_cast<size_t>(n));
  }
  peer_writer.join();
  EXPECT_TRUE(received == back) << "the kernel decrypted different bytes than OpenSSL sent";

  // close_notify, kernel -> OpenSSL: SSL_read sees a clean TLS close.
  ASSERT_EQ(KtlsSendCloseNotify(fd), 2);
  EXPECT_EQ(SSL_read(peer.get(), buf.data(), 1), 0);
  EXPECT_EQ(SSL_get_error(peer.get(), 0), SSL_ERROR_ZERO_RETURN);
  // close_notify, OpenSSL -> kernel: the record-type cmsg reports an alert, level 1, code 0.
  SSL_shutdown(peer.get());
  uint8_t type = 0;
  ssize_t n;
  do {
    n = KtlsReceive(fd, buf.data(), buf.size(), &type);
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, 1000);
    }
  } while (n < 0 && errno == EAGAIN);
  ASSERT_EQ(n, 2) << std::strerror(errno);
  EXPECT_EQ(type, kRecordAlert);
  EXPECT_EQ(buf[0], 1);
  EXPECT_EQ(buf[1], 0);
}

INSTANTIATE_TEST_SUITE_P(
    CiphersAndRoles, KtlsInteropTest,
    ::testing::Values(InteropCase{"TLS_AES_128_GCM_SHA256", true}, InteropCase{"TLS_AES_128_GCM_SHA256", false},
                      InteropCase{"TLS_AES_256_GCM_SHA384", true}, InteropCase{"TLS_AES_256_GCM_SHA384", false},
                      InteropCase{"TLS_CHACHA20_POLY1305_SHA256", true},
                      InteropCase{"TLS_CHACHA20_POLY1305_SHA256", false}),
    [](const auto& test_info) {
      std::string name = test_info.param.cipher.substr(4);
      name = name.substr(0, name.find("_SHA"));
      return name + (test_info.param.ktls_is_client ? "_KtlsClient" : "_KtlsServer");
    });

TEST(KtlsProbeInVmTest, AllThreeCiphersAreAvailableWhenRequired) {
  KtlsSupport support = ProbeKtls();
  std::cerr << "kTLS probe: " << support.detail << "\n";
  if (!support.available && !meshtls::testing::KtlsRequired()) {
    GTEST_SKIP() << "kTLS unavailable on this kernel: " << support.detail;
  }
  EXPECT_TRUE(support.aes128gcm) << support.detail;
  EXPECT_TRUE(support.aes256gcm) << support.detail;
  EXPECT_TRUE(support.chacha20poly1305) << support.detail;
}

// The start-up self-test passes for every cipher the kernel takes, on each kernel of the harness.
TEST(KtlsSelfTestInVmTest, PassesForEveryCipherTheKernelTakes) {
  if (!RequireKtls()) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  const KtlsSupport support = ProbeKtls();
  const KtlsSelfTestResult result = RunKtlsSelfTest(support);
  std::cerr << "kTLS self-test: " << result.Summary() << "\n";
  ASSERT_EQ(result.ciphers.size(), 3u) << result.Summary();
  for (const KtlsCipherSelfTest& cipher : result.ciphers) {
    EXPECT_TRUE(cipher.passed) << KtlsCipherName(cipher.cipher) << ": " << cipher.detail;
    // The rekey stage runs exactly where the kernel can rekey, and passes there.
    EXPECT_EQ(cipher.rekey_tested, support.rekey) << KtlsCipherName(cipher.cipher);
    EXPECT_TRUE(!support.rekey || cipher.rekey_passed) << KtlsCipherName(cipher.cipher) << ": " << cipher.rekey_detail;
  }
  EXPECT_EQ(result.RekeyPassed(), support.rekey) << result.Summary();
}

// A wrong key after the kTLS end's KeyUpdate is caught by the rekey stage for every cipher: kTLS
// stays usable, rekeying does not.
TEST(KtlsSelfTestInVmTest, AWrongKeyAfterAKeyUpdateIsCaught) {
  if (!meshtls::testing::RequireKtlsRekey()) GTEST_SKIP() << "kTLS cannot rekey on this kernel (see stderr)";
  KtlsSelfTestOptions options;
  options.corrupt_rekey = true;
  const KtlsSelfTestResult result = RunKtlsSelfTest(ProbeKtls(), options);
  std::cerr << "kTLS self-test with a wrong rekey: " << result.Summary() << "\n";
  EXPECT_TRUE(result.any_passed()) << result.Summary();
  EXPECT_FALSE(result.RekeyPassed()) << result.Summary();
  for (const KtlsCipherSelfTest& cipher : result.ciphers) {
    EXPECT_TRUE(cipher.passed) << cipher.detail;
    EXPECT_TRUE(cipher.rekey_tested);
    EXPECT_FALSE(cipher.rekey_passed);
    EXPECT_NE(cipher.rekey_detail.find("OpenSSL could not read what the kernel sent"), std::string::npos)
        << cipher.rekey_detail;
  }
  EXPECT_NE(result.Summary().find("rekey FAILED"), std::string::npos);
}

// A kTLS end whose keys are wrong puts records on the wire that OpenSSL cannot read: the test
// catches it for every cipher, and says so.
TEST(KtlsSelfTestInVmTest, AWrongKeyIsCaughtForEveryCipher) {
  if (!RequireKtls()) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  KtlsSelfTestOptions options;
  options.corrupt_tx_key = true;
  const KtlsSelfTestResult result = RunKtlsSelfTest(ProbeKtls(), options);
  EXPECT_FALSE(result.any_passed()) << result.Summary();
  for (const KtlsCipherSelfTest& cipher : result.ciphers) {
    EXPECT_NE(cipher.detail.find("OpenSSL could not read what the kernel sent"), std::string::npos) << cipher.detail;
  }
  EXPECT_NE(result.Summary().find("FAILED"), std::string::npos);
}

// Forwards bytes between two sockets and keeps a copy of everything that crossed: the "wire".
class WireTap {
 public:
  WireTap(UniqueFd a, UniqueFd b) : a_(std::move(a)), b_(std::move(b)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~WireTap() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  std::string a_to_b, b_to_a;

 private:
  void Run() {
    bool a_open = true, b_open = true;
    std::vector<char> buf(64 * 1024);
    while (a_open || b_open) {
      pollfd fds[2] = {{a_.get(), static_cast<short>(a_open ? POLLIN : 0), 0},
                       {b_.get(), static_cast<short>(b_open ? POLLIN : 0), 0}};
      if (::poll(fds, 2, 10000) <= 0) return;
      for (int i = 0; i < 2; ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        int from = i == 0 ? a_.get() : b_.get(), to = i == 0 ? b_.get() : a_.get();
        const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
        if (n <= 0) {
          ::shutdown(to, SHUT_WR);
          (i == 0 ? a_open : b_open) = false;
          continue;
        }
        (i == 0 ? a_to_b : b_to_a).append(buf.data(), static_cast<size_t>(n));
        ::send(to, buf.data(), static_cast<size_t>(n), MSG_NOSIGNAL);
      }
    }
  }
  UniqueFd a_, b_;
  std::thread thread_;
};

struct Record {
  uint8_t type;
  size_t length;
};

std::vector<Record> ParseRecords(const std::string& wire, bool* well_formed) {
  std::vector<Record> records;
  size_t off = 0;
  while (off + 5 <= wire.size()) {
    const auto* p = reinterpret_cast<const uint8_t*>(wire.data() + off);
    const size_t len = (size_t{p[3]} << 8) | p[4];
    records.push_back({p[0], len});
    off += 5 + len;
  }
  *well_formed = off == wire.size();
  return records;
}

TEST(KtlsWireCaptureTest, TunnelCarriesOnlyTlsRecordsNeverThePlaintext) {
  if (!RequireKtls()) GTEST_SKIP() << "kTLS unavailable on this kernel (see stderr)";
  LoopThread loop;
  auto [client_tunnel, tap_a] = meshtls::testing::TcpPair();
  auto [tap_b, server_tunnel] = meshtls::testing::TcpPair();
  auto tap = std::make_unique<WireTap>(std::move(tap_a), std::move(tap_b));

  SessionOptions client_options, server_options;
  client_options.role = Role::kClient;
  client_options.expected_peer = kServerId;
  server_options.role = Role::kServer;
  client_options.capture_traffic_secrets = server_options.capture_traffic_secrets = true;
  auto client = TlsSession::Create(Context("client"), std::move(client_tunnel), client_options);
  auto server = TlsSession::Create(Context("server"), std::move(server_tunnel), server_options);
  std::promise<std::unique_ptr<TlsSession>> client_done, server_done;
  loop.Run([&] {
    DriveHandshake(loop.loop(), *std::move(client), [&](auto s) { client_done.set_value(std::move(s)); });
    DriveHandshake(loop.loop(), *std::move(server), [&](auto s) { server_done.set_value(std::move(s)); });
  });
  auto client_session = client_done.get_future().get();
  auto server_session = server_done.get_future().get();
  ASSERT_TRUE(client_session->handshake_done() && server_session->handshake_done());

  auto [app_client, client_plain] = meshtls::testing::TcpPair();
  auto [server_plain, app_server] = meshtls::testing::TcpPair();
  std::promise<RelayResult> client_closed, server_closed;
  loop.Run([&] {
    ASSERT_TRUE(Relay::Start(loop.loop(), std::move(client_plain), std::move(client_session),
                             Datapath::kKtlsSplice, {}, [&](const RelayResult& r) { client_closed.set_value(r); })
                    .ok());
    ASSERT_TRUE(Relay::Start(loop.loop(), std::move(server_plain), std::move(server_session),
                             Datapath::kKtlsSplice, {}, [&](const RelayResult& r) { server_closed.set_value(r); })
                    .ok());
  });

  const std::string marker = "MESHTLS-PLAINTEXT-MARKER-0123456789";
  std::string payload;
  while (payload.size() < (1u << 20)) payload += marker;
  std::thread writer([&] {
    ASSERT_EQ(::send(app_client.get(), payload.data(), payload.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(payload.size()));
    ::shutdown(app_client.get(), SHUT_WR);
  });
  std::string received;
  std::vector<char> buf(64 * 1024);
  for (ssize_t n; (n = ::recv(app_server.get(), buf.data(), buf.size(), 0)) > 0;) received.append(buf.data(), n);
  writer.join();
  ASSERT_EQ(::send(app_server.get(), marker.data(), marker.size(), MSG_NOSIGNAL), static_cast<ssize_t>(marker.size()));
  ::shutdown(app_server.get(), SHUT_WR);
  std::string reply;
  for (ssize_t n; (n = ::recv(app_client.get(), buf.data(), buf.size(), 0)) > 0;) reply.append(buf.data(), n);
  EXPECT_TRUE(received == payload);
  EXPECT_EQ(reply, marker);
  EXPECT_EQ(client_closed.get_future().get().reason, FailureReason::kNone);
  EXPECT_EQ(server_closed.get_future().get().reason, FailureReason::kNone);
  tap->Join();  // the capture is complete

  for (const std::string* wire : {&tap->a_to_b, &tap->b_to_a}) {
    EXPECT_EQ(wire->find(marker), std::string::npos) << "plaintext marker on the wire";
    bool well_formed = false;
    std::vector<Record> records = ParseRecords(*wire, &well_formed);
    EXPECT_TRUE(well_formed) << "the wire is not a sequence of TLS records";
    size_t protected_bytes = 0;
    bool encrypted = false;
    for (const Record& r : records) {
      if (r.type == kRecordApplicationData) {
        encrypted = true;
        protected_bytes += r.length;
        continue;
      }
      // TLS 1.3: only the hellos (22) and a compatibility CCS (20) travel in the clear, first.
      EXPECT_FALSE(encrypted) << "a cleartext record of type " << int{r.type} << " after encryption began";
      EXPECT_TRUE(r.type == kRecordHandshake || r.type == 20) << int{r.type};
    }
    EXPECT_TRUE(encrypted);
    if (wire == &tap->a_to_b) {
      EXPECT_GT(protected_bytes, payload.size());
    }
  }
}

}  // namespace
}  // namespace meshtls::tls
