#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "meshtls/identity/deny_list.h"
#include "meshtls/tls/failure_reason.h"

namespace meshtls::tls {

class Relay;
class TlsSession;

// The live relays, across loop threads: what ListConnections shows, and how a policy or deny-list
// change reaches connections that are already open. Relays add and remove themselves.
class ConnectionRegistry {
 public:
  void Add(const std::shared_ptr<Relay>& relay);
  void Remove(const Relay* relay);
  size_t size() const;

  // Ends every live relay whose tunnel matches, each on its own loop thread. Returns how many
  // were asked to close.
  size_t CloseMatching(const std::function<bool(const TlsSession&)>& matches, FailureReason reason,
                       const std::string& detail);

 private:
  mutable std::mutex mutex_;
  std::unordered_map<const Relay*, std::weak_ptr<Relay>> relays_;
};

// Installs a new deny list for the next handshakes and closes the open connections it denies.
size_t ApplyDenyList(identity::DenyListHolder& holder, ConnectionRegistry& registry,
                     std::shared_ptr<const identity::DenyList> list);

}  // namespace meshtls::tls
