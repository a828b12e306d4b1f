#pragma once

#include <memory>
#include <string>

#include "meshtls/inspect/event_bus.h"
#include "meshtls/proxy/access_log.h"
#include "meshtls/proxy/node_proxy.h"
#include "meshtls/telemetry/metrics.h"

namespace meshtls::agent {

// Turns the proxy's connection lifecycle into Prometheus metrics and status-API events.
class AgentObserver : public proxy::ConnectionObserver {
 public:
  // `access_log` (may be null) also gets the mtls_handshake event lines.
  AgentObserver(std::shared_ptr<telemetry::Metrics> metrics, inspect::EventBus* events, proxy::AccessLog* access_log)
      : metrics_(std::move(metrics)), events_(events), access_log_(access_log) {}
  void OnHandshake(const proxy::ConnectionRecord& record, bool ok, std::chrono::microseconds duration) override;
  void OnOpened(const proxy::ConnectionRecord& record) override;
  void OnFinished(const proxy::ConnectionRecord& record, bool was_opened) override;

  // For the agent's own events (rotations, reloads).
  void Publish(v1::EventKind kind, std::string workload, std::string peer, std::string result, std::string reason,
               std::string detail);

 private:
  std::shared_ptr<telemetry::Metrics> metrics_;
  inspect::EventBus* events_;
  proxy::AccessLog* access_log_;
};

}  // namespace meshtls::agent
