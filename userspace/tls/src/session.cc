#include "meshtls/tls/session.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/tls/x509_identity.h"

namespace meshtls::tls {
namespace {

int SessionIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

TlsSession* SessionOf(const SSL* ssl) {
  return static_cast<TlsSession*>(SSL_get_ex_data(ssl, SessionIndex()));
}

FailureReason MapVerifyError(int error) {
  switch (error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return FailureReason::kExpired;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return FailureReason::kNotYetValid;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_CERT_UNTRUSTED:
      return FailureReason::kUnknownCa;
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE:
    case X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY:
      return FailureReason::kBadSignature;
    case X509_V_ERR_INVALID_PURPOSE:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
      return FailureReason::kWrongKeyUsage;
    case X509_V_ERR_EE_KEY_TOO_SMALL:
    case X509_V_ERR_CA_KEY_TOO_SMALL:
    case X509_V_ERR_CA_MD_TOO_WEAK:
      return FailureReason::kWeakKey;
    case X509_V_ERR_CERT_REVOKED:
      return FailureReason::kRevoked;
    default:
      return FailureReason::kInvalidChain;
  }
}

}  // namespace

FailureReason FailureFromOpenSslReason(int reason) {
  if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
    const int alert = reason - SSL_AD_REASON_OFFSET;
    if (alert == SSL_AD_PROTOCOL_VERSION) return FailureReason::kProtocolVersion;
    if (alert == SSL_AD_NO_APPLICATION_PROTOCOL) return FailureReason::kNoApplicationProtocol;
    return FailureReason::kPeerAlert;
  }
  switch (reason) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
      return FailureReason::kProtocolVersion;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_WRONG_SSL_VERSION:
    case SSL_R_BAD_PACKET_LENGTH:
    case SSL_R_LENGTH_MISMATCH:
    case SSL_R_LENGTH_TOO_SHORT:
    case SSL_R_BAD_LENGTH:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_BAD_RECORD_TYPE:
    case SSL_R_UNKNOWN_ALERT_TYPE:
    case SSL_R_BAD_EXTENSION:
    case SSL_R_BAD_HANDSHAKE_LENGTH:
      return FailureReason::kNotTls;
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
    case SSL_R_DATA_LENGTH_TOO_LONG:
    case SSL_R_EXCESSIVE_MESSAGE_SIZE:
    case SSL_R_RECORD_TOO_SMALL:
      return FailureReason::kOversizedRecord;
    case SSL_R_NO_APPLICATION_PROTOCOL:
      return FailureReason::kNoApplicationProtocol;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_CIPHERS_AVAILABLE:
      return FailureReason::kNoSharedParameters;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return FailureReason::kNoPeerCertificate;
    case SSL_R_UNEXPECTED_MESSAGE:
    case SSL_R_UNEXPECTED_RECORD:
    case SSL_R_UNEXPECTED_CCS_MESSAGE:
      return FailureReason::kUnexpectedMessage;
    case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
      return FailureReason::kDecryptError;
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
      return FailureReason::kTruncated;
    default:
      return FailureReason::kInternal;
  }
}


absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Create(
    std::shared_ptr<const TlsContext> context, UniqueFd socket, const SessionOptions& options) {
  if (!socket) return absl::InvalidArgumentError("TlsSession needs a socket");
  if (options.capture_traffic_secrets && !context->exports_traffic_secrets()) {
    return absl::FailedPreconditionError(
        "capture_traffic_secrets needs a TlsContext created with export_traffic_secrets");
  }
  const int flags = ::fcntl(socket.get(), F_GETFL);
  if (flags < 0 || ::fcntl(socket.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK)");
  }
  ERR_clear_error();
  SslPtr ssl(SSL_new(context->ssl_ctx()));
  if (!ssl) return absl::ResourceExhaustedError(StrCat("SSL_new: ", DrainOpenSslErrors()));
  if (SSL_set_fd(ssl.get(), socket.get()) != 1) {
    return absl::InternalError(StrCat("SSL_set_fd: ", DrainOpenSslErrors()));
  }
  if (options.role == Role::kClient) {
    static constexpr unsigned char kAlpnWire[] = {9, 'm', 'e', 's', 'h', 't', 'l', 's', '/', '1'};
    static_assert(sizeof(kAlpnWire) == sizeof(kAlpnProtocol));
    if (SSL_set_alpn_protos(ssl.get(), kAlpnWire, sizeof(kAlpnWire)) != 0) {
      return absl::InternalError(StrCat("SSL_set_alpn_protos: ", DrainOpenSslErrors()));
    }
    SSL_set_connect_state(ssl.get());
  } else {
    SSL_set_accept_state(ssl.get());
  }
  std::unique_ptr<TlsSession> session(
      new TlsSession(std::move(context), std::move(socket), std::move(ssl), options));
  SSL_set_ex_data(session->ssl_.get(), SessionIndex(), session.get());
  return session;
}

TlsSession::TlsSession(std::shared_ptr<const TlsContext> context, UniqueFd socket, SslPtr ssl,
                       const SessionOptions& options)
    : context_(std::move(context)),
      socket_(std::move(socket)),
      ssl_(std::move(ssl)),
      options_(options),
      started_(Clock::now()),
      deadline_(started_ + options.handshake_timeout) {}

TlsSession::~TlsSession() = default;

void TlsSession::Fail(FailureReason reason, std::string detail) {
  if (failure_ != FailureReason::kNone) return;  // the first cause is the real one
  failure_ = reason;
  failure_detail_ = std::move(detail);
  // How long it took to fail, for the handshake event line.
  handshake_duration_ = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_);
}

bool TlsSession::CheckDeadline(Clock::time_point now) {
  if (done_ || failure_ != FailureReason::kNone || now < deadline_) return false;
  Fail(FailureReason::kHandshakeTimeout,
       StrCat("handshake not finished after ", options_.handshake_timeout.count(), " ms"));
  return true;
}

HandshakeProgress TlsSession::Advance() {
  if (failure_ != FailureReason::kNone) return HandshakeProgress::kFailed;
  if (done_) return HandshakeProgress::kDone;
  if (CheckDeadline(Clock::now())) return HandshakeProgress::kFailed;
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_do_handshake(ssl_.get());
  if (rc == 1) return Finish();
  const int saved_errno = errno;
  const int ssl_error = SSL_get_error(ssl_.get(), rc);
  if (ssl_error == SSL_ERROR_WANT_READ) return HandshakeProgress::kWantRead;
  if (ssl_error == SSL_ERROR_WANT_WRITE) return HandshakeProgress::kWantWrite;
  ClassifySslFailure(ssl_error, saved_errno);
  return HandshakeProgress::kFailed;
}

void TlsSession::ClassifySslFailure(int ssl_error, int saved_errno) {
  const unsigned long first = ERR_peek_error();
  std::string errors = DrainOpenSslErrors();
  if (failure_ != FailureReason::kNone) return;  // the verify callback already named it
  if (ssl_error == SSL_ERROR_ZERO_RETURN ||
      (ssl_error == SSL_ERROR_SYSCALL && first == 0 && saved_errno == 0)) {
    Fail(FailureReason::kPeerClosed, "peer closed the connection during the handshake");
    return;
  }
  if (ssl_error == SSL_ERROR_SYSCALL && first == 0) {
    Fail(saved_errno == ECONNRESET ? FailureReason::kPeerClosed : FailureReason::kIoError,
         std::strerror(saved_errno));
    return;
  }
  const int reason = ERR_GET_REASON(first);
  if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    const long verify = SSL_get_verify_result(ssl_.get());
    Fail(MapVerifyError(static_cast<int>(verify)), X509_verify_cert_error_string(verify));
    return;
  }
  if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    Fail(FailureReason::kPeerClosed, "peer closed the connection during the handshake");
    return;
  }
  Fail(FailureFromOpenSslReason(reason), errors);
}

HandshakeProgress TlsSession::Finish() {
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != kAlpnProtocol) {
    Fail(FailureReason::kNoApplicationProtocol, "peer did not negotiate ALPN meshtls/1");
    return HandshakeProgress::kFailed;
  }
  if (!peer_id_) {
    // Unreachable with SSL_VERIFY_FAIL_IF_NO_PEER_CERT; kept so that a misconfigured context
    // can never produce an unauthenticated session.
    Fail(FailureReason::kNoPeerCertificate, "handshake finished without a verified peer identity");
    return HandshakeProgress::kFailed;
  }
  if (options_.capture_traffic_secrets && (secrets_.client.empty() || secrets_.server.empty())) {
    Fail(FailureReason::kInternal, "traffic secrets were not captured");
    return HandshakeProgress::kFailed;
  }
  if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_.get())) {
    // Both strings are OpenSSL's static tables, valid after the SSL object is gone.
    cipher_name_ = SSL_CIPHER_standard_name(cipher);
    cipher_iana_id_ = SSL_CIPHER_get_protocol_id(cipher);
  }
  protocol_version_ = SSL_get_version(ssl_.get());
  done_ = true;
  handshake_duration_ =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_);
  return HandshakeProgress::kDone;
}

int TlsSession::VerifyCallback(int preverify_ok, X509_STORE_CTX* store_ctx) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  TlsSession* self = ssl ? SessionOf(ssl) : nullptr;
  if (self == nullptr) return 0;
  const int depth = X509_STORE_CTX_get_error_depth(store_ctx);
  if (!preverify_ok) {
    const int error = X509_STORE_CTX_get_error(store_ctx);
    self->Fail(MapVerifyError(error),
               StrCat(X509_verify_cert_error_string(error), " (certificate depth ", depth, ")"));
    return 0;
  }
  if (depth != 0) return 1;

  return self->CheckLeaf(store_ctx, X509_STORE_CTX_get_current_cert(store_ctx));
}

int TlsSession::CertVerifyCallback(X509_STORE_CTX* store_ctx, void* arg) {
  const auto* context = static_cast<const TlsContext*>(arg);
  VerifiedChainCache* cache = context->verified_chains();
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  TlsSession* self = ssl ? SessionOf(ssl) : nullptr;
  if (cache == nullptr || self == nullptr) return X509_verify_cert(store_ctx);
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  // Servers verify client certificates and clients server certificates: never mix the two.
  const int purpose = self->options_.role == Role::kServer ? X509_PURPOSE_SSL_CLIENT
                                                           : X509_PURPOSE_SSL_SERVER;
  VerifiedChainCache::Key key;
  const bool keyed = VerifiedChainCache::KeyFor(purpose, leaf, X509_STORE_CTX_get0_untrusted(store_ctx), &key);
  const auto now = VerifiedChainCache::Clock::now();
  if (keyed && cache->Contains(key, now)) return self->CheckLeaf(store_ctx, leaf);
  const int ok = X509_verify_cert(store_ctx);  // runs VerifyCallback, leaf checks included
  if (ok == 1 && keyed) cache->Insert(key, X509_STORE_CTX_get0_chain(store_ctx), now);
  return ok;
}

int TlsSession::CheckLeaf(X509_STORE_CTX* store_ctx, X509* leaf) {
  TlsSession* self = this;
  auto reject = [&](FailureReason reason, std::string detail) {
    self->Fail(reason, std::move(detail));
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  };
  if (IdentityCheck strength = CheckKeyStrength(leaf); strength.reason != FailureReason::kNone) {
    return reject(strength.reason, strength.detail);
  }
  IdentityCheck identity = ExtractSpiffeId(leaf);
  if (!identity.id) return reject(identity.reason, identity.detail);
  if (identity.id->trust_domain() != self->context_->trust_domain()) {
    return reject(FailureReason::kWrongTrustDomain,
                  StrCat("peer ", identity.id->ToString(), " is not in trust domain ",
                               self->context_->trust_domain()));
  }
  if (self->options_.expected_peer && *identity.id != *self->options_.expected_peer) {
    return reject(FailureReason::kIdentityMismatch,
                  StrCat("peer presented ", identity.id->ToString(), ", expected ",
                               self->options_.expected_peer->ToString()));
  }
  std::string serial = SerialHex(leaf);
  if (const identity::DenyListHolder* deny = self->context_->deny_list()) {
    if (deny->Get()->Denies(*identity.id, serial)) {
      return reject(FailureReason::kRevoked, StrCat("peer ", identity.id->ToString(), " (serial ",
                                                    serial, ") is on the deny list"));
    }
  }
  self->peer_serial_ = std::move(serial);
  self->peer_id_ = *std::move(identity.id);
  return 1;
}

void TlsSession::KeylogCallback(const SSL* ssl, const char* line) {
  TlsSession* self = SessionOf(ssl);
  if (self == nullptr || !self->options_.capture_traffic_secrets) return;
  // NSS key log format: "<LABEL> <client_random hex> <secret hex>".
  std::vector<std::string_view> fields = Split(line, ' ');
  if (fields.size() != 3) return;
  std::vector<uint8_t>* target = nullptr;
  if (fields[0] == "CLIENT_TRAFFIC_SECRET_0") target = &self->secrets_.client;
  if (fields[0] == "SERVER_TRAFFIC_SECRET_0") target = &self->secrets_.server;
  if (target == nullptr || fields[2].size() % 2 != 0) return;
  Wipe(*target);
  target->reserve(fields[2].size() / 2);
  for (size_t i = 0; i < fields[2].size(); i += 2) {
    uint8_t byte = 0;
    const char* begin = fields[2].data() + i;
    if (std::from_chars(begin, begin + 2, byte, 16).ec != std::errc()) {
      Wipe(*target);
      return;
    }
    target->push_back(byte);
  }
}

void TlsSession::CloseSocket(bool reset) {
  ssl_.reset();
  if (reset && socket_) {
    const linger abort_on_close{1, 0};
    ::setsockopt(socket_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  }
  socket_.reset();
}

bool TlsSession::HasBufferedInput() const { return ssl_ && SSL_has_pending(ssl_.get()) == 1; }

}  // namespace meshtls::tls
