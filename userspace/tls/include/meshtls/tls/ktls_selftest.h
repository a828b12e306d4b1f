#pragma once

// The start-up self-test of kernel TLS on the running kernel. The probe (ProbeKtls) only proves
// that the kernel takes the keys; this proves that what it puts on the wire is right: for each
// cipher, a real TLS 1.3 session over loopback between two OpenSSL ends, one of which then moves
// into kTLS with the keys meshtls derives (the data path's own DeriveKtlsKeys + InstallKtls).
//  - the kTLS end sends a random marker; a raw (MSG_PEEK) read of the receiver's socket must show
//    an application_data record and never the marker; the OpenSSL end must decrypt the marker;
//  - the OpenSSL end sends a marker; the kTLS end must read it back as application data.
// Where the kernel can rekey, the same session then changes keys both ways (KeyUpdate) and the
// markers cross again. Any failure disables kTLS for that cipher (or rekeying), with the
// reason: no kernel is trusted blind (one wrong combination, 6.12 with sk_msg, sends plaintext).

#include <string>
#include <vector>

#include "meshtls/tls/ktls.h"

namespace meshtls::tls {

struct KtlsSelfTestOptions {
  // Test hook: install a wrong transmit key on the kTLS end, as a broken kernel path would
  // behave. The agent sets it from MESHTLS_KTLS_SELFTEST_FAULT=wrong_tx_key (tests only).
  bool corrupt_tx_key = false;
  // Test hook: install a wrong key after the kTLS end's KeyUpdate (rekey stage only).
  // MESHTLS_KTLS_SELFTEST_FAULT=wrong_rekey.
  bool corrupt_rekey = false;
};

struct KtlsCipherSelfTest {
  KtlsCipher cipher = KtlsCipher::kAes128Gcm;
  bool passed = false;
  std::string detail;  // what was proven, or why it failed
  // Where the probe found rekeying: KeyUpdate both ways on the same session (the kTLS end sends
  // one and installs its next key; it follows OpenSSL's update_requested and answers it), with
  // the same wire check after each change.
  bool rekey_tested = false;
  bool rekey_passed = false;
  std::string rekey_detail;
};

struct KtlsSelfTestResult {
  std::vector<KtlsCipherSelfTest> ciphers;  // only the ciphers the probe found
  bool Passed(KtlsCipher cipher) const;
  bool any_passed() const;
  // Every cipher that passed also passed the rekey stage: KeyUpdate may be used with kTLS.
  bool RekeyPassed() const;
  std::string Summary() const;  // one line for logs and the status API
};

// Runs the test for every cipher `support` says the kernel accepts. Takes a few milliseconds per
// cipher (one ECDSA handshake over loopback); blocking, for start-up only.
KtlsSelfTestResult RunKtlsSelfTest(const KtlsSupport& support, const KtlsSelfTestOptions& options = {});

}  // namespace meshtls::tls
