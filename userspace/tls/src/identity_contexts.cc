#include "meshtls/tls/identity_contexts.h"

#include "meshtls/common/status.h"

namespace meshtls::tls {

absl::StatusOr<std::shared_ptr<const TlsContext>> IdentityContexts::For(const SpiffeId& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<const identity::Svid> svid, store_.Current(id));
  std::lock_guard lock(mutex_);
  Entry& entry = entries_[id.ToString()];
  if (entry.context && entry.svid == svid && entry.bundle_generation == bundle_generation_) {
    return entry.context;
  }
  TlsContextOptions options = base_;
  options.certificate_chain_pem = svid->chain_pem;
  options.private_key_pem = svid->private_key_pem;
  ASSIGN_OR_RETURN(entry.context, TlsContext::Create(options));
  entry.svid = std::move(svid);
  entry.bundle_generation = bundle_generation_;
  return entry.context;
}

void IdentityContexts::SetTrustBundle(std::string pem) {
  std::lock_guard lock(mutex_);
  base_.trust_bundle_pem = std::move(pem);
  ++bundle_generation_;
}

}  // namespace meshtls::tls
