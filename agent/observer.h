#pragma once

#include <memory>
#include <string>

#include "meshtls/inspect/event_bus.h"
#include "meshtls/proxy/node_proxy.h"
#include "meshtls/telemetry/metrics.h"

namespace meshtls::agent {

// Turns the proxy's connection lifecycle into Prometheus metrics and status-API events.
class AgentObserver : public proxy::ConnectionObserver {
 public:
  AgentObserver(std::shared_ptr<telemetry::Metrics> metrics, inspect::EventBus* events)
      : metrics_(std::move(metrics)), events_(events) {}
  void OnHandshake(const proxy::ConnectionRecord& record, bool ok, std::chrono::microseconds duration) override;
  void OnOpened(const proxy::ConnectionRecord& record) override;
  void OnFinished(const proxy::ConnectionRecord& record, bool was_opened) override;

  // For the agent's own events (rotations, reloads).
  void Publish(v1::EventKind kind, std::string workload, std::string peer, std::string result, std::string reason,
               std::string detail);

 private:
  std::shared_ptr<telemetry::Metrics> metrics_;
  inspect::EventBus* events_;
};

}  // namespace meshtls::agent
