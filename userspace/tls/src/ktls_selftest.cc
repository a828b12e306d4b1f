#include "meshtls/tls/ktls_selftest.h"

#include <fcntl.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string_view>

#include "meshtls/common/openssl.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "loopback_pair.h"

namespace meshtls::tls {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kTimeout = std::chrono::seconds(5);

// The two application traffic secrets, as the key-log callback reports them.
struct Secrets {
  std::vector<uint8_t> client, server;
  ~Secrets() {
    Wipe(client);
    Wipe(server);
  }
};

void CaptureSecret(const SSL* ssl, const char* line) {
  auto* secrets = static_cast<Secrets*>(SSL_get_app_data(ssl));
  if (secrets == nullptr) return;
  const std::string_view text(line);
  std::vector<uint8_t>* target = nullptr;
  if (text.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) target = &secrets->client;
  if (text.starts_with("SERVER_TRAFFIC_SECRET_0 ")) target = &secrets->server;
  if (target == nullptr) return;
  const size_t hex = text.rfind(' ');
  long length = 0;
  unsigned char* bytes = OPENSSL_hexstr2buf(std::string(text.substr(hex + 1)).c_str(), &length);
  if (bytes == nullptr) return;
  target->assign(bytes, bytes + length);
  OPENSSL_clear_free(bytes, static_cast<size_t>(length));
}

// A throwaway self-signed P-256 certificate: the test needs a handshake, not an identity.
absl::Status AddEphemeralCertificate(SSL_CTX* ctx) {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return absl::InternalError(StrCat("EC key: ", DrainOpenSslErrors()));
  X509Ptr cert(X509_new());
  if (!cert) return absl::ResourceExhaustedError("X509_new");
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("meshtls ktls self-test"),
                             -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0 || SSL_CTX_use_certificate(ctx, cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, key.get()) != 1) {
    return absl::InternalError(StrCat("self-test certificate: ", DrainOpenSslErrors()));
  }
  return absl::OkStatus();
}

absl::StatusOr<SslCtxPtr> MakeContext(bool server, KtlsCipher cipher) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) return absl::InternalError(StrCat("SSL_CTX_new: ", DrainOpenSslErrors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  if (SSL_CTX_set_ciphersuites(ctx.get(), std::string(KtlsCipherName(cipher)).c_str()) != 1) {
    return absl::UnavailableError(StrCat("OpenSSL lacks ", KtlsCipherName(cipher)));
  }
  // No tickets: no post-handshake record, so both directions start at sequence 0 (as the data path).
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  if (server) {
    RETURN_IF_ERROR(AddEphemeralCertificate(ctx.get()));
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_keylog_callback(ctx.get(), CaptureSecret);
  }
  return ctx;
}

bool WaitReadable(int fd, Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return false;
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(left)) == 1;
}

// Both ends in this thread, non-blocking, until both finished.
absl::Status Handshake(SSL* client, SSL* server, int client_fd, int server_fd) {
  const auto deadline = Clock::now() + kTimeout;
  bool client_done = false, server_done = false;
  while (!client_done || !server_done) {
    if (Clock::now() > deadline) return absl::DeadlineExceededError("self-test handshake did not finish");
    if (!client_done) {
      const int rc = SSL_connect(client);
      if (rc == 1) {
        client_done = true;
      } else if (SSL_get_error(client, rc) != SSL_ERROR_WANT_READ && SSL_get_error(client, rc) != SSL_ERROR_WANT_WRITE) {
        return absl::InternalError(StrCat("self-test handshake (client): ", DrainOpenSslErrors()));
      }
    }
    if (!server_done) {
      const int rc = SSL_accept(server);
      if (rc == 1) {
        server_done = true;
      } else if (SSL_get_error(server, rc) != SSL_ERROR_WANT_READ && SSL_get_error(server, rc) != SSL_ERROR_WANT_WRITE) {
        return absl::InternalError(StrCat("self-test handshake (server): ", DrainOpenSslErrors()));
      }
    }
    if (!client_done || !server_done) {
      pollfd fds[2] = {{client_fd, POLLIN, 0}, {server_fd, POLLIN, 0}};
      ::poll(fds, 2, 10);
    }
  }
  return absl::OkStatus();
}

std::string RandomMarker() {
  unsigned char bytes[16];
  RAND_bytes(bytes, sizeof(bytes));
  std::string marker = "meshtls-ktls-self-test-";
  for (unsigned char b : bytes) marker += StrCat(static_cast<char>('a' + (b & 15)), static_cast<char>('a' + (b >> 4)));
  return marker;
}

absl::Status CheckCipher(KtlsCipher cipher, const KtlsSelfTestOptions& options) {
  ASSIGN_OR_RETURN(SslCtxPtr client_ctx, MakeContext(false, cipher));
  ASSIGN_OR_RETURN(SslCtxPtr server_ctx, MakeContext(true, cipher));
  UniqueFd kernel_fd, openssl_fd;
  RETURN_IF_ERROR(internal::LoopbackPair(kernel_fd, openssl_fd));
  // Both ends are driven from this one thread.
  for (int fd : {kernel_fd.get(), openssl_fd.get()}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  Secrets secrets;
  SslPtr client(SSL_new(client_ctx.get()));
  SslPtr server(SSL_new(server_ctx.get()));
  if (!client || !server) return absl::ResourceExhaustedError("SSL_new");
  SSL_set_app_data(client.get(), &secrets);
  SSL_set_fd(client.get(), kernel_fd.get());
  SSL_set_fd(server.get(), openssl_fd.get());
  RETURN_IF_ERROR(Handshake(client.get(), server.get(), kernel_fd.get(), openssl_fd.get()));
  if (secrets.client.empty() || secrets.server.empty()) return absl::InternalError("traffic secrets not captured");
  if (SSL_has_pending(client.get()) != 0) return absl::InternalError("OpenSSL holds received bytes after the handshake");

  // The kTLS end: the data path's derivation and installation.
  ASSIGN_OR_RETURN(KtlsKeys tx, DeriveKtlsKeys(cipher, secrets.client));
  ASSIGN_OR_RETURN(KtlsKeys rx, DeriveKtlsKeys(cipher, secrets.server));
  if (options.corrupt_tx_key) tx.key[0] ^= 0x5a;
  RETURN_IF_ERROR(InstallKtls(kernel_fd.get(), tx, 0, rx, 0));
  client.reset();  // the kernel owns the record layer now

  // kTLS -> wire -> OpenSSL.
  const std::string marker = RandomMarker();
  if (::send(kernel_fd.get(), marker.data(), marker.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(marker.size())) {
    return ErrnoStatus(errno, "kTLS send");
  }
  // header (5) + marker + inner content type (1) + tag (16)
  const size_t record = 5 + marker.size() + 1 + 16;
  std::vector<uint8_t> wire(record + 64);
  const auto deadline = Clock::now() + kTimeout;
  ssize_t seen = 0;
  while (static_cast<size_t>(seen) < record) {
    if (!WaitReadable(openssl_fd.get(), deadline)) {
      return absl::DeadlineExceededError(StrCat("only ", seen, " of ", record, " record bytes reached the wire"));
    }
    seen = ::recv(openssl_fd.get(), wire.data(), wire.size(), MSG_PEEK);
    if (seen < 0 && errno != EAGAIN) return ErrnoStatus(errno, "raw read");
    seen = std::max<ssize_t>(seen, 0);
  }
  const std::string_view raw(reinterpret_cast<const char*>(wire.data()), static_cast<size_t>(seen));
  if (raw.find(marker) != std::string_view::npos) {
    return absl::InternalError("the marker crossed the wire in plaintext");
  }
  if (wire[0] != kRecordApplicationData || wire[1] != 0x03 || wire[2] != 0x03) {
    return absl::InternalError(fmt::format("the wire does not start with a TLS 1.3 application_data record "
                                           "(bytes {:02x} {:02x} {:02x})", wire[0], wire[1], wire[2]));
  }
  std::string got(marker.size(), '\0');
  const int n = SSL_read(server.get(), got.data(), static_cast<int>(got.size()));
  if (n != static_cast<int>(marker.size()) || got != marker) {
    return absl::InternalError(StrCat("OpenSSL could not read what the kernel sent: ",
                                      n <= 0 ? DrainOpenSslErrors() : std::string("wrong bytes")));
  }

  // OpenSSL -> wire -> kTLS.
  const std::string reply = RandomMarker();
  if (SSL_write(server.get(), reply.data(), static_cast<int>(reply.size())) != static_cast<int>(reply.size())) {
    return absl::InternalError(StrCat("OpenSSL write: ", DrainOpenSslErrors()));
  }
  std::string received(reply.size() + 16, '\0');
  size_t have = 0;
  while (have < reply.size()) {
    if (!WaitReadable(kernel_fd.get(), deadline)) return absl::DeadlineExceededError("kTLS end received nothing");
    uint8_t type = 0;
    const ssize_t r = KtlsReceive(kernel_fd.get(), received.data() + have, received.size() - have, &type);
    if (r < 0 && errno == EAGAIN) continue;
    if (r <= 0) return ErrnoStatus(r < 0 ? errno : ECONNRESET, "kTLS receive");
    if (type != kRecordApplicationData) return absl::InternalError(StrCat("kTLS end got record type ", type));
    have += static_cast<size_t>(r);
  }
  if (received.substr(0, have) != reply) return absl::InternalError("the kTLS end decrypted wrong bytes");
  return absl::OkStatus();
}

}  // namespace

bool KtlsSelfTestResult::Passed(KtlsCipher cipher) const {
  return std::any_of(ciphers.begin(), ciphers.end(),
                     [&](const KtlsCipherSelfTest& c) { return c.cipher == cipher && c.passed; });
}

bool KtlsSelfTestResult::any_passed() const {
  return std::any_of(ciphers.begin(), ciphers.end(), [](const KtlsCipherSelfTest& c) { return c.passed; });
}

std::string KtlsSelfTestResult::Summary() const {
  if (ciphers.empty()) return "not run: the kernel accepted no kTLS cipher";
  std::vector<std::string> parts;
  for (const KtlsCipherSelfTest& c : ciphers) {
    parts.push_back(StrCat(KtlsCipherName(c.cipher), c.passed ? " passed" : StrCat(" FAILED (", c.detail, ")")));
  }
  return Join(parts, "; ");
}

KtlsSelfTestResult RunKtlsSelfTest(const KtlsSupport& support, const KtlsSelfTestOptions& options) {
  KtlsSelfTestResult result;
  for (KtlsCipher cipher : {KtlsCipher::kAes128Gcm, KtlsCipher::kAes256Gcm, KtlsCipher::kChacha20Poly1305}) {
    if (!support.Supports(cipher)) continue;
    absl::Status st = CheckCipher(cipher, options);
    result.ciphers.push_back({cipher, st.ok(),
                              st.ok() ? std::string("ciphertext on the wire, OpenSSL interoperates both ways")
                                      : std::string(st.message())});
  }
  return result;
}

}  // namespace meshtls::tls
