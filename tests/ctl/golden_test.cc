// Each command's output, in each format, against tests/ctl/golden/. After a deliberate change:
//   MESHTLS_UPDATE_GOLDEN=1 build-ctl/tests/ctl/ctl_golden_test
// then read the diff of the golden files: they are what operators will see.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

#include "meshtls/ctl/format.h"
#include "samples.h"
#include "testing/test_util.h"

namespace meshtls::ctl {
namespace {

using testing::SampleNow;

const char* Extension(OutputFormat format) {
  switch (format) {
    case OutputFormat::kTable: return ".txt";
    case OutputFormat::kJson: return ".json";
    case OutputFormat::kYaml: return ".yaml";
  }
  return "";
}

void ExpectGolden(const std::string& name, const std::string& actual) {
  meshtls::testing::ExpectGolden(std::string(MESHTLS_CTL_GOLDEN_DIR) + "/" + name, actual);
}

class GoldenTest : public ::testing::TestWithParam<OutputFormat> {
 protected:
  RenderOptions Options() const {
    RenderOptions options;
    options.format = GetParam();
    options.now = SampleNow();
    return options;
  }
  void Check(const std::string& command, const std::string& actual) {
    ExpectGolden(command + Extension(GetParam()), actual);
  }
};

TEST_P(GoldenTest, Status) { Check("status", RenderStatus(testing::SampleStatus(), Options())); }
TEST_P(GoldenTest, Workloads) { Check("workloads", RenderWorkloads(testing::SampleWorkloads(), Options())); }
TEST_P(GoldenTest, Connections) { Check("connections", RenderConnections(testing::SampleConnections(), Options())); }
TEST_P(GoldenTest, Certs) { Check("certs", RenderCertificates(testing::SampleCertificates(), Options())); }
TEST_P(GoldenTest, Policy) { Check("policy", RenderPolicy(testing::SamplePolicy(), Options())); }
TEST_P(GoldenTest, Rotate) { Check("rotate", RenderRotation(testing::SampleRotation(), Options())); }

// What a terminal shows: tap writes the warnings to stderr, the events to stdout.
TEST_P(GoldenTest, Tap) {
  std::string out;
  for (const auto& event : testing::SampleEvents()) {
    if (event.dropped_before() > 0) out += DroppedEventsWarning(event.dropped_before());
    out += RenderEvent(event, Options());
  }
  Check("tap", out);
}

INSTANTIATE_TEST_SUITE_P(Formats, GoldenTest,
                         ::testing::Values(OutputFormat::kTable, OutputFormat::kJson, OutputFormat::kYaml),
                         [](const ::testing::TestParamInfo<OutputFormat>& param) {
                           return std::string(Extension(param.param)).substr(1);
                         });

// The machine forms must read back: json through nlohmann, one object per tap line.
TEST(StructuredTest, JsonParsesAndKeepsTypes) {
  auto json = nlohmann::json::parse(ToJson(testing::SampleConnections()));
  ASSERT_EQ(json["connections"].size(), 4u);
  EXPECT_EQ(json["connections"][2]["bytes_sent"].get<uint64_t>(), 5368709120u);
  EXPECT_EQ(json["connections"][0]["datapath"], "DATAPATH_KTLS_SPLICE");
  EXPECT_EQ(json["connections"][1]["age"], "86399.500s");
  EXPECT_TRUE(json["connections"][3]["age"].is_null());
  for (const auto& event : testing::SampleEvents()) {
    RenderOptions options;
    options.format = OutputFormat::kJson;
    const std::string line = RenderEvent(event, options);
    ASSERT_EQ(line.find('\n'), line.size() - 1) << line;
    EXPECT_NO_THROW(nlohmann::json::parse(line));
  }
}

TEST(StructuredTest, EmptyAnswers) {
  RenderOptions options;
  options.now = SampleNow();
  EXPECT_EQ(RenderConnections(v1::ListConnectionsResponse(), options), "No connections.\n");
  EXPECT_EQ(RenderWorkloads(v1::ListWorkloadsResponse(), options), "No workloads.\n");
  EXPECT_EQ(RenderRotation(v1::RotateCertificatesResponse(), options), "No certificate was rotated.\n");
  options.format = OutputFormat::kYaml;
  EXPECT_EQ(RenderConnections(v1::ListConnectionsResponse(), options), "connections: []\n");
  options.format = OutputFormat::kJson;
  EXPECT_EQ(RenderConnections(v1::ListConnectionsResponse(), options), "{\n  \"connections\": []\n}\n");
}

}  // namespace
}  // namespace meshtls::ctl
