#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "meshtls/identity/spiffe_id.h"

namespace meshtls::identity {

// Certificates and identities that must not be accepted, whatever their signatures say.
// File format, one entry per line ('#' starts a comment):
//   serial 3d1f41434efd70333e6e08d47593fef2      (hex, any case, colons allowed)
//   spiffe://cluster.local/ns/shop/sa/cart
class DenyList {
 public:
  static absl::StatusOr<DenyList> Parse(std::string_view text, std::string_view source);
  static absl::StatusOr<DenyList> LoadFile(const std::string& path);

  bool Denies(const SpiffeId& id, std::string_view serial_hex) const;
  size_t size() const { return serials_.size() + ids_.size(); }

 private:
  std::set<std::string> serials_;  // lowercase hex, no leading zeros, no colons
  std::set<std::string> ids_;
};

// The deny list in force, swapped as a whole on reload; read on every handshake from any thread.
class DenyListHolder {
 public:
  std::shared_ptr<const DenyList> Get() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void Set(std::shared_ptr<const DenyList> list) {
    std::lock_guard lock(mutex_);
    current_ = std::move(list);
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const DenyList> current_ = std::make_shared<const DenyList>();
};

// Normalizes a serial number as written by people or tools: lowercase, no colons, no leading 0s.
std::string NormalizeSerial(std::string_view hex);

}  // namespace meshtls::identity
