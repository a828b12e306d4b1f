#include "meshtls/identity/certificate_authority.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "meshtls/common/openssl.h"
#include "meshtls/common/status.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/common/strings.h"

namespace meshtls::identity {
namespace {

using KeyPtr = EvpPkeyPtr;

constexpr auto kRootLifetime = std::chrono::hours(24 * 3650);
constexpr auto kIntermediateLifetime = std::chrono::hours(24 * 365);
constexpr char kRootCert[] = "root.crt";
constexpr char kRootKey[] = "root.key";
constexpr char kIntermediateCert[] = "intermediate.crt";
constexpr char kIntermediateKey[] = "intermediate.key";
constexpr char kTrustDomainFile[] = "trust-domain";

absl::StatusOr<KeyPtr> NewKey() {
  // P-256, by the name every OpenSSL 3 code path accepts (openssl_setup.h).
  KeyPtr key(EVP_EC_gen("prime256v1"));
  if (!key) return absl::InternalError(StrCat("P-256 key generation failed: ", DrainOpenSslErrors()));
  return key;
}

std::string ToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  std::string pem(data, static_cast<size_t>(len));
  OPENSSL_cleanse(data, static_cast<size_t>(len));
  return pem;
}

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) {
    return absl::InternalError(StrCat("extension ", OBJ_nid2sn(nid), "=", value, ": ", DrainOpenSslErrors()));
  }
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (ok != 1) return absl::InternalError(StrCat("X509_add_ext: ", DrainOpenSslErrors()));
  return absl::OkStatus();
}

absl::Status SetRandomSerial(X509* cert, std::string* serial_hex) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return absl::InternalError("RAND_bytes failed");
  bytes[0] &= 0x7f;  // positive, as DER INTEGER serials must be
  bytes[0] |= 0x01;  // and a full 128 bits long, never shortened by leading zeros
  std::unique_ptr<BIGNUM, OpenSslDeleter<BN_free>> bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return absl::InternalError("serial number encoding failed");
  }
  if (serial_hex != nullptr) {
    char* hex = BN_bn2hex(bn.get());
    *serial_hex = ToLower(hex);
    OPENSSL_free(hex);
  }
  return absl::OkStatus();
}

using Clock = std::chrono::system_clock;

absl::Status SetValidity(X509* cert, Clock::time_point from, Clock::time_point to) {
  if (ASN1_TIME_set(X509_getm_notBefore(cert), Clock::to_time_t(from)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert), Clock::to_time_t(to)) == nullptr) {
    return absl::InternalError("cannot set validity");
  }
  return absl::OkStatus();
}

struct CertSpec {
  std::string common_name;  // empty: no CN
  EVP_PKEY* subject_key;
  X509* issuer;             // nullptr: self-signed
  EVP_PKEY* issuer_key;
  Clock::time_point not_before;
  Clock::time_point not_after;
  std::vector<std::pair<int, std::string>> extensions;
};

absl::StatusOr<X509Ptr> MakeCertificate(const CertSpec& spec, std::string* serial_hex) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return absl::ResourceExhaustedError("X509_new failed");
  }
  RETURN_IF_ERROR(SetRandomSerial(cert.get(), serial_hex));
  RETURN_IF_ERROR(SetValidity(cert.get(), spec.not_before, spec.not_after));
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("meshtls"), -1, -1, 0);
  if (!spec.common_name.empty()) {
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0);
  }
  X509* issuer = spec.issuer ? spec.issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer)) != 1 ||
      X509_set_pubkey(cert.get(), spec.subject_key) != 1) {
    return absl::InternalError(StrCat("certificate fields: ", DrainOpenSslErrors()));
  }
  for (const auto& [nid, value] : spec.extensions) {
    RETURN_IF_ERROR(AddExtension(cert.get(), issuer, nid, value));
  }
  if (X509_sign(cert.get(), spec.issuer_key, EVP_sha256()) <= 0) {
    return absl::InternalError(StrCat("signing failed: ", DrainOpenSslErrors()));
  }
  return cert;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return ErrnoStatus(errno, StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes a file with the given mode and flushes it to disk.
absl::Status WriteDurably(const std::string& path, const std::string& data, mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return ErrnoStatus(errno, StrCat("create ", path));
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) return ErrnoStatus(errno, StrCat("write ", path));
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, StrCat("fsync ", path));
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, StrCat("open ", dir));
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, StrCat("fsync ", dir));
  return absl::OkStatus();
}

// 0: does not exist, 1: empty directory, 2: has entries; or an error.
absl::StatusOr<int> DirState(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return 0;
    return ErrnoStatus(errno, StrCat("open ", dir));
  }
  int state = 1;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) state = 2;
  }
  ::closedir(d);
  return state;
}

std::string Parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

absl::StatusOr<X509Ptr> ParseOneCert(const std::string& pem, const std::string& what) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return absl::InvalidArgumentError(StrCat(what, ": not a PEM certificate (", DrainOpenSslErrors(), ")"));
  return cert;
}

absl::StatusOr<KeyPtr> ParseKey(const std::string& pem, const std::string& what) {
  absl::StatusOr<KeyPtr> key = ParsePemPrivateKey(pem);  // also adapts it (openssl_setup.h)
  if (!key.ok()) return absl::InvalidArgumentError(StrCat(what, ": not a PEM private key (", key.status().message(), ")"));
  return key;
}

bool IsCa(X509* cert) { return X509_check_ca(cert) >= 1; }

Clock::time_point ToTimePoint(const ASN1_TIME* t) {
  struct tm parsed {};
  ASN1_TIME_to_tm(t, &parsed);
  return Clock::from_time_t(timegm(&parsed));
}

}  // namespace

struct CertificateAuthority::Keys {
  X509Ptr root;
  KeyPtr root_key;
  X509Ptr intermediate;
  KeyPtr intermediate_key;
};

CertificateAuthority::CertificateAuthority(std::string trust_domain, std::unique_ptr<Keys> keys)
    : trust_domain_(std::move(trust_domain)), keys_(std::move(keys)) {
  root_pem_ = ToPem(keys_->root.get());
  intermediate_pem_ = ToPem(keys_->intermediate.get());
}

CertificateAuthority::~CertificateAuthority() = default;

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Init(
    const std::string& dir, const std::string& trust_domain) {
  ASSIGN_OR_RETURN(SpiffeId td_id, SpiffeId::Parse(StrCat("spiffe://", trust_domain)));
  ASSIGN_OR_RETURN(int state, DirState(dir));
  if (state == 2) {
    return absl::AlreadyExistsError(
        StrCat("'", dir, "' is not empty: refusing to create a CA over existing files (an existing CA is loaded as it is; remove the directory to start over)"));
  }
  auto keys = std::make_unique<Keys>();
  ASSIGN_OR_RETURN(keys->root_key, NewKey());
  ASSIGN_OR_RETURN(keys->intermediate_key, NewKey());
  const auto now = Clock::now();
  const std::string constraint = StrCat("critical,permitted;URI:", td_id.trust_domain());
  CertSpec root{StrCat("meshtls root CA ", td_id.trust_domain()), keys->root_key.get(), nullptr,
                keys->root_key.get(), now - std::chrono::minutes(5), now + kRootLifetime,
                {{NID_basic_constraints, "critical,CA:TRUE,pathlen:1"},
                 {NID_key_usage, "critical,keyCertSign,cRLSign"},
                 {NID_subject_key_identifier, "hash"},
                 {NID_name_constraints, constraint}}};
  ASSIGN_OR_RETURN(keys->root, MakeCertificate(root, nullptr));
  CertSpec intermediate{StrCat("meshtls intermediate CA ", td_id.trust_domain()),
                        keys->intermediate_key.get(), keys->root.get(), keys->root_key.get(),
                        now - std::chrono::minutes(5), now + kIntermediateLifetime,
                        {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                         {NID_key_usage, "critical,keyCertSign,cRLSign"},
                         {NID_subject_key_identifier, "hash"},
                         {NID_authority_key_identifier, "keyid:always"},
                         {NID_name_constraints, constraint}}};
  ASSIGN_OR_RETURN(keys->intermediate, MakeCertificate(intermediate, nullptr));

  // Everything goes into a sibling temporary directory first, then one rename publishes it.
  std::error_code ec;
  std::filesystem::create_directories(Parent(dir), ec);
  if (ec) return absl::PermissionDeniedError(StrCat("cannot create ", Parent(dir), ": ", ec.message()));
  std::string tmp_template = StrCat(dir, ".tmp-XXXXXX");
  if (::mkdtemp(tmp_template.data()) == nullptr) return ErrnoStatus(errno, StrCat("mkdtemp beside ", dir));
  const std::string tmp = tmp_template;
  auto write_all = [&]() -> absl::Status {
    RETURN_IF_ERROR(WriteDurably(tmp + "/" + kRootCert, ToPem(keys->root.get()), 0644));
    RETURN_IF_ERROR(WriteDurably(tmp + "/" + kRootKey, KeyToPem(keys->root_key.get()), 0600));
    RETURN_IF_ERROR(WriteDurably(tmp + "/" + kIntermediateCert, ToPem(keys->intermediate.get()), 0644));
    RETURN_IF_ERROR(WriteDurably(tmp + "/" + kIntermediateKey, KeyToPem(keys->intermediate_key.get()), 0600));
    RETURN_IF_ERROR(WriteDurably(tmp + "/" + kTrustDomainFile, td_id.trust_domain() + "\n", 0644));
    RETURN_IF_ERROR(FsyncDir(tmp));
    if (::chmod(tmp.c_str(), 0700) != 0) return ErrnoStatus(errno, "chmod");
    if (::rename(tmp.c_str(), dir.c_str()) != 0) return ErrnoStatus(errno, StrCat("rename to ", dir));
    return FsyncDir(Parent(dir));
  };
  if (absl::Status st = write_all(); !st.ok()) {
    for (const char* f : {kRootCert, kRootKey, kIntermediateCert, kIntermediateKey, kTrustDomainFile}) {
      ::unlink((tmp + "/" + f).c_str());
    }
    ::rmdir(tmp.c_str());
    return st;
  }
  return std::unique_ptr<CertificateAuthority>(
      new CertificateAuthority(td_id.trust_domain(), std::move(keys)));
}

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Load(const std::string& dir) {
  auto path = [&](const char* f) { return StrCat(dir, "/", f); };
  ASSIGN_OR_RETURN(std::string td_text, ReadFile(path(kTrustDomainFile)));
  while (!td_text.empty() && (td_text.back() == '\n' || td_text.back() == ' ')) td_text.pop_back();
  absl::StatusOr<SpiffeId> td_id = SpiffeId::Parse(StrCat("spiffe://", td_text));
  if (!td_id.ok()) return absl::InvalidArgumentError(StrCat(path(kTrustDomainFile), ": ", td_id.status().message()));
  auto keys = std::make_unique<Keys>();
  ASSIGN_OR_RETURN(std::string root_pem, ReadFile(path(kRootCert)));
  ASSIGN_OR_RETURN(keys->root, ParseOneCert(root_pem, path(kRootCert)));
  ASSIGN_OR_RETURN(std::string intermediate_pem, ReadFile(path(kIntermediateCert)));
  ASSIGN_OR_RETURN(keys->intermediate, ParseOneCert(intermediate_pem, path(kIntermediateCert)));
  for (const char* f : {kRootKey, kIntermediateKey}) {
    struct stat st {};
    if (::stat(path(f).c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
      return absl::PermissionDeniedError(
          StrCat(path(f), " is readable by group or others (mode ", fmt::format("{:o}", st.st_mode & 0777),
                 "): chmod 600 it"));
    }
  }
  // The root key only ever signs the intermediate (at `ca init`), so a CA shared with many nodes
  // can leave it out: a compromised node then exposes the intermediate, not the root.
  struct stat root_key_stat {};
  const bool has_root_key = ::stat(path(kRootKey).c_str(), &root_key_stat) == 0;
  if (has_root_key) {
    ASSIGN_OR_RETURN(std::string root_key_pem, ReadFile(path(kRootKey)));
    ASSIGN_OR_RETURN(keys->root_key, ParseKey(root_key_pem, path(kRootKey)));
    OPENSSL_cleanse(root_key_pem.data(), root_key_pem.size());
  }
  ASSIGN_OR_RETURN(std::string intermediate_key_pem, ReadFile(path(kIntermediateKey)));
  ASSIGN_OR_RETURN(keys->intermediate_key, ParseKey(intermediate_key_pem, path(kIntermediateKey)));
  OPENSSL_cleanse(intermediate_key_pem.data(), intermediate_key_pem.size());

  if (has_root_key && X509_check_private_key(keys->root.get(), keys->root_key.get()) != 1) {
    return absl::InvalidArgumentError(StrCat(path(kRootKey), " does not match ", path(kRootCert)));
  }
  if (X509_check_private_key(keys->intermediate.get(), keys->intermediate_key.get()) != 1) {
    return absl::InvalidArgumentError(StrCat(path(kIntermediateKey), " does not match ", path(kIntermediateCert)));
  }
  ERR_clear_error();
  if (!IsCa(keys->root.get()) || !IsCa(keys->intermediate.get())) {
    return absl::InvalidArgumentError(StrCat("the certificates in ", dir, " are not CA certificates"));
  }
  EVP_PKEY* root_pub = X509_get0_pubkey(keys->root.get());
  if (X509_verify(keys->intermediate.get(), root_pub) != 1) {
    return absl::InvalidArgumentError(StrCat(path(kIntermediateCert), " is not signed by ", path(kRootCert)));
  }
  if (X509_verify(keys->root.get(), root_pub) != 1) {
    return absl::InvalidArgumentError(StrCat(path(kRootCert), " is not self-signed"));
  }
  const auto now = Clock::now();
  if (ToTimePoint(X509_get0_notAfter(keys->intermediate.get())) <= now) {
    return absl::FailedPreconditionError(StrCat(path(kIntermediateCert), " has expired: rotate the CA"));
  }
  ERR_clear_error();
  return std::unique_ptr<CertificateAuthority>(new CertificateAuthority(td_id->trust_domain(), std::move(keys)));
}

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::LoadOrInit(
    const std::string& dir, const std::string& trust_domain) {
  ASSIGN_OR_RETURN(int state, DirState(dir));
  if (state == 2) {
    ASSIGN_OR_RETURN(auto ca, Load(dir));
    if (ca->trust_domain() != trust_domain) {
      return absl::FailedPreconditionError(StrCat("the CA in ", dir, " is for trust domain '",
                                                  ca->trust_domain(), "', not '", trust_domain, "'"));
    }
    return ca;
  }
  return Init(dir, trust_domain);
}

absl::StatusOr<Svid> CertificateAuthority::Issue(const SpiffeId& id, const IssueOptions& options) {
  if (id.trust_domain() != trust_domain_) {
    return absl::PermissionDeniedError(StrCat("this CA signs only trust domain '", trust_domain_,
                                              "', not ", id.ToString()));
  }
  if (options.ttl <= std::chrono::seconds(0)) return absl::InvalidArgumentError("TTL must be positive");
  ASSIGN_OR_RETURN(KeyPtr key, NewKey());
  const auto now = Clock::now();
  auto not_after = now + options.ttl;
  // Never outlive the issuer: a leaf past its intermediate would fail verification anyway.
  const auto issuer_end = ToTimePoint(X509_get0_notAfter(keys_->intermediate.get()));
  if (not_after > issuer_end) not_after = issuer_end;
  CertSpec leaf{"", key.get(), keys_->intermediate.get(), keys_->intermediate_key.get(),
                now - options.backdate, not_after,
                {{NID_basic_constraints, "critical,CA:FALSE"},
                 {NID_key_usage, "critical,digitalSignature"},
                 {NID_ext_key_usage, "serverAuth,clientAuth"},
                 {NID_subject_key_identifier, "hash"},
                 {NID_authority_key_identifier, "keyid:always"},
                 {NID_subject_alt_name, StrCat("critical,URI:", id.ToString())}}};
  Svid svid{id, "", "", "", {}, {}};
  ASSIGN_OR_RETURN(X509Ptr cert, MakeCertificate(leaf, &svid.serial_hex));
  svid.chain_pem = ToPem(cert.get()) + intermediate_pem_;
  svid.private_key_pem = KeyToPem(key.get());
  svid.not_before = ToTimePoint(X509_get0_notBefore(cert.get()));
  svid.not_after = ToTimePoint(X509_get0_notAfter(cert.get()));
  return svid;
}

std::string CertificateAuthority::TrustBundlePem() const { return root_pem_; }

absl::StatusOr<std::vector<CertificateSummary>> SummarizeCertificates(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<CertificateSummary> out;
  while (X509* raw = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    X509Ptr cert(raw);
    CertificateSummary s;
    char buf[512];
    X509_NAME_oneline(X509_get_subject_name(raw), buf, sizeof(buf));
    s.subject = buf;
    X509_NAME_oneline(X509_get_issuer_name(raw), buf, sizeof(buf));
    s.issuer = buf;
    std::unique_ptr<BIGNUM, OpenSslDeleter<BN_free>> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(raw), nullptr));
    char* hex = BN_bn2hex(bn.get());
    s.serial_hex = ToLower(hex);
    OPENSSL_free(hex);
    s.not_before = ToTimePoint(X509_get0_notBefore(raw));
    s.not_after = ToTimePoint(X509_get0_notAfter(raw));
    s.is_ca = IsCa(raw);
    std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES_free>> names(
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(raw, NID_subject_alt_name, nullptr, nullptr)));
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
      if (n->type != GEN_URI) continue;
      s.uri_sans.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.uniformResourceIdentifier)),
                              static_cast<size_t>(ASN1_STRING_length(n->d.uniformResourceIdentifier)));
    }
    out.push_back(std::move(s));
  }
  ERR_clear_error();
  if (out.empty()) return absl::InvalidArgumentError("no PEM certificate found");
  return out;
}

}  // namespace meshtls::identity
