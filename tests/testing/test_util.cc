#include "testing/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <future>
#include <sstream>
#include <stdexcept>

#include "gtest/gtest.h"
#include "meshtls/tls/handshake_driver.h"

namespace meshtls::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void ExpectGolden(const std::string& path, const std::string& actual) {
  const char* update = std::getenv("MESHTLS_UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream(path, std::ios::binary) << actual;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << path << " is missing: run with MESHTLS_UPDATE_GOLDEN=1 to write it";
  std::stringstream expected;
  expected << in.rdbuf();
  EXPECT_EQ(expected.str(), actual) << "output differs from " << path
                                    << " (MESHTLS_UPDATE_GOLDEN=1 rewrites it); actual:\n"
                                    << actual;
}

std::string CertPath(const std::string& file) { return std::string(MESHTLS_TEST_CERTS_DIR) + "/" + file; }

tls::TlsContextOptions Credentials(const std::string& name, const std::string& bundle,
                                   const std::string& trust_domain) {
  tls::TlsContextOptions options;
  options.certificate_chain_pem = ReadFile(CertPath(name + ".crt"));
  options.private_key_pem = ReadFile(CertPath(name + ".key"));
  options.trust_bundle_pem = ReadFile(CertPath(bundle));
  options.trust_domain = trust_domain;
  options.export_traffic_secrets = true;
  return options;
}

std::shared_ptr<const tls::TlsContext> Context(const std::string& name, const std::string& bundle,
                                               bool export_traffic_secrets) {
  tls::TlsContextOptions options = Credentials(name, bundle);
  options.export_traffic_secrets = export_traffic_secrets;
  // Certificates whose own SAN is invalid or foreign still need a context to act as a bad peer.
  if (name == "foreign") options.trust_domain = "example.org";
  auto ctx = tls::TlsContext::Create(options);
  if (!ctx.ok()) {
    // Bad peers: build the context without the own-identity check by borrowing a good identity's
    // trust settings is not possible, so report clearly.
    throw std::runtime_error("context for " + name + ": " + std::string(ctx.status().message()));
  }
  return *ctx;
}

std::shared_ptr<const tls::TlsContext> SvidContext(const identity::Svid& svid,
                                                   const std::string& bundle_pem,
                                                   std::shared_ptr<identity::DenyListHolder> deny_list) {
  tls::TlsContextOptions options;
  options.certificate_chain_pem = svid.chain_pem;
  options.private_key_pem = svid.private_key_pem;
  options.trust_bundle_pem = bundle_pem;
  options.trust_domain = "cluster.local";
  options.deny_list = std::move(deny_list);
  auto ctx = tls::TlsContext::Create(options);
  if (!ctx.ok()) throw std::runtime_error("context for " + svid.id.ToString() + ": " + std::string(ctx.status().message()));
  return *ctx;
}

std::pair<UniqueFd, UniqueFd> TcpPair() {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error("loopback listener failed");
  }
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw std::runtime_error("loopback connect failed");
  }
  UniqueFd server(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!server) throw std::runtime_error("loopback accept failed");
  const int one = 1;
  ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(server.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return {std::move(client), std::move(server)};
}

LoopThread::LoopThread() {
  auto loop = EventLoop::Create();
  if (!loop.ok()) throw std::runtime_error(std::string(loop.status().message()));
  loop_ = *std::move(loop);
  thread_ = std::thread([this] { loop_->Run(); });
}

LoopThread::~LoopThread() {
  loop_->Stop();
  thread_.join();
}

void LoopThread::Run(const std::function<void()>& task) {
  std::promise<void> done;
  loop_->Post([&] {
    task();
    done.set_value();
  });
  done.get_future().wait();
}

HandshakeOutcome Handshake(LoopThread& loop, std::shared_ptr<const tls::TlsContext> client_ctx,
                           std::shared_ptr<const tls::TlsContext> server_ctx,
                           tls::SessionOptions client_options, tls::SessionOptions server_options) {
  auto [client_fd, server_fd] = TcpPair();
  client_options.role = tls::Role::kClient;
  server_options.role = tls::Role::kServer;
  auto client = tls::TlsSession::Create(client_ctx, std::move(client_fd), client_options);
  auto server = tls::TlsSession::Create(server_ctx, std::move(server_fd), server_options);
  if (!client.ok() || !server.ok()) throw std::runtime_error("TlsSession::Create failed");
  std::promise<std::unique_ptr<tls::TlsSession>> client_done, server_done;
  loop.Run([&] {
    tls::DriveHandshake(loop.loop(), *std::move(client),
                        [&](std::unique_ptr<tls::TlsSession> s) { client_done.set_value(std::move(s)); });
    tls::DriveHandshake(loop.loop(), *std::move(server),
                        [&](std::unique_ptr<tls::TlsSession> s) { server_done.set_value(std::move(s)); });
  });
  HandshakeOutcome outcome;
  outcome.client = client_done.get_future().get();
  outcome.server = server_done.get_future().get();
  return outcome;
}

double LoopThread::CpuSeconds() {
  double seconds = 0;
  Run([&] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    seconds = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  });
  return seconds;
}

bool KtlsRequired() {
  const char* v = std::getenv("MESHTLS_REQUIRE_KTLS");
  return v != nullptr && std::string(v) == "1";
}

}  // namespace meshtls::testing

namespace meshtls::testing {

SslCtxPtr RawContext(const RawPeerOptions& options) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_method()));
  SSL_CTX_set_max_proto_version(ctx.get(), options.max_version);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_security_level(ctx.get(), 0);  // it must be able to present weak keys
  if (!options.cipher_suites.empty()) SSL_CTX_set_ciphersuites(ctx.get(), options.cipher_suites.c_str());
  if (!options.groups.empty()) SSL_CTX_set1_groups_list(ctx.get(), options.groups.c_str());
  if (!options.identity.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), CertPath(options.identity + ".crt").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), CertPath(options.identity + ".key").c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      throw std::runtime_error("raw peer: cannot load " + options.identity + ": " +
                               DrainOpenSslErrors());
    }
  }
  SSL_CTX_load_verify_locations(ctx.get(), CertPath(options.bundle).c_str(), nullptr);
  SSL_CTX_set_verify(ctx.get(), options.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  if (!options.alpn.empty()) {
    std::string wire(1, static_cast<char>(options.alpn.size()));
    wire += options.alpn;
    SSL_CTX_set_alpn_protos(ctx.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()));
    SSL_CTX_set_alpn_select_cb(
        ctx.get(),
        [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
           unsigned int inlen, void*) {
          // Accept whatever the client offers first: this peer is not under test.
          if (inlen == 0) return SSL_TLSEXT_ERR_NOACK;
          *out = in + 1;
          *outlen = in[0];
          return SSL_TLSEXT_ERR_OK;
        },
        nullptr);
  }
  return ctx;
}

SslPtr RawHandshake(SSL_CTX* ctx, int fd, bool client, std::string* error) {
  SslPtr ssl(SSL_new(ctx));
  SSL_set_fd(ssl.get(), fd);
  const int rc = client ? SSL_connect(ssl.get()) : SSL_accept(ssl.get());
  if (rc != 1) {
    if (error) *error = DrainOpenSslErrors();
    return nullptr;
  }
  return ssl;
}

}  // namespace meshtls::testing

#include "meshtls/tls/ktls.h"

namespace meshtls::testing {

RelayPair StartRelayPair(LoopThread& loop, tls::Datapath datapath) {
  return StartRelayPair(loop, loop, datapath);
}

RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath) {
  return StartRelayPair(client_loop, server_loop, datapath, Context("client"), Context("server"),
                        *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server"));
}

RelayPair StartRelayPair(LoopThread& loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id) {
  return StartRelayPair(loop, loop, datapath, std::move(client_ctx), std::move(server_ctx), server_id);
}

RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id) {
  return StartRelayPair(client_loop, server_loop, datapath, std::move(client_ctx), std::move(server_ctx), server_id,
                        tls::RelayOptions{}, tls::RelayOptions{});
}

RelayPair StartRelayPair(LoopThread& client_loop, LoopThread& server_loop, tls::Datapath datapath,
                         std::shared_ptr<const tls::TlsContext> client_ctx,
                         std::shared_ptr<const tls::TlsContext> server_ctx, const SpiffeId& server_id,
                         const tls::RelayOptions& client_relay_options, const tls::RelayOptions& server_relay_options) {
  LoopThread& loop = client_loop;
  RelayPair pair;
  auto [app_client, client_plain] = TcpPair();
  auto [server_plain, app_server] = TcpPair();
  pair.app_client = std::move(app_client);
  pair.app_server = std::move(app_server);
  tls::SessionOptions client_options;
  client_options.expected_peer = server_id;
  tls::SessionOptions server_options;
  client_options.capture_traffic_secrets = server_options.capture_traffic_secrets =
      datapath == tls::Datapath::kKtlsSplice;
  HandshakeOutcome hs = Handshake(loop, std::move(client_ctx), std::move(server_ctx), client_options,
                                  server_options);
  if (!hs.client->handshake_done() || !hs.server->handshake_done()) {
    throw std::runtime_error("relay pair handshake failed: " + hs.client->failure_detail() +
                             " / " + hs.server->failure_detail());
  }
  auto client_promise = std::make_shared<std::promise<tls::RelayResult>>();
  auto server_promise = std::make_shared<std::promise<tls::RelayResult>>();
  pair.client_result = client_promise->get_future();
  pair.server_result = server_promise->get_future();
  std::string error;
  client_loop.Run([&] {
    auto c = tls::Relay::Start(client_loop.loop(), std::move(client_plain), std::move(hs.client),
                               datapath, client_relay_options,
                               [client_promise](const tls::RelayResult& r) { client_promise->set_value(r); });
    if (!c.ok()) error += std::string(c.status().message());
    if (c.ok()) pair.client_relay = *c;
  });
  server_loop.Run([&] {
    auto s = tls::Relay::Start(server_loop.loop(), std::move(server_plain), std::move(hs.server),
                               datapath, server_relay_options,
                               [server_promise](const tls::RelayResult& r) { server_promise->set_value(r); });
    if (!s.ok()) error += std::string(s.status().message());
    if (s.ok()) pair.server_relay = *s;
  });
  if (!error.empty()) throw std::runtime_error("relay start failed: " + error);
  return pair;
}

bool RequireDatapath(tls::Datapath datapath) {
  if (datapath != tls::Datapath::kKtlsSplice) return true;
  static const tls::KtlsSupport support = tls::ProbeKtls();
  if (support.available) return true;
  if (KtlsRequired()) {
    ADD_FAILURE() << "MESHTLS_REQUIRE_KTLS=1 but " << support.detail;
    return false;
  }
  std::cerr << "\n*** SKIPPING ktls-splice on this kernel: " << support.detail
            << "\n*** The same test runs in the VM harness (tests/vm) on Debian's kernels.\n";
  return false;
}

bool KernelCanRekeyKtls() {
  static const tls::KtlsSupport support = tls::ProbeKtls();
  return support.available && support.rekey;
}

bool RequireKtlsRekey() {
  if (!RequireDatapath(tls::Datapath::kKtlsSplice)) return false;
  if (KernelCanRekeyKtls()) return true;
  const tls::KtlsSupport support = tls::ProbeKtls();
  const char* required = std::getenv("MESHTLS_REQUIRE_KTLS_REKEY");
  if (required != nullptr && std::string_view(required) == "1") {
    ADD_FAILURE() << "MESHTLS_REQUIRE_KTLS_REKEY=1 but " << support.rekey_detail;
    return false;
  }
  std::cerr << "\n*** SKIPPING kTLS KeyUpdate on this kernel: " << support.rekey_detail
            << "\n*** It runs in the VM harness on the newest kernel (vm.newest.ktls_rekey).\n";
  return false;
}

}  // namespace meshtls::testing
