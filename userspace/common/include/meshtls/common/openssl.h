#pragma once

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace meshtls {

template <auto Fn>
struct OpenSslDeleter {
  template <typename T>
  void operator()(T* p) const {
    Fn(p);
  }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, OpenSslDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpenSslDeleter<SSL_free>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO_free_all>>;

// Drains OpenSSL's thread-local error queue into one readable string.
std::string DrainOpenSslErrors();

absl::StatusOr<std::vector<X509Ptr>> ParsePemCertificates(std::string_view pem);
absl::StatusOr<EvpPkeyPtr> ParsePemPrivateKey(std::string_view pem);

// Overwrites secret bytes so they do not linger in freed memory.
void Wipe(std::vector<uint8_t>& bytes);

}  // namespace meshtls
