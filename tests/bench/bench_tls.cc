// make bench-tls: handshake rate and relay throughput, written as one JSON object.
//   bench_tls --handshakes N --bytes B --datapath ktls-splice|userspace-tls --label TEXT --out FILE
//             --builtin-ec auto|off
// --bytes 0 measures handshakes only (the relay figures are then 0 and relay_bytes says so).
// Not a test: it asserts nothing about speed. Targets live in tests/bench/README.md.
#include <sys/socket.h>
#include <sys/utsname.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <functional>
#include <future>

#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/common/malloc_tuning.h"
#include "meshtls/common/openssl_setup.h"
#include "meshtls/tls/relay.h"
#include "spdlog/spdlog.h"
#include "testing/test_util.h"

namespace {

using namespace meshtls;
using Clock = std::chrono::steady_clock;

double ThreadCpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Steps a client and a server in turn from one thread until both are done: false if either fails
// or they are not done after 32 rounds. Each step returns the end's HandshakeProgress.
bool StepBothEnds(const std::function<tls::HandshakeProgress()>& client,
                  const std::function<tls::HandshakeProgress()>& server) {
  bool done[2] = {false, false};
  const std::function<tls::HandshakeProgress()>* steps[2] = {&client, &server};
  for (int round = 0; round < 32 && !(done[0] && done[1]); ++round) {
    for (int end = 0; end < 2; ++end) {
      if (done[end]) continue;
      const tls::HandshakeProgress progress = (*steps[end])();
      if (progress == tls::HandshakeProgress::kFailed) return false;
      done[end] = progress == tls::HandshakeProgress::kDone;
    }
  }
  return done[0] && done[1];
}

// Full mutual handshakes, both ends in this thread over a socketpair: the engine's real code path
// (TlsContext, TlsSession, verification with SPIFFE checks), no event loop, one core.
double HandshakesPerSecond(int count, double* cpu_seconds) {
  // As the agent builds them for userspace-tls: no traffic-secret export.
  auto client_ctx = testing::Context("client", "bundle.crt", false);
  auto server_ctx = testing::Context("server", "bundle.crt", false);
  tls::SessionOptions client_options;
  client_options.role = tls::Role::kClient;
  client_options.expected_peer = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
  tls::SessionOptions server_options;
  server_options.role = tls::Role::kServer;
  const double cpu0 = ThreadCpu();
  const auto t0 = Clock::now();
  for (int i = 0; i < count; ++i) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
    auto client = tls::TlsSession::Create(client_ctx, UniqueFd(fds[0]), client_options);
    auto server = tls::TlsSession::Create(server_ctx, UniqueFd(fds[1]), server_options);
    if (!StepBothEnds([&] { return (*client)->Advance(); }, [&] { return (*server)->Advance(); })) return 0;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  *cpu_seconds = ThreadCpu() - cpu0;
  return count / seconds;
}

// A plain OpenSSL end (no meshtls code) presenting the test certificate NAME.crt.
SslCtxPtr RawPeer(const std::string& identity) {
  testing::RawPeerOptions options;
  options.identity = identity;
  return testing::RawContext(options);
}

// The same loop with libssl alone (no meshtls code): the ceiling this OpenSSL sets on the host.
// `verify_chains` false skips chain verification entirely (an upper bound for any verified-chain
// cache); true is stock OpenSSL, which verifies both chains on every handshake.
double BareOpenSslHandshakesPerSecond(int count, bool verify_chains) {
  auto client_ctx = RawPeer("client");
  auto server_ctx = RawPeer("server");
  for (SSL_CTX* ctx : {client_ctx.get(), server_ctx.get()}) {
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set1_groups_list(ctx, "X25519:P-256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    if (!verify_chains) SSL_CTX_set_cert_verify_callback(ctx, [](X509_STORE_CTX*, void*) { return 1; }, nullptr);
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < count; ++i) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) return 0;
    UniqueFd client_fd(fds[0]), server_fd(fds[1]);
    SslPtr client(SSL_new(client_ctx.get())), server(SSL_new(server_ctx.get()));
    SSL_set_fd(client.get(), client_fd.get());
    SSL_set_fd(server.get(), server_fd.get());
    SSL_set_connect_state(client.get());
    SSL_set_accept_state(server.get());
    auto step = [](SSL* ssl) {
      const int rc = SSL_do_handshake(ssl);
      if (rc == 1) return tls::HandshakeProgress::kDone;
      const int error = SSL_get_error(ssl, rc);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return tls::HandshakeProgress::kWantRead;
      fprintf(stderr, "bench_tls: bare OpenSSL handshake failed: %s\n", DrainOpenSslErrors().c_str());
      return tls::HandshakeProgress::kFailed;
    };
    if (!StepBothEnds([&] { return step(client.get()); }, [&] { return step(server.get()); })) return 0;
  }
  return count / std::chrono::duration<double>(Clock::now() - t0).count();
}

struct RelayFigures {
  double gbit_per_s = 0;
  double relay_cpu_s_per_gb = 0;  // both relay ends together, loop threads only
  bool ok = false;
  std::string error;
};

RelayFigures RelayThroughput(tls::Datapath datapath, uint64_t bytes) {
  RelayFigures figures;
  testing::LoopThread client_loop, server_loop;
  testing::RelayPair pair = testing::StartRelayPair(client_loop, server_loop, datapath);
  const double cpu0 = client_loop.CpuSeconds() + server_loop.CpuSeconds();
  const auto t0 = Clock::now();
  std::thread writer([&] {
    std::vector<char> buf(256 * 1024, 'x');
    uint64_t sent = 0;
    while (sent < bytes) {
      const ssize_t n = ::send(pair.app_client.get(), buf.data(),
                               std::min<uint64_t>(buf.size(), bytes - sent), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<uint64_t>(n);
    }
    ::shutdown(pair.app_client.get(), SHUT_WR);
  });
  std::vector<char> buf(256 * 1024);
  uint64_t received = 0;
  for (ssize_t n; (n = ::recv(pair.app_server.get(), buf.data(), buf.size(), 0)) > 0;) {
    received += static_cast<uint64_t>(n);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  writer.join();
  const double cpu = client_loop.CpuSeconds() + server_loop.CpuSeconds() - cpu0;
  ::shutdown(pair.app_server.get(), SHUT_WR);
  const tls::RelayResult result = pair.client_result.get();
  figures.ok = received == bytes && result.reason == tls::FailureReason::kNone;
  if (!figures.ok) figures.error = "received " + std::to_string(received) + " of " + std::to_string(bytes);
  figures.gbit_per_s = static_cast<double>(received) * 8 / seconds / 1e9;
  figures.relay_cpu_s_per_gb = cpu / (static_cast<double>(received) / 1e9);
  return figures;
}

// One encrypting relay's measurement: a thread sends `bytes` of plaintext into `app_fd` (then FIN)
// while this thread reads them back through `reader`, a plain OpenSSL end that decrypts.
struct Pumped {
  uint64_t received = 0;
  double seconds = 0;
};
Pumped PumpThroughRelay(int app_fd, SSL* reader, uint64_t bytes) {
  const auto t0 = Clock::now();
  std::thread writer([&] {
    std::vector<char> buf(256 * 1024, 'x');
    uint64_t sent = 0;
    while (sent < bytes) {
      const ssize_t n = ::send(app_fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - sent), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<uint64_t>(n);
    }
    ::shutdown(app_fd, SHUT_WR);
  });
  std::vector<char> buf(256 * 1024);
  Pumped pumped;
  for (int n; (n = SSL_read(reader, buf.data(), static_cast<int>(buf.size()))) > 0;) {
    pumped.received += static_cast<uint64_t>(n);
  }
  pumped.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  writer.join();
  return pumped;
}

void Record(RelayFigures& figures, const Pumped& pumped, uint64_t bytes, double relay_cpu_seconds) {
  figures.ok = pumped.received == bytes;
  if (!figures.ok) figures.error = "received " + std::to_string(pumped.received) + " of " + std::to_string(bytes);
  figures.gbit_per_s = static_cast<double>(pumped.received) * 8 / pumped.seconds / 1e9;
  figures.relay_cpu_s_per_gb = relay_cpu_seconds / (static_cast<double>(pumped.received) / 1e9);
}

// One encrypting relay, as the stock "OpenSSL relay" baseline is measured: a plaintext sender ->
// our relay (userspace-tls or ktls-splice) -> a plain OpenSSL reader that decrypts.
RelayFigures SingleRelayThroughput(tls::Datapath datapath, uint64_t bytes) {
  RelayFigures figures;
  testing::LoopThread loop;
  auto [app_client, relay_plain] = testing::TcpPair();
  auto [relay_tunnel, reader_fd] = testing::TcpPair();
  testing::RawPeerOptions raw;
  raw.identity = "server";
  auto raw_ctx = testing::RawContext(raw);
  std::thread raw_accept;
  SslPtr reader;
  raw_accept = std::thread([&] { reader = testing::RawHandshake(raw_ctx.get(), reader_fd.get(), false); });
  tls::SessionOptions options;
  options.role = tls::Role::kClient;
  options.expected_peer = *SpiffeId::Parse("spiffe://cluster.local/ns/default/sa/server");
  options.capture_traffic_secrets = datapath == tls::Datapath::kKtlsSplice;
  auto session = tls::TlsSession::Create(testing::Context("client"), std::move(relay_tunnel), options);
  std::promise<std::unique_ptr<tls::TlsSession>> done;
  loop.Run([&] {
    tls::DriveHandshake(loop.loop(), *std::move(session), [&](auto s) { done.set_value(std::move(s)); });
  });
  auto tunnel = done.get_future().get();
  raw_accept.join();
  if (!tunnel->handshake_done() || !reader) {
    figures.error = "handshake failed";
    return figures;
  }
  std::promise<tls::RelayResult> closed;
  loop.Run([&] {
    auto relay = tls::Relay::Start(loop.loop(), std::move(relay_plain), std::move(tunnel), datapath, {},
                                   [&](const tls::RelayResult& r) { closed.set_value(r); });
    if (!relay.ok()) figures.error = std::string(relay.status().message());
  });
  if (!figures.error.empty()) return figures;
  const double cpu0 = loop.CpuSeconds();
  const Pumped pumped = PumpThroughRelay(app_client.get(), reader.get(), bytes);
  const double cpu = loop.CpuSeconds() - cpu0;
  SSL_shutdown(reader.get());
  ::shutdown(reader_fd.get(), SHUT_WR);
  closed.get_future().wait_for(std::chrono::seconds(10));
  Record(figures, pumped, bytes, cpu);
  return figures;
}

// The baseline the relay target was set against ("an OpenSSL relay does 7.3 Gbit/s"), measured in
// the same run: the same shape as SingleRelayThroughput, with a plain blocking relay in its place
// (recv() 16 KiB, SSL_write() it, no meshtls code).
RelayFigures StockOpenSslRelayThroughput(uint64_t bytes) {
  RelayFigures figures;
  auto [app_client, relay_plain] = testing::TcpPair();
  auto [relay_tunnel, reader_fd] = testing::TcpPair();
  auto server_ctx = RawPeer("server");
  auto client_ctx = RawPeer("client");
  SslPtr reader;
  std::thread accept([&] { reader = testing::RawHandshake(server_ctx.get(), reader_fd.get(), false); });
  SslPtr relay = testing::RawHandshake(client_ctx.get(), relay_tunnel.get(), true, &figures.error);
  accept.join();
  if (!relay || !reader) {
    if (figures.error.empty()) figures.error = "handshake failed";
    return figures;
  }
  double relay_cpu = 0;
  std::thread relay_thread([&, ssl = relay.get(), plain = relay_plain.get()] {
    const double cpu0 = ThreadCpu();
    std::vector<char> buf(16 * 1024);
    for (ssize_t n; (n = ::recv(plain, buf.data(), buf.size(), 0)) > 0;) {
      if (SSL_write(ssl, buf.data(), static_cast<int>(n)) != n) break;
    }
    SSL_shutdown(ssl);
    relay_cpu = ThreadCpu() - cpu0;
  });
  const Pumped pumped = PumpThroughRelay(app_client.get(), reader.get(), bytes);
  relay_thread.join();
  Record(figures, pumped, bytes, relay_cpu);
  return figures;
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  // As the agent runs (malloc_tuning.h); GLIBC_TUNABLES=glibc.malloc.tcache_count=7 measures glibc's default.
  const MallocTuning malloc_tuning = TuneMallocOrReexec(argv);
  spdlog::set_level(spdlog::level::warn);
  const int handshakes = std::stoi(Arg(argc, argv, "--handshakes", "3000"));
  const uint64_t bytes = std::stoull(Arg(argc, argv, "--bytes", std::to_string(4ULL << 30)));
  const std::string datapath_name = Arg(argc, argv, "--datapath", "userspace-tls");
  const std::string label = Arg(argc, argv, "--label", "host");
  const std::string out = Arg(argc, argv, "--out", "");
  const auto builtin_ec = ParseBuiltinEcKeys(Arg(argc, argv, "--builtin-ec", "auto"));
  if (!builtin_ec.ok()) {
    fprintf(stderr, "bench_tls: --builtin-ec: %s\n", std::string(builtin_ec.status().message()).c_str());
    return 2;
  }
  const OpenSslSetup& openssl = ConfigureOpenSsl(*builtin_ec);
  auto datapath = tls::ParseDatapath(datapath_name);
  if (!datapath.ok()) {
    fprintf(stderr, "bench_tls: %s\n", std::string(datapath.status().message()).c_str());
    return 2;
  }
  if (*datapath == tls::Datapath::kKtlsSplice && !tls::ProbeKtls().available) {
    fprintf(stderr, "bench_tls: %s\n", tls::ProbeKtls().detail.c_str());
    return 3;
  }
  utsname uts{};
  uname(&uts);
  double hs_cpu = 0;
  const double hs_rate = handshakes > 0 ? HandshakesPerSecond(handshakes, &hs_cpu) : 0;
  const double bare_unverified_rate = handshakes > 0 ? BareOpenSslHandshakesPerSecond(handshakes, false) : 0;
  const double bare_stock_rate = handshakes > 0 ? BareOpenSslHandshakesPerSecond(handshakes, true) : 0;
  RelayFigures relay{0, 0, true, ""};
  RelayFigures single{0, 0, true, ""};
  RelayFigures stock{0, 0, true, ""};
  if (bytes > 0) {
    relay = RelayThroughput(*datapath, bytes);
    single = SingleRelayThroughput(*datapath, bytes);
    stock = StockOpenSslRelayThroughput(bytes);
  }
  char json[8192];
  snprintf(json, sizeof(json),
           "{\"label\": \"%s\", \"kernel\": \"%s\", \"datapath\": \"%s\", "
           "\"handshakes\": %d, \"handshakes_per_second_one_core\": %.1f, "
           "\"handshake_cpu_ms_each_both_ends\": %.3f, \"relay_bytes\": %llu, "
           "\"relay_gbit_per_s\": %.3f, \"relay_cpu_s_per_gb_both_ends\": %.3f, "
           "\"relay_ok\": %s, \"relay_error\": \"%s\", "
           "\"single_relay_gbit_per_s\": %.3f, \"single_relay_cpu_s_per_gb\": %.3f, "
           "\"single_relay_ok\": %s, \"single_relay_error\": \"%s\", "
           "\"builtin_ec_keys\": %s, \"builtin_ec_detail\": \"%s\", "
           "\"bare_openssl_handshakes_per_second\": %.1f, "
           "\"bare_openssl_no_chain_verify_handshakes_per_second\": %.1f, "
           "\"stock_openssl_relay_gbit_per_s\": %.3f, \"stock_openssl_relay_cpu_s_per_gb\": %.3f, "
           "\"stock_openssl_relay_ok\": %s, \"stock_openssl_relay_error\": \"%s\", "
           "\"malloc_tuning\": \"%s\"}",
           label.c_str(), uts.release, datapath_name.c_str(), handshakes, hs_rate,
           handshakes > 0 ? hs_cpu * 1000 / handshakes : 0.0, static_cast<unsigned long long>(bytes),
           relay.gbit_per_s, relay.relay_cpu_s_per_gb, relay.ok ? "true" : "false",
           relay.error.c_str(), single.gbit_per_s, single.relay_cpu_s_per_gb,
           single.ok ? "true" : "false", single.error.c_str(),
           openssl.builtin_ec_keys ? "true" : "false", openssl.detail.c_str(), bare_stock_rate,
           bare_unverified_rate, stock.gbit_per_s, stock.relay_cpu_s_per_gb, stock.ok ? "true" : "false",
           stock.error.c_str(), malloc_tuning.detail.c_str());
  printf("%s\n", json);
  if (!out.empty()) std::ofstream(out) << json << "\n";
  return relay.ok && single.ok && stock.ok && (handshakes == 0 || (hs_rate > 0 && bare_stock_rate > 0 && bare_unverified_rate > 0)) ? 0 : 1;
}
