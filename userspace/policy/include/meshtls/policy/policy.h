#pragma once

// Istio's PeerAuthentication and the L4 subset of AuthorizationPolicy, read from a directory of
// YAML files (the same objects users already apply with kubectl), so a mesh can move between
// Istio and meshtls without rewriting its policy. Semantics and limits: docs/policy.md.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/file_watcher.h"
#include "meshtls/common/ip_address.h"

namespace meshtls::policy {

// The effective mode, never "unset": UNSET is resolved while loading/evaluating.
enum class MtlsMode { kStrict, kPermissive, kDisable };
std::string_view MtlsModeName(MtlsMode mode);  // "STRICT", "PERMISSIVE", "DISABLE"

// The destination workload a decision is about.
struct PolicyTarget {
  std::string namespace_name;
  std::map<std::string, std::string> labels;
};

// What is known about the connecting side.
struct SourceAttributes {
  // Istio form "cluster.local/ns/foo/sa/bar" (the SPIFFE ID without "spiffe://"); nullopt for
  // plaintext.
  std::optional<std::string> principal;
  std::optional<std::string> namespace_name;  // from the SPIFFE ID; nullopt for plaintext
  IpAddress source_ip;
  uint16_t destination_port = 0;
};

struct Decision {
  bool allowed = false;
  std::string policy;  // "ns/name" of the AuthorizationPolicy that decided; empty for the default
  std::string reason;  // e.g. "denied by DENY policy foo/deny-bar rule 0"
};

// Where the effective mTLS mode of a port comes from.
enum class ModeLevel { kDefault, kMesh, kNamespace, kWorkload, kPort };
std::string_view ModeLevelName(ModeLevel level);  // "default", "mesh", "namespace", "workload", "port"

// One AuthorizationPolicy that selects the target, as evaluated for one connection.
struct ConsideredPolicy {
  std::string policy;  // "ns/name"
  bool deny = false;   // the action: DENY or ALLOW
  bool matched = false;
  int rule = -1;    // the first matching rule, -1 if none
  std::string why;  // "rule 1 matched", or per rule the part that did not match
};

// The whole decision for one connection, made the way the data path makes it (mode first, then
// authorization), with every step kept: `meshtlsctl policy check` and the CheckAccess RPC.
struct Explanation {
  bool allowed = false;
  MtlsMode mode = MtlsMode::kPermissive;
  ModeLevel mode_level = ModeLevel::kDefault;
  std::string peer_authentication;  // "ns/name" that decided the mode; empty: Istio's default
  std::string policy;               // the AuthorizationPolicy that decided; empty: none did
  // Stable: plaintext_in_strict, deny_policy_matched, allow_policy_matched,
  // no_allow_policy_matched, l7_rule_ignored (no ALLOW rule matched and some were dropped for L7
  // fields), default_allow (no ALLOW policy selects the workload).
  std::string reason_code;
  std::string reason;  // the same sentence the data path logs
  std::vector<ConsideredPolicy> considered;  // DENY first, then ALLOW; own namespace, then root
};

namespace internal {
struct PeerAuthentication;
struct AuthorizationPolicy;
struct Builder;
struct Index;
}  // namespace internal

// One consistent snapshot of every policy. Immutable once loaded, so it is shared between
// threads as std::shared_ptr<const PolicySet> and swapped as a whole on reload.
class PolicySet {
 public:
  // Every *.yaml / *.yml directly in `dir` (not hidden files, not ConfigMap "..data" dirs), in
  // name order. Any malformed document fails the whole load with "FILE:LINE: reason".
  static absl::StatusOr<std::shared_ptr<const PolicySet>> LoadDirectory(
      const std::string& dir, const std::string& root_namespace = "istio-system");
  // One YAML text (possibly multi-document); `file_name` only labels errors and warnings.
  static absl::StatusOr<std::shared_ptr<const PolicySet>> Parse(
      std::string_view yaml, const std::string& file_name, const std::string& root_namespace = "istio-system");

  ~PolicySet();
  PolicySet(const PolicySet&) = delete;
  PolicySet& operator=(const PolicySet&) = delete;

  // The mTLS mode for inbound connections to `port` of the target.
  MtlsMode ModeFor(const PolicyTarget& target, uint16_t port) const;
  // Runs per connection: no allocation beyond the reason string.
  Decision Authorize(const PolicyTarget& target, const SourceAttributes& source) const;
  // The same evaluation as ModeFor() + Authorize(), explained. A source without a principal is
  // plaintext: refused under STRICT, authorized without identity otherwise.
  Explanation Explain(const PolicyTarget& target, const SourceAttributes& source) const;
  // The mode of `port` and the level that set it.
  std::pair<MtlsMode, ModeLevel> ModeAndLevelFor(const PolicyTarget& target, uint16_t port) const;

  // For the status API.
  struct Effective {
    MtlsMode mode = MtlsMode::kPermissive;     // for ports without a port-level override
    std::string peer_authentication;           // "ns/name" that decided `mode`; empty: default
    std::vector<std::string> authorization_policies;  // "ns/name" selecting the target, DENY first
    std::map<uint16_t, MtlsMode> port_modes;   // port-level overrides, already resolved
    std::string summary;                       // YAML-ish, with actions, for `meshtlsctl policy`
  };
  Effective Describe(const PolicyTarget& target) const;

  // Every policy, for audits.
  struct PolicyInfo {
    std::string id;  // "ns/name"
    std::string kind;  // "PeerAuthentication" | "AuthorizationPolicy"
    std::string namespace_name;
    std::map<std::string, std::string> selector;  // empty: the whole namespace (or mesh)
    std::string where;  // "FILE:LINE"
    std::optional<MtlsMode> mode;  // PeerAuthentication with a mode other than UNSET
    std::map<uint16_t, MtlsMode> port_modes;  // PeerAuthentication port levels (UNSET left out)
    bool deny = false;  // AuthorizationPolicy action
    size_t rules = 0;
    size_t l7_rules = 0;  // ALLOW rules that never match (L7 fields), or DENY rules with L7 parts dropped
  };
  std::vector<PolicyInfo> Policies() const;

  // Things that were loaded but not (fully) enforced, each with "FILE:LINE: ".
  const std::vector<std::string>& warnings() const { return warnings_; }
  size_t peer_authentication_count() const;
  size_t authorization_policy_count() const;
  const std::string& root_namespace() const { return root_namespace_; }

 private:
  friend struct internal::Builder;
  PolicySet();

  // Each of these fields is filled once by the builder and never changed.
  std::string root_namespace_;
  std::vector<std::string> warnings_;
  std::unique_ptr<internal::Index> index_;
};

// Holds the policy in force and reloads the directory when it changes (inotify, debounced).
// A reload that fails keeps the last good set, so a typo never opens or closes the mesh.
class PolicyStore {
 public:
  using ReloadCallback = std::function<void(const std::shared_ptr<const PolicySet>&)>;
  static constexpr std::chrono::milliseconds kDebounce{100};

  // Fails if the initial load fails. `on_reload` (may be empty) runs after every successful
  // reload, not for the initial load: on the loop thread for directory changes, on the caller's
  // thread for Reload(). `loop` must outlive the store; destroy the store on the loop thread.
  // `on_reload_failed` (may be empty) runs, on the same threads, after every reload that failed.
  using ReloadFailedCallback = std::function<void(const absl::Status&)>;
  static absl::StatusOr<std::unique_ptr<PolicyStore>> Create(EventLoop& loop, std::string dir,
                                                             std::string root_namespace,
                                                             ReloadCallback on_reload,
                                                             ReloadFailedCallback on_reload_failed = nullptr);
  ~PolicyStore();
  PolicyStore(const PolicyStore&) = delete;
  PolicyStore& operator=(const PolicyStore&) = delete;

  // Thread-safe.
  std::shared_ptr<const PolicySet> Current() const;
  // Explicit reload (SIGHUP). On error the last good set stays and the error is returned.
  absl::Status Reload();
  // The last reload error; cleared by a good reload. Thread-safe.
  std::optional<std::string> last_error() const;
  const std::string& directory() const { return dir_; }

 private:
  PolicyStore(std::string dir, std::string root_namespace, ReloadCallback on_reload,
              std::shared_ptr<const PolicySet> initial);

  const std::string dir_;
  const std::string root_namespace_;
  ReloadCallback on_reload_;
  ReloadFailedCallback on_reload_failed_;
  std::mutex reload_mutex_;  // serializes reloads (watcher and SIGHUP may race)
  mutable std::mutex mutex_;
  std::shared_ptr<const PolicySet> current_;  // guarded by mutex_
  std::optional<std::string> last_error_;     // guarded by mutex_
  std::unique_ptr<FileWatcher> watcher_;
};

}  // namespace meshtls::policy
