#include "meshtls/tls/context.h"

#include <cstring>

#include "meshtls/common/status.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include "meshtls/common/strings.h"
#include "meshtls/tls/session.h"
#include "meshtls/tls/x509_identity.h"

namespace meshtls::tls {
namespace {

int SelectAlpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
               const unsigned char* in, unsigned int inlen, void* /*arg*/) {
  constexpr size_t kLen = sizeof(kAlpnProtocol) - 1;
  // `in` is a list of length-prefixed protocol names.
  for (unsigned int i = 0; i < inlen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == kLen && std::memcmp(in + i + 1, kAlpnProtocol, kLen) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;  // sends no_application_protocol
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(
    const TlsContextOptions& options) {
  ERR_clear_error();
  if (options.trust_domain.empty()) return absl::InvalidArgumentError("trust domain is empty");
  ASSIGN_OR_RETURN(std::vector<X509Ptr> chain, ParsePemCertificates(options.certificate_chain_pem));
  ASSIGN_OR_RETURN(EvpPkeyPtr key, ParsePemPrivateKey(options.private_key_pem));
  ASSIGN_OR_RETURN(std::vector<X509Ptr> roots, ParsePemCertificates(options.trust_bundle_pem));

  IdentityCheck own = ExtractSpiffeId(chain.front().get());
  if (!own.id) {
    return absl::InvalidArgumentError(StrCat("own certificate: ", own.detail));
  }
  if (own.id->trust_domain() != options.trust_domain) {
    return absl::InvalidArgumentError(StrCat("own certificate is for trust domain '",
                                                   own.id->trust_domain(), "', not '",
                                                   options.trust_domain, "'"));
  }

  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) return absl::InternalError(StrCat("SSL_CTX_new: ", DrainOpenSslErrors()));
  SSL_CTX* c = ctx.get();
  if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) != 1) {
    return absl::InternalError(StrCat("cannot restrict to TLS 1.3: ", DrainOpenSslErrors()));
  }
  const std::string suites = Join(options.cipher_suites, ":");
  if (SSL_CTX_set_ciphersuites(c, suites.c_str()) != 1) {
    return absl::InvalidArgumentError(
        StrCat("bad cipher suite list '", suites, "': ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_set1_groups_list(c, "X25519:P-256") != 1) {
    return absl::InternalError(StrCat("cannot set groups: ", DrainOpenSslErrors()));
  }
  // Tickets would put post-handshake records on the wire that kTLS sequence numbers must count;
  // one TLS connection carries one app connection, so resumption buys little here anyway.
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE |
                             SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  if (SSL_CTX_use_certificate(c, chain.front().get()) != 1) {
    return absl::InvalidArgumentError(StrCat("own certificate: ", DrainOpenSslErrors()));
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(c, chain[i].get()) != 1) {
      return absl::InvalidArgumentError(StrCat("own chain: ", DrainOpenSslErrors()));
    }
  }
  if (SSL_CTX_use_PrivateKey(c, key.get()) != 1 || SSL_CTX_check_private_key(c) != 1) {
    return absl::InvalidArgumentError(
        StrCat("private key does not match the certificate: ", DrainOpenSslErrors()));
  }

  X509_STORE* store = SSL_CTX_get_cert_store(c);
  for (const X509Ptr& root : roots) {
    if (X509_STORE_add_cert(store, root.get()) != 1) {
      return absl::InvalidArgumentError(StrCat("trust bundle: ", DrainOpenSslErrors()));
    }
  }
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                     &TlsSession::VerifyCallback);
  SSL_CTX_set_verify_depth(c, 4);
  SSL_CTX_set_alpn_select_cb(c, &SelectAlpn, nullptr);
  if (options.export_traffic_secrets) SSL_CTX_set_keylog_callback(c, &TlsSession::KeylogCallback);

  auto context = std::shared_ptr<TlsContext>(
      new TlsContext(std::move(ctx), options.trust_domain, *std::move(own.id)));
  context->exports_traffic_secrets_ = options.export_traffic_secrets;
  context->deny_list_ = options.deny_list;
  if (options.verified_chain_ttl.count() > 0) {
    context->verified_chains_ = std::make_unique<VerifiedChainCache>(
        options.verified_chain_capacity, options.verified_chain_ttl);
  }
  SSL_CTX_set_cert_verify_callback(c, &TlsSession::CertVerifyCallback, context.get());
  return std::shared_ptr<const TlsContext>(std::move(context));
}

}  // namespace meshtls::tls
