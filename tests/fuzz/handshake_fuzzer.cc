// libFuzzer target for everything a peer can send before the handshake finishes: the bytes are
// fed to our engine as a server (a ClientHello and what follows) or as a client (a ServerHello
// and what follows). Any crash, leak or sanitizer report is a finding; a failed handshake is not.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "meshtls/common/openssl_setup.h"
#include "meshtls/tls/session.h"
#include "spdlog/spdlog.h"

namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::shared_ptr<const meshtls::tls::TlsContext> MakeContext(const char* name) {
  const std::string dir = MESHTLS_FUZZ_CERTS_DIR;
  meshtls::tls::TlsContextOptions options;
  options.certificate_chain_pem = Read(dir + "/" + name + ".crt");
  options.private_key_pem = Read(dir + "/" + name + ".key");
  options.trust_bundle_pem = Read(dir + "/bundle.crt");
  options.trust_domain = "cluster.local";
  options.export_traffic_secrets = true;
  auto ctx = meshtls::tls::TlsContext::Create(options);
  if (!ctx.ok()) {
    fprintf(stderr, "fuzzer setup: %s\n", std::string(ctx.status().message()).c_str());
    abort();
  }
  return *ctx;
}

}  // namespace

// As the agent runs: certificate keys through OpenSSL's built-in EC code (openssl_setup.h), so
// the certificates a peer sends are decoded by the code that decodes them in production.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  meshtls::ConfigureOpenSsl(meshtls::BuiltinEcKeys::kAuto);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto server_ctx = MakeContext("server");
  static const auto client_ctx = MakeContext("client");
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)quiet;
  if (size < 1 || size > 64 * 1024) return 0;
  const bool as_client = data[0] & 1;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  const int buffer = 256 * 1024;
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer));
  if (::send(fds[1], data + 1, size - 1, MSG_NOSIGNAL) != static_cast<ssize_t>(size - 1)) {
    ::close(fds[0]);
    ::close(fds[1]);
    return 0;
  }
  ::shutdown(fds[1], SHUT_WR);

  meshtls::tls::SessionOptions options;
  options.role = as_client ? meshtls::tls::Role::kClient : meshtls::tls::Role::kServer;
  options.capture_traffic_secrets = true;
  auto session = meshtls::tls::TlsSession::Create(as_client ? client_ctx : server_ctx,
                                                  meshtls::UniqueFd(fds[0]), options);
  if (session.ok()) {
    // Every byte is already queued: each step either progresses or ends the handshake.
    for (int i = 0; i < 64; ++i) {
      const auto progress = (*session)->Advance();
      if (progress == meshtls::tls::HandshakeProgress::kDone ||
          progress == meshtls::tls::HandshakeProgress::kFailed) {
        break;
      }
      // Drain what we wrote so a large flight never blocks.
      char sink[65536];
      while (::recv(fds[1], sink, sizeof(sink), MSG_DONTWAIT) > 0) {
      }
    }
  }
  ::close(fds[1]);
  return 0;
}
