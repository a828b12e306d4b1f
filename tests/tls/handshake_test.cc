// The handshake engine over real loopback sockets: mutual auth, the bad-certificate matrix with
// its named reasons (in both roles), ALPN, and hostile input.
#include <sys/socket.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <future>
#include <string>

#include "gtest/gtest.h"
#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/session.h"
#include "testing/test_util.h"

namespace meshtls::tls {
namespace {

using meshtls::testing::Context;
using meshtls::testing::LoopThread;
using meshtls::testing::RawContext;
using meshtls::testing::RawHandshake;
using meshtls::testing::RawPeerOptions;
using meshtls::testing::TcpPair;
using namespace std::chrono_literals;

SpiffeId Id(const std::string& uri) { return *SpiffeId::Parse(uri); }

const SpiffeId kServerId = Id("spiffe://cluster.local/ns/default/sa/server");
const SpiffeId kClientId = Id("spiffe://cluster.local/ns/default/sa/client");

// Drives one session of ours on `loop` and returns it when the handshake ends.
std::future<std::unique_ptr<TlsSession>> Drive(LoopThread& loop, std::shared_ptr<const TlsContext> ctx,
                                               UniqueFd fd, SessionOptions options) {
  auto promise = std::make_shared<std::promise<std::unique_ptr<TlsSession>>>();
  auto future = promise->get_future();
  auto session = TlsSession::Create(std::move(ctx), std::move(fd), options);
  EXPECT_TRUE(session.ok()) << session.status();
  loop.Run([&] {
    DriveHandshake(loop.loop(), *std::move(session),
                   [promise](std::unique_ptr<TlsSession> s) { promise->set_value(std::move(s)); });
  });
  return future;
}

SessionOptions ServerOptions(std::chrono::milliseconds timeout = 5s) {
  SessionOptions o;
  o.role = Role::kServer;
  o.handshake_timeout = timeout;
  return o;
}

SessionOptions ClientOptions(const SpiffeId& expected = kServerId) {
  SessionOptions o;
  o.role = Role::kClient;
  o.expected_peer = expected;
  return o;
}

TEST(HandshakeTest, MutualTls13BetweenTwoEngines) {
  LoopThread loop;
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"),
                                         ClientOptions(), ServerOptions());
  ASSERT_TRUE(out.client->handshake_done()) << FailureReasonName(out.client->failure_reason())
                                            << ": " << out.client->failure_detail();
  ASSERT_TRUE(out.server->handshake_done()) << out.server->failure_detail();
  EXPECT_EQ(*out.client->peer_id(), kServerId);
  EXPECT_EQ(*out.server->peer_id(), kClientId);
  EXPECT_EQ(out.client->protocol_version(), "TLSv1.3");
  EXPECT_EQ(out.client->cipher_name(), "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(out.client->cipher_iana_id(), 0x1301);
  EXPECT_FALSE(out.server->peer_serial().empty());
  EXPECT_NE(out.server->peer_serial(), out.client->peer_serial());
  EXPECT_GT(out.client->handshake_duration().count(), 0);
}

TEST(HandshakeTest, NegotiatesEachCipherSuite) {
  for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                            "TLS_CHACHA20_POLY1305_SHA256"}) {
    auto server_opts = meshtls::testing::Credentials("server");
    server_opts.cipher_suites = {suite};
    LoopThread loop;
    auto out = meshtls::testing::Handshake(loop, Context("client"), *TlsContext::Create(server_opts),
                                           ClientOptions(), ServerOptions());
    ASSERT_TRUE(out.client->handshake_done()) << suite << ": " << out.client->failure_detail();
    EXPECT_EQ(out.client->cipher_name(), suite);
    EXPECT_EQ(out.server->cipher_name(), suite);
  }
}

TEST(HandshakeTest, CapturesTrafficSecretsOnlyWhenAsked) {
  LoopThread loop;
  SessionOptions client = ClientOptions();
  client.capture_traffic_secrets = true;
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"), client,
                                         ServerOptions());
  ASSERT_TRUE(out.client->handshake_done());
  TrafficSecrets client_secrets = out.client->TakeTrafficSecrets();
  TrafficSecrets server_secrets = out.server->TakeTrafficSecrets();
  EXPECT_EQ(client_secrets.client.size(), 32u);
  EXPECT_EQ(client_secrets.server.size(), 32u);
  EXPECT_NE(client_secrets.client, client_secrets.server);
  EXPECT_TRUE(server_secrets.client.empty());
}

// A peer without X25519 gets a P-256 key share (ECDH through the built-in EC code where that is
// on, openssl_setup.h), both ways, and both ends still check identities.
TEST(HandshakeTest, PeerOfferingOnlyP256KeyShare) {
  RawPeerOptions raw;
  raw.identity = "client";
  raw.groups = "P-256";
  {
    LoopThread loop;
    auto [client_fd, server_fd] = TcpPair();
    auto server = Drive(loop, Context("server"), std::move(server_fd), ServerOptions());
    auto raw_ctx = RawContext(raw);
    std::string error;
    auto raw_ssl = RawHandshake(raw_ctx.get(), client_fd.get(), /*client=*/true, &error);
    ASSERT_NE(raw_ssl, nullptr) << error;
    EXPECT_EQ(SSL_get_negotiated_group(raw_ssl.get()), NID_X9_62_prime256v1);
    auto session = server.get();
    ASSERT_TRUE(session->handshake_done()) << session->failure_detail();
    EXPECT_EQ(*session->peer_id(), kClientId);
  }
  {
    LoopThread loop;
    auto [client_fd, server_fd] = TcpPair();
    raw.identity = "server";
    auto raw_ctx = RawContext(raw);
    auto raw_server = std::async(std::launch::async, [&, fd = server_fd.get()] {
      std::string error;
      SslPtr ssl = RawHandshake(raw_ctx.get(), fd, /*client=*/false, &error);
      const int group = ssl ? SSL_get_negotiated_group(ssl.get()) : 0;
      return std::make_pair(group, error);
    });
    auto client = Drive(loop, Context("client"), std::move(client_fd), ClientOptions());
    auto session = client.get();
    ASSERT_TRUE(session->handshake_done()) << session->failure_detail();
    EXPECT_EQ(*session->peer_id(), kServerId);
    auto [group, error] = raw_server.get();
    EXPECT_EQ(group, NID_X9_62_prime256v1) << error;
  }
}

// Our server verifies a client presenting IDENTITY (via a plain OpenSSL client).
struct ClientCertCase {
  std::string identity;
  FailureReason expected;
};

class ServerVerifiesClientTest : public ::testing::TestWithParam<ClientCertCase> {};

TEST_P(ServerVerifiesClientTest, FailsWithNamedReason) {
  LoopThread loop;
  auto [client_fd, server_fd] = TcpPair();
  auto server = Drive(loop, Context("server"), std::move(server_fd), ServerOptions());
  RawPeerOptions raw;
  raw.identity = GetParam().identity;
  auto raw_ctx = RawContext(raw);
  std::string error;
  auto raw_ssl = RawHandshake(raw_ctx.get(), client_fd.get(), /*client=*/true, &error);
  // TLS 1.3 clients finish before the server checks their certificate; either way, our server
  // must refuse and name why.
  auto session = server.get();
  EXPECT_FALSE(session->handshake_done());
  EXPECT_EQ(FailureReasonName(session->failure_reason()), FailureReasonName(GetParam().expected))
      << session->failure_detail();
  EXPECT_FALSE(session->failure_detail().empty());
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, ServerVerifiesClientTest,
    ::testing::Values(ClientCertCase{"expired", FailureReason::kExpired},
                      ClientCertCase{"not-yet-valid", FailureReason::kNotYetValid},
                      ClientCertCase{"rogue", FailureReason::kUnknownCa},
                      ClientCertCase{"bad-signature", FailureReason::kBadSignature},
                      ClientCertCase{"no-spiffe", FailureReason::kNoSpiffeId},
                      ClientCertCase{"two-spiffe", FailureReason::kMultipleSpiffeIds},
                      ClientCertCase{"invalid-spiffe", FailureReason::kInvalidSpiffeId},
                      ClientCertCase{"foreign", FailureReason::kWrongTrustDomain},
                      ClientCertCase{"weak", FailureReason::kWeakKey},
                      ClientCertCase{"wrong-usage", FailureReason::kWrongKeyUsage},
                      ClientCertCase{"", FailureReason::kNoPeerCertificate}),
    [](const auto& test_info) {
      std::string name = test_info.param.identity.empty() ? "none" : test_info.param.identity;
      for (char& c : name) if (c == '-') c = '_';
      return name;
    });

// Our client verifies a server presenting IDENTITY.
class ClientVerifiesServerTest : public ::testing::TestWithParam<ClientCertCase> {};

TEST_P(ClientVerifiesServerTest, FailsWithNamedReason) {
  LoopThread loop;
  auto [client_fd, server_fd] = TcpPair();
  RawPeerOptions raw;
  raw.identity = GetParam().identity;
  raw.verify_peer = false;
  auto raw_ctx = RawContext(raw);
  auto raw_server = std::async(std::launch::async, [&, fd = server_fd.get()] {
    return RawHandshake(raw_ctx.get(), fd, /*client=*/false);
  });
  auto session = Drive(loop, Context("client"), std::move(client_fd), ClientOptions()).get();
  raw_server.get();
  EXPECT_FALSE(session->handshake_done());
  EXPECT_EQ(FailureReasonName(session->failure_reason()), FailureReasonName(GetParam().expected))
      << session->failure_detail();
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, ClientVerifiesServerTest,
    ::testing::Values(ClientCertCase{"other", FailureReason::kIdentityMismatch},
                      ClientCertCase{"client", FailureReason::kIdentityMismatch},
                      ClientCertCase{"expired", FailureReason::kExpired},
                      ClientCertCase{"not-yet-valid", FailureReason::kNotYetValid},
                      ClientCertCase{"rogue", FailureReason::kUnknownCa},
                      ClientCertCase{"bad-signature", FailureReason::kBadSignature},
                      ClientCertCase{"no-spiffe", FailureReason::kNoSpiffeId},
                      ClientCertCase{"two-spiffe", FailureReason::kMultipleSpiffeIds},
                      ClientCertCase{"foreign", FailureReason::kWrongTrustDomain},
                      ClientCertCase{"weak", FailureReason::kWeakKey},
                      ClientCertCase{"wrong-usage", FailureReason::kWrongKeyUsage}),
    [](const auto& test_info) {
      std::string name = test_info.param.identity;
      for (char& c : name) if (c == '-') c = '_';
      return name;
    });

TEST(HandshakeTest, UntrustedRootIsUnknownCa) {
  LoopThread loop;
  auto out = meshtls::testing::Handshake(loop, Context("client", "rogue-bundle.crt"),
                                         Context("server"), ClientOptions(), ServerOptions());
  EXPECT_EQ(out.client->failure_reason(), FailureReason::kUnknownCa) << out.client->failure_detail();
  EXPECT_FALSE(out.server->handshake_done());
}

TEST(HandshakeTest, ServerRequiresAlpnMeshtls) {
  for (const std::string alpn : {"", "h2"}) {
    LoopThread loop;
    auto [client_fd, server_fd] = TcpPair();
    auto server = Drive(loop, Context("server"), std::move(server_fd), ServerOptions());
    RawPeerOptions raw;
    raw.identity = "client";
    raw.alpn = alpn;
    auto raw_ctx = RawContext(raw);
    // Without ALPN the TLS 1.3 client may finish before our server refuses; only the server's
    // verdict matters.
    RawHandshake(raw_ctx.get(), client_fd.get(), true);
    auto session = server.get();
    EXPECT_EQ(session->failure_reason(), FailureReason::kNoApplicationProtocol)
        << "alpn '" << alpn << "': " << session->failure_detail();
  }
}

// Hostile input on the server port: each is closed with its reason, and the engine keeps serving.
struct HostileCase {
  std::string name;
  std::string bytes;
  FailureReason expected;
};

class HostileInputTest : public ::testing::TestWithParam<HostileCase> {};

TEST_P(HostileInputTest, ClosedWithReasonAndEngineKeepsServing) {
  LoopThread loop;
  auto [client_fd, server_fd] = TcpPair();
  auto server = Drive(loop, Context("server"), std::move(server_fd), ServerOptions(500ms));
  ASSERT_EQ(::send(client_fd.get(), GetParam().bytes.data(), GetParam().bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(GetParam().bytes.size()));
  if (GetParam().expected == FailureReason::kPeerClosed) ::shutdown(client_fd.get(), SHUT_WR);
  auto session = server.get();
  EXPECT_EQ(FailureReasonName(session->failure_reason()), FailureReasonName(GetParam().expected))
      << session->failure_detail();

  // A good client on the same loop still gets through.
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"),
                                         ClientOptions(), ServerOptions());
  EXPECT_TRUE(out.server->handshake_done()) << out.server->failure_detail();
}

std::string TlsRecordHeader(uint8_t type, uint16_t length) {
  return std::string{static_cast<char>(type), 3, 1, static_cast<char>(length >> 8),
                     static_cast<char>(length & 0xff)};
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HostileInputTest,
    ::testing::Values(
        HostileCase{"http_request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", FailureReason::kNotTls},
        HostileCase{"garbage", std::string(64, '\xff'), FailureReason::kNotTls},
        HostileCase{"oversized_record", TlsRecordHeader(22, 0xffff) + std::string(32, 'A'),
                    FailureReason::kOversizedRecord},
        HostileCase{"stalled", "", FailureReason::kHandshakeTimeout},
        HostileCase{"half_hello_then_fin", TlsRecordHeader(22, 200) + std::string(20, '\x01'),
                    FailureReason::kPeerClosed}),
    [](const auto& test_info) { return test_info.param.name; });

TEST(HandshakeTest, Tls12ClientHelloIsProtocolVersion) {
  LoopThread loop;
  auto [client_fd, server_fd] = TcpPair();
  auto server = Drive(loop, Context("server"), std::move(server_fd), ServerOptions());
  RawPeerOptions raw;
  raw.identity = "client";
  raw.max_version = TLS1_2_VERSION;
  auto raw_ctx = RawContext(raw);
  EXPECT_EQ(RawHandshake(raw_ctx.get(), client_fd.get(), true), nullptr);
  auto session = server.get();
  EXPECT_EQ(session->failure_reason(), FailureReason::kProtocolVersion) << session->failure_detail();
}

TEST(HandshakeTest, StalledHandshakesDoNotBlockOthers) {
  LoopThread loop;
  std::vector<UniqueFd> idle_clients;
  std::vector<std::future<std::unique_ptr<TlsSession>>> stalled;
  for (int i = 0; i < 50; ++i) {
    auto [client_fd, server_fd] = TcpPair();
    idle_clients.push_back(std::move(client_fd));
    stalled.push_back(Drive(loop, Context("server"), std::move(server_fd), ServerOptions(2s)));
  }
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"),
                                         ClientOptions(), ServerOptions());
  EXPECT_TRUE(out.client->handshake_done());
  for (auto& f : stalled) {
    EXPECT_EQ(f.get()->failure_reason(), FailureReason::kHandshakeTimeout);
  }
}

}  // namespace
}  // namespace meshtls::tls

namespace meshtls::tls {
namespace {

TEST(VerifiedChainCacheTest, SecondHandshakeHitsTheCacheAndStillChecksTheIdentity) {
  LoopThread loop;
  auto client_ctx = Context("client");
  auto server_ctx = Context("server");
  auto first = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), ServerOptions());
  ASSERT_TRUE(first.client->handshake_done());
  EXPECT_EQ(client_ctx->verified_chains()->misses(), 1u);
  EXPECT_EQ(client_ctx->verified_chains()->hits(), 0u);

  auto second = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), ServerOptions());
  ASSERT_TRUE(second.client->handshake_done());
  EXPECT_EQ(client_ctx->verified_chains()->hits(), 1u);
  EXPECT_EQ(*second.client->peer_id(), kServerId);

  // Same chain, now cached, but the caller expects someone else: still refused.
  auto third = meshtls::testing::Handshake(
      loop, client_ctx, server_ctx,
      ClientOptions(*SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/database")), ServerOptions());
  EXPECT_EQ(third.client->failure_reason(), FailureReason::kIdentityMismatch);
  EXPECT_EQ(client_ctx->verified_chains()->hits(), 2u);
}

TEST(VerifiedChainCacheTest, ChainVerifiedForOnePurposeIsNotReusedForTheOther) {
  // The server's context verified the client's chain as a client; our client context has never
  // verified that chain as a server certificate, so a hit would be a bug.
  LoopThread loop;
  auto ctx = Context("client");
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"), ClientOptions(), ServerOptions());
  ASSERT_TRUE(out.server->handshake_done());
  VerifiedChainCache::Key server_key, client_key;
  auto chain = meshtls::testing::ReadFile(meshtls::testing::CertPath("client.crt"));
  auto certs = ParsePemCertificates(chain);
  ASSERT_TRUE(certs.ok());
  ASSERT_TRUE(VerifiedChainCache::KeyFor(X509_PURPOSE_SSL_CLIENT, (*certs)[0].get(), nullptr, &client_key));
  ASSERT_TRUE(VerifiedChainCache::KeyFor(X509_PURPOSE_SSL_SERVER, (*certs)[0].get(), nullptr, &server_key));
  EXPECT_NE(client_key, server_key);
}

TEST(VerifiedChainCacheTest, EntriesEndWithTheChainsValidity) {
  VerifiedChainCache cache(16, std::chrono::seconds(3600));
  auto certs = ParsePemCertificates(meshtls::testing::ReadFile(meshtls::testing::CertPath("server.crt")));
  ASSERT_TRUE(certs.ok());
  STACK_OF(X509)* chain = sk_X509_new_null();
  for (auto& c : *certs) sk_X509_push(chain, c.get());
  VerifiedChainCache::Key key;
  ASSERT_TRUE(VerifiedChainCache::KeyFor(X509_PURPOSE_SSL_SERVER, (*certs)[0].get(), nullptr, &key));
  const auto now = VerifiedChainCache::Clock::now();
  cache.Insert(key, chain, now);
  EXPECT_TRUE(cache.Contains(key, now + std::chrono::minutes(1)));
  // The leaf lives one day: past that, or past the TTL, the entry is gone.
  EXPECT_FALSE(cache.Contains(key, now + std::chrono::hours(30)));
  sk_X509_free(chain);
}

}  // namespace
}  // namespace meshtls::tls
