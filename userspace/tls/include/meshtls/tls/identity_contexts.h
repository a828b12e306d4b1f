#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/identity/svid_store.h"
#include "meshtls/tls/context.h"

namespace meshtls::tls {

// The TLS context to use for a new handshake as a given identity: built from the SvidStore's
// current SVID and rebuilt as soon as that SVID changes, so the next handshake after a rotation
// presents the new certificate, while sessions keep the context they started with.
class IdentityContexts {
 public:
  // `base` supplies everything but the credentials (trust bundle, trust domain, ciphers, ...).
  IdentityContexts(identity::SvidStore& store, TlsContextOptions base)
      : store_(store), base_(std::move(base)) {}

  absl::StatusOr<std::shared_ptr<const TlsContext>> For(const SpiffeId& id);
  // A new trust bundle (CA rotation): contexts are rebuilt on their next use.
  void SetTrustBundle(std::string pem);

 private:
  struct Entry {
    std::shared_ptr<const identity::Svid> svid;
    std::shared_ptr<const TlsContext> context;
    uint64_t bundle_generation = 0;
  };
  identity::SvidStore& store_;
  std::mutex mutex_;
  TlsContextOptions base_;
  uint64_t bundle_generation_ = 0;
  std::map<std::string, Entry> entries_;
};

}  // namespace meshtls::tls
