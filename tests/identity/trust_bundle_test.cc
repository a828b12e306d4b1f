// CA rotation through the trust bundle: add the new root, issue from the new intermediate, then
// drop the old root.
#include <filesystem>

#include "gtest/gtest.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/tls/context.h"
#include "testing/test_util.h"

namespace meshtls::identity {
namespace {

namespace fs = std::filesystem;
SpiffeId Id(const std::string& s) { return *SpiffeId::Parse(s); }

TEST(TrustBundleTest, BothRootsVerifyDuringOverlapAndTheOldChainFailsOnceItsRootIsGone) {
  char tmpl[] = "/tmp/meshtls-bundle-test-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  auto old_ca = *CertificateAuthority::Init(dir + "/old", "cluster.local");
  auto new_ca = *CertificateAuthority::Init(dir + "/new", "cluster.local");
  auto ctx = [](const Svid& svid, const std::string& bundle) {
    return meshtls::testing::SvidContext(svid, bundle);
  };
  const Svid old_client = *old_ca->Issue(Id("spiffe://cluster.local/ns/a/sa/client"), IssueOptions{});
  const Svid new_client = *new_ca->Issue(Id("spiffe://cluster.local/ns/a/sa/client"), IssueOptions{});
  const Svid server = *new_ca->Issue(Id("spiffe://cluster.local/ns/a/sa/server"), IssueOptions{});
  const std::string both = old_ca->TrustBundlePem() + new_ca->TrustBundlePem();
  tls::SessionOptions client_options;
  client_options.expected_peer = server.id;
  meshtls::testing::LoopThread loop;

  auto overlap_server = ctx(server, both);
  for (const Svid* client : {&old_client, &new_client}) {
    auto out = meshtls::testing::Handshake(loop, ctx(*client, both), overlap_server, client_options, {});
    EXPECT_TRUE(out.server->handshake_done()) << out.server->failure_detail();
  }
  auto after_server = ctx(server, new_ca->TrustBundlePem());
  auto old_out = meshtls::testing::Handshake(loop, ctx(old_client, both), after_server, client_options, {});
  EXPECT_EQ(old_out.server->failure_reason(), tls::FailureReason::kUnknownCa) << old_out.server->failure_detail();
  auto new_out = meshtls::testing::Handshake(loop, ctx(new_client, both), after_server, client_options, {});
  EXPECT_TRUE(new_out.server->handshake_done());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace meshtls::identity
