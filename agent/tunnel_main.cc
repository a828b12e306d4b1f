// meshtls-tunnel: one end of a meshtls tunnel, on its own (no eBPF steering, no workloads).
//
//   meshtls-tunnel client --listen 127.0.0.1:15001 --connect 127.0.0.1:15008
//       --cert c.crt --key c.key --bundle root.crt --expect spiffe://td/ns/n/sa/server
//   meshtls-tunnel server --listen 127.0.0.1:15008 --forward 127.0.0.1:5201
//       --cert s.crt --key s.key --bundle root.crt [--allow spiffe://td/ns/n/sa/client]
//
// The client end accepts plaintext and opens one mutual-TLS 1.3 connection per accepted
// connection; the server end terminates TLS and forwards plaintext. After the handshake bytes
// move over kTLS + splice where the kernel has kTLS, or through OpenSSL otherwise (logged).
// It is the handshake engine and relays of meshtls-agent, usable by hand and by the benchmarks.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "meshtls/common/event_loop.h"
#include "meshtls/common/logging.h"
#include "meshtls/common/malloc_tuning.h"
#include "meshtls/common/openssl_setup.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/tls/handshake_driver.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/relay.h"
#include "spdlog/spdlog.h"

namespace meshtls {
namespace {

struct Options {
  std::string mode;
  MallocTuning malloc_tuning;
  std::string listen;
  std::string connect;  // client: the server end
  std::string forward;  // server: the plaintext backend
  std::string cert, key, bundle;
  std::string trust_domain;
  std::string expect;  // client: the server identity required
  std::string allow;   // server: the only client identity accepted (empty: any in the domain)
  std::string datapath = "auto";
  std::string log_level = "info";
  int handshake_timeout_ms = 10'000;
  int max_pending_handshakes = 1024;
};

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot read ", what, " '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<sockaddr_storage> ParseAddress(const std::string& text, socklen_t* length) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(StrCat("address '", text, "' must be HOST:PORT"));
  }
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* result = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), text.c_str() + colon + 1, &hints, &result); rc != 0) {
    return absl::InvalidArgumentError(
        StrCat("address '", text, "': ", gai_strerror(rc), " (use a numeric IP and port)"));
  }
  sockaddr_storage storage{};
  std::memcpy(&storage, result->ai_addr, result->ai_addrlen);
  *length = result->ai_addrlen;
  ::freeaddrinfo(result);
  return storage;
}

class Tunnel {
 public:
  Tunnel(Options options, EventLoop& loop, std::shared_ptr<const tls::TlsContext> context,
         tls::Datapath datapath)
      : options_(std::move(options)), loop_(loop), context_(std::move(context)), datapath_(datapath) {}

  absl::Status Start() {
    socklen_t length = 0;
    ASSIGN_OR_RETURN(sockaddr_storage listen_addr, ParseAddress(options_.listen, &length));
    const std::string& remote = options_.mode == "client" ? options_.connect : options_.forward;
    ASSIGN_OR_RETURN(remote_, ParseAddress(remote, &remote_length_));
    if (!options_.expect.empty()) {
      ASSIGN_OR_RETURN(expected_, SpiffeId::Parse(options_.expect));
    }
    if (!options_.allow.empty()) {
      ASSIGN_OR_RETURN(allowed_, SpiffeId::Parse(options_.allow));
    }
    listener_.reset(::socket(listen_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener_) return ErrnoStatus(errno, "socket");
    const int one = 1;
    ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&listen_addr), length) != 0) {
      return ErrnoStatus(errno, StrCat("bind ", options_.listen));
    }
    if (::listen(listener_.get(), 1024) != 0) return ErrnoStatus(errno, "listen");
    return loop_.Add(listener_.get(), EPOLLIN, [this](uint32_t) { Accept(); });
  }

 private:
  void Accept() {
    while (true) {
      UniqueFd accepted(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!accepted) {
        if (errno != EAGAIN && errno != EINTR) spdlog::warn("accept: {}", std::strerror(errno));
        return;
      }
      if (pending_ >= options_.max_pending_handshakes) {
        spdlog::warn("connection refused: {} handshakes pending (limit --max-pending-handshakes)", pending_);
        continue;
      }
      SetNoDelay(accepted.get());
      if (options_.mode == "client") {
        absl::StatusOr<UniqueFd> upstream = ConnectRemote();
        if (!upstream.ok()) {
          spdlog::warn("connect {}: {}", options_.connect, upstream.status().message());
          continue;
        }
        StartHandshake(std::move(*upstream), std::move(accepted), tls::Role::kClient);
      } else {
        StartHandshake(std::move(accepted), UniqueFd(), tls::Role::kServer);
      }
    }
  }

  absl::StatusOr<UniqueFd> ConnectRemote() {
    UniqueFd fd(::socket(remote_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return ErrnoStatus(errno, "socket");
    SetNoDelay(fd.get());
    // A connect in progress is fine: the handshake (or the relay) waits for writability.
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&remote_), remote_length_) != 0 &&
        errno != EINPROGRESS) {
      return ErrnoStatus(errno, "connect");
    }
    return fd;
  }

  static void SetNoDelay(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }

  void StartHandshake(UniqueFd tunnel_socket, UniqueFd plaintext, tls::Role role) {
    tls::SessionOptions session_options;
    session_options.role = role;
    session_options.expected_peer = role == tls::Role::kClient ? expected_ : allowed_;
    session_options.handshake_timeout = std::chrono::milliseconds(options_.handshake_timeout_ms);
    session_options.capture_traffic_secrets = datapath_ == tls::Datapath::kKtlsSplice;
    auto session = tls::TlsSession::Create(context_, std::move(tunnel_socket), session_options);
    if (!session.ok()) {
      spdlog::warn("session: {}", session.status().message());
      return;
    }
    ++pending_;
    auto plain = std::make_shared<UniqueFd>(std::move(plaintext));
    tls::DriveHandshake(loop_, *std::move(session), [this, plain](std::unique_ptr<tls::TlsSession> s) {
      --pending_;
      if (!s->handshake_done()) return;  // logged with its reason by the driver
      if (!*plain) {
        absl::StatusOr<UniqueFd> backend = ConnectRemote();
        if (!backend.ok()) {
          spdlog::warn("forward {}: {}", options_.forward, backend.status().message());
          return;
        }
        *plain = std::move(*backend);
      }
      const std::string peer = s->peer_id()->ToString();
      const std::string cipher(s->cipher_name());
      spdlog::info("handshake ok: peer={} cipher={} datapath={} duration_us={}", peer, cipher,
                   tls::DatapathName(datapath_), s->handshake_duration().count());
      auto relay = tls::Relay::Start(loop_, std::move(*plain), std::move(s), datapath_, {},
                                     [peer](const tls::RelayResult& r) {
                                       spdlog::info(
                                           "connection closed: peer={} result={} detail=\"{}\" "
                                           "bytes_to_tunnel={} bytes_from_tunnel={} duration_ms={}",
                                           peer, tls::FailureReasonName(r.reason), r.detail,
                                           r.stats.bytes_to_tunnel, r.stats.bytes_from_tunnel,
                                           r.duration.count() / 1000);
                                     });
      if (!relay.ok()) spdlog::warn("relay: {}", relay.status().message());
    });
  }

  Options options_;
  EventLoop& loop_;
  std::shared_ptr<const tls::TlsContext> context_;
  tls::Datapath datapath_;
  UniqueFd listener_;
  sockaddr_storage remote_{};
  socklen_t remote_length_ = 0;
  std::optional<SpiffeId> expected_;
  std::optional<SpiffeId> allowed_;
  int pending_ = 0;
};

int Run(const Options& options) {
  if (absl::Status st = ConfigureLogging(options.log_level); !st.ok()) {
    fprintf(stderr, "meshtls-tunnel: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  auto fail = [](const absl::Status& st) {
    spdlog::critical("{}", st.message());
    return 1;
  };
  LogMallocTuning(options.malloc_tuning);
  // As the agent does, before any key is loaded (openssl_setup.h).
  LogOpenSslSetup(ConfigureOpenSsl(BuiltinEcKeys::kAuto));
  tls::TlsContextOptions ctx_options;
  auto cert = ReadFile(options.cert, "--cert");
  auto key = ReadFile(options.key, "--key");
  auto bundle = ReadFile(options.bundle, "--bundle");
  for (const auto* r : {&cert, &key, &bundle}) {
    if (!r->ok()) return fail(r->status());
  }
  ctx_options.certificate_chain_pem = *cert;
  ctx_options.private_key_pem = *key;
  ctx_options.trust_bundle_pem = *bundle;
  ctx_options.trust_domain = options.trust_domain;
  if (ctx_options.trust_domain.empty() && !options.expect.empty()) {
    auto id = SpiffeId::Parse(options.expect);
    if (id.ok()) ctx_options.trust_domain = id->trust_domain();
  }
  if (ctx_options.trust_domain.empty()) ctx_options.trust_domain = "cluster.local";
  auto datapath = tls::ChooseDatapath(options.datapath);
  if (!datapath.ok()) return fail(datapath.status());
  ctx_options.export_traffic_secrets = *datapath == tls::Datapath::kKtlsSplice;
  auto context = tls::TlsContext::Create(ctx_options);
  if (!context.ok()) return fail(context.status());
  auto loop = EventLoop::Create();
  if (!loop.ok()) return fail(loop.status());
  ::signal(SIGPIPE, SIG_IGN);
  Tunnel tunnel(options, **loop, *context, *datapath);
  if (absl::Status st = tunnel.Start(); !st.ok()) return fail(st);
  spdlog::info("meshtls-tunnel {} listening on {} as {}", options.mode, options.listen,
               (*context)->local_id().ToString());
  (*loop)->Run();
  return 0;
}

}  // namespace
}  // namespace meshtls

int main(int argc, char** argv) {
  meshtls::Options options;
  // As the agent does, first (malloc_tuning.h).
  options.malloc_tuning = meshtls::TuneMallocOrReexec(argv);
  CLI::App app{"meshtls-tunnel: one end of a mutual-TLS 1.3 tunnel with SPIFFE identities"};
  app.require_subcommand(1);
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--listen", options.listen, "HOST:PORT to accept connections on")->required();
    sub->add_option("--cert", options.cert, "certificate chain (PEM, leaf first)")->required()->check(CLI::ExistingFile);
    sub->add_option("--key", options.key, "private key (PEM)")->required()->check(CLI::ExistingFile);
    sub->add_option("--bundle", options.bundle, "trust bundle: one or more root CAs (PEM)")->required()->check(CLI::ExistingFile);
    sub->add_option("--trust-domain", options.trust_domain, "trust domain peers must belong to (default: from --expect, else cluster.local)");
    sub->add_option("--datapath", options.datapath, "auto | ktls-splice | userspace-tls")
        ->check(CLI::IsMember({"auto", "ktls-splice", "userspace-tls"}))
        ->capture_default_str();
    sub->add_option("--handshake-timeout-ms", options.handshake_timeout_ms, "handshake deadline")->capture_default_str();
    sub->add_option("--max-pending-handshakes", options.max_pending_handshakes, "refuse new connections above this")->capture_default_str();
    sub->add_option("--log-level", options.log_level, "trace|debug|info|warn|error")->capture_default_str();
  };
  CLI::App* client = app.add_subcommand("client", "accept plaintext, send it through mutual TLS");
  add_common(client);
  client->add_option("--connect", options.connect, "HOST:PORT of the server end")->required();
  client->add_option("--expect", options.expect, "SPIFFE ID the server must present")->required();
  CLI::App* server = app.add_subcommand("server", "terminate mutual TLS, forward plaintext");
  add_common(server);
  server->add_option("--forward", options.forward, "HOST:PORT of the plaintext backend")->required();
  server->add_option("--allow", options.allow, "the only client SPIFFE ID accepted (default: any in the trust domain)");
  CLI11_PARSE(app, argc, argv);
  options.mode = client->parsed() ? "client" : "server";
  return meshtls::Run(options);
}
