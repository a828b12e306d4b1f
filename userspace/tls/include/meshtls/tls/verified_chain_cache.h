#pragma once

#include <openssl/x509.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace meshtls::tls {

// Remembers certificate chains that already verified against one trust store, so that the next
// handshake presenting the byte-identical chain for the same purpose skips re-checking the chain's
// signatures. What is never skipped: the peer's CertificateVerify signature (proof that it holds
// the leaf key, checked by TLS on every handshake), the validity window of every certificate in
// the chain, and the leaf checks (key strength, SPIFFE ID, trust domain, expected identity).
// Entries are keyed by SHA-256 over every certificate's DER, live at most `ttl`, and the cache
// belongs to one TlsContext, so a new trust bundle starts from empty.
class VerifiedChainCache {
 public:
  using Clock = std::chrono::system_clock;
  using Key = std::array<uint8_t, 32>;

  VerifiedChainCache(size_t capacity, std::chrono::seconds ttl) : capacity_(capacity), ttl_(ttl) {}

  // SHA-256 over the purpose and every certificate's DER (leaf first). False if hashing failed.
  static bool KeyFor(int purpose, X509* leaf, STACK_OF(X509) * chain, Key* key);

  bool Contains(const Key& key, Clock::time_point now);
  // `chain` is the verified chain: its validity window bounds the entry's.
  void Insert(const Key& key, STACK_OF(X509) * verified_chain, Clock::time_point now);

  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h;
      static_assert(sizeof(h) <= sizeof(Key));
      __builtin_memcpy(&h, k.data(), sizeof(h));
      return h;
    }
  };
  struct Entry {
    Clock::time_point valid_from;
    Clock::time_point valid_until;
  };

  const size_t capacity_;
  const std::chrono::seconds ttl_;
  std::mutex mutex_;
  std::unordered_map<Key, Entry, KeyHash> entries_;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace meshtls::tls
