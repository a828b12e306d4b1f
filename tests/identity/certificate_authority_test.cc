#include "meshtls/identity/certificate_authority.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "meshtls/tls/context.h"
#include "testing/test_util.h"

namespace meshtls::identity {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class CertificateAuthorityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-ca-test-XXXXXX";
    base_ = ::mkdtemp(tmpl);
    dir_ = base_ + "/ca";
  }
  void TearDown() override { fs::remove_all(base_); }
  static void Write(const std::string& path, const std::string& data) { std::ofstream(path) << data; }
  static int Run(const std::string& cmd, std::string* output = nullptr) {
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    std::string out;
    char buf[512];
    while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
    const int rc = ::pclose(p);
    if (output) *output = out;
    return WEXITSTATUS(rc);
  }
  std::string base_, dir_;
};

SpiffeId Id(const std::string& s) { return *SpiffeId::Parse(s); }

TEST_F(CertificateAuthorityTest, InitPersistsWithTightModesAndLoadsBack) {
  auto ca = CertificateAuthority::Init(dir_, "cluster.local");
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ(fs::status(dir_).permissions() & fs::perms::all, fs::perms::owner_all);
  for (const char* key : {"root.key", "intermediate.key"}) {
    EXPECT_EQ(fs::status(dir_ + "/" + key).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write) << key;
  }
  EXPECT_EQ(meshtls::testing::ReadFile(dir_ + "/trust-domain"), "cluster.local\n");
  auto loaded = CertificateAuthority::Load(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->root_pem(), (*ca)->root_pem());
  EXPECT_EQ((*loaded)->intermediate_pem(), (*ca)->intermediate_pem());
  EXPECT_EQ((*loaded)->trust_domain(), "cluster.local");
  // No temporary directory is left beside it.
  int entries = 0;
  for (auto& e : fs::directory_iterator(base_)) entries += e.path().filename() != "ca";
  EXPECT_EQ(entries, 0);
}

TEST_F(CertificateAuthorityTest, InitNeverOverwritesAndLoadOrInitReuses) {
  ASSERT_TRUE(CertificateAuthority::Init(dir_, "cluster.local").ok());
  auto again = CertificateAuthority::Init(dir_, "cluster.local");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  auto reused = CertificateAuthority::LoadOrInit(dir_, "cluster.local");
  ASSERT_TRUE(reused.ok()) << reused.status();
  auto other = CertificateAuthority::LoadOrInit(dir_, "example.org");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_FALSE(CertificateAuthority::Init(base_ + "/bad", "Not_A.Domain!").ok());
}

TEST_F(CertificateAuthorityTest, LoadsAndIssuesWithoutTheRootKey) {
  auto made = CertificateAuthority::Init(dir_, "cluster.local");
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_EQ(::unlink((dir_ + "/root.key").c_str()), 0);  // kept offline, as for a shared CA Secret
  auto loaded = CertificateAuthority::Load(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->root_pem(), (*made)->root_pem());
  auto svid = (*loaded)->Issue(Id("spiffe://cluster.local/ns/default/sa/web"), {});
  ASSERT_TRUE(svid.ok()) << svid.status();
  EXPECT_NE(svid->chain_pem.find((*made)->intermediate_pem()), std::string::npos);
  // The intermediate key stays required: without it nothing can be issued.
  ASSERT_EQ(::unlink((dir_ + "/intermediate.key").c_str()), 0);
  EXPECT_FALSE(CertificateAuthority::Load(dir_).ok());
}

TEST_F(CertificateAuthorityTest, CorruptOrMismatchedFilesAreClearErrors) {
  ASSERT_TRUE(CertificateAuthority::Init(dir_, "cluster.local").ok());
  const std::string good_cert = meshtls::testing::ReadFile(dir_ + "/intermediate.crt");
  const std::string good_key = meshtls::testing::ReadFile(dir_ + "/intermediate.key");

  Write(dir_ + "/intermediate.crt", good_cert.substr(0, good_cert.size() / 2));
  auto truncated = CertificateAuthority::Load(dir_);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(std::string(truncated.status().message()).find("intermediate.crt"), std::string::npos)
      << truncated.status();
  Write(dir_ + "/intermediate.crt", good_cert);

  Write(dir_ + "/intermediate.key", meshtls::testing::ReadFile(dir_ + "/root.key"));
  auto swapped = CertificateAuthority::Load(dir_);
  ASSERT_FALSE(swapped.ok());
  EXPECT_NE(std::string(swapped.status().message()).find("does not match"), std::string::npos)
      << swapped.status();
  Write(dir_ + "/intermediate.key", good_key);

  ::chmod((dir_ + "/root.key").c_str(), 0644);
  auto readable = CertificateAuthority::Load(dir_);
  EXPECT_EQ(readable.status().code(), absl::StatusCode::kPermissionDenied) << readable.status();
  ::chmod((dir_ + "/root.key").c_str(), 0600);

  fs::remove(dir_ + "/root.crt");
  auto missing = CertificateAuthority::Load(dir_);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("root.crt"), std::string::npos);
  // And the broken CA was left as it was: nothing regenerated.
  EXPECT_FALSE(fs::exists(dir_ + "/root.crt"));
}

TEST_F(CertificateAuthorityTest, IssuedSvidHasTheRightShapeAndVerifies) {
  auto ca = *CertificateAuthority::Init(dir_, "cluster.local");
  const auto before = std::chrono::system_clock::now();
  auto svid = ca->Issue(Id("spiffe://cluster.local/ns/default/sa/web"), IssueOptions{});
  ASSERT_TRUE(svid.ok()) << svid.status();
  EXPECT_EQ(svid->serial_hex.size(), 32u);  // 128 random bits
  EXPECT_LE(svid->not_before, before - 4min);
  EXPECT_NEAR(std::chrono::duration<double>(svid->not_after - before).count(), 24 * 3600, 5);

  auto summary = SummarizeCertificates(svid->chain_pem);
  ASSERT_TRUE(summary.ok());
  ASSERT_EQ(summary->size(), 2u);  // leaf + intermediate
  EXPECT_EQ((*summary)[0].uri_sans, std::vector<std::string>{"spiffe://cluster.local/ns/default/sa/web"});
  EXPECT_FALSE((*summary)[0].is_ca);
  EXPECT_TRUE((*summary)[1].is_ca);

  BIO* bio = BIO_new_mem_buf(svid->chain_pem.data(), static_cast<int>(svid->chain_pem.size()));
  X509* leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  X509* intermediate = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  EXPECT_EQ(X509_get_key_usage(leaf), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(leaf), static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(X509_get_ext_by_NID(leaf, NID_subject_key_identifier, -1) >= 0, true);
  EXPECT_EQ(X509_get_ext_by_NID(leaf, NID_authority_key_identifier, -1) >= 0, true);
  EXPECT_EQ(EVP_PKEY_get_base_id(X509_get0_pubkey(leaf)), EVP_PKEY_EC);

  // OpenSSL's own verifier, as a server verifying a client and the other way round.
  X509_STORE* store = X509_STORE_new();
  BIO* root_bio = BIO_new_mem_buf(ca->root_pem().data(), static_cast<int>(ca->root_pem().size()));
  X509* root = PEM_read_bio_X509(root_bio, nullptr, nullptr, nullptr);
  BIO_free(root_bio);
  X509_STORE_add_cert(store, root);
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  sk_X509_push(untrusted, intermediate);
  for (int purpose : {X509_PURPOSE_SSL_CLIENT, X509_PURPOSE_SSL_SERVER}) {
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, leaf, untrusted);
    X509_STORE_CTX_set_purpose(ctx, purpose);
    EXPECT_EQ(X509_verify_cert(ctx), 1) << X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    X509_STORE_CTX_free(ctx);
  }
  sk_X509_free(untrusted);
  X509_STORE_free(store);
  X509_free(root);
  X509_free(leaf);
  X509_free(intermediate);
  // Keys stay in memory: nothing about the SVID was written next to the CA.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 5);
}

TEST_F(CertificateAuthorityTest, OpenSslCliVerifiesAndNameConstraintsHold) {
  auto ca = *CertificateAuthority::Init(dir_, "cluster.local");
  auto svid = *ca->Issue(Id("spiffe://cluster.local/ns/default/sa/web"), IssueOptions{});
  Write(base_ + "/leaf.crt", svid.chain_pem.substr(0, svid.chain_pem.find("-----END CERTIFICATE-----") + 26));
  std::string out;
  EXPECT_EQ(Run("openssl verify -purpose sslclient -CAfile " + dir_ + "/root.crt -untrusted " + dir_ +
                    "/intermediate.crt " + base_ + "/leaf.crt",
                &out), 0) << out;
  EXPECT_NE(out.find(": OK"), std::string::npos) << out;

  // A leaf for another trust domain, signed with the intermediate's key by hand (the CA's Issue
  // refuses): the name constraints make every verifier reject it.
  Write(base_ + "/evil.cnf", "[x]\nsubjectAltName=URI:spiffe://evil.org/ns/a/sa/b\n");
  ASSERT_EQ(Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + base_ +
                "/evil.key -subj /O=evil -out " + base_ + "/evil.csr && openssl x509 -req -in " + base_ +
                "/evil.csr -CA " + dir_ + "/intermediate.crt -CAkey " + dir_ +
                "/intermediate.key -CAcreateserial -days 1 -extfile " + base_ + "/evil.cnf -extensions x -out " +
                base_ + "/evil.crt", &out), 0) << out;
  EXPECT_NE(Run("openssl verify -CAfile " + dir_ + "/root.crt -untrusted " + dir_ + "/intermediate.crt " +
                    base_ + "/evil.crt", &out), 0);
  EXPECT_NE(out.find("permitted subtree violation"), std::string::npos) << out;
}

TEST_F(CertificateAuthorityTest, RefusesToIssueOutsideItsTrustDomain) {
  auto ca = *CertificateAuthority::Init(dir_, "cluster.local");
  auto svid = ca->Issue(Id("spiffe://example.org/ns/default/sa/web"), IssueOptions{});
  EXPECT_EQ(svid.status().code(), absl::StatusCode::kPermissionDenied) << svid.status();
  IssueOptions zero;
  zero.ttl = 0s;
  EXPECT_EQ(ca->Issue(Id("spiffe://cluster.local/ns/a/sa/b"), zero).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CertificateAuthorityTest, TwoSvidsFromTheCaCompleteAMutualHandshake) {
  auto ca = *CertificateAuthority::Init(dir_, "cluster.local");
  auto make = [&](const std::string& sa) {
    auto svid = *ca->Issue(Id("spiffe://cluster.local/ns/default/sa/" + sa), IssueOptions{});
    return meshtls::testing::SvidContext(svid, ca->TrustBundlePem());
  };
  meshtls::testing::LoopThread loop;
  tls::SessionOptions client;
  client.expected_peer = Id("spiffe://cluster.local/ns/default/sa/api");
  auto out = meshtls::testing::Handshake(loop, make("web"), make("api"), client, tls::SessionOptions{});
  ASSERT_TRUE(out.client->handshake_done()) << out.client->failure_detail();
  EXPECT_EQ(out.server->peer_id()->ToString(), "spiffe://cluster.local/ns/default/sa/web");
}

}  // namespace
}  // namespace meshtls::identity
