#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/identity/spiffe_id.h"
#include "meshtls/tls/context.h"
#include "meshtls/tls/failure_reason.h"
#include "meshtls/common/openssl.h"

namespace meshtls::tls {

enum class Role { kClient, kServer };
enum class HandshakeProgress { kWantRead, kWantWrite, kDone, kFailed };

struct SessionOptions {
  Role role = Role::kClient;
  // The identity the peer must present. A client always knows whom it dials; a server usually
  // accepts any identity in the trust domain and hands it to authorization.
  std::optional<SpiffeId> expected_peer;
  std::chrono::milliseconds handshake_timeout{10'000};
  // Keep the TLS 1.3 application traffic secrets for a kTLS switch after the handshake.
  bool capture_traffic_secrets = false;
};

// The application traffic secrets of one connection, wiped on destruction.
struct TrafficSecrets {
  std::vector<uint8_t> client;
  std::vector<uint8_t> server;
  TrafficSecrets() = default;
  TrafficSecrets(const TrafficSecrets&) = delete;
  TrafficSecrets& operator=(const TrafficSecrets&) = delete;
  TrafficSecrets(TrafficSecrets&&) = default;
  TrafficSecrets& operator=(TrafficSecrets&&) = default;
  ~TrafficSecrets() {
    Wipe(client);
    Wipe(server);
  }
};

// One TLS connection over a non-blocking TCP socket it owns. Advance() drives the handshake one
// step at a time and tells the caller which readiness to wait for; no thread blocks.
class TlsSession {
 public:
  using Clock = std::chrono::steady_clock;

  static absl::StatusOr<std::unique_ptr<TlsSession>> Create(
      std::shared_ptr<const TlsContext> context, UniqueFd socket, const SessionOptions& options);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  HandshakeProgress Advance();
  // Fails the handshake with kHandshakeTimeout if the deadline has passed.
  bool CheckDeadline(Clock::time_point now);

  Role role() const { return options_.role; }
  int fd() const { return socket_.get(); }
  SSL* ssl() const { return ssl_.get(); }
  Clock::time_point deadline() const { return deadline_; }
  bool handshake_done() const { return done_; }

  FailureReason failure_reason() const { return failure_; }
  const std::string& failure_detail() const { return failure_detail_; }

  // Valid once the handshake is done.
  const std::optional<SpiffeId>& peer_id() const { return peer_id_; }
  const std::string& peer_serial() const { return peer_serial_; }
  const SpiffeId& local_id() const { return context_->local_id(); }
  std::string_view cipher_name() const { return cipher_name_; }
  uint16_t cipher_iana_id() const { return cipher_iana_id_; }
  std::string_view protocol_version() const { return protocol_version_; }
  std::chrono::microseconds handshake_duration() const { return handshake_duration_; }

  // True if OpenSSL holds received bytes that the kernel will never see again; a kTLS switch
  // must be refused then.
  bool HasBufferedInput() const;
  // Moves the captured secrets out (empty unless capture_traffic_secrets was set).
  TrafficSecrets TakeTrafficSecrets() { return std::move(secrets_); }
  // Hands secrets back (SwitchToKtls: a relay that can rekey takes them, and they are wiped with
  // the session otherwise).
  void KeepTrafficSecrets(TrafficSecrets secrets) { secrets_ = std::move(secrets); }

  // Frees the OpenSSL state without sending anything, once the kernel owns the records (kTLS).
  // The socket and the handshake results stay.
  void DetachSsl() { ssl_.reset(); }
  // Closes the socket. With `reset`, the peer gets an RST instead of a FIN.
  void CloseSocket(bool reset);
  // Fails the session with `reason` unless it already failed (the first cause wins).
  void Abort(FailureReason reason, std::string detail) { Fail(reason, std::move(detail)); }

  // OpenSSL callbacks, installed by TlsContext.
  static int VerifyCallback(int preverify_ok, X509_STORE_CTX* store_ctx);
  // Replaces X509_verify_cert: consults the context's VerifiedChainCache first.
  static int CertVerifyCallback(X509_STORE_CTX* store_ctx, void* context);
  static void KeylogCallback(const SSL* ssl, const char* line);

 private:
  TlsSession(std::shared_ptr<const TlsContext> context, UniqueFd socket, SslPtr ssl,
             const SessionOptions& options);
  void Fail(FailureReason reason, std::string detail);
  HandshakeProgress Finish();
  void ClassifySslFailure(int ssl_error, int saved_errno);
  // Key strength, SPIFFE ID, trust domain and expected identity of the peer's leaf.
  int CheckLeaf(X509_STORE_CTX* store_ctx, X509* leaf);

  std::shared_ptr<const TlsContext> context_;
  UniqueFd socket_;
  SslPtr ssl_;
  SessionOptions options_;
  Clock::time_point started_;
  Clock::time_point deadline_;
  bool done_ = false;
  FailureReason failure_ = FailureReason::kNone;
  std::string failure_detail_;
  std::optional<SpiffeId> peer_id_;
  std::string peer_serial_;
  std::chrono::microseconds handshake_duration_{0};
  std::string_view cipher_name_;
  uint16_t cipher_iana_id_ = 0;
  std::string_view protocol_version_;
  TrafficSecrets secrets_;
};

}  // namespace meshtls::tls
