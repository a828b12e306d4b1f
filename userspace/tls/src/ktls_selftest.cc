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
#include <functional>
#include <span>
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
  // P-256, by the name every OpenSSL 3 code path accepts (openssl_setup.h).
  EvpPkeyPtr key(EVP_EC_gen("prime256v1"));
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

// The kTLS end sends `marker`, after `records_before` records of known size already sent (a
// KeyUpdate). The raw bytes on the receiver's socket must be TLS 1.3 application_data records
// only, without the marker; then OpenSSL must read the marker back.
absl::Status KernelToOpenSsl(int kernel_fd, int openssl_fd, SSL* openssl, size_t bytes_before,
                             Clock::time_point deadline) {
  const std::string marker = RandomMarker();
  if (::send(kernel_fd, marker.data(), marker.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(marker.size())) {
    return ErrnoStatus(errno, "kTLS send");
  }
  // header (5) + marker + inner content type (1) + tag (16)
  const size_t wanted = bytes_before + 5 + marker.size() + 1 + 16;
  std::vector<uint8_t> wire(wanted + 64);
  ssize_t seen = 0;
  while (static_cast<size_t>(seen) < wanted) {
    if (!WaitReadable(openssl_fd, deadline)) {
      return absl::DeadlineExceededError(StrCat("only ", seen, " of ", wanted, " record bytes reached the wire"));
    }
    seen = ::recv(openssl_fd, wire.data(), wire.size(), MSG_PEEK);
    if (seen < 0 && errno != EAGAIN) return ErrnoStatus(errno, "raw read");
    seen = std::max<ssize_t>(seen, 0);
  }
  const std::string_view raw(reinterpret_cast<const char*>(wire.data()), static_cast<size_t>(seen));
  if (raw.find(marker) != std::string_view::npos) {
    return absl::InternalError("the marker crossed the wire in plaintext");
  }
  // Walk the record headers: every record is an opaque application_data record (TLS 1.3 hides
  // the real type, a KeyUpdate included).
  for (size_t at = 0; at + 5 <= static_cast<size_t>(seen);) {
    if (wire[at] != kRecordApplicationData || wire[at + 1] != 0x03 || wire[at + 2] != 0x03) {
      return absl::InternalError(fmt::format("the wire carries something other than TLS 1.3 application_data "
                                             "records (bytes {:02x} {:02x} {:02x} at offset {})",
                                             wire[at], wire[at + 1], wire[at + 2], at));
    }
    at += 5 + ((size_t{wire[at + 3]} << 8) | wire[at + 4]);
  }
  std::string got(marker.size(), '\0');
  const int n = SSL_read(openssl, got.data(), static_cast<int>(got.size()));
  if (n != static_cast<int>(marker.size()) || got != marker) {
    return absl::InternalError(StrCat("OpenSSL could not read what the kernel sent: ",
                                      n <= 0 ? DrainOpenSslErrors() : std::string("wrong bytes")));
  }
  return absl::OkStatus();
}

// OpenSSL sends a marker; the kTLS end must read it back as application data. A KeyUpdate that
// arrives first is handed to `on_key_update` (the rekey stage), which installs the next key.
absl::Status OpenSslToKernel(int kernel_fd, SSL* openssl, Clock::time_point deadline,
                             const std::function<absl::Status(std::span<const uint8_t>)>& on_key_update) {
  const std::string reply = RandomMarker();
  if (SSL_write(openssl, reply.data(), static_cast<int>(reply.size())) != static_cast<int>(reply.size())) {
    return absl::InternalError(StrCat("OpenSSL write: ", DrainOpenSslErrors()));
  }
  std::string received(reply.size() + 16, '\0');
  size_t have = 0;
  while (have < reply.size()) {
    if (!WaitReadable(kernel_fd, deadline)) return absl::DeadlineExceededError("kTLS end received nothing");
    uint8_t type = 0;
    const ssize_t r = KtlsReceive(kernel_fd, received.data() + have, received.size() - have, &type);
    if (r < 0 && errno == EAGAIN) continue;
    if (r <= 0) return ErrnoStatus(r < 0 ? errno : ECONNRESET, "kTLS receive");
    if (type == kRecordHandshake && on_key_update) {
      RETURN_IF_ERROR(on_key_update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(received.data()) + have,
                                                             static_cast<size_t>(r))));
      continue;
    }
    if (type != kRecordApplicationData) return absl::InternalError(StrCat("kTLS end got record type ", type));
    have += static_cast<size_t>(r);
  }
  if (received.substr(0, have) != reply) return absl::InternalError("the kTLS end decrypted wrong bytes");
  return absl::OkStatus();
}

// KeyUpdate both ways on the established kTLS session, as the splice relay does it: the kTLS end
// sends a KeyUpdate and installs its next sending key; OpenSSL then sends its own with
// update_requested, which the kTLS end follows (next receiving key) and answers (next sending
// key again). Markers cross after each change, with the same wire check.
absl::Status CheckRekey(KtlsCipher cipher, int kernel_fd, int openssl_fd, SSL* openssl, Secrets& secrets,
                        const KtlsSelfTestOptions& options, Clock::time_point deadline) {
  // The kTLS end is the client: it sends under the client secret.
  auto send_key_update = [&](bool corrupt) -> absl::Status {
    if (KtlsSendKeyUpdate(kernel_fd, false) != 5) return ErrnoStatus(errno, "kTLS KeyUpdate send");
    if (corrupt) secrets.client[0] ^= 0x5a;  // the next key derives from a wrong secret
    return AdvanceKtlsKey(kernel_fd, true, cipher, secrets.client);
  };
  constexpr size_t kKeyUpdateRecord = 5 + 5 + 1 + 16;
  RETURN_IF_ERROR(send_key_update(options.corrupt_rekey));
  RETURN_IF_ERROR(KernelToOpenSsl(kernel_fd, openssl_fd, openssl, kKeyUpdateRecord, deadline));
  if (SSL_key_update(openssl, SSL_KEY_UPDATE_REQUESTED) != 1) {
    return absl::InternalError(StrCat("SSL_key_update: ", DrainOpenSslErrors()));
  }
  bool followed = false;
  auto follow = [&](std::span<const uint8_t> record) -> absl::Status {
    ASSIGN_OR_RETURN(bool requested, ParseKeyUpdate(record));
    if (!requested) return absl::InternalError("OpenSSL's KeyUpdate did not carry update_requested");
    RETURN_IF_ERROR(AdvanceKtlsKey(kernel_fd, false, cipher, secrets.server));
    followed = true;
    return send_key_update(false);
  };
  RETURN_IF_ERROR(OpenSslToKernel(kernel_fd, openssl, deadline, follow));
  if (!followed) return absl::InternalError("OpenSSL's KeyUpdate never reached the kTLS end");
  return KernelToOpenSsl(kernel_fd, openssl_fd, openssl, kKeyUpdateRecord, deadline);
}

KtlsCipherSelfTest CheckCipher(KtlsCipher cipher, const KtlsSelfTestOptions& options, bool test_rekey) {
  KtlsCipherSelfTest result;
  result.cipher = cipher;
  Secrets secrets;
  UniqueFd kernel_fd, openssl_fd;
  SslCtxPtr client_ctx, server_ctx;
  SslPtr server;
  const auto deadline = Clock::now() + kTimeout;
  absl::Status st = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(client_ctx, MakeContext(false, cipher));
    ASSIGN_OR_RETURN(server_ctx, MakeContext(true, cipher));
    RETURN_IF_ERROR(internal::LoopbackPair(kernel_fd, openssl_fd));
    // Both ends are driven from this one thread.
    for (int fd : {kernel_fd.get(), openssl_fd.get()}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    SslPtr client(SSL_new(client_ctx.get()));
    server.reset(SSL_new(server_ctx.get()));
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
    RETURN_IF_ERROR(KernelToOpenSsl(kernel_fd.get(), openssl_fd.get(), server.get(), 0, deadline));
    return OpenSslToKernel(kernel_fd.get(), server.get(), deadline, nullptr);
  }();
  result.passed = st.ok();
  result.detail = st.ok() ? "ciphertext on the wire, OpenSSL interoperates both ways" : std::string(st.message());
  if (st.ok() && test_rekey) {
    result.rekey_tested = true;
    absl::Status rekey = CheckRekey(cipher, kernel_fd.get(), openssl_fd.get(), server.get(), secrets, options, deadline);
    result.rekey_passed = rekey.ok();
    result.rekey_detail = rekey.ok() ? "KeyUpdate both ways (update_requested answered), ciphertext on the wire"
                                     : std::string(rekey.message());
  }
  return result;
}

}  // namespace

bool KtlsSelfTestResult::Passed(KtlsCipher cipher) const {
  return std::any_of(ciphers.begin(), ciphers.end(),
                     [&](const KtlsCipherSelfTest& c) { return c.cipher == cipher && c.passed; });
}

bool KtlsSelfTestResult::any_passed() const {
  return std::any_of(ciphers.begin(), ciphers.end(), [](const KtlsCipherSelfTest& c) { return c.passed; });
}

bool KtlsSelfTestResult::RekeyPassed() const {
  return any_passed() && std::all_of(ciphers.begin(), ciphers.end(), [](const KtlsCipherSelfTest& c) {
           return !c.passed || (c.rekey_tested && c.rekey_passed);
         });
}

std::string KtlsSelfTestResult::Summary() const {
  if (ciphers.empty()) return "not run: the kernel accepted no kTLS cipher";
  std::vector<std::string> parts;
  for (const KtlsCipherSelfTest& c : ciphers) {
    std::string part = StrCat(KtlsCipherName(c.cipher), c.passed ? " passed" : StrCat(" FAILED (", c.detail, ")"));
    if (c.rekey_tested) StrAppend(&part, c.rekey_passed ? ", rekey passed" : StrCat(", rekey FAILED (", c.rekey_detail, ")"));
    parts.push_back(std::move(part));
  }
  return Join(parts, "; ");
}

KtlsSelfTestResult RunKtlsSelfTest(const KtlsSupport& support, const KtlsSelfTestOptions& options) {
  KtlsSelfTestResult result;
  for (KtlsCipher cipher : {KtlsCipher::kAes128Gcm, KtlsCipher::kAes256Gcm, KtlsCipher::kChacha20Poly1305}) {
    if (!support.Supports(cipher)) continue;
    result.ciphers.push_back(CheckCipher(cipher, options, support.rekey));
  }
  return result;
}

}  // namespace meshtls::tls
