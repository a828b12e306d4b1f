#include "meshtls/ctl/humanize.h"

#include <gtest/gtest.h>

#include "meshtls/ctl/format.h"

namespace meshtls::ctl {
namespace {

using std::chrono::seconds;

TEST(HumanDurationTest, TwoUnitsAtMost) {
  EXPECT_EQ(HumanDuration(seconds(0)), "0s");
  EXPECT_EQ(HumanDuration(seconds(59)), "59s");
  EXPECT_EQ(HumanDuration(seconds(60)), "1m");
  EXPECT_EQ(HumanDuration(seconds(312)), "5m12s");
  EXPECT_EQ(HumanDuration(seconds(3600)), "1h");
  EXPECT_EQ(HumanDuration(seconds(86399)), "23h59m");
  EXPECT_EQ(HumanDuration(seconds(86400 + 3599)), "1d");
  EXPECT_EQ(HumanDuration(seconds(3 * 86400 + 4 * 3600 + 59)), "3d4h");
  EXPECT_EQ(HumanDuration(seconds(30 * 86400 + 5 * 3600)), "30d");
  EXPECT_EQ(HumanDuration(seconds(10 * 365 * 86400 + 2 * 86400)), "10y2d");
  EXPECT_EQ(HumanDuration(seconds(-90)), "-1m30s");
}

TEST(HumanBytesTest, BinaryUnits) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(1288490), "1.2 MiB");
  EXPECT_EQ(HumanBytes(316211), "309 KiB");
  EXPECT_EQ(HumanBytes(1048575), "1.0 MiB");  // not "1024 KiB"
  EXPECT_EQ(HumanBytes(5368709120), "5.0 GiB");
  EXPECT_EQ(HumanBytes(UINT64_MAX), "16.0 EiB");
}

TEST(Rfc3339Test, UtcSecondsOrMillis) {
  google::protobuf::Timestamp t;
  EXPECT_EQ(Rfc3339(t), "-");
  t.set_seconds(1714564800);
  t.set_nanos(7000000);
  EXPECT_EQ(Rfc3339(t), "2024-05-01T12:00:00Z");
  EXPECT_EQ(Rfc3339(t, true), "2024-05-01T12:00:00.007Z");
  EXPECT_EQ(Rfc3339(ToTimePoint(t)), "2024-05-01T12:00:00Z");
  EXPECT_EQ(ToTimestamp(ToTimePoint(t)).nanos(), 7000000);
}

TEST(TableTest, AlignsWithoutTrailingBlanks) {
  Table table({"NAME", "IPS", "NOTE"});
  table.AddRow({"shop/cart", "10.0.0.1", ""});
  table.AddRow({"a", "fd00::1", "x"});
  EXPECT_EQ(table.Render(),
            "NAME        IPS        NOTE\n"
            "shop/cart   10.0.0.1   -\n"
            "a           fd00::1    x\n");
}

TEST(TableTest, CountsCodePointsNotBytes) {
  Table table({"A", "B"});
  table.AddRow({"é", "x"});
  EXPECT_EQ(table.Render(), "A   B\né   x\n");
}

TEST(YamlTest, QuotesStringsThatWouldReadAsOtherTypes) {
  v1::Certificate c;
  c.set_serial("0123");
  c.set_spiffe_id("yes");
  c.set_last_error("12:30 retry");
  const std::string yaml = ToYaml(c);
  EXPECT_NE(yaml.find("spiffe_id: \"yes\""), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("serial: \"0123\""), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("last_error: \"12:30 retry\""), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("not_before: null"), std::string::npos) << yaml;
}

TEST(ParseTest, EventKinds) {
  auto kinds = ParseEventKinds("handshake,DENIAL,,handshake,close");
  ASSERT_TRUE(kinds.ok());
  EXPECT_EQ(*kinds, (std::vector<v1::EventKind>{v1::EVENT_KIND_HANDSHAKE, v1::EVENT_KIND_DENIAL,
                                                v1::EVENT_KIND_CLOSE}));
  EXPECT_TRUE(ParseEventKinds("")->empty());
  auto bad = ParseEventKinds("handshake,teleport");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(std::string(bad.status().message()),
            "unknown event kind 'teleport': use handshake, denial, rotation, reload, close");
}

TEST(ParseTest, WorkloadNamesAndFormats) {
  EXPECT_TRUE(IsWorkloadName("shop/cart"));
  EXPECT_FALSE(IsWorkloadName("cart"));
  EXPECT_FALSE(IsWorkloadName("/cart"));
  EXPECT_FALSE(IsWorkloadName("shop/"));
  EXPECT_FALSE(IsWorkloadName("a/b/c"));
  EXPECT_EQ(ParseOutputFormat("yaml"), OutputFormat::kYaml);
  EXPECT_FALSE(ParseOutputFormat("xml").has_value());
}

TEST(WarningTest, DroppedEvents) {
  EXPECT_EQ(DroppedEventsWarning(1), "warning: 1 event dropped: this client reads too slowly\n");
  EXPECT_EQ(DroppedEventsWarning(17), "warning: 17 events dropped: this client reads too slowly\n");
}

}  // namespace
}  // namespace meshtls::ctl
