#pragma once

// The compiled form of the policies: everything evaluation needs is decided at load time (which
// fields are present, wildcard kinds, parsed CIDRs and ports), so Authorize() only compares.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "meshtls/common/ip_address.h"
#include "meshtls/policy/policy.h"

namespace meshtls::policy::internal {

enum class ModeSetting { kUnset, kStrict, kPermissive, kDisable };

struct Origin {
  std::string file;
  int line = 0;  // 1-based
};

using Selector = std::map<std::string, std::string>;  // matchLabels; empty: no selector

bool SelectorMatches(const Selector& selector, const std::map<std::string, std::string>& labels);

struct PeerAuthentication {
  std::string namespace_name;
  std::string name;
  std::string id;  // "ns/name"
  Origin origin;
  Selector selector;
  ModeSetting mode = ModeSetting::kUnset;
  std::map<uint16_t, ModeSetting> port_modes;  // only kept when there is a selector
};

// Istio's string forms: exact, "*" (any non-empty value), "prefix*", "*suffix".
struct StringMatch {
  enum class Kind { kExact, kPrefix, kSuffix, kPresence };
  Kind kind = Kind::kExact;
  std::string value;
  bool Matches(std::string_view text) const;
};

// A field that is absent and a field that is an empty list mean the same in Istio (proto
// repeated fields), so "present" is "non-empty" throughout.
struct Source {
  std::vector<StringMatch> principals, not_principals;
  std::vector<StringMatch> namespaces, not_namespaces;
  std::vector<Cidr> ip_blocks, not_ip_blocks;
  std::vector<Cidr> remote_ip_blocks, not_remote_ip_blocks;
};

struct Operation {
  std::vector<uint16_t> ports, not_ports;
};

enum class ConditionKey { kSourceIp, kSourceNamespace, kSourcePrincipal, kDestinationPort };

struct Condition {
  ConditionKey key = ConditionKey::kSourceIp;
  std::vector<StringMatch> values, not_values;   // source.namespace / source.principal
  std::vector<Cidr> ip_values, not_ip_values;    // source.ip / remote.ip
  std::vector<uint16_t> port_values, not_port_values;  // destination.port
};

struct Rule {
  std::vector<Source> from;     // empty: any source
  std::vector<Operation> to;    // empty: any operation
  std::vector<Condition> when;  // the L4 conditions only
  bool uses_l7 = false;         // some field or condition could not be compiled to L4
};

enum class Action { kAllow, kDeny };

struct AuthorizationPolicy {
  std::string namespace_name;
  std::string name;
  std::string id;  // "ns/name"
  Origin origin;
  Selector selector;
  Action action = Action::kAllow;
  std::vector<Rule> rules;  // ALLOW without rules selects and matches nothing: deny all
  size_t l7_rules = 0;      // rules with uses_l7, for the reason string of a denial
};

// Whether `rule` of a policy with `action` matches. For DENY, L7 parts were dropped at load
// time (the rule matches more); for ALLOW a rule using L7 never matches.
bool RuleMatches(const Rule& rule, Action action, const SourceAttributes& source);

// Accumulates documents from any number of files, then builds one PolicySet.
struct Builder {
  explicit Builder(std::string root) : root_namespace(std::move(root)) {}
  absl::Status AddYaml(std::string_view yaml, const std::string& file_name);
  absl::StatusOr<std::shared_ptr<const PolicySet>> Finish();

  std::string root_namespace;
  std::vector<std::string> warnings;
  std::vector<std::unique_ptr<PeerAuthentication>> peer_authentications;
  std::vector<std::unique_ptr<AuthorizationPolicy>> authorization_policies;
};

}  // namespace meshtls::policy::internal

namespace meshtls::policy::internal {

// Per-namespace lists, so a decision only looks at the policies of the target's namespace and
// of the root namespace.
struct Index {
  struct Namespace {
    const internal::PeerAuthentication* namespace_wide = nullptr;
    std::vector<const internal::PeerAuthentication*> workload;  // by name: the first match wins
    std::vector<const internal::AuthorizationPolicy*> deny;
    std::vector<const internal::AuthorizationPolicy*> allow;
  };
  const Namespace* Find(std::string_view name) const {
    auto it = namespaces.find(name);
    return it == namespaces.end() ? nullptr : &it->second;
  }

  std::vector<std::unique_ptr<internal::PeerAuthentication>> peer_authentications;
  std::vector<std::unique_ptr<internal::AuthorizationPolicy>> authorization_policies;
  std::map<std::string, Namespace, std::less<>> namespaces;
  const internal::PeerAuthentication* mesh = nullptr;
};

}  // namespace meshtls::policy::internal
