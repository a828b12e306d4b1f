#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "meshtls/common/event_loop.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/tls/context.h"
#include "meshtls/common/openssl.h"
#include "meshtls/tls/session.h"

namespace meshtls::testing {

std::string ReadFile(const std::string& path);
// Compares `actual` with the golden file at `path`; MESHTLS_UPDATE_GOLDEN=1 (re)writes it instead.
void ExpectGolden(const std::string& path, const std::string& actual);
std::string CertPath(const std::string& file);

// TLS context options for identity NAME from tests/certs (NAME.crt + NAME.key), trusting `bundle`.
tls::TlsContextOptions Credentials(const std::string& name,
                                   const std::string& bundle = "bundle.crt",
                                   const std::string& trust_domain = "cluster.local");
// Test contexts export traffic secrets (kTLS tests need them) unless told otherwise.
std::shared_ptr<const tls::TlsContext> Context(const std::string& name,
                                               const std::string& bundle = "bundle.crt",
                                               bool export_traffic_secrets = true);

// A TLS context presenting `svid` and trusting `bundle_pem` (trust domain cluster.local).
std::shared_ptr<const tls::TlsContext> SvidContext(
    const identity::Svid& svid, const std::string& bundle_pem,
    std::shared_ptr<identity::DenyListHolder> deny_list = nullptr);

// A connected TCP pair over loopback (first: the connecting side, second: the accepted side).
std::pair<UniqueFd, UniqueFd> TcpPair();

// An EventLoop running on its own thread. Run() executes a task on it and waits.
class LoopThread {
 public:
  LoopThread();
  ~LoopThread();
  EventLoop& loop() { return *loop_; }
  void Run(const std::function<void()>& task);
  // CPU time the loop thread has used so far.
  double CpuSeconds();

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

struct HandshakeOutcome {
  std::unique_ptr<tls::TlsSession> client;
  std::unique_ptr<tls::TlsSession> server;
};

// Runs a client and a server handshake against each other on `loop` and waits for both ends.
HandshakeOutcome Handshake(LoopThread& loop, std::shared_ptr<const tls::TlsContext> client_ctx,
                           std::shared_ptr<const tls::TlsContext> server_ctx,
                           tls::SessionOptions client_options, tls::SessionOptions server_options);

// True if MESHTLS_REQUIRE_KTLS=1 (set by the VM harness): a missing kTLS is then a failure.
bool KtlsRequired();

}  // namespace meshtls::testing

namespace meshtls::testing {

// A plain OpenSSL peer (not our engine) for interop and for presenting certificates our engine
// would refuse to load: blocking I/O, meant to run on its own thread.
struct RawPeerOptions {
  std::string identity;          // NAME for NAME.crt/NAME.key; empty: no certificate
  std::string bundle = "bundle.crt";
  bool verify_peer = true;
  std::string alpn = "meshtls/1";  // empty: offer none
  int max_version = TLS1_3_VERSION;
  std::string cipher_suites;     // empty: OpenSSL's default TLS 1.3 list
  std::string groups;            // key-share groups, e.g. "P-256"; empty: OpenSSL's default
};
SslCtxPtr RawContext(const RawPeerOptions& options);
// Handshake on a blocking socket. Returns the SSL (nullptr on failure; `error` says why).
SslPtr RawHandshake(SSL_CTX* ctx, int fd, bool client, std::string* error = nullptr);

}  // namespace meshtls::testing

#include <future>

#include "meshtls/tls/relay.h"

namespace meshtls::testing {

// app_client <-> [client relay] <== TLS over loopback ==> [server relay] <-> app_server.
// The test drives the two app sockets (blocking); both relays run on the loop thread.
struct RelayPair {
  UniqueFd app_client;
  UniqueFd app_server;
  std::future<tls::RelayResult> client_result;
  std::future<tls::RelayResult> server_result;
  std::shared_ptr<tls::Relay> client_relay;
  std::shared_ptr<tls::Relay> server_relay;
};
RelayPair StartRelayPair(LoopThread& loop, tls::Datapath datapath);
// The same with each relay on its own loop thread (as two agents would be).
RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath);
// The same with given contexts; the client expects `server_id`.
RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id);
RelayPair StartRelayPair(LoopThread& loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id);
// With options for each relay (key lifetime, capabilities).
RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id,
                         const tls::RelayOptions& client_options, const tls::RelayOptions& server_options);

// Skips (loudly) when the kernel lacks kTLS, unless MESHTLS_REQUIRE_KTLS=1 makes that a failure.
// Returns false if the caller must return.
bool RequireDatapath(tls::Datapath datapath);
// kTLS rekeying (a second TLS_TX/TLS_RX): Debian's 6.1 and 6.12 lack it, 7.x has it. Skips loudly
// where the kernel lacks it, unless MESHTLS_REQUIRE_KTLS_REKEY=1 (the newest-kernel VM run) makes
// that a failure.
bool RequireKtlsRekey();
// Whether the running kernel can rekey kTLS (no skip, no failure).
bool KernelCanRekeyKtls();

}  // namespace meshtls::testing
