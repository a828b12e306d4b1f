#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/identity/spiffe_id.h"

namespace meshtls::identity {

// An X.509 SVID: the certificate chain to present (leaf first, then the intermediate) and the
// private key, both PEM. The key lives in memory only; nothing here writes it to disk.
struct Svid {
  SpiffeId id;
  std::string chain_pem;
  std::string private_key_pem;
  std::string serial_hex;
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
};

struct IssueOptions {
  std::chrono::seconds ttl = std::chrono::hours(24);
  // Issued certificates start this far in the past, so a peer whose clock is a little behind
  // does not reject them as not yet valid.
  std::chrono::seconds backdate = std::chrono::minutes(5);
};

// Where SVIDs come from: the embedded CA today, SPIRE or istiod later.
class CertificateProvider {
 public:
  virtual ~CertificateProvider() = default;
  virtual absl::StatusOr<Svid> Issue(const SpiffeId& id, const IssueOptions& options) = 0;
  // The roots peers must chain to (PEM, one or more).
  virtual std::string TrustBundlePem() const = 0;
  virtual const std::string& trust_domain() const = 0;
};

// The embedded CA: an ECDSA P-256 root (10 years) and intermediate (1 year), both name-constrained
// to the trust domain's SPIFFE IDs. On disk it is a directory holding root.crt, root.key,
// intermediate.crt, intermediate.key (keys 0600) and trust-domain, created as a whole with one
// atomic rename so that a crash can never leave half a CA.
class CertificateAuthority final : public CertificateProvider {
 public:
  // Creates a new CA in `dir`, which must not exist or be empty.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Init(const std::string& dir,
                                                                    const std::string& trust_domain);
  // Loads and checks an existing CA (from a state dir or a mounted Kubernetes Secret). A missing,
  // corrupt or mismatched file is an error naming the file; nothing is ever regenerated here.
  // root.key may be absent (it only signs the intermediate, at Init): a CA shared by many nodes
  // should leave it offline.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Load(const std::string& dir);
  // Load when `dir` holds a CA, Init when it does not exist (or is empty).
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> LoadOrInit(
      const std::string& dir, const std::string& trust_domain);

  ~CertificateAuthority() override;

  absl::StatusOr<Svid> Issue(const SpiffeId& id, const IssueOptions& options) override;
  std::string TrustBundlePem() const override;
  const std::string& trust_domain() const override { return trust_domain_; }
  const std::string& root_pem() const { return root_pem_; }
  const std::string& intermediate_pem() const { return intermediate_pem_; }

  struct Keys;

 private:
  CertificateAuthority(std::string trust_domain, std::unique_ptr<Keys> keys);

  std::string trust_domain_;
  std::unique_ptr<Keys> keys_;
  std::string root_pem_;
  std::string intermediate_pem_;
};

// What `meshtlsctl ca inspect` prints for each certificate of a PEM file.
struct CertificateSummary {
  std::string subject;
  std::string issuer;
  std::vector<std::string> uri_sans;
  std::string serial_hex;
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
  bool is_ca = false;
};
absl::StatusOr<std::vector<CertificateSummary>> SummarizeCertificates(const std::string& pem);

}  // namespace meshtls::identity
