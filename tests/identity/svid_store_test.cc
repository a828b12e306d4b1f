#include "meshtls/identity/svid_store.h"

#include <sys/socket.h>

#include <filesystem>
#include <set>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "meshtls/tls/context.h"
#include "meshtls/tls/identity_contexts.h"
#include "meshtls/tls/relay.h"
#include "testing/test_util.h"

namespace meshtls::identity {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::system_clock;

SpiffeId Id(const std::string& s) { return *SpiffeId::Parse(s); }

// Wraps the CA and fails on demand.
class FlakyProvider : public CertificateProvider {
 public:
  explicit FlakyProvider(CertificateProvider& real) : real_(real) {}
  absl::StatusOr<Svid> Issue(const SpiffeId& id, const IssueOptions& options) override {
    ++calls;
    if (fail) return absl::UnavailableError("CA unreachable (test)");
    return real_.Issue(id, options);
  }
  std::string TrustBundlePem() const override { return real_.TrustBundlePem(); }
  const std::string& trust_domain() const override { return real_.trust_domain(); }
  bool fail = false;
  int calls = 0;

 private:
  CertificateProvider& real_;
};

class SvidStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-svid-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    ca_ = *CertificateAuthority::Init(dir_ + "/ca", "cluster.local");
    options_.now = [this] { return now_; };
    options_.seed = 42;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_;
  std::unique_ptr<CertificateAuthority> ca_;
  SvidStoreOptions options_;
  Clock::time_point now_ = Clock::now();
};

TEST_F(SvidStoreTest, IssuesOnFirstUseAndReusesUntilRotation) {
  SvidStore store(*ca_, options_);
  const SpiffeId web = Id("spiffe://cluster.local/ns/default/sa/web");
  auto first = store.Current(web);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*store.Current(web))->serial_hex, (*first)->serial_hex);
  ASSERT_EQ(store.States().size(), 1u);
  const SvidState state = store.States()[0];
  // Renewal between 40 % and 50 % of the lifetime from issuance (half-life minus up to 10 %
  // jitter); notBefore is backdated for clock skew and does not count.
  const double lifetime = std::chrono::duration<double>(state.not_after - now_).count();
  const double at = std::chrono::duration<double>(state.rotate_at - now_).count();
  EXPECT_GE(at, 0.4 * lifetime - 1);
  EXPECT_LE(at, 0.5 * lifetime + 1);

  now_ = state.rotate_at - 1s;
  store.Tick();
  EXPECT_EQ((*store.Current(web))->serial_hex, (*first)->serial_hex);
  now_ = state.rotate_at + 1s;
  const auto next = store.Tick();
  auto second = *store.Current(web);
  EXPECT_NE(second->serial_hex, (*first)->serial_hex);
  EXPECT_EQ(store.States()[0].rotations, 1u);
  EXPECT_GT(next, now_);
  // Whoever still holds the old SVID (an open connection) holds it intact.
  EXPECT_FALSE((*first)->chain_pem.empty());
}

TEST_F(SvidStoreTest, ShortLivedSvidsRenewAtHalfLifeDespiteTheBackdatedNotBefore) {
  options_.issue.ttl = 10s;  // notBefore is still 5 minutes in the past
  SvidStore store(*ca_, options_);
  ASSERT_TRUE(store.Current(Id("spiffe://cluster.local/ns/default/sa/web")).ok());
  const SvidState state = store.States()[0];
  EXPECT_LT(state.not_before, now_ - 1min);
  EXPECT_GE(state.rotate_at, now_ + 3s);
  EXPECT_LE(state.rotate_at, now_ + 6s);
}

TEST_F(SvidStoreTest, JitterSpreadsRenewals) {
  SvidStore store(*ca_, options_);
  std::set<int64_t> times;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(store.Current(Id("spiffe://cluster.local/ns/n/sa/a" + std::to_string(i))).ok());
  }
  for (const auto& s : store.States()) times.insert(std::chrono::duration_cast<std::chrono::seconds>(s.rotate_at.time_since_epoch()).count());
  EXPECT_GT(times.size(), 15u);
}

TEST_F(SvidStoreTest, FailedIssuanceKeepsTheValidSvidAndBacksOff) {
  FlakyProvider flaky(*ca_);
  SvidStore store(flaky, options_);
  const SpiffeId web = Id("spiffe://cluster.local/ns/default/sa/web");
  const std::string serial = (*store.Current(web))->serial_hex;
  now_ = store.States()[0].rotate_at + 1s;
  flaky.fail = true;
  store.Tick();
  SvidState s = store.States()[0];
  EXPECT_EQ(s.failures, 1u);
  EXPECT_NE(s.last_error.find("CA unreachable"), std::string::npos);
  EXPECT_EQ(s.rotate_at, now_ + 1s);
  EXPECT_EQ((*store.Current(web))->serial_hex, serial) << "the valid SVID stays in use";
  now_ += 1s;
  store.Tick();
  EXPECT_EQ(store.States()[0].rotate_at, now_ + 2s);  // exponential backoff
  EXPECT_EQ(store.States()[0].failures, 2u);
  now_ += 2s;
  flaky.fail = false;
  store.Tick();
  s = store.States()[0];
  EXPECT_EQ(s.failures, 0u);
  EXPECT_TRUE(s.last_error.empty());
  EXPECT_NE((*store.Current(web))->serial_hex, serial);
  // No SVID at all and the CA down: a clear error, not an empty certificate.
  flaky.fail = true;
  auto none = store.Current(Id("spiffe://cluster.local/ns/default/sa/new"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SvidStoreTest, RotationLeavesOpenConnectionsFlowingAndNewHandshakesGetTheNewSerial) {
  SvidStore store(*ca_, options_);
  tls::TlsContextOptions base;
  base.trust_bundle_pem = ca_->TrustBundlePem();
  base.trust_domain = "cluster.local";
  tls::IdentityContexts contexts(store, base);
  const SpiffeId client_id = Id("spiffe://cluster.local/ns/default/sa/client");
  const SpiffeId server_id = Id("spiffe://cluster.local/ns/default/sa/server");
  meshtls::testing::LoopThread loop;
  const std::string old_serial = (*store.Current(server_id))->serial_hex;
  auto old_context = *contexts.For(server_id);
  EXPECT_EQ(*contexts.For(server_id), old_context) << "no rebuild without a rotation";
  meshtls::testing::RelayPair open = meshtls::testing::StartRelayPair(
      loop, tls::Datapath::kUserspaceTls, *contexts.For(client_id), old_context, server_id);
  ASSERT_EQ(open.client_relay->tunnel().peer_serial(), old_serial);

  // The fake clock passes the renewal time; Tick() rotates every due SVID.
  for (const auto& s : store.States()) now_ = std::max(now_, s.rotate_at + 1s);
  store.Tick();
  const std::string new_serial = (*store.Current(server_id))->serial_hex;
  ASSERT_NE(new_serial, old_serial);

  // The next connection sees the new certificate.
  meshtls::testing::RelayPair fresh = meshtls::testing::StartRelayPair(
      loop, tls::Datapath::kUserspaceTls, *contexts.For(client_id), *contexts.For(server_id), server_id);
  EXPECT_EQ(fresh.client_relay->tunnel().peer_serial(), new_serial);

  // The connection opened before the rotation still moves bytes both ways.
  const std::string ping = "still flowing after rotation";
  ASSERT_EQ(::send(open.app_client.get(), ping.data(), ping.size(), 0), static_cast<ssize_t>(ping.size()));
  std::string got(ping.size(), '\0');
  ASSERT_EQ(::recv(open.app_server.get(), got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(ping.size()));
  EXPECT_EQ(got, ping);
  ASSERT_EQ(::send(open.app_server.get(), "pong", 4, 0), 4);
  char pong[4];
  ASSERT_EQ(::recv(open.app_client.get(), pong, 4, MSG_WAITALL), 4);
  for (auto* pair : {&open, &fresh}) {
    ::shutdown(pair->app_client.get(), SHUT_WR);
    ::shutdown(pair->app_server.get(), SHUT_WR);
    EXPECT_EQ(pair->client_result.get().reason, tls::FailureReason::kNone);
  }
}

TEST_F(SvidStoreTest, ForcedRotationAndForget) {
  SvidStore store(*ca_, options_);
  const SpiffeId web = Id("spiffe://cluster.local/ns/default/sa/web");
  EXPECT_EQ(store.Rotate(web).code(), absl::StatusCode::kNotFound);
  const std::string first = (*store.Current(web))->serial_hex;
  ASSERT_TRUE(store.Rotate(web).ok());
  EXPECT_NE((*store.Current(web))->serial_hex, first);
  store.Forget(web);
  EXPECT_TRUE(store.States().empty());
}

}  // namespace
}  // namespace meshtls::identity

namespace meshtls::identity {
namespace {

TEST_F(SvidStoreTest, RenewalsAndExpiryAreExportedAsMetrics) {
  options_.metrics = std::make_shared<telemetry::Metrics>();
  FlakyProvider flaky(*ca_);
  SvidStore store(flaky, options_);
  const SpiffeId web = Id("spiffe://cluster.local/ns/default/sa/web");
  auto svid = *store.Current(web);
  now_ = store.States()[0].rotate_at + 1s;
  flaky.fail = true;
  store.Tick();
  const std::string text = options_.metrics->Serialize();
  EXPECT_NE(text.find("meshtls_svid_rotations_total{result=\"success\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("meshtls_svid_rotations_total{result=\"failure\"} 1"), std::string::npos) << text;
  const std::string expiry = "meshtls_certificate_expiration_timestamp_seconds{spiffe_id=\"" + web.ToString() + "\"} " +
                             std::to_string(Clock::to_time_t(svid->not_after));
  EXPECT_NE(text.find(expiry), std::string::npos) << text;
  store.Forget(web);
  EXPECT_EQ(options_.metrics->Serialize().find("spiffe_id=\"" + web.ToString()), std::string::npos);
}

}  // namespace
}  // namespace meshtls::identity
