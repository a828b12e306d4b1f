#include "meshtls/tls/verified_chain_cache.h"

#include <openssl/evp.h>

#include <memory>

#include "meshtls/common/openssl.h"

namespace meshtls::tls {
namespace {

// ASN1_TIME -> time_point; false if OpenSSL cannot convert it.
bool ToTimePoint(const ASN1_TIME* t, VerifiedChainCache::Clock::time_point* out) {
  struct tm parsed {};
  if (ASN1_TIME_to_tm(t, &parsed) != 1) return false;
  *out = VerifiedChainCache::Clock::from_time_t(timegm(&parsed));
  return true;
}

}  // namespace

bool VerifiedChainCache::KeyFor(int purpose, X509* leaf, STACK_OF(X509) * chain, Key* key) {
  std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<EVP_MD_CTX_free>> md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) return false;
  EVP_DigestUpdate(md.get(), &purpose, sizeof(purpose));
  auto add = [&](X509* cert) {
    unsigned char* der = nullptr;
    const int len = i2d_X509(cert, &der);
    if (len <= 0) return false;
    const uint32_t len32 = static_cast<uint32_t>(len);
    EVP_DigestUpdate(md.get(), &len32, sizeof(len32));  // no ambiguity between boundaries
    EVP_DigestUpdate(md.get(), der, static_cast<size_t>(len));
    OPENSSL_free(der);
    return true;
  };
  if (!add(leaf)) return false;
  for (int i = 0; chain != nullptr && i < sk_X509_num(chain); ++i) {
    if (!add(sk_X509_value(chain, i))) return false;
  }
  unsigned int out_len = 0;
  return EVP_DigestFinal_ex(md.get(), key->data(), &out_len) == 1 && out_len == key->size();
}

bool VerifiedChainCache::Contains(const Key& key, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end() || now < it->second.valid_from || now >= it->second.valid_until) {
    if (it != entries_.end()) entries_.erase(it);
    ++misses_;
    return false;
  }
  ++hits_;
  return true;
}

void VerifiedChainCache::Insert(const Key& key, STACK_OF(X509) * verified_chain, Clock::time_point now) {
  Entry entry{Clock::time_point::min(), now + ttl_};
  for (int i = 0; verified_chain != nullptr && i < sk_X509_num(verified_chain); ++i) {
    X509* cert = sk_X509_value(verified_chain, i);
    Clock::time_point not_before, not_after;
    if (!ToTimePoint(X509_get0_notBefore(cert), &not_before) ||
        !ToTimePoint(X509_get0_notAfter(cert), &not_after)) {
      return;  // do not cache what cannot be bounded
    }
    entry.valid_from = std::max(entry.valid_from, not_before);
    entry.valid_until = std::min(entry.valid_until, not_after);
  }
  std::lock_guard lock(mutex_);
  if (entries_.size() >= capacity_) entries_.clear();  // simple and bounded; refills in one round
  entries_[key] = entry;
}

}  // namespace meshtls::tls
