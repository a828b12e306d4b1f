#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/ip_address.h"
#include "meshtls/telemetry/metrics.h"

struct mg_context;
struct mg_connection;

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace meshtls::telemetry {

struct ReadinessReport {
  bool ready = false;
  // Why not, one short phrase each ("certificates not loaded", "BPF not attached", ...).
  std::vector<std::string> not_ready_reasons;
};

struct MetricsServerOptions {
  IpAddress address = *IpAddress::Parse("127.0.0.1");
  uint16_t metrics_port = 15020;    // GET /metrics
  uint16_t readiness_port = 15021;  // GET /healthz/ready
};

// The agent's two HTTP endpoints on the host: Prometheus text on /metrics and a readiness probe
// on /healthz/ready (200 "ready", else 503 with the reasons, one per line). Each runs its own
// civetweb threads; stopping is destroying the object.
class MetricsServer {
 public:
  // `readiness` is called on a server thread for every probe: it must be thread-safe and quick.
  // Fails (naming the address and port) when either port cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const MetricsServerOptions& options,
                                                              std::shared_ptr<Metrics> metrics,
                                                              std::function<ReadinessReport()> readiness);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The ports actually listened on (as asked, unless 0 was asked for).
  uint16_t metrics_port() const { return metrics_port_; }
  uint16_t readiness_port() const { return readiness_port_; }

 private:
  MetricsServer(std::shared_ptr<Metrics> metrics, std::function<ReadinessReport()> readiness);
  static int HandleReadiness(mg_connection* conn, void* self);

  std::shared_ptr<Metrics> metrics_;  // keeps the registry the Exposer holds weakly alive
  std::function<ReadinessReport()> readiness_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  mg_context* readiness_server_ = nullptr;
  uint16_t metrics_port_ = 0;
  uint16_t readiness_port_ = 0;
};

}  // namespace meshtls::telemetry
