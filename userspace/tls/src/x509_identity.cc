#include "meshtls/tls/x509_identity.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/x509v3.h>

#include <memory>

#include "meshtls/common/strings.h"

namespace meshtls::tls {

IdentityCheck ExtractSpiffeId(X509* cert) {
  IdentityCheck result;
  std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)),
      &GENERAL_NAMES_free);
  std::optional<std::string> found;
  int count = 0;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    std::string value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
    // Match the scheme case-insensitively so "SPIFFE://..." counts, and is then rejected by the
    // parser, instead of passing as "no SPIFFE ID".
    if (!StartsWithIgnoreCase(value, "spiffe:")) continue;
    ++count;
    found = std::move(value);
  }
  if (count == 0) {
    result.reason = FailureReason::kNoSpiffeId;
    result.detail = "certificate has no spiffe:// URI SAN";
    return result;
  }
  if (count > 1) {
    result.reason = FailureReason::kMultipleSpiffeIds;
    result.detail = StrCat("certificate has ", count, " spiffe:// URI SANs, expected one");
    return result;
  }
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(*found);
  if (!id.ok()) {
    result.reason = FailureReason::kInvalidSpiffeId;
    result.detail = std::string(id.status().message());
    return result;
  }
  result.id = *std::move(id);
  return result;
}

IdentityCheck CheckKeyStrength(X509* cert) {
  IdentityCheck result;
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) {
    result.reason = FailureReason::kWeakKey;
    result.detail = "certificate public key cannot be decoded";
    return result;
  }
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC: {
      char group[64] = {};
      size_t len = 0;
      if (EVP_PKEY_get_group_name(key, group, sizeof(group), &len) == 1 &&
          (std::string_view(group) == "prime256v1" || std::string_view(group) == "secp384r1")) {
        return result;
      }
      result.detail = StrCat("EC key on curve '", group, "': only P-256 and P-384 are accepted");
      break;
    }
    case EVP_PKEY_ED25519:
      return result;
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS:
      if (EVP_PKEY_get_bits(key) >= 2048) return result;
      result.detail = StrCat("RSA key of ", EVP_PKEY_get_bits(key), " bits: at least 2048 needed");
      break;
    default:
      result.detail = "unsupported public key type";
  }
  result.reason = FailureReason::kWeakKey;
  return result;
}

std::string SerialHex(X509* cert) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  std::unique_ptr<BIGNUM, decltype(&BN_free)> bn(ASN1_INTEGER_to_BN(serial, nullptr), &BN_free);
  if (!bn) return "";
  char* raw = BN_bn2hex(bn.get());
  std::string out = raw ? ToLower(raw) : "";
  OPENSSL_free(raw);
  return out;
}

}  // namespace meshtls::tls
