#include "meshtls/tls/connection_registry.h"

#include <vector>

#include "meshtls/tls/relay.h"
#include "spdlog/spdlog.h"

namespace meshtls::tls {

void ConnectionRegistry::Add(const std::shared_ptr<Relay>& relay) {
  std::lock_guard lock(mutex_);
  relays_[relay.get()] = relay;
}

void ConnectionRegistry::Remove(const Relay* relay) {
  std::lock_guard lock(mutex_);
  relays_.erase(relay);
}

size_t ConnectionRegistry::size() const {
  std::lock_guard lock(mutex_);
  return relays_.size();
}

size_t ConnectionRegistry::CloseMatching(const std::function<bool(const TlsSession&)>& matches,
                                         FailureReason reason, const std::string& detail) {
  std::vector<std::shared_ptr<Relay>> targets;
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, weak] : relays_) {
      auto relay = weak.lock();
      // The handshake results a predicate reads never change once the relay runs.
      if (relay && matches(relay->tunnel())) targets.push_back(std::move(relay));
    }
  }
  for (auto& relay : targets) relay->AbortFromAnyThread(reason, detail);
  return targets.size();
}

size_t ApplyDenyList(identity::DenyListHolder& holder, ConnectionRegistry& registry,
                     std::shared_ptr<const identity::DenyList> list) {
  holder.Set(list);
  const size_t closed = registry.CloseMatching(
      [&](const TlsSession& s) { return s.peer_id() && list->Denies(*s.peer_id(), s.peer_serial()); },
      FailureReason::kRevoked, "peer is on the reloaded deny list");
  spdlog::info("deny list reloaded: {} entries, {} open connections closed", list->size(), closed);
  return closed;
}

}  // namespace meshtls::tls
