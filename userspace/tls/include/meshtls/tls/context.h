#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/identity/deny_list.h"
#include "meshtls/identity/spiffe_id.h"
#include "meshtls/common/openssl.h"
#include "meshtls/tls/verified_chain_cache.h"

namespace meshtls::tls {

inline constexpr char kAlpnProtocol[] = "meshtls/1";

// TLS 1.3 cipher suites in preference order (the server's order wins).
inline const std::vector<std::string> kDefaultCipherSuites = {
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"};

struct TlsContextOptions {
  std::string certificate_chain_pem;  // leaf first, then intermediates
  std::string private_key_pem;
  std::string trust_bundle_pem;  // one or more roots
  std::string trust_domain;      // peers must present an ID in this trust domain
  std::vector<std::string> cipher_suites = kDefaultCipherSuites;
  // Chains that verified are remembered this long (0 disables the cache); see
  // VerifiedChainCache for what is and is not skipped on a hit.
  std::chrono::seconds verified_chain_ttl{300};
  // Let sessions capture their traffic secrets (kTLS needs them). Off, OpenSSL skips formatting
  // key-log lines on every handshake (about 5 % of a handshake's CPU).
  bool export_traffic_secrets = false;
  size_t verified_chain_capacity = 4096;
  // Checked on every handshake (cache hits included); swap its contents to reload.
  std::shared_ptr<identity::DenyListHolder> deny_list;
};

// One OpenSSL context, usable for both roles: TLS 1.3 only, X25519 then P-256, ALPN meshtls/1,
// mutual authentication, no session tickets (kTLS sequence numbers start at zero).
// Immutable once created; rotating a certificate means creating a new TlsContext.
class TlsContext {
 public:
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(const TlsContextOptions& options);

  SSL_CTX* ssl_ctx() const { return ctx_.get(); }
  const std::string& trust_domain() const { return trust_domain_; }
  const SpiffeId& local_id() const { return local_id_; }
  // Null when the cache is disabled.
  VerifiedChainCache* verified_chains() const { return verified_chains_.get(); }
  bool exports_traffic_secrets() const { return exports_traffic_secrets_; }
  const identity::DenyListHolder* deny_list() const { return deny_list_.get(); }

 private:
  TlsContext(SslCtxPtr ctx, std::string trust_domain, SpiffeId local_id)
      : ctx_(std::move(ctx)), trust_domain_(std::move(trust_domain)), local_id_(std::move(local_id)) {}

  SslCtxPtr ctx_;
  std::string trust_domain_;
  SpiffeId local_id_;
  std::unique_ptr<VerifiedChainCache> verified_chains_;
  bool exports_traffic_secrets_ = false;
  std::shared_ptr<identity::DenyListHolder> deny_list_;
};

}  // namespace meshtls::tls
