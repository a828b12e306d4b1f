// Built-in EC keys (openssl_setup.h): what the test main set up for this process, and that keys
// and certificates then behave as the handshake engine and the CA need. ctest runs this binary
// twice: as the agent runs (auto) and with MESHTLS_BUILTIN_EC=off.
#include "meshtls/common/openssl_setup.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "testing/test_util.h"

namespace meshtls {
namespace {

bool AskedOff() {
  const char* env = std::getenv("MESHTLS_BUILTIN_EC");
  return env != nullptr && std::string(env) == "off";
}

// Where auto turns the built-in code on: Debian 12's OpenSSL 3.0, no FIPS.
bool ExpectBuiltin() {
  return !AskedOff() && OpenSSL_version_num() < 0x30200000L &&
         EVP_default_properties_is_fips_enabled(nullptr) != 1;
}

X509Ptr LoadCert(const std::string& file) {
  absl::StatusOr<std::vector<X509Ptr>> certs = ParsePemCertificates(testing::ReadFile(testing::CertPath(file)));
  if (!certs.ok() || certs->empty()) return nullptr;
  return std::move(certs->front());
}

TEST(OpenSslSetupTest, TheTestMainConfiguredThisProcessAsAsked) {
  const OpenSslSetup setup = CurrentOpenSslSetup();
  EXPECT_EQ(setup.builtin_ec_keys, ExpectBuiltin()) << setup.detail;
  if (AskedOff()) {
    EXPECT_EQ(setup.detail, "off (opensslBuiltinEc: off)");
  } else if (ExpectBuiltin()) {
    EXPECT_EQ(setup.detail, "on: EC certificate keys are decoded and used by OpenSSL's built-in EC code (start-up check passed)");
  }
  // The first call decided: asking again, the other way, changes nothing.
  const OpenSslSetup& again = ConfigureOpenSsl(AskedOff() ? BuiltinEcKeys::kAuto : BuiltinEcKeys::kOff);
  EXPECT_EQ(again.builtin_ec_keys, setup.builtin_ec_keys);
  EXPECT_EQ(again.detail, setup.detail);
}

TEST(OpenSslSetupTest, CertificateKeysDecodeWhereConfigured) {
  X509Ptr leaf = LoadCert("server.crt");
  ASSERT_NE(leaf, nullptr);
  EVP_PKEY* key = X509_get0_pubkey(leaf.get());
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(EVP_PKEY_is_a(key, "EC"));
  // A key the built-in code decoded belongs to no provider.
  EXPECT_EQ(EVP_PKEY_get0_provider(key) == nullptr, ExpectBuiltin());
  X509Ptr intermediate = LoadCert("intermediate.crt");
  ASSERT_NE(intermediate, nullptr);
  EXPECT_EQ(X509_verify(leaf.get(), X509_get0_pubkey(intermediate.get())), 1);
  X509Ptr root = LoadCert("root.crt");
  ASSERT_NE(root, nullptr);
  EXPECT_NE(X509_verify(leaf.get(), X509_get0_pubkey(root.get())), 1);  // the wrong issuer's key
}

TEST(OpenSslSetupTest, PemPrivateKeysSignCertificatesThatVerify) {
  absl::StatusOr<EvpPkeyPtr> key = ParsePemPrivateKey(testing::ReadFile(testing::CertPath("intermediate.key")));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(EVP_PKEY_get0_provider(key->get()) == nullptr, ExpectBuiltin());
  X509Ptr intermediate = LoadCert("intermediate.crt");
  ASSERT_NE(intermediate, nullptr);
  X509Ptr cert(X509_new());
  ASSERT_EQ(X509_set_pubkey(cert.get(), X509_get0_pubkey(intermediate.get())), 1);
  ASSERT_GT(X509_sign(cert.get(), key->get(), EVP_sha256()), 0) << DrainOpenSslErrors();
  EXPECT_EQ(X509_verify(cert.get(), X509_get0_pubkey(intermediate.get())), 1);
}

TEST(OpenSslSetupTest, TheStartUpCheckPassesWhereTheBuiltinCodeIsOn) {
  if (!ExpectBuiltin()) GTEST_SKIP() << "built-in EC keys are off in this run (MESHTLS_BUILTIN_EC=off)";
  EXPECT_TRUE(CheckBuiltinEcKeys().ok()) << CheckBuiltinEcKeys();
}

TEST(OpenSslSetupTest, ModeNames) {
  EXPECT_EQ(*ParseBuiltinEcKeys("auto"), BuiltinEcKeys::kAuto);
  EXPECT_EQ(*ParseBuiltinEcKeys("off"), BuiltinEcKeys::kOff);
  EXPECT_EQ(Name(BuiltinEcKeys::kAuto), "auto");
  EXPECT_EQ(Name(BuiltinEcKeys::kOff), "off");
  absl::StatusOr<BuiltinEcKeys> bad = ParseBuiltinEcKeys("on");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "'on' is not one of auto|off");
}

// The agent and meshtls-tunnel both log through this: a failed start-up check must be a warning.
TEST(OpenSslSetupTest, AFailedStartUpCheckIsLoggedAsAWarning) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  logger->set_pattern("%l %v");
  logger->set_level(spdlog::level::trace);
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  LogOpenSslSetup({false, "off: the start-up check failed (forged signature verified)", true});
  LogOpenSslSetup({true, "on: start-up check passed", false});
  LogOpenSslSetup({false, "off: opensslBuiltinEc is off", false});
  spdlog::set_default_logger(previous);
  EXPECT_EQ(out.str(),
            "warning OpenSSL built-in EC keys off: the start-up check failed (forged signature verified)\n"
            "info OpenSSL built-in EC keys on: start-up check passed\n"
            "info OpenSSL built-in EC keys off: opensslBuiltinEc is off\n");
}

}  // namespace
}  // namespace meshtls
