#include "meshtls/tls/ktls.h"

#include <arpa/inet.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/common/unique_fd.h"
#include "loopback_pair.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace meshtls::tls {
namespace {

struct CipherParams {
  const char* digest;
  size_t key_length;
};

CipherParams ParamsOf(KtlsCipher cipher) {
  switch (cipher) {
    case KtlsCipher::kAes128Gcm: return {"SHA256", 16};
    case KtlsCipher::kAes256Gcm: return {"SHA384", 32};
    case KtlsCipher::kChacha20Poly1305: return {"SHA256", 32};
  }
  return {"SHA256", 16};
}

absl::StatusOr<std::vector<uint8_t>> ExpandLabel(const char* digest, std::span<const uint8_t> secret,
                                                 const char* label, size_t length) {
  // OpenSSL's own TLS 1.3 KDF (the one libssl uses), so the label encoding is not re-implemented.
  // Fetched once: a provider lookup per derived key would run four times per kTLS connection.
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_TLS1_3_KDF, nullptr);
  if (kdf == nullptr) return absl::InternalError(StrCat("TLS13-KDF unavailable: ", DrainOpenSslErrors()));
  std::unique_ptr<EVP_KDF_CTX, OpenSslDeleter<EVP_KDF_CTX_free>> ctx(EVP_KDF_CTX_new(kdf));
  if (!ctx) return absl::ResourceExhaustedError("EVP_KDF_CTX_new failed");
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static const char kPrefix[] = "tls13 ";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                        const_cast<uint8_t*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, const_cast<char*>(kPrefix),
                                        sizeof(kPrefix) - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label),
                                        std::strlen(label)),
      OSSL_PARAM_construct_end(),
  };
  std::vector<uint8_t> out(length);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return absl::InternalError(StrCat("HKDF-Expand-Label: ", DrainOpenSslErrors()));
  }
  return out;
}

void PutSequence(unsigned char* out, uint64_t sequence) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<unsigned char>(sequence & 0xff);
    sequence >>= 8;
  }
}

absl::Status SetCryptoInfo(int fd, int direction, const KtlsKeys& keys, uint64_t sequence) {
  const char* name = direction == TLS_TX ? "setsockopt(TLS_TX)" : "setsockopt(TLS_RX)";
  auto apply = [&](auto& info) -> absl::Status {
    const int rc = ::setsockopt(fd, SOL_TLS, direction, &info, sizeof(info));
    const int saved = errno;
    OPENSSL_cleanse(&info, sizeof(info));
    if (rc != 0) return ErrnoStatus(saved, StrCat(name, " ", KtlsCipherName(keys.cipher)));
    return absl::OkStatus();
  };
  switch (keys.cipher) {
    case KtlsCipher::kAes128Gcm: {
      tls12_crypto_info_aes_gcm_128 info{};
      info.info.version = TLS_1_3_VERSION;
      info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
      // The kernel splits the 12-byte IV into a 4-byte salt and an 8-byte explicit part.
      std::memcpy(info.salt, keys.iv.data(), TLS_CIPHER_AES_GCM_128_SALT_SIZE);
      std::memcpy(info.iv, keys.iv.data() + 4, TLS_CIPHER_AES_GCM_128_IV_SIZE);
      std::memcpy(info.key, keys.key.data(), TLS_CIPHER_AES_GCM_128_KEY_SIZE);
      PutSequence(info.rec_seq, sequence);
      return apply(info);
    }
    case KtlsCipher::kAes256Gcm: {
      tls12_crypto_info_aes_gcm_256 info{};
      info.info.version = TLS_1_3_VERSION;
      info.info.cipher_type = TLS_CIPHER_AES_GCM_256;
      std::memcpy(info.salt, keys.iv.data(), TLS_CIPHER_AES_GCM_256_SALT_SIZE);
      std::memcpy(info.iv, keys.iv.data() + 4, TLS_CIPHER_AES_GCM_256_IV_SIZE);
      std::memcpy(info.key, keys.key.data(), TLS_CIPHER_AES_GCM_256_KEY_SIZE);
      PutSequence(info.rec_seq, sequence);
      return apply(info);
    }
    case KtlsCipher::kChacha20Poly1305: {
      tls12_crypto_info_chacha20_poly1305 info{};
      info.info.version = TLS_1_3_VERSION;
      info.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
      std::memcpy(info.iv, keys.iv.data(), TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE);
      std::memcpy(info.key, keys.key.data(), TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE);
      PutSequence(info.rec_seq, sequence);
      return apply(info);
    }
  }
  return absl::InvalidArgumentError("unknown kTLS cipher");
}

absl::Status ProbeCipher(KtlsCipher cipher) {
  UniqueFd a, b;
  RETURN_IF_ERROR(internal::LoopbackPair(a, b));
  KtlsKeys keys;
  keys.cipher = cipher;
  keys.key.assign(ParamsOf(cipher).key_length, 0x42);
  keys.iv.assign(12, 0x24);
  return InstallKtls(a.get(), keys, 0, keys, 0);
}

// Installs AES-128-GCM keys, then tries to replace them in both directions.
absl::Status ProbeRekey() {
  UniqueFd a, b;
  RETURN_IF_ERROR(internal::LoopbackPair(a, b));
  KtlsKeys keys;
  keys.cipher = KtlsCipher::kAes128Gcm;
  keys.key.assign(ParamsOf(keys.cipher).key_length, 0x42);
  keys.iv.assign(12, 0x24);
  RETURN_IF_ERROR(InstallKtls(a.get(), keys, 0, keys, 0));
  keys.key.assign(ParamsOf(keys.cipher).key_length, 0x43);
  RETURN_IF_ERROR(SetCryptoInfo(a.get(), TLS_TX, keys, 0));
  return SetCryptoInfo(a.get(), TLS_RX, keys, 0);
}

}  // namespace

std::string_view KtlsCipherName(KtlsCipher cipher) {
  switch (cipher) {
    case KtlsCipher::kAes128Gcm: return "TLS_AES_128_GCM_SHA256";
    case KtlsCipher::kAes256Gcm: return "TLS_AES_256_GCM_SHA384";
    case KtlsCipher::kChacha20Poly1305: return "TLS_CHACHA20_POLY1305_SHA256";
  }
  return "unknown";
}

bool KtlsSupport::Supports(KtlsCipher cipher) const {
  switch (cipher) {
    case KtlsCipher::kAes128Gcm: return aes128gcm;
    case KtlsCipher::kAes256Gcm: return aes256gcm;
    case KtlsCipher::kChacha20Poly1305: return chacha20poly1305;
  }
  return false;
}

absl::StatusOr<KtlsCipher> KtlsCipherFromIana(uint16_t iana_id) {
  switch (iana_id) {
    case 0x1301: return KtlsCipher::kAes128Gcm;
    case 0x1302: return KtlsCipher::kAes256Gcm;
    case 0x1303: return KtlsCipher::kChacha20Poly1305;
    default:
      return absl::UnimplementedError(fmt::format("no kTLS support for cipher suite 0x{:04x}", iana_id));
  }
}

absl::StatusOr<KtlsKeys> DeriveKtlsKeys(KtlsCipher cipher, std::span<const uint8_t> traffic_secret) {
  if (traffic_secret.empty()) return absl::FailedPreconditionError("traffic secret is empty");
  const CipherParams params = ParamsOf(cipher);
  KtlsKeys keys;
  keys.cipher = cipher;
  ASSIGN_OR_RETURN(keys.key, ExpandLabel(params.digest, traffic_secret, "key", params.key_length));
  ASSIGN_OR_RETURN(keys.iv, ExpandLabel(params.digest, traffic_secret, "iv", 12));
  return keys;
}

absl::Status InstallKtls(int fd, const KtlsKeys& tx, uint64_t tx_sequence, const KtlsKeys& rx,
                         uint64_t rx_sequence) {
  if (::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    return ErrnoStatus(errno, "setsockopt(TCP_ULP, \"tls\")");
  }
  RETURN_IF_ERROR(SetCryptoInfo(fd, TLS_TX, tx, tx_sequence));
  return SetCryptoInfo(fd, TLS_RX, rx, rx_sequence);
}

absl::Status SwitchToKtls(TlsSession& session) {
  if (!session.handshake_done()) return absl::FailedPreconditionError("handshake not finished");
  if (session.HasBufferedInput()) {
    return absl::FailedPreconditionError(
        "OpenSSL holds received bytes the kernel would never see; refusing the kTLS switch");
  }
  ASSIGN_OR_RETURN(KtlsCipher cipher, KtlsCipherFromIana(session.cipher_iana_id()));
  TrafficSecrets secrets = session.TakeTrafficSecrets();
  if (secrets.client.empty() || secrets.server.empty()) {
    return absl::FailedPreconditionError("traffic secrets were not captured for this session");
  }
  const bool client = session.role() == Role::kClient;
  ASSIGN_OR_RETURN(KtlsKeys tx, DeriveKtlsKeys(cipher, client ? secrets.client : secrets.server));
  ASSIGN_OR_RETURN(KtlsKeys rx, DeriveKtlsKeys(cipher, client ? secrets.server : secrets.client));
  // No tickets and no post-handshake messages, so both directions start at record 0.
  RETURN_IF_ERROR(InstallKtls(session.fd(), tx, 0, rx, 0));
  session.DetachSsl();
  session.KeepTrafficSecrets(std::move(secrets));
  return absl::OkStatus();
}

KtlsSupport ProbeKtls() {
  KtlsSupport support;
  std::string ulps;
  {
    std::ifstream in("/proc/sys/net/ipv4/tcp_available_ulp");
    std::getline(in, ulps);
  }
  std::vector<std::string> notes;
  const struct {
    KtlsCipher cipher;
    bool* flag;
  } ciphers[] = {{KtlsCipher::kAes128Gcm, &support.aes128gcm},
                 {KtlsCipher::kAes256Gcm, &support.aes256gcm},
                 {KtlsCipher::kChacha20Poly1305, &support.chacha20poly1305}};
  for (const auto& c : ciphers) {
    absl::Status st = ProbeCipher(c.cipher);
    *c.flag = st.ok();
    if (!st.ok()) notes.push_back(StrCat(KtlsCipherName(c.cipher), ": ", st.message()));
  }
  support.available = support.aes128gcm;
  if (support.available) {
    absl::Status rekey = ProbeRekey();
    support.rekey = rekey.ok();
    support.rekey_detail = rekey.ok() ? "a second TLS_TX and TLS_RX were accepted"
                                      : StrCat("no kTLS rekeying: ", rekey.message());
  }
  if (support.available) {
    support.detail = StrCat("kernel TLS usable (tcp_available_ulp: '", ulps, "')");
    if (!notes.empty()) StrAppend(&support.detail, "; unavailable ciphers: ", Join(notes, "; "));
  } else {
    support.detail = StrCat(
        "kernel TLS unavailable: the running kernel ", ulps.find("tls") == std::string::npos
                                                           ? "lists no 'tls' TCP ULP (CONFIG_TLS off or tls.ko not loadable)"
                                                           : "lists the 'tls' ULP but refused the keys",
        "; tcp_available_ulp='", ulps, "'; ", Join(notes, "; "));
  }
  return support;
}

ssize_t KtlsReceive(int fd, void* buffer, size_t length, uint8_t* record_type) {
  char control[CMSG_SPACE(sizeof(uint8_t))];
  iovec iov{buffer, length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) return n;
  *record_type = kRecordApplicationData;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_TLS && cmsg->cmsg_type == TLS_GET_RECORD_TYPE) {
      *record_type = *CMSG_DATA(cmsg);
    }
  }
  return n;
}

ssize_t KtlsSendRecord(int fd, uint8_t record_type, std::span<const uint8_t> payload) {
  char control[CMSG_SPACE(sizeof(uint8_t))] = {};
  iovec iov{const_cast<uint8_t*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_TLS;
  cmsg->cmsg_type = TLS_SET_RECORD_TYPE;
  cmsg->cmsg_len = CMSG_LEN(sizeof(uint8_t));
  *CMSG_DATA(cmsg) = record_type;
  return ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

absl::StatusOr<uint64_t> KtlsRecordSequence(int fd, KtlsCipher cipher, bool tx) {
  auto read = [&](auto& info) -> absl::StatusOr<uint64_t> {
    socklen_t length = sizeof(info);
    const int rc = ::getsockopt(fd, SOL_TLS, tx ? TLS_TX : TLS_RX, &info, &length);
    const int saved = errno;
    uint64_t sequence = 0;
    for (unsigned char byte : info.rec_seq) sequence = (sequence << 8) | byte;
    OPENSSL_cleanse(&info, sizeof(info));  // it holds the key too
    if (rc != 0) return ErrnoStatus(saved, tx ? "getsockopt(TLS_TX)" : "getsockopt(TLS_RX)");
    return sequence;
  };
  switch (cipher) {
    case KtlsCipher::kAes128Gcm: {
      tls12_crypto_info_aes_gcm_128 info{};
      return read(info);
    }
    case KtlsCipher::kAes256Gcm: {
      tls12_crypto_info_aes_gcm_256 info{};
      return read(info);
    }
    case KtlsCipher::kChacha20Poly1305: {
      tls12_crypto_info_chacha20_poly1305 info{};
      return read(info);
    }
  }
  return absl::InvalidArgumentError("unknown kTLS cipher");
}

absl::StatusOr<std::vector<uint8_t>> NextTrafficSecret(KtlsCipher cipher, std::span<const uint8_t> secret) {
  if (secret.empty()) return absl::FailedPreconditionError("traffic secret is empty");
  return ExpandLabel(ParamsOf(cipher).digest, secret, "traffic upd", secret.size());
}

absl::Status AdvanceKtlsKey(int fd, bool tx, KtlsCipher cipher, std::vector<uint8_t>& secret) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> next, NextTrafficSecret(cipher, secret));
  Wipe(secret);
  secret = std::move(next);
  ASSIGN_OR_RETURN(KtlsKeys keys, DeriveKtlsKeys(cipher, secret));
  return SetCryptoInfo(fd, tx ? TLS_TX : TLS_RX, keys, 0);
}

ssize_t KtlsSendKeyUpdate(int fd, bool request_peer_update) {
  // msg_type key_update(24), a 3-byte length of 1, then KeyUpdateRequest.
  const uint8_t message[] = {24, 0, 0, 1, static_cast<uint8_t>(request_peer_update ? 1 : 0)};
  return KtlsSendRecord(fd, kRecordHandshake, message);
}

absl::StatusOr<bool> ParseKeyUpdate(std::span<const uint8_t> record) {
  if (record.empty() || record[0] != 24) {
    return absl::InvalidArgumentError(
        StrCat("post-handshake message type ", record.empty() ? -1 : static_cast<int>(record[0]), " is not a KeyUpdate"));
  }
  // The kernel hands over one record; a KeyUpdate that shares it with another message, or is
  // split over two, is legal TLS that no implementation sends, and is refused by name.
  if (record.size() != 5 || record[1] != 0 || record[2] != 0 || record[3] != 1) {
    return absl::InvalidArgumentError(StrCat("malformed KeyUpdate (", record.size(), " bytes in the record)"));
  }
  if (record[4] > 1) return absl::InvalidArgumentError(StrCat("KeyUpdate request value ", record[4], " is undefined"));
  return record[4] == 1;
}

ssize_t KtlsSendCloseNotify(int fd) {
  static constexpr uint8_t kCloseNotify[] = {1, 0};
  return KtlsSendRecord(fd, kRecordAlert, kCloseNotify);
}

namespace internal {

absl::Status LoopbackPair(UniqueFd& client, UniqueFd& server) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return ErrnoStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus(errno, "loopback listener");
  }
  client.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!client || ::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus(errno, "loopback connect");
  }
  server.reset(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!server) return ErrnoStatus(errno, "loopback accept");
  return absl::OkStatus();
}

}  // namespace internal

}  // namespace meshtls::tls
