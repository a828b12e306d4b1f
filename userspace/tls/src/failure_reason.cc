#include "meshtls/tls/failure_reason.h"

namespace meshtls::tls {

std::string_view FailureReasonName(FailureReason reason) {
  switch (reason) {
    case FailureReason::kNone: return "none";
    case FailureReason::kExpired: return "expired";
    case FailureReason::kNotYetValid: return "not_yet_valid";
    case FailureReason::kUnknownCa: return "unknown_ca";
    case FailureReason::kBadSignature: return "bad_signature";
    case FailureReason::kInvalidChain: return "invalid_chain";
    case FailureReason::kWrongKeyUsage: return "wrong_key_usage";
    case FailureReason::kWeakKey: return "weak_key";
    case FailureReason::kRevoked: return "revoked";
    case FailureReason::kNoPeerCertificate: return "no_peer_certificate";
    case FailureReason::kNoSpiffeId: return "no_spiffe_id";
    case FailureReason::kMultipleSpiffeIds: return "multiple_spiffe_ids";
    case FailureReason::kInvalidSpiffeId: return "invalid_spiffe_id";
    case FailureReason::kWrongTrustDomain: return "wrong_trust_domain";
    case FailureReason::kIdentityMismatch: return "identity_mismatch";
    case FailureReason::kProtocolVersion: return "protocol_version";
    case FailureReason::kNotTls: return "not_tls";
    case FailureReason::kOversizedRecord: return "oversized_record";
    case FailureReason::kNoApplicationProtocol: return "no_application_protocol";
    case FailureReason::kNoSharedParameters: return "no_shared_parameters";
    case FailureReason::kPeerAlert: return "peer_alert";
    case FailureReason::kUnexpectedMessage: return "unexpected_message";
    case FailureReason::kDecryptError: return "decrypt_error";
    case FailureReason::kTruncated: return "truncated";
    case FailureReason::kPeerKeyUpdateUnsupported: return "peer_key_update_unsupported";
    case FailureReason::kKeyUpdateFlood: return "key_update_flood";
    case FailureReason::kKeyLimit: return "key_limit";
    case FailureReason::kPeerReset: return "peer_reset";
    case FailureReason::kHandshakeTimeout: return "handshake_timeout";
    case FailureReason::kPeerClosed: return "peer_closed";
    case FailureReason::kIoError: return "io_error";
    case FailureReason::kKtlsSetupFailed: return "ktls_setup_failed";
    case FailureReason::kPolicyDenied: return "policy_denied";
    case FailureReason::kShutdown: return "shutdown";
    case FailureReason::kInternal: return "internal";
  }
  return "unknown";
}

}  // namespace meshtls::tls
