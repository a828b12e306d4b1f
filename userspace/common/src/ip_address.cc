#include "meshtls/common/ip_address.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "meshtls/common/strings.h"

namespace meshtls {

IpAddress::IpAddress(in_addr v4) : family_(AF_INET) { std::memcpy(bytes_, &v4, 4); }

IpAddress::IpAddress(const in6_addr& v6) : family_(AF_INET6) { std::memcpy(bytes_, &v6, 16); }

absl::StatusOr<IpAddress> IpAddress::Parse(std::string_view text) {
  std::string copy(text);
  in_addr v4{};
  if (inet_pton(AF_INET, copy.c_str(), &v4) == 1) return IpAddress(v4);
  in6_addr v6{};
  if (inet_pton(AF_INET6, copy.c_str(), &v6) == 1) return IpAddress(v6);
  return absl::InvalidArgumentError(StrCat("'", text, "' is not an IPv4 or IPv6 address"));
}

absl::StatusOr<IpAddress> IpAddress::FromSockaddr(const sockaddr* address, socklen_t length) {
  if (address->sa_family == AF_INET && length >= sizeof(sockaddr_in)) {
    return IpAddress(reinterpret_cast<const sockaddr_in*>(address)->sin_addr);
  }
  if (address->sa_family == AF_INET6 && length >= sizeof(sockaddr_in6)) {
    return IpAddress(reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr);
  }
  return absl::InvalidArgumentError(StrCat("address family ", address->sa_family, " is not IP"));
}

in_addr IpAddress::v4() const {
  in_addr out{};
  std::memcpy(&out, bytes_, 4);
  return out;
}

in6_addr IpAddress::v6() const {
  in6_addr out{};
  std::memcpy(&out, bytes_, 16);
  return out;
}

bool IpAddress::IsLoopback() const {
  if (is_v4()) return bytes_[0] == 127;
  in6_addr address = v6();
  return IN6_IS_ADDR_LOOPBACK(&address);
}

socklen_t IpAddress::ToSockaddr(uint16_t port, sockaddr_storage* out) const {
  std::memset(out, 0, sizeof(*out));
  if (is_v4()) {
    auto* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr = v4();
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(out);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  sin6->sin6_addr = v6();
  return sizeof(sockaddr_in6);
}

std::string IpAddress::ToString() const {
  char buffer[INET6_ADDRSTRLEN] = {};
  inet_ntop(family_, bytes_, buffer, sizeof(buffer));
  return buffer;
}

bool operator==(const IpAddress& a, const IpAddress& b) {
  return a.family_ == b.family_ && std::memcmp(a.bytes_, b.bytes_, sizeof(a.bytes_)) == 0;
}

std::strong_ordering operator<=>(const IpAddress& a, const IpAddress& b) {
  if (a.family_ != b.family_) return a.family_ <=> b.family_;
  int c = std::memcmp(a.bytes_, b.bytes_, sizeof(a.bytes_));
  return c <=> 0;
}

absl::StatusOr<Cidr> Cidr::Parse(std::string_view text) {
  auto slash = text.find('/');
  auto address = IpAddress::Parse(text.substr(0, slash));
  if (!address.ok()) return address.status();
  int max_length = address->is_v4() ? 32 : 128;
  int length = max_length;
  if (slash != std::string_view::npos) {
    std::string_view digits = text.substr(slash + 1);
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), length);
    if (error != std::errc() || end != digits.data() + digits.size() || digits.empty() || length < 0 ||
        length > max_length) {
      return absl::InvalidArgumentError(
          StrCat("'", text, "': the prefix length must be a number from 0 to ", max_length));
    }
  }
  Cidr cidr;
  cidr.prefix_length_ = length;
  // Keep only the network part, so "10.1.2.3/8" is 10.0.0.0/8.
  uint8_t bytes[16] = {};
  std::memcpy(bytes, address->bytes(), address->size());
  for (int bit = length; bit < max_length; ++bit) bytes[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  if (address->is_v4()) {
    in_addr v4{};
    std::memcpy(&v4, bytes, 4);
    cidr.base_ = IpAddress(v4);
  } else {
    in6_addr v6{};
    std::memcpy(&v6, bytes, 16);
    cidr.base_ = IpAddress(v6);
  }
  return cidr;
}

bool Cidr::Contains(const IpAddress& address) const {
  if (address.family() != base_.family()) return false;
  int full_bytes = prefix_length_ / 8;
  if (std::memcmp(address.bytes(), base_.bytes(), full_bytes) != 0) return false;
  int rest = prefix_length_ % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (address.bytes()[full_bytes] & mask) == (base_.bytes()[full_bytes] & mask);
}

std::string Cidr::ToString() const { return StrCat(base_.ToString(), "/", prefix_length_); }

}  // namespace meshtls
