#pragma once

#include <openssl/x509.h>

#include <optional>
#include <string>

#include "meshtls/identity/spiffe_id.h"
#include "meshtls/tls/failure_reason.h"

namespace meshtls::tls {

struct IdentityCheck {
  FailureReason reason = FailureReason::kNone;  // kNone when `id` is set
  std::string detail;
  std::optional<SpiffeId> id;
};

// The certificate's single spiffe:// URI SAN, or why there is not exactly one valid one.
IdentityCheck ExtractSpiffeId(X509* cert);

// kWeakKey unless the key is EC P-256/P-384, Ed25519, or RSA of at least 2048 bits.
IdentityCheck CheckKeyStrength(X509* cert);

// Lowercase hex of the serial number.
std::string SerialHex(X509* cert);

}  // namespace meshtls::tls
