#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meshtls {

// An IPv4 or IPv6 address (no port), comparable and hashable, so that workloads, policies and
// BPF map keys share one representation.
class IpAddress {
 public:
  IpAddress() = default;  // 0.0.0.0
  explicit IpAddress(in_addr v4);
  explicit IpAddress(const in6_addr& v6);

  // "10.0.0.1" or "fd00::1" (no brackets, no port). IPv4-mapped IPv6 stays IPv6.
  static absl::StatusOr<IpAddress> Parse(std::string_view text);
  // The address of a sockaddr_in / sockaddr_in6 (anything else: InvalidArgument).
  static absl::StatusOr<IpAddress> FromSockaddr(const sockaddr* address, socklen_t length);

  int family() const { return family_; }
  bool is_v4() const { return family_ == AF_INET; }
  in_addr v4() const;
  in6_addr v6() const;
  // Network byte order; 4 or 16 bytes used.
  const uint8_t* bytes() const { return bytes_; }
  size_t size() const { return is_v4() ? 4 : 16; }
  bool IsLoopback() const;

  // A sockaddr with this address and `port` (host byte order); returns its length.
  socklen_t ToSockaddr(uint16_t port, sockaddr_storage* out) const;
  std::string ToString() const;

  friend bool operator==(const IpAddress& a, const IpAddress& b);
  friend std::strong_ordering operator<=>(const IpAddress& a, const IpAddress& b);
  template <typename H>
  friend H AbslHashValue(H h, const IpAddress& a) {
    return H::combine(H::combine_contiguous(std::move(h), a.bytes_, sizeof(a.bytes_)), a.family_);
  }

 private:
  int family_ = AF_INET;
  uint8_t bytes_[16] = {};
};

// An address block ("10.0.0.0/8", "fd00::/64"; a bare address is a /32 or /128).
class Cidr {
 public:
  static absl::StatusOr<Cidr> Parse(std::string_view text);
  bool Contains(const IpAddress& address) const;
  const IpAddress& base() const { return base_; }
  int prefix_length() const { return prefix_length_; }
  std::string ToString() const;

 private:
  IpAddress base_;
  int prefix_length_ = 0;
};

}  // namespace meshtls
