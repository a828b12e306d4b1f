#include "meshtls/telemetry/metrics_server.h"

#include <civetweb.h>
#include <prometheus/exposer.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <string_view>
#include <thread>
#include <utility>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"

namespace meshtls::telemetry {
namespace {

constexpr char kRequestTimeoutMs[] = "10000";

// civetweb's listening_ports syntax.
std::string Endpoint(const IpAddress& address, uint16_t port) {
  return address.is_v4() ? StrCat(address.ToString(), ":", port)
                         : StrCat("[", address.ToString(), "]:", port);
}

// civetweb reports a failed bind without errno (and prometheus-cpp's Exposer only as "null
// context"), so repeat the bind to say why; `fallback` is used if it succeeds this time.
absl::Status ListenError(const IpAddress& address, uint16_t port, std::string_view what,
                         std::string_view fallback) {
  std::string context = StrCat("cannot listen on ", Endpoint(address, port), " (", what, ")");
  UniqueFd fd(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, context);
  int one = 1;
  // civetweb sets it too; without it a port in TIME_WAIT would be misreported as busy.
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage storage{};
  socklen_t length = address.ToSockaddr(port, &storage);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&storage), length) != 0) {
    return ErrnoStatus(errno, context);
  }
  return absl::UnavailableError(StrCat(context, ": ", fallback));
}

}  // namespace

MetricsServer::MetricsServer(std::shared_ptr<Metrics> metrics, std::function<ReadinessReport()> readiness)
    : metrics_(std::move(metrics)), readiness_(std::move(readiness)) {}

MetricsServer::~MetricsServer() {
  // Stop serving before readiness_ (used by the handler threads) goes away; mg_stop joins them.
  // Each civetweb context takes up to 2 s to stop (its accept loop polls with a 2 s timeout and
  // does not watch the stop flag), so the two stop side by side.
  std::thread readiness_stop;
  if (readiness_server_ != nullptr) readiness_stop = std::thread(mg_stop, readiness_server_);
  exposer_.reset();
  if (readiness_stop.joinable()) readiness_stop.join();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const MetricsServerOptions& options, std::shared_ptr<Metrics> metrics,
    std::function<ReadinessReport()> readiness) {
  if (metrics == nullptr) return absl::InvalidArgumentError("metrics server: no metrics");
  if (!readiness) return absl::InvalidArgumentError("metrics server: no readiness callback");
  if (!options.address.is_v4() && mg_check_feature(MG_FEATURES_IPV6) == 0) {
    return absl::UnimplementedError(
        StrCat("metrics server: this civetweb is built without IPv6, cannot listen on ",
               options.address.ToString()));
  }
  if (options.metrics_port != 0 && options.metrics_port == options.readiness_port) {
    return absl::InvalidArgumentError(
        StrCat("metrics server: metrics and readiness ports are both ", options.metrics_port));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(metrics), std::move(readiness)));

  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", Endpoint(options.address, options.metrics_port), "num_threads", "2",
        "request_timeout_ms", kRequestTimeoutMs});
  } catch (const std::exception& e) {
    return ListenError(options.address, options.metrics_port, "/metrics", e.what());
  }
  server->exposer_->RegisterCollectable(server->metrics_->shared_registry(), "/metrics");
  if (std::vector<int> ports = server->exposer_->GetListeningPorts(); !ports.empty()) {
    server->metrics_port_ = static_cast<uint16_t>(ports.front());
  }

  // prometheus-cpp's Exposer serves registries only (RegisterCollectable/RegisterAuth; its
  // CivetServer is private), so readiness gets a civetweb context of its own.
  const std::string listen = Endpoint(options.address, options.readiness_port);
  const char* civet_options[] = {"listening_ports", listen.c_str(), "num_threads", "2",
                                 "request_timeout_ms", kRequestTimeoutMs, nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{.callbacks = &callbacks, .user_data = server.get(),
                    .configuration_options = civet_options};
  char error_text[256] = {};
  mg_error_data error{.code = nullptr, .text = error_text, .text_buffer_size = sizeof(error_text)};
  server->readiness_server_ = mg_start2(&init, &error);
  if (server->readiness_server_ == nullptr) {
    return ListenError(options.address, options.readiness_port, "/healthz/ready",
                       error_text[0] != '\0' ? error_text : "civetweb failed to start");
  }
  mg_set_request_handler(server->readiness_server_, "/healthz/ready", &MetricsServer::HandleReadiness,
                         server.get());
  mg_server_port port{};
  if (mg_get_server_ports(server->readiness_server_, 1, &port) == 1) {
    server->readiness_port_ = static_cast<uint16_t>(port.port);
  }
  return server;
}

int MetricsServer::HandleReadiness(mg_connection* conn, void* self) {
  const mg_request_info* request = mg_get_request_info(conn);
  const std::string_view method = request->request_method;
  if (method != "GET" && method != "HEAD") {
    mg_response_header_start(conn, 405);
    mg_response_header_add(conn, "Allow", "GET, HEAD", -1);
    mg_response_header_add(conn, "Content-Length", "0", -1);
    mg_response_header_send(conn);
    return 405;
  }

  ReadinessReport report;
  try {
    report = static_cast<MetricsServer*>(self)->readiness_();
  } catch (const std::exception& e) {
    // An exception must not unwind through civetweb's C frames.
    report = {.ready = false, .not_ready_reasons = {StrCat("readiness check failed: ", e.what())}};
  }
  std::string body;
  if (report.ready) {
    body = "ready\n";
  } else if (report.not_ready_reasons.empty()) {
    body = "not ready\n";
  } else {
    for (const std::string& reason : report.not_ready_reasons) StrAppend(&body, reason, "\n");
  }
  const int status = report.ready ? 200 : 503;
  const std::string content_length = std::to_string(body.size());
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", "text/plain; charset=utf-8", -1);
  mg_response_header_add(conn, "Content-Length", content_length.c_str(), -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  mg_response_header_send(conn);
  if (method == "GET") mg_write(conn, body.data(), body.size());
  return status;
}

}  // namespace meshtls::telemetry
