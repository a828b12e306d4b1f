#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "meshtls/common/openssl.h"

namespace meshtls {

// Process-wide OpenSSL choices, made once at start-up before any key or certificate is loaded.
//
// Built-in EC keys. OpenSSL 3.0 decodes the public key of every certificate it parses through its
// provider decoder framework, which assembles a decoder chain from scratch on each call: about
// 95 µs per certificate on this project's hosts, four per mutual handshake, 30-40 % of a
// handshake's CPU (tests/bench/README.md). When an ENGINE is registered for EC key methods,
// OpenSSL 3.0 decodes EC keys with its built-in EC code instead (the OpenSSL 1.1.1 path: the same
// point-on-curve check, the same P-256 arithmetic), and signs, verifies and derives with that code
// too, for every EC key in the process. kAuto registers such an engine, carrying OpenSSL's own
// built-in EC key method unchanged (no crypto of ours), where it helps: OpenSSL 3.0 and 3.1, not in
// FIPS mode.
//
// Two consequences, both handled here and proved by CheckBuiltinEcKeys() at start-up:
// - Keys must be legacy objects: an EC key decoded into a provider (PEM private keys) cannot be
//   used to sign certificates through the built-in code, so ParsePemPrivateKey() converts it
//   (AdaptPrivateKey below).
// - Curves are known by OpenSSL's short names only: "prime256v1", not "P-256" (key generation by
//   a NIST name fails loudly). meshtls names P-256 that way everywhere.
// If the check fails, the engine is removed again and everything stays in the providers.
enum class BuiltinEcKeys { kAuto, kOff };

struct OpenSslSetup {
  bool builtin_ec_keys = false;
  std::string detail;              // why on or off, for the log and the status API
  bool self_check_failed = false;  // auto, but the start-up check failed: worth a warning
};

// The first call decides; later calls return what the first one set up, whatever they ask for.
// Call it before any key or certificate exists (agent start-up, test main): keys loaded before
// it stay provider keys, which the built-in EC code cannot sign certificates with.
const OpenSslSetup& ConfigureOpenSsl(BuiltinEcKeys mode);

// One log line for what ConfigureOpenSsl decided: a warning when auto was asked for and the
// start-up check failed (the process runs, slower, in the providers), info otherwise.
void LogOpenSslSetup(const OpenSslSetup& setup);

// What is in effect; {false, "not configured"} before ConfigureOpenSsl.
OpenSslSetup CurrentOpenSslSetup();

std::string_view Name(BuiltinEcKeys mode);
absl::StatusOr<BuiltinEcKeys> ParseBuiltinEcKeys(std::string_view name);

// With built-in EC keys on, an EC key held by a provider becomes an equivalent legacy key (the
// same private scalar); anything else is returned unchanged.
absl::StatusOr<EvpPkeyPtr> AdaptPrivateKey(EvpPkeyPtr key);

// The start-up check ConfigureOpenSsl runs after registering the engine (public for tests): a
// fresh P-256 key's SubjectPublicKeyInfo decodes outside the providers, its signature verifies,
// a forged one does not, an off-curve point does not decode, P-256 ECDH agrees, and a key that
// went through PEM signs a certificate that verifies.
absl::Status CheckBuiltinEcKeys();

}  // namespace meshtls
