#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/tls/session.h"

namespace meshtls::tls {

// TLS record content types (RFC 8446 §5.1).
inline constexpr uint8_t kRecordAlert = 21;
inline constexpr uint8_t kRecordHandshake = 22;
inline constexpr uint8_t kRecordApplicationData = 23;

enum class KtlsCipher { kAes128Gcm, kAes256Gcm, kChacha20Poly1305 };
std::string_view KtlsCipherName(KtlsCipher cipher);

struct KtlsSupport {
  bool available = false;  // TLS_TX + TLS_RX accepted for at least AES-128-GCM
  bool aes128gcm = false;
  bool aes256gcm = false;
  bool chacha20poly1305 = false;
  std::string detail;  // why not, or what was proven
  // A second TLS_TX and TLS_RX on the same socket were accepted: the kernel can rekey (needed to
  // follow TLS 1.3 KeyUpdate in kTLS). Debian's 6.1 and 6.12 answer EBUSY.
  bool rekey = false;
  std::string rekey_detail;
  bool Supports(KtlsCipher cipher) const;
};

// Probes the running kernel: reads tcp_available_ulp, then really installs TLS_TX and TLS_RX for
// each cipher on a connected loopback socket pair (loading tls.ko if the kernel can).
KtlsSupport ProbeKtls();

// One direction's record protection, derived from a TLS 1.3 traffic secret.
struct KtlsKeys {
  KtlsCipher cipher = KtlsCipher::kAes128Gcm;
  std::vector<uint8_t> key;
  std::vector<uint8_t> iv;  // the 12-byte static IV (RFC 8446 §5.3)
  KtlsKeys() = default;
  KtlsKeys(const KtlsKeys&) = delete;
  KtlsKeys& operator=(const KtlsKeys&) = delete;
  KtlsKeys(KtlsKeys&&) = default;
  KtlsKeys& operator=(KtlsKeys&&) = default;
  ~KtlsKeys() {
    Wipe(key);
    Wipe(iv);
  }
};

absl::StatusOr<KtlsCipher> KtlsCipherFromIana(uint16_t iana_id);

// HKDF-Expand-Label(secret, "key"/"iv", "", len) with the cipher suite's hash (RFC 8446 §7.3).
absl::StatusOr<KtlsKeys> DeriveKtlsKeys(KtlsCipher cipher, std::span<const uint8_t> traffic_secret);

// Attaches the TLS ULP and installs TX and RX keys with the given starting record sequence numbers.
absl::Status InstallKtls(int fd, const KtlsKeys& tx, uint64_t tx_sequence, const KtlsKeys& rx,
                         uint64_t rx_sequence);

// Moves a finished session's record layer into the kernel: refuses if OpenSSL holds received
// bytes, derives both directions' keys from the captured secrets, installs them and frees the
// OpenSSL state. The traffic secrets go back to the session: the splice relay takes them where
// the kernel can rekey (KeyUpdate) and wipes them at once where it cannot.
absl::Status SwitchToKtls(TlsSession& session);

// Receives from a kTLS socket, reporting the record type of what was read. Returns the byte
// count, 0 at EOF, or -1 with errno set.
ssize_t KtlsReceive(int fd, void* buffer, size_t length, uint8_t* record_type);
// Sends one record of the given type (e.g. an alert) on a kTLS socket. -1 with errno on failure.
ssize_t KtlsSendRecord(int fd, uint8_t record_type, std::span<const uint8_t> payload);
// Sends close_notify (alert level warning(1), description close_notify(0)).
ssize_t KtlsSendCloseNotify(int fd);

// TLS 1.3 KeyUpdate through kTLS (kernels where KtlsSupport::rekey holds).
//
// The next application traffic secret: HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
// (RFC 8446 §7.2).
absl::StatusOr<std::vector<uint8_t>> NextTrafficSecret(KtlsCipher cipher, std::span<const uint8_t> secret);
// Moves one direction of a kTLS socket that already has keys to the next generation: replaces
// `secret` with NextTrafficSecret(secret) (the old one wiped) and installs its keys, the record
// sequence restarting at 0. On the receiving side, reads fail with EKEYEXPIRED between the peer's
// KeyUpdate and this call.
absl::Status AdvanceKtlsKey(int fd, bool tx, KtlsCipher cipher, std::vector<uint8_t>& secret);
// Sends a KeyUpdate handshake message (RFC 8446 §4.6.3) under the current sending key. The
// caller installs the next sending key right after. -1 with errno on failure (EAGAIN: nothing sent).
ssize_t KtlsSendKeyUpdate(int fd, bool request_peer_update);
// A received handshake record that is a well-formed KeyUpdate: whether the peer asks for ours.
// Anything else is an error naming what was wrong.
absl::StatusOr<bool> ParseKeyUpdate(std::span<const uint8_t> record);

// The record sequence number the kernel will use next in direction TLS_TX or TLS_RX, i.e. the
// records protected so far under the current key (getsockopt(SOL_TLS) reports it).
absl::StatusOr<uint64_t> KtlsRecordSequence(int fd, KtlsCipher cipher, bool tx);

}  // namespace meshtls::tls
