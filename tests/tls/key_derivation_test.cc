// Host-side proof of the kTLS key schedule: keys derived from the captured traffic secrets must
// decrypt the records OpenSSL itself put on the wire, for every cipher and both directions.
// (The kernel half, TLS_TX/TLS_RX, is proven in the VM: tests/tls_vm.)
#include <openssl/evp.h>
#include <sys/socket.h>

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "meshtls/tls/ktls.h"
#include "testing/test_util.h"

namespace meshtls::tls {
namespace {

using meshtls::testing::Context;

std::vector<uint8_t> ReadRecord(int fd) {
  std::vector<uint8_t> record(5);
  EXPECT_EQ(::recv(fd, record.data(), 5, MSG_WAITALL), 5);
  const size_t length = (size_t{record[3]} << 8) | record[4];
  record.resize(5 + length);
  EXPECT_EQ(::recv(fd, record.data() + 5, length, MSG_WAITALL), static_cast<ssize_t>(length));
  return record;
}

// Decrypts a TLS 1.3 record protected with `keys` at sequence number `seq` (RFC 8446 §5.2-5.3).
std::string Decrypt(const KtlsKeys& keys, uint64_t seq, const std::vector<uint8_t>& record) {
  uint8_t nonce[12];
  std::copy(keys.iv.begin(), keys.iv.end(), nonce);
  for (int i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<uint8_t>(seq >> (8 * i));
  const EVP_CIPHER* cipher = keys.cipher == KtlsCipher::kAes128Gcm   ? EVP_aes_128_gcm()
                             : keys.cipher == KtlsCipher::kAes256Gcm ? EVP_aes_256_gcm()
                                                                     : EVP_chacha20_poly1305();
  const size_t body = record.size() - 5 - 16;
  std::vector<uint8_t> plain(body);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  EVP_DecryptInit_ex(ctx, cipher, nullptr, nullptr, nullptr);
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr);
  EVP_DecryptInit_ex(ctx, nullptr, nullptr, keys.key.data(), nonce);
  EVP_DecryptUpdate(ctx, nullptr, &len, record.data(), 5);  // additional data: the header
  EVP_DecryptUpdate(ctx, plain.data(), &len, record.data() + 5, static_cast<int>(body));
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, const_cast<uint8_t*>(record.data() + 5 + body));
  const int ok = EVP_DecryptFinal_ex(ctx, plain.data() + len, &len);
  EVP_CIPHER_CTX_free(ctx);
  if (ok != 1) return "<authentication failed>";
  return std::string(plain.begin(), plain.end());
}

class KeyDerivationTest : public ::testing::TestWithParam<std::string> {
 protected:
  // A finished handshake on the suite under test, both ends keeping their traffic secrets.
  meshtls::testing::HandshakeOutcome HandshakeOnSuite() {
    auto server_opts = meshtls::testing::Credentials("server");
    server_opts.cipher_suites = {GetParam()};
    SessionOptions client;
    client.expected_peer = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
    client.capture_traffic_secrets = true;
    SessionOptions server;
    server.capture_traffic_secrets = true;
    return meshtls::testing::Handshake(loop_, Context("client"), *TlsContext::Create(server_opts), client, server);
  }
  meshtls::testing::LoopThread loop_;
};

TEST_P(KeyDerivationTest, DerivedKeysDecryptOpenSslRecordsBothWays) {
  auto out = HandshakeOnSuite();
  ASSERT_TRUE(out.client->handshake_done()) << out.client->failure_detail();
  auto cipher = KtlsCipherFromIana(out.client->cipher_iana_id());
  ASSERT_TRUE(cipher.ok());
  TrafficSecrets secrets = out.client->TakeTrafficSecrets();
  EXPECT_EQ(out.server->TakeTrafficSecrets().client, secrets.client);  // both ends agree
  auto client_keys = DeriveKtlsKeys(*cipher, secrets.client);
  auto server_keys = DeriveKtlsKeys(*cipher, secrets.server);
  ASSERT_TRUE(client_keys.ok() && server_keys.ok());
  EXPECT_EQ(client_keys->key.size(), *cipher == KtlsCipher::kAes128Gcm ? 16u : 32u);
  EXPECT_EQ(client_keys->iv.size(), 12u);

  // The sockets are non-blocking now; write through OpenSSL, read raw records with MSG_WAITALL.
  for (uint64_t seq = 0; seq < 3; ++seq) {
    const std::string marker = "client record " + std::to_string(seq);
    ASSERT_EQ(SSL_write(out.client->ssl(), marker.data(), static_cast<int>(marker.size())),
              static_cast<int>(marker.size()));
    auto record = ReadRecord(out.server->fd());
    EXPECT_EQ(record[0], kRecordApplicationData);
    EXPECT_EQ(Decrypt(*client_keys, seq, record), marker + '\x17');
  }
  const std::string reply = "server record";
  ASSERT_EQ(SSL_write(out.server->ssl(), reply.data(), static_cast<int>(reply.size())),
            static_cast<int>(reply.size()));
  EXPECT_EQ(Decrypt(*server_keys, 0, ReadRecord(out.client->fd())), reply + '\x17');
  // A wrong sequence number must not authenticate: the check above is not vacuous.
  ASSERT_EQ(SSL_write(out.server->ssl(), reply.data(), static_cast<int>(reply.size())),
            static_cast<int>(reply.size()));
  EXPECT_EQ(Decrypt(*server_keys, 0, ReadRecord(out.client->fd())), "<authentication failed>");
}

// After OpenSSL's own KeyUpdate, the record carrying it decrypts under the old keys to a
// KeyUpdate message that ParseKeyUpdate reads, and the next record decrypts only under the keys
// of NextTrafficSecret() at sequence 0: the derivation the kTLS relay uses to follow and send
// KeyUpdates, checked here without kTLS.
TEST_P(KeyDerivationTest, NextTrafficSecretMatchesOpenSslKeyUpdate) {
  auto out = HandshakeOnSuite();
  ASSERT_TRUE(out.client->handshake_done()) << out.client->failure_detail();
  auto cipher = KtlsCipherFromIana(out.client->cipher_iana_id());
  ASSERT_TRUE(cipher.ok());
  TrafficSecrets secrets = out.client->TakeTrafficSecrets();
  auto keys0 = DeriveKtlsKeys(*cipher, secrets.client);
  auto next = NextTrafficSecret(*cipher, secrets.client);
  ASSERT_TRUE(keys0.ok() && next.ok());
  EXPECT_EQ(next->size(), secrets.client.size());
  EXPECT_NE(*next, secrets.client);
  auto keys1 = DeriveKtlsKeys(*cipher, *next);
  ASSERT_TRUE(keys1.ok());

  for (bool requested : {false, true}) {
    SCOPED_TRACE(requested ? "update_requested" : "update_not_requested");
    ASSERT_EQ(SSL_key_update(out.client->ssl(), requested ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED), 1);
    const std::string marker = "after the update";
    ASSERT_EQ(SSL_write(out.client->ssl(), marker.data(), static_cast<int>(marker.size())),
              static_cast<int>(marker.size()));
    // The KeyUpdate travels under the old key (here its first record, or the first after the
    // previous update), as a handshake record (inner type 22).
    const std::string update = Decrypt(*keys0, requested ? 1 : 0, ReadRecord(out.server->fd()));
    ASSERT_EQ(update.size(), 6u) << update;
    EXPECT_EQ(static_cast<uint8_t>(update.back()), kRecordHandshake);
    auto parsed = ParseKeyUpdate(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(update.data()), 5));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, requested);
    EXPECT_EQ(Decrypt(*keys1, 0, ReadRecord(out.server->fd())), marker + '\x17');
    // Step both "generations" on for the second round.
    keys0 = DeriveKtlsKeys(*cipher, *next);
    next = NextTrafficSecret(*cipher, *next);
    ASSERT_TRUE(next.ok());
    keys1 = DeriveKtlsKeys(*cipher, *next);
  }
}

TEST(ParseKeyUpdateTest, AcceptsOnlyAWellFormedKeyUpdate) {
  auto parse = [](std::vector<uint8_t> bytes) { return ParseKeyUpdate(bytes); };
  EXPECT_EQ(*parse({24, 0, 0, 1, 0}), false);
  EXPECT_EQ(*parse({24, 0, 0, 1, 1}), true);
  EXPECT_NE(parse({24, 0, 0, 1, 2}).status().message().find("undefined"), std::string::npos);
  EXPECT_NE(parse({4, 0, 0, 1, 0}).status().message().find("not a KeyUpdate"), std::string::npos);  // NewSessionTicket
  EXPECT_NE(parse({24, 0, 0, 2, 0, 0}).status().message().find("malformed"), std::string::npos);
  EXPECT_NE(parse({24, 0, 0, 1, 0, 24, 0, 0, 1, 0}).status().message().find("malformed"), std::string::npos);
  EXPECT_FALSE(parse({}).ok());
}

INSTANTIATE_TEST_SUITE_P(Ciphers, KeyDerivationTest,
                         ::testing::Values("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256"));

TEST(KtlsProbeTest, ReportsWhyWhenUnavailable) {
  KtlsSupport support = ProbeKtls();
  std::cerr << "kTLS probe: " << support.detail << "\n";
  EXPECT_FALSE(support.detail.empty());
  if (!support.available) {
    EXPECT_NE(support.detail.find("unavailable"), std::string::npos);
    EXPECT_FALSE(meshtls::testing::KtlsRequired()) << support.detail;
  }
}

}  // namespace
}  // namespace meshtls::tls

namespace meshtls::tls {
namespace {

TEST(SwitchToKtlsTest, RefusesWhenOpenSslHoldsReceivedBytes) {
  meshtls::testing::LoopThread loop;
  SessionOptions client, server;
  client.expected_peer = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
  client.capture_traffic_secrets = server.capture_traffic_secrets = true;
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"), client, server);
  ASSERT_TRUE(out.client->handshake_done());
  ASSERT_EQ(SSL_write(out.server->ssl(), "early", 5), 5);
  char c;
  for (int i = 0; i < 100 && SSL_peek(out.client->ssl(), &c, 1) <= 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(out.client->HasBufferedInput());
  absl::Status st = SwitchToKtls(*out.client);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(std::string(st.message()).find("holds received bytes"), std::string::npos) << st;
  EXPECT_NE(out.client->ssl(), nullptr) << "a refused switch must leave the session usable";
}

TEST(SwitchToKtlsTest, NeedsCapturedSecrets) {
  meshtls::testing::LoopThread loop;
  SessionOptions client, server;
  client.expected_peer = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
  auto out = meshtls::testing::Handshake(loop, Context("client"), Context("server"), client, server);
  ASSERT_TRUE(out.client->handshake_done());
  EXPECT_EQ(SwitchToKtls(*out.client).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SwitchToKtlsTest, ContextWithoutSecretExportRejectsCapture) {
  SessionOptions options;
  options.capture_traffic_secrets = true;
  auto [a, b] = meshtls::testing::TcpPair();
  auto session = TlsSession::Create(Context("client", "bundle.crt", /*export_traffic_secrets=*/false),
                                    std::move(a), options);
  EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace meshtls::tls
