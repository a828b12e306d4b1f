#include "meshtls/common/ip_address.h"

#include <gtest/gtest.h>

namespace meshtls {
namespace {

TEST(IpAddressTest, ParsesBothFamiliesAndRejectsGarbage) {
  auto v4 = IpAddress::Parse("10.1.2.3");
  ASSERT_TRUE(v4.ok());
  EXPECT_TRUE(v4->is_v4());
  EXPECT_EQ(v4->ToString(), "10.1.2.3");
  auto v6 = IpAddress::Parse("fd00::1");
  ASSERT_TRUE(v6.ok());
  EXPECT_FALSE(v6->is_v4());
  EXPECT_EQ(v6->ToString(), "fd00::1");
  EXPECT_FALSE(IpAddress::Parse("10.1.2").ok());
  EXPECT_FALSE(IpAddress::Parse("10.1.2.3:80").ok());
  EXPECT_FALSE(IpAddress::Parse("").ok());
  EXPECT_TRUE(IpAddress::Parse("127.0.0.9")->IsLoopback());
  EXPECT_TRUE(IpAddress::Parse("::1")->IsLoopback());
  EXPECT_FALSE(IpAddress::Parse("10.0.0.1")->IsLoopback());
}

TEST(IpAddressTest, RoundTripsThroughSockaddr) {
  auto address = *IpAddress::Parse("fd00::7");
  sockaddr_storage storage{};
  socklen_t length = address.ToSockaddr(8080, &storage);
  auto back = IpAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&storage), length);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, address);
  EXPECT_EQ(ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port), 8080);
  EXPECT_NE(*IpAddress::Parse("10.0.0.1"), *IpAddress::Parse("10.0.0.2"));
}

TEST(CidrTest, MatchesByPrefixAndFamily) {
  auto block = Cidr::Parse("10.1.2.3/8");
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->ToString(), "10.0.0.0/8");
  EXPECT_TRUE(block->Contains(*IpAddress::Parse("10.200.0.1")));
  EXPECT_FALSE(block->Contains(*IpAddress::Parse("11.0.0.1")));
  EXPECT_FALSE(block->Contains(*IpAddress::Parse("::ffff:10.0.0.1")));
  auto odd = *Cidr::Parse("192.168.4.0/22");
  EXPECT_TRUE(odd.Contains(*IpAddress::Parse("192.168.7.255")));
  EXPECT_FALSE(odd.Contains(*IpAddress::Parse("192.168.8.0")));
  auto single = *Cidr::Parse("fd00::1");
  EXPECT_EQ(single.prefix_length(), 128);
  EXPECT_TRUE(single.Contains(*IpAddress::Parse("fd00::1")));
  EXPECT_FALSE(single.Contains(*IpAddress::Parse("fd00::2")));
  EXPECT_TRUE(Cidr::Parse("0.0.0.0/0")->Contains(*IpAddress::Parse("8.8.8.8")));
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/33").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/8x").ok());
}

}  // namespace
}  // namespace meshtls
