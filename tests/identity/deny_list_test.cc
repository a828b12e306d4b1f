#include "meshtls/identity/deny_list.h"

#include <sys/socket.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/tls/connection_registry.h"
#include "meshtls/tls/context.h"
#include "meshtls/tls/relay.h"
#include "testing/test_util.h"

namespace meshtls::identity {
namespace {

namespace fs = std::filesystem;
SpiffeId Id(const std::string& s) { return *SpiffeId::Parse(s); }

TEST(DenyListTest, ParsesSerialsAndIdsAndNamesTheBadLine) {
  auto list = DenyList::Parse(
      "# revoked after the laptop was stolen\n"
      "serial 0A:1B:2c\n"
      "  spiffe://cluster.local/ns/shop/sa/cart   # compromised\n"
      "\n",
      "deny.txt");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->size(), 2u);
  EXPECT_TRUE(list->Denies(Id("spiffe://cluster.local/ns/a/sa/b"), "a1b2c"));
  EXPECT_TRUE(list->Denies(Id("spiffe://cluster.local/ns/a/sa/b"), "000A1B2C"));
  EXPECT_TRUE(list->Denies(Id("spiffe://cluster.local/ns/shop/sa/cart"), "ff"));
  EXPECT_FALSE(list->Denies(Id("spiffe://cluster.local/ns/shop/sa/web"), "ff"));

  auto bad = DenyList::Parse("serial 12\nfoo bar\n", "deny.txt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("deny.txt:2:"), std::string::npos) << bad.status();
  auto bad_serial = DenyList::Parse("serial xyz\n", "d");
  EXPECT_NE(std::string(bad_serial.status().message()).find("d:1: 'xyz' is not a hex serial"), std::string::npos)
      << bad_serial.status();
  auto bad_id = DenyList::Parse("\n\nspiffe://UPPER/x\n", "d");
  EXPECT_NE(std::string(bad_id.status().message()).find("d:3:"), std::string::npos) << bad_id.status();
}

class DenyListHandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-deny-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ca_ = *CertificateAuthority::Init(dir_ + "/ca", "cluster.local");
    client_svid_ = std::make_unique<Svid>(*ca_->Issue(Id("spiffe://cluster.local/ns/default/sa/client"), IssueOptions{}));
    server_svid_ = std::make_unique<Svid>(*ca_->Issue(Id("spiffe://cluster.local/ns/default/sa/server"), IssueOptions{}));
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::shared_ptr<const tls::TlsContext> Ctx(const Svid& svid, std::shared_ptr<DenyListHolder> deny) {
    return meshtls::testing::SvidContext(svid, ca_->TrustBundlePem(), std::move(deny));
  }
  tls::SessionOptions ClientOptions() {
    tls::SessionOptions o;
    o.expected_peer = server_svid_->id;
    return o;
  }
  std::string dir_;
  std::unique_ptr<CertificateAuthority> ca_;
  std::unique_ptr<Svid> client_svid_, server_svid_;
};

TEST_F(DenyListHandshakeTest, DeniedSerialOrIdFailsTheNextHandshakeAsRevoked) {
  auto deny = std::make_shared<DenyListHolder>();
  auto server_ctx = Ctx(*server_svid_, deny);
  auto client_ctx = Ctx(*client_svid_, nullptr);
  meshtls::testing::LoopThread loop;
  // Allowed first: this also puts the client's chain into the verified-chain cache.
  auto ok = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), {});
  ASSERT_TRUE(ok.server->handshake_done()) << ok.server->failure_detail();

  deny->Set(std::make_shared<const DenyList>(*DenyList::Parse("serial " + client_svid_->serial_hex, "t")));
  auto by_serial = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), {});
  EXPECT_EQ(by_serial.server->failure_reason(), tls::FailureReason::kRevoked) << by_serial.server->failure_detail();
  EXPECT_FALSE(by_serial.client->handshake_done() && by_serial.server->handshake_done());

  deny->Set(std::make_shared<const DenyList>(*DenyList::Parse(client_svid_->id.ToString(), "t")));
  auto by_id = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), {});
  EXPECT_EQ(by_id.server->failure_reason(), tls::FailureReason::kRevoked);

  deny->Set(std::make_shared<const DenyList>());
  auto again = meshtls::testing::Handshake(loop, client_ctx, server_ctx, ClientOptions(), {});
  EXPECT_TRUE(again.server->handshake_done());
}

TEST_F(DenyListHandshakeTest, ReloadClosesOpenConnectionsWithTheDeniedPeerOnly) {
  auto deny = std::make_shared<DenyListHolder>();
  auto other = *ca_->Issue(Id("spiffe://cluster.local/ns/default/sa/other"), IssueOptions{});
  meshtls::testing::LoopThread loop;
  tls::ConnectionRegistry registry;
  auto server_ctx = Ctx(*server_svid_, deny);
  // Two connections into the server, from two different clients; the relays on the server side
  // are registered.
  auto start = [&](const Svid& client) {
    auto [app_client, client_plain] = meshtls::testing::TcpPair();
    auto [server_plain, app_server] = meshtls::testing::TcpPair();
    auto hs = meshtls::testing::Handshake(loop, Ctx(client, nullptr), server_ctx, ClientOptions(), {});
    EXPECT_TRUE(hs.server->handshake_done());
    auto closed = std::make_shared<std::promise<tls::RelayResult>>();
    std::shared_ptr<tls::Relay> client_relay, server_relay;
    loop.Run([&] {
      client_relay = *tls::Relay::Start(loop.loop(), std::move(client_plain), std::move(hs.client),
                                        tls::Datapath::kUserspaceTls, {}, [](const tls::RelayResult&) {});
      tls::RelayOptions options;
      options.registry = &registry;
      server_relay = *tls::Relay::Start(loop.loop(), std::move(server_plain), std::move(hs.server),
                                        tls::Datapath::kUserspaceTls, options,
                                        [closed](const tls::RelayResult& r) { closed->set_value(r); });
    });
    return std::make_tuple(std::move(app_client), std::move(app_server), closed->get_future());
  };
  auto [denied_app, denied_server_app, denied_closed] = start(*client_svid_);
  auto [kept_app, kept_server_app, kept_closed] = start(other);
  ASSERT_EQ(registry.size(), 2u);

  const size_t closed = tls::ApplyDenyList(
      *deny, registry, std::make_shared<const DenyList>(*DenyList::Parse("serial " + client_svid_->serial_hex, "t")));
  EXPECT_EQ(closed, 1u);
  ASSERT_EQ(denied_closed.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(denied_closed.get().reason, tls::FailureReason::kRevoked);
  char c;
  EXPECT_LE(::recv(denied_app.get(), &c, 1, 0), 0) << "the denied client's connection is gone";
  // The other peer's connection still flows.
  ASSERT_EQ(::send(kept_app.get(), "x", 1, 0), 1);
  ASSERT_EQ(::recv(kept_server_app.get(), &c, 1, 0), 1);
  EXPECT_EQ(registry.size(), 1u);
  ::shutdown(kept_app.get(), SHUT_WR);
  ::shutdown(kept_server_app.get(), SHUT_WR);
  EXPECT_EQ(kept_closed.get().reason, tls::FailureReason::kNone);
  EXPECT_EQ(registry.size(), 0u);
}

}  // namespace
}  // namespace meshtls::identity
