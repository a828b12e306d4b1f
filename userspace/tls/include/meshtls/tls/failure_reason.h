#pragma once

#include <string_view>

namespace meshtls::tls {

// Why a handshake or a TLS connection failed. Every value has a stable snake_case name
// (FailureReasonName) used in logs, metrics labels and the status API.
enum class FailureReason {
  kNone,
  // Peer certificate verification.
  kExpired,
  kNotYetValid,
  kUnknownCa,
  kBadSignature,
  kInvalidChain,
  kWrongKeyUsage,
  kWeakKey,
  kRevoked,
  kNoPeerCertificate,
  kNoSpiffeId,
  kMultipleSpiffeIds,
  kInvalidSpiffeId,
  kWrongTrustDomain,
  kIdentityMismatch,
  // Protocol.
  kProtocolVersion,         // e.g. a TLS 1.2 ClientHello
  kNotTls,                  // bytes that are not a TLS record at all
  kOversizedRecord,         // record or handshake message over the protocol limit
  kNoApplicationProtocol,   // ALPN meshtls/1 not negotiated
  kNoSharedParameters,      // no common cipher suite, group or signature algorithm
  kPeerAlert,               // the peer aborted with a fatal alert
  kUnexpectedMessage,
  kDecryptError,            // a record failed authentication
  kTruncated,               // TCP EOF without close_notify after the handshake
  kPeerKeyUpdateUnsupported,  // the peer sent a KeyUpdate this kernel's kTLS cannot follow
  kKeyUpdateFlood,          // the peer sent KeyUpdates faster than its budget allows
  kKeyLimit,                // a key reached its record limit and could not be replaced
  kPeerReset,               // either socket was reset by its peer
  kHandshakeTimeout,
  kPeerClosed,              // TCP EOF during the handshake
  kIoError,
  kKtlsSetupFailed,
  kPolicyDenied,            // an AuthorizationPolicy now denies this connection
  kShutdown,                // the agent's drain deadline passed
  kInternal,
};

std::string_view FailureReasonName(FailureReason reason);

// Maps an OpenSSL ERR_GET_REASON() code from libssl to a named reason (kInternal if unknown).
FailureReason FailureFromOpenSslReason(int openssl_reason);

}  // namespace meshtls::tls
