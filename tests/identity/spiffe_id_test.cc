#include "meshtls/identity/spiffe_id.h"

#include <string>

#include "gtest/gtest.h"

namespace meshtls {
namespace {

TEST(SpiffeIdTest, ParsesWorkloadIds) {
  auto id = SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->trust_domain(), "cluster.local");
  EXPECT_EQ(id->path(), "/ns/default/sa/server");
  EXPECT_EQ(id->namespace_name(), "default");
  EXPECT_EQ(id->service_account(), "server");
  EXPECT_EQ(id->ToString(), "spiffe://cluster.local/ns/default/sa/server");
  EXPECT_EQ(*SpiffeId::ForWorkload("cluster.local", "default", "server"), *id);
}

TEST(SpiffeIdTest, AcceptsSpecValidForms) {
  for (const char* valid : {"spiffe://example.org", "spiffe://a-b_c.9/x", "spiffe://td/A.b-C_d/e",
                            "spiffe://td/ns/x/sa/y/extra"}) {
    EXPECT_TRUE(SpiffeId::Parse(valid).ok()) << valid;
  }
  EXPECT_FALSE(SpiffeId::Parse("spiffe://td/ns/x/sa/y/extra")->namespace_name().has_value());
}

struct InvalidCase {
  std::string input;
  std::string message_part;
};

class SpiffeIdInvalidTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(SpiffeIdInvalidTest, RejectsWithPreciseError) {
  auto id = SpiffeId::Parse(GetParam().input);
  ASSERT_FALSE(id.ok()) << GetParam().input;
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(id.status().message()).find(GetParam().message_part), std::string::npos)
      << id.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Table, SpiffeIdInvalidTest,
    ::testing::Values(InvalidCase{"", "empty"}, InvalidCase{"https://td/x", "spiffe://"},
                      InvalidCase{"SPIFFE://td/x", "spiffe://"},
                      InvalidCase{"spiffe://", "trust domain is empty"},
                      InvalidCase{"spiffe:///ns/x", "trust domain is empty"},
                      InvalidCase{"spiffe://Example.org/x", "lowercase"},
                      InvalidCase{"spiffe://td:8080/x", "port"},
                      InvalidCase{"spiffe://user@td/x", "userinfo"},
                      InvalidCase{"spiffe://td/x?y=1", "query"},
                      InvalidCase{"spiffe://td/x#frag", "fragment"},
                      InvalidCase{"spiffe://td/", "end with '/'"},
                      InvalidCase{"spiffe://td//x", "empty segment"},
                      InvalidCase{"spiffe://td/./x", "'.' or '..'"},
                      InvalidCase{"spiffe://td/../x", "'.' or '..'"},
                      InvalidCase{"spiffe://td/x y", "outside [a-zA-Z0-9.-_]"},
                      InvalidCase{"spiffe://td/%41", "outside [a-zA-Z0-9.-_]"},
                      InvalidCase{"spiffe://t$d/x", "outside [a-z0-9.-_]"},
                      InvalidCase{"spiffe://" + std::string(256, 'a'), "longer than 255"},
                      InvalidCase{"spiffe://td/" + std::string(2100, 'a'), "longer than 2048"}));

}  // namespace
}  // namespace meshtls
