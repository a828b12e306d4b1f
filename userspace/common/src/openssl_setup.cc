#include "meshtls/common/openssl_setup.h"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <atomic>

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

#if !defined(OPENSSL_NO_ENGINE) && !defined(OPENSSL_NO_DEPRECATED_3_0)
#define MESHTLS_HAVE_ENGINE 1
#include <openssl/engine.h>
#endif

namespace meshtls {
namespace {

// The ENGINE API is deprecated in OpenSSL 3.0 but supported for the 3.x series; it is the only
// switch 3.0 offers between provider decoding and its built-in EC code (see the header).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

std::atomic<bool> g_builtin_ec_active{false};
std::atomic<bool> g_configured{false};

#ifdef MESHTLS_HAVE_ENGINE
constexpr char kEngineId[] = "meshtls-builtin-ec";

// Hands OpenSSL back its own built-in EC key method: the engine exists only to be found.
int BuiltinEcMethods(ENGINE*, EVP_PKEY_METHOD** method, const int** nids, int nid) {
  static constexpr std::array<int, 1> kNids = {EVP_PKEY_EC};
  if (method == nullptr) {
    *nids = kNids.data();
    return static_cast<int>(kNids.size());
  }
  if (nid != EVP_PKEY_EC) {
    *method = nullptr;
    return 0;
  }
  *method = const_cast<EVP_PKEY_METHOD*>(EVP_PKEY_meth_find(EVP_PKEY_EC));
  return *method != nullptr ? 1 : 0;
}

absl::Status RegisterBuiltinEcEngine() {
  ENGINE* engine = ENGINE_new();
  if (engine == nullptr) return absl::InternalError("ENGINE_new failed");
  // ENGINE_add keeps its own reference in OpenSSL's engine list, which OpenSSL frees at exit.
  const bool ok = ENGINE_set_id(engine, kEngineId) == 1 &&
                  ENGINE_set_name(engine, "OpenSSL's built-in EC key method (meshtls)") == 1 &&
                  ENGINE_set_pkey_meths(engine, BuiltinEcMethods) == 1 && ENGINE_add(engine) == 1 &&
                  ENGINE_set_default_pkey_meths(engine) == 1;
  ENGINE_free(engine);
  if (!ok) return absl::InternalError(StrCat("registering the engine failed: ", DrainOpenSslErrors()));
  return absl::OkStatus();
}

void UnregisterBuiltinEcEngine() {
  if (ENGINE* engine = ENGINE_by_id(kEngineId)) {
    ENGINE_unregister_pkey_meths(engine);
    ENGINE_remove(engine);
    ENGINE_free(engine);
  }
  DrainOpenSslErrors();
}
#endif

// The provider key's private scalar, as a legacy EC_KEY object (shared, reference-counted).
absl::StatusOr<EvpPkeyPtr> ToLegacyEcKey(EVP_PKEY* key) {
  EC_KEY* ec = EVP_PKEY_get1_EC_KEY(key);
  if (ec == nullptr) return absl::InternalError(StrCat("EVP_PKEY_get1_EC_KEY: ", DrainOpenSslErrors()));
  EvpPkeyPtr legacy(EVP_PKEY_new());
  if (!legacy || EVP_PKEY_assign_EC_KEY(legacy.get(), ec) != 1) {
    EC_KEY_free(ec);
    return absl::InternalError(StrCat("EVP_PKEY_assign_EC_KEY: ", DrainOpenSslErrors()));
  }
  return legacy;
}

#pragma GCC diagnostic pop

absl::StatusOr<EvpPkeyPtr> DecodePublicKey(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  EvpPkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  if (!key) return absl::InvalidArgumentError(StrCat("d2i_PUBKEY: ", DrainOpenSslErrors()));
  return key;
}

bool Verifies(EVP_PKEY* key, const std::vector<uint8_t>& signature, std::string_view message) {
  std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<EVP_MD_CTX_free>> md(EVP_MD_CTX_new());
  const bool ok = md && EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key) == 1 &&
                  EVP_DigestVerify(md.get(), signature.data(), signature.size(),
                                   reinterpret_cast<const unsigned char*>(message.data()),
                                   message.size()) == 1;
  DrainOpenSslErrors();
  return ok;
}

absl::StatusOr<std::vector<uint8_t>> DeriveShared(EVP_PKEY* own, EVP_PKEY* peer) {
  std::unique_ptr<EVP_PKEY_CTX, OpenSslDeleter<EVP_PKEY_CTX_free>> ctx(EVP_PKEY_CTX_new(own, nullptr));
  size_t len = 0;
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer) != 1 ||
      EVP_PKEY_derive(ctx.get(), nullptr, &len) != 1) {
    return absl::InternalError(StrCat("P-256 ECDH failed: ", DrainOpenSslErrors()));
  }
  std::vector<uint8_t> secret(len);
  if (EVP_PKEY_derive(ctx.get(), secret.data(), &len) != 1) {
    return absl::InternalError(StrCat("P-256 ECDH failed: ", DrainOpenSslErrors()));
  }
  secret.resize(len);
  return secret;
}

}  // namespace

absl::Status CheckBuiltinEcKeys() {
  // A fresh key and signature each time: what the handshake does with a peer's certificate key.
  // "prime256v1", not "P-256": the built-in EC code knows curves by OpenSSL's short names only,
  // which is why meshtls names P-256 that way everywhere.
  EvpPkeyPtr key(EVP_EC_gen("prime256v1"));
  if (!key) return absl::InternalError(StrCat("P-256 key generation failed: ", DrainOpenSslErrors()));
  constexpr std::string_view kMessage = "meshtls built-in EC self-check";
  std::vector<uint8_t> signature(static_cast<size_t>(EVP_PKEY_get_size(key.get())));
  size_t signature_len = signature.size();
  std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<EVP_MD_CTX_free>> md(EVP_MD_CTX_new());
  if (!md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(md.get(), signature.data(), &signature_len,
                     reinterpret_cast<const unsigned char*>(kMessage.data()), kMessage.size()) != 1) {
    return absl::InternalError(StrCat("ECDSA signing failed: ", DrainOpenSslErrors()));
  }
  signature.resize(signature_len);

  unsigned char* der_out = nullptr;
  const int der_len = i2d_PUBKEY(key.get(), &der_out);
  if (der_len <= 0) return absl::InternalError(StrCat("i2d_PUBKEY: ", DrainOpenSslErrors()));
  std::vector<uint8_t> der(der_out, der_out + der_len);
  OPENSSL_free(der_out);

  // d2i_PUBKEY runs the same SubjectPublicKeyInfo decoding as a certificate's key.
  absl::StatusOr<EvpPkeyPtr> decoded = DecodePublicKey(der);
  if (!decoded.ok()) return decoded.status();
  if (EVP_PKEY_get0_provider(decoded->get()) != nullptr) {
    return absl::FailedPreconditionError(
        "a P-256 public key still decodes through a provider, not the built-in EC code");
  }
  if (!Verifies(decoded->get(), signature, kMessage)) {
    return absl::InternalError("a valid ECDSA signature does not verify with the decoded key");
  }
  std::vector<uint8_t> forged = signature;
  forged[forged.size() / 2] ^= 0x01;
  if (Verifies(decoded->get(), forged, kMessage)) {
    return absl::InternalError("a forged ECDSA signature verifies with the decoded key");
  }
  // The uncompressed point is the last 64 bytes (X, Y): change Y, and it leaves the curve.
  std::vector<uint8_t> off_curve = der;
  off_curve.back() ^= 0x01;
  if (DecodePublicKey(off_curve).ok()) {
    return absl::InternalError("a public key whose point is not on P-256 decodes");
  }
  // A P-256 TLS key share (a peer that does not offer X25519) is ECDH through the same code.
  EvpPkeyPtr other(EVP_EC_gen("prime256v1"));
  if (!other) return absl::InternalError(StrCat("P-256 key generation failed: ", DrainOpenSslErrors()));
  absl::StatusOr<std::vector<uint8_t>> ours = DeriveShared(key.get(), other.get());
  absl::StatusOr<std::vector<uint8_t>> theirs = DeriveShared(other.get(), key.get());
  if (!ours.ok()) return ours.status();
  if (!theirs.ok()) return theirs.status();
  if (*ours != *theirs || ours->size() != 32) {
    return absl::InternalError("P-256 ECDH: the two ends derived different secrets");
  }
  // The embedded CA signs certificates with a key it read from PEM.
  BioPtr pem(BIO_new(BIO_s_mem()));
  if (!pem || PEM_write_bio_PrivateKey(pem.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return absl::InternalError(StrCat("PEM_write_bio_PrivateKey: ", DrainOpenSslErrors()));
  }
  char* pem_data = nullptr;
  const long pem_len = BIO_get_mem_data(pem.get(), &pem_data);
  absl::StatusOr<EvpPkeyPtr> reread = ParsePemPrivateKey(std::string_view(pem_data, static_cast<size_t>(pem_len)));
  if (!reread.ok()) return reread.status();
  X509Ptr cert(X509_new());
  if (!cert || X509_set_pubkey(cert.get(), key.get()) != 1 ||
      X509_sign(cert.get(), reread->get(), EVP_sha256()) <= 0) {
    return absl::InternalError(StrCat("signing a certificate with a PEM-loaded key failed: ", DrainOpenSslErrors()));
  }
  if (X509_verify(cert.get(), X509_get0_pubkey(cert.get())) != 1) {
    return absl::InternalError(StrCat("a certificate signed with a PEM-loaded key does not verify: ", DrainOpenSslErrors()));
  }
  return absl::OkStatus();
}

namespace {

OpenSslSetup Apply(BuiltinEcKeys mode) {
  if (mode == BuiltinEcKeys::kOff) return {false, "off (opensslBuiltinEc: off)"};
  const std::string version = OpenSSL_version(OPENSSL_VERSION);
  if (OpenSSL_version_num() >= 0x30200000L) {
    return {false, StrCat("not needed: ", version, " caches its key decoders")};
  }
  if (EVP_default_properties_is_fips_enabled(nullptr) == 1) {
    return {false, "off: FIPS properties are on, so keys stay in the FIPS provider"};
  }
#ifdef MESHTLS_HAVE_ENGINE
  if (absl::Status registered = RegisterBuiltinEcEngine(); !registered.ok()) {
    return {false, StrCat("off: ", registered.message())};
  }
  g_builtin_ec_active = true;  // AdaptPrivateKey() converts from here on, the check included
  if (absl::Status checked = CheckBuiltinEcKeys(); !checked.ok()) {
    g_builtin_ec_active = false;
    UnregisterBuiltinEcEngine();
    return {false, StrCat("off: the start-up check failed: ", checked.message()), true};
  }
  return {true, "on: EC certificate keys are decoded and used by OpenSSL's built-in EC code (start-up check passed)"};
#else
  return {false, StrCat("unavailable: ", version, " is built without ENGINE support")};
#endif
}

}  // namespace

const OpenSslSetup& ConfigureOpenSsl(BuiltinEcKeys mode) {
  static const OpenSslSetup setup = Apply(mode);  // thread-safe, once
  g_configured = true;
  return setup;
}

void LogOpenSslSetup(const OpenSslSetup& setup) {
  spdlog::log(setup.self_check_failed ? spdlog::level::warn : spdlog::level::info,
              "OpenSSL built-in EC keys {}", setup.detail);
}

OpenSslSetup CurrentOpenSslSetup() {
  if (!g_configured) return {false, "not configured"};
  return ConfigureOpenSsl(BuiltinEcKeys::kAuto);
}

std::string_view Name(BuiltinEcKeys mode) { return mode == BuiltinEcKeys::kAuto ? "auto" : "off"; }

absl::StatusOr<BuiltinEcKeys> ParseBuiltinEcKeys(std::string_view name) {
  if (name == "auto") return BuiltinEcKeys::kAuto;
  if (name == "off") return BuiltinEcKeys::kOff;
  return absl::InvalidArgumentError(StrCat("'", name, "' is not one of auto|off"));
}

absl::StatusOr<EvpPkeyPtr> AdaptPrivateKey(EvpPkeyPtr key) {
  if (!g_builtin_ec_active || key == nullptr || EVP_PKEY_get0_provider(key.get()) == nullptr ||
      EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC) {
    return key;
  }
  return ToLegacyEcKey(key.get());
}

}  // namespace meshtls
