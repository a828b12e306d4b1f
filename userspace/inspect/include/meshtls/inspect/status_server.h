#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/inspect/agent_view.h"
#include "meshtls/inspect/event_bus.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace meshtls::inspect {

struct StatusServerOptions {
  // Root-only (0600). Empty: no Unix socket (then tcp_port must be set).
  std::string socket_path = "/run/meshtls/status.sock";
  // 0: off; else 127.0.0.1:port, plaintext and unauthenticated: for debugging only.
  int tcp_port = 0;
  // Each WatchEvents stream's queue: a reader further behind than this loses events.
  size_t watch_queue_capacity = 1024;
  // How often an idle WatchEvents stream looks for a cancelled client or a shutdown.
  std::chrono::milliseconds watch_poll_interval{100};
  // In-flight calls still running this long after Shutdown() are cancelled.
  std::chrono::milliseconds shutdown_grace{1000};
};

class StatusServiceImpl;

// The agent's local gRPC API: meshtls.v1.StatusService, grpc.health.v1.Health and reflection
// (grpc.reflection.v1alpha), on a Unix socket only root can connect to. `view` and `events`
// must outlive the server.
class StatusServer {
 public:
  // Creates the socket's parent directory (0755) if missing. A socket file left by a crash is
  // replaced; a socket something still answers on, or a path that is not a socket, is an error
  // (FailedPrecondition) and is left alone.
  static absl::StatusOr<std::unique_ptr<StatusServer>> Start(const StatusServerOptions& options,
                                                             AgentView* view, EventBus* events);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Ends WatchEvents streams, waits up to shutdown_grace for other calls, and removes the
  // socket file. Idempotent.
  void Shutdown();

  const std::string& socket_path() const { return options_.socket_path; }
  // The TCP port bound on 127.0.0.1, 0 if none.
  int tcp_port() const { return bound_tcp_port_; }

 private:
  explicit StatusServer(const StatusServerOptions& options);

  StatusServerOptions options_;
  std::unique_ptr<StatusServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int bound_tcp_port_ = 0;
  // The socket file we created, so Shutdown() never unlinks a successor's.
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
  std::atomic<bool> shut_down_{false};
};

}  // namespace meshtls::inspect
