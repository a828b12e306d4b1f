#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/policy/policy.h"
#include "model.h"

namespace meshtls::policy {
namespace internal {
namespace {

std::string Where(const Origin& origin) { return StrCat(origin.file, ":", origin.line); }

bool AnyMatches(const std::vector<StringMatch>& matches, const std::optional<std::string>& value) {
  if (!value) return false;
  for (const StringMatch& match : matches) {
    if (match.Matches(*value)) return true;
  }
  return false;
}

// Istio compares a plaintext peer's (empty) identity against the list, so notPrincipals and
// notNamespaces match plaintext; its security bulletin ISTIO-SECURITY-2021-004 calls that a trap
// for ALLOW. We take the side that denies more: for ALLOW they never match plaintext, for DENY
// they do (which keeps Istio's "DENY notPrincipals: ['*']" recipe for rejecting plaintext).
bool NoneMatches(const std::vector<StringMatch>& matches, const std::optional<std::string>& value, Action action) {
  if (!value) return action == Action::kDeny;
  return !AnyMatches(matches, value);
}

bool AnyContains(const std::vector<Cidr>& cidrs, const IpAddress& address) {
  for (const Cidr& cidr : cidrs) {
    if (cidr.Contains(address)) return true;
  }
  return false;
}

bool HasPort(const std::vector<uint16_t>& ports, uint16_t port) {
  return std::find(ports.begin(), ports.end(), port) != ports.end();
}

// Each *Mismatch names the first part that does not match (for `policy check`), or is empty when
// everything matches: the data path and the explanation share this one evaluation.
std::string_view SourceMismatch(const Source& s, Action action, const SourceAttributes& source) {
  if (!s.principals.empty() && !AnyMatches(s.principals, source.principal)) return "principals";
  if (!s.not_principals.empty() && !NoneMatches(s.not_principals, source.principal, action)) return "notPrincipals";
  if (!s.namespaces.empty() && !AnyMatches(s.namespaces, source.namespace_name)) return "namespaces";
  if (!s.not_namespaces.empty() && !NoneMatches(s.not_namespaces, source.namespace_name, action)) return "notNamespaces";
  if (!s.ip_blocks.empty() && !AnyContains(s.ip_blocks, source.source_ip)) return "ipBlocks";
  if (!s.not_ip_blocks.empty() && AnyContains(s.not_ip_blocks, source.source_ip)) return "notIpBlocks";
  if (!s.remote_ip_blocks.empty() && !AnyContains(s.remote_ip_blocks, source.source_ip)) return "remoteIpBlocks";
  if (!s.not_remote_ip_blocks.empty() && AnyContains(s.not_remote_ip_blocks, source.source_ip)) return "notRemoteIpBlocks";
  return {};
}

std::string_view OperationMismatch(const Operation& operation, const SourceAttributes& source) {
  if (!operation.ports.empty() && !HasPort(operation.ports, source.destination_port)) return "ports";
  if (!operation.not_ports.empty() && HasPort(operation.not_ports, source.destination_port)) return "notPorts";
  return {};
}

std::string_view ConditionKeyName(ConditionKey key) {
  switch (key) {
    case ConditionKey::kSourceIp:
      return "source.ip";
    case ConditionKey::kSourceNamespace:
      return "source.namespace";
    case ConditionKey::kSourcePrincipal:
      return "source.principal";
    case ConditionKey::kDestinationPort:
      return "destination.port";
  }
  return "?";
}

bool ConditionMatches(const Condition& c, Action action, const SourceAttributes& source) {
  switch (c.key) {
    case ConditionKey::kSourceIp:
      return (c.ip_values.empty() || AnyContains(c.ip_values, source.source_ip)) &&
             (c.not_ip_values.empty() || !AnyContains(c.not_ip_values, source.source_ip));
    case ConditionKey::kSourceNamespace:
      return (c.values.empty() || AnyMatches(c.values, source.namespace_name)) &&
             (c.not_values.empty() || NoneMatches(c.not_values, source.namespace_name, action));
    case ConditionKey::kSourcePrincipal:
      return (c.values.empty() || AnyMatches(c.values, source.principal)) &&
             (c.not_values.empty() || NoneMatches(c.not_values, source.principal, action));
    case ConditionKey::kDestinationPort:
      return (c.port_values.empty() || HasPort(c.port_values, source.destination_port)) &&
             (c.not_port_values.empty() || !HasPort(c.not_port_values, source.destination_port));
  }
  return false;
}

// Empty when the rule matches; otherwise the part that did not ("from.principals",
// "to.ports", "when source.ip", "L7 fields"). Only the explanation reads the text.
std::string RuleMismatch(const Rule& rule, Action action, const SourceAttributes& source) {
  if (rule.uses_l7 && action == Action::kAllow) return "uses L7 fields, which never match at L4";
  if (!rule.from.empty()) {
    std::string_view first;
    bool any = false;
    for (const Source& s : rule.from) {
      std::string_view miss = SourceMismatch(s, action, source);
      if (miss.empty()) {
        any = true;
        break;
      }
      if (first.empty()) first = miss;
    }
    if (!any) {
      std::string why = rule.from.size() == 1 ? StrCat("from.", first) : StrCat("no from entry matched (first: ", first, ")");
      if (!source.principal && (first == "principals" || first == "namespaces")) why += " (plaintext has no identity)";
      return why;
    }
  }
  if (!rule.to.empty()) {
    std::string_view first;
    bool any = false;
    for (const Operation& operation : rule.to) {
      std::string_view miss = OperationMismatch(operation, source);
      if (miss.empty()) {
        any = true;
        break;
      }
      if (first.empty()) first = miss;
    }
    if (!any) return StrCat("to.", first, " (port ", source.destination_port, ")");
  }
  for (const Condition& condition : rule.when) {
    if (!ConditionMatches(condition, action, source)) return StrCat("when ", ConditionKeyName(condition.key));
  }
  return {};
}

MtlsMode ToMode(ModeSetting setting) {
  switch (setting) {
    case ModeSetting::kStrict:
      return MtlsMode::kStrict;
    case ModeSetting::kDisable:
      return MtlsMode::kDisable;
    case ModeSetting::kPermissive:
    case ModeSetting::kUnset:
      break;
  }
  return MtlsMode::kPermissive;
}

// Two selectors can pick the same workload unless some label is required with different values.
bool SelectorsOverlap(const Selector& a, const Selector& b) {
  for (const auto& [key, value] : a) {
    auto it = b.find(key);
    if (it != b.end() && it->second != value) return false;
  }
  return true;
}

}  // namespace

bool StringMatch::Matches(std::string_view text) const {
  switch (kind) {
    case Kind::kExact:
      return text == value;
    case Kind::kPrefix:
      return text.starts_with(value);
    case Kind::kSuffix:
      return text.ends_with(value);
    case Kind::kPresence:
      return !text.empty();
  }
  return false;
}

bool SelectorMatches(const Selector& selector, const std::map<std::string, std::string>& labels) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

bool RuleMatches(const Rule& rule, Action action, const SourceAttributes& source) {
  if (rule.uses_l7 && action == Action::kAllow) return false;
  if (!rule.from.empty() && std::none_of(rule.from.begin(), rule.from.end(), [&](const Source& s) {
        return SourceMismatch(s, action, source).empty();
      })) {
    return false;
  }
  if (!rule.to.empty() && std::none_of(rule.to.begin(), rule.to.end(), [&](const Operation& operation) {
        return OperationMismatch(operation, source).empty();
      })) {
    return false;
  }
  return std::all_of(rule.when.begin(), rule.when.end(),
                     [&](const Condition& condition) { return ConditionMatches(condition, action, source); });
}

absl::StatusOr<std::shared_ptr<const PolicySet>> Builder::Finish() {
  auto by_id = [](const auto& a, const auto& b) {
    return std::tie(a->namespace_name, a->name) < std::tie(b->namespace_name, b->name);
  };
  std::stable_sort(peer_authentications.begin(), peer_authentications.end(), by_id);
  std::stable_sort(authorization_policies.begin(), authorization_policies.end(), by_id);
  auto check_unique = [](const auto& list, std::string_view kind) -> absl::Status {
    for (size_t i = 1; i < list.size(); ++i) {
      if (list[i]->id == list[i - 1]->id) {
        return absl::InvalidArgumentError(StrCat(Where(list[i]->origin), ": duplicate ", kind, " ", list[i]->id,
                                                 " (also defined at ", Where(list[i - 1]->origin), ")"));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_unique(peer_authentications, "PeerAuthentication"));
  RETURN_IF_ERROR(check_unique(authorization_policies, "AuthorizationPolicy"));

  std::shared_ptr<PolicySet> set(new PolicySet());
  set->root_namespace_ = root_namespace;
  auto& index = *set->index_;
  for (const auto& policy : peer_authentications) {
    auto& space = index.namespaces[policy->namespace_name];
    if (!policy->selector.empty()) {
      for (const PeerAuthentication* other : space.workload) {
        if (SelectorsOverlap(other->selector, policy->selector)) {
          // Istio picks the oldest; files have no creation time, so the name decides.
          warnings.push_back(StrCat(Where(policy->origin), ": PeerAuthentication ", policy->id, " and ", other->id,
                                    " can select the same workload; where both do, ", other->id,
                                    " wins (first by name)"));
        }
      }
      space.workload.push_back(policy.get());
      continue;
    }
    if (space.namespace_wide != nullptr) {
      warnings.push_back(StrCat(Where(policy->origin), ": PeerAuthentication ", policy->id, " is ignored: ",
                                space.namespace_wide->id, " also applies to the whole ",
                                policy->namespace_name == root_namespace ? "mesh" : "namespace",
                                " and wins (first by name)"));
      continue;
    }
    space.namespace_wide = policy.get();
    if (policy->namespace_name == root_namespace) index.mesh = policy.get();
  }
  for (const auto& policy : authorization_policies) {
    auto& space = index.namespaces[policy->namespace_name];
    (policy->action == Action::kDeny ? space.deny : space.allow).push_back(policy.get());
  }
  set->warnings_ = std::move(warnings);
  index.peer_authentications = std::move(peer_authentications);
  index.authorization_policies = std::move(authorization_policies);
  return std::shared_ptr<const PolicySet>(std::move(set));
}

}  // namespace internal

using internal::Action;
using internal::AuthorizationPolicy;
using internal::ModeSetting;
using internal::PeerAuthentication;

std::string_view MtlsModeName(MtlsMode mode) {
  switch (mode) {
    case MtlsMode::kStrict:
      return "STRICT";
    case MtlsMode::kPermissive:
      return "PERMISSIVE";
    case MtlsMode::kDisable:
      return "DISABLE";
  }
  return "PERMISSIVE";
}

PolicySet::PolicySet() : index_(std::make_unique<internal::Index>()) {}
PolicySet::~PolicySet() = default;

absl::StatusOr<std::shared_ptr<const PolicySet>> PolicySet::Parse(std::string_view yaml, const std::string& file_name,
                                                                  const std::string& root_namespace) {
  internal::Builder builder(root_namespace);
  RETURN_IF_ERROR(builder.AddYaml(yaml, file_name));
  return builder.Finish();
}

absl::StatusOr<std::shared_ptr<const PolicySet>> PolicySet::LoadDirectory(const std::string& dir,
                                                                          const std::string& root_namespace) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error) return absl::NotFoundError(StrCat("policy directory ", dir, ": ", error.message()));
  std::vector<fs::path> files;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    if (error) return absl::UnavailableError(StrCat("listing ", dir, ": ", error.message()));
    std::string name = it->path().filename().string();
    // Hidden names include a ConfigMap volume's "..data" and "..2024_..." directories; the
    // visible entries are symlinks into them, followed below.
    if (name.starts_with(".")) continue;
    std::string extension = it->path().extension().string();
    if (extension != ".yaml" && extension != ".yml") continue;
    if (!fs::is_regular_file(it->path(), error)) continue;
    files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  internal::Builder builder(root_namespace);
  for (const fs::path& path : files) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    if (!in && !in.eof()) return absl::UnavailableError(StrCat("reading ", path.string()));
    RETURN_IF_ERROR(builder.AddYaml(content.str(), path.string()));
  }
  return builder.Finish();
}

size_t PolicySet::peer_authentication_count() const { return index_->peer_authentications.size(); }
size_t PolicySet::authorization_policy_count() const { return index_->authorization_policies.size(); }

namespace {

using internal::Index;

struct ModeResolution {
  const PeerAuthentication* workload = nullptr;  // the workload-level policy, for port levels
  const PeerAuthentication* decided = nullptr;   // the first policy with a mode other than UNSET
  MtlsMode mode = MtlsMode::kPermissive;
};

ModeResolution Resolve(const Index& index, const PolicyTarget& target) {
  ModeResolution result;
  const Index::Namespace* space = index.Find(target.namespace_name);
  if (space != nullptr) {
    for (const PeerAuthentication* policy : space->workload) {
      if (internal::SelectorMatches(policy->selector, target.labels)) {
        result.workload = policy;
        break;
      }
    }
  }
  const PeerAuthentication* chain[] = {result.workload, space != nullptr ? space->namespace_wide : nullptr,
                                       index.mesh};
  for (const PeerAuthentication* policy : chain) {
    if (policy != nullptr && policy->mode != ModeSetting::kUnset) {
      result.decided = policy;
      result.mode = internal::ToMode(policy->mode);
      break;
    }
  }
  return result;
}

}  // namespace

std::pair<MtlsMode, ModeLevel> PolicySet::ModeAndLevelFor(const PolicyTarget& target, uint16_t port) const {
  ModeResolution resolution = Resolve(*index_, target);
  if (resolution.workload != nullptr) {
    auto it = resolution.workload->port_modes.find(port);
    if (it != resolution.workload->port_modes.end() && it->second != ModeSetting::kUnset) {
      return {internal::ToMode(it->second), ModeLevel::kPort};
    }
  }
  ModeLevel level = ModeLevel::kDefault;
  if (resolution.decided == nullptr) {
    level = ModeLevel::kDefault;
  } else if (resolution.decided == resolution.workload) {
    level = ModeLevel::kWorkload;
  } else if (resolution.decided == index_->mesh) {
    level = ModeLevel::kMesh;
  } else {
    level = ModeLevel::kNamespace;
  }
  return {resolution.mode, level};
}

MtlsMode PolicySet::ModeFor(const PolicyTarget& target, uint16_t port) const {
  return ModeAndLevelFor(target, port).first;
}

namespace {

// The one authorization walk. `trace` null (the data path): stops at the first decision. Non-null
// (Explain): evaluates every selecting policy and records each, the decision staying the same.
Decision Evaluate(const Index& index, const std::string& root_namespace, const PolicyTarget& target,
                  const SourceAttributes& source, std::vector<ConsideredPolicy>* trace, std::string* reason_code) {
  const Index::Namespace* spaces[2] = {
      index.Find(target.namespace_name),
      target.namespace_name != root_namespace ? index.Find(root_namespace) : nullptr};
  std::optional<Decision> decided;
  auto consider = [&](const AuthorizationPolicy* policy, bool deny) -> int {
    const Action action = deny ? Action::kDeny : Action::kAllow;
    int matched = -1;
    for (size_t i = 0; i < policy->rules.size(); ++i) {
      if (internal::RuleMatches(policy->rules[i], action, source)) {
        matched = static_cast<int>(i);
        break;
      }
    }
    if (trace != nullptr) {
      ConsideredPolicy entry{policy->id, deny, matched >= 0, matched, {}};
      if (matched >= 0) {
        entry.why = StrCat("rule ", matched, " matched");
      } else if (policy->rules.empty()) {
        entry.why = deny ? "no rules: a DENY without rules matches nothing" : "no rules (spec: {}): denies every connection";
      } else {
        for (size_t i = 0; i < policy->rules.size(); ++i) {
          StrAppend(&entry.why, i == 0 ? "" : "; ", "rule ", i, ": ",
                    internal::RuleMismatch(policy->rules[i], action, source));
        }
      }
      trace->push_back(std::move(entry));
    }
    return matched;
  };
  for (const Index::Namespace* space : spaces) {
    if (space == nullptr) continue;
    for (const AuthorizationPolicy* policy : space->deny) {
      if (!internal::SelectorMatches(policy->selector, target.labels)) continue;
      const int rule = consider(policy, true);
      if (rule >= 0 && !decided) {
        decided = Decision{false, policy->id, StrCat("denied by DENY policy ", policy->id, " rule ", rule)};
        if (reason_code != nullptr) *reason_code = "deny_policy_matched";
        if (trace == nullptr) return *decided;
      }
    }
  }
  size_t selecting = 0;
  size_t l7_rules = 0;
  for (const Index::Namespace* space : spaces) {
    if (space == nullptr) continue;
    for (const AuthorizationPolicy* policy : space->allow) {
      if (!internal::SelectorMatches(policy->selector, target.labels)) continue;
      ++selecting;
      l7_rules += policy->l7_rules;
      const int rule = consider(policy, false);
      if (rule >= 0 && !decided) {
        decided = Decision{true, policy->id, StrCat("allowed by ALLOW policy ", policy->id, " rule ", rule)};
        if (reason_code != nullptr) *reason_code = "allow_policy_matched";
        if (trace == nullptr) return *decided;
      }
    }
  }
  if (decided) return *decided;
  if (selecting == 0) {
    if (reason_code != nullptr) *reason_code = "default_allow";
    return Decision{true, "", "allowed: no ALLOW policy selects this workload"};
  }
  std::string reason = StrCat("no ALLOW policy matched (", selecting, selecting == 1 ? " selects" : " select",
                              " this workload");
  if (l7_rules > 0) StrAppend(&reason, "; ", l7_rules, " rule(s) using L7 fields never match");
  reason += ")";
  if (reason_code != nullptr) *reason_code = l7_rules > 0 ? "l7_rule_ignored" : "no_allow_policy_matched";
  return Decision{false, "", std::move(reason)};
}

}  // namespace

Decision PolicySet::Authorize(const PolicyTarget& target, const SourceAttributes& source) const {
  return Evaluate(*index_, root_namespace_, target, source, nullptr, nullptr);
}

Explanation PolicySet::Explain(const PolicyTarget& target, const SourceAttributes& source) const {
  Explanation out;
  std::tie(out.mode, out.mode_level) = ModeAndLevelFor(target, source.destination_port);
  const ModeResolution resolution = Resolve(*index_, target);
  if (out.mode_level == ModeLevel::kPort) {
    out.peer_authentication = resolution.workload->id;
  } else if (resolution.decided != nullptr) {
    out.peer_authentication = resolution.decided->id;
  }
  // The policies are evaluated (and listed) even when STRICT refuses plaintext first, so the
  // answer also shows what would happen once the client has mTLS.
  Decision decision = Evaluate(*index_, root_namespace_, target, source, &out.considered, &out.reason_code);
  if (!source.principal && out.mode == MtlsMode::kStrict) {
    out.allowed = false;
    out.reason_code = "plaintext_in_strict";
    out.reason = StrCat("plaintext refused: port ", source.destination_port, " is STRICT (mutual TLS only)");
    return out;
  }
  out.allowed = decision.allowed;
  out.policy = std::move(decision.policy);
  out.reason = std::move(decision.reason);
  return out;
}

std::string_view ModeLevelName(ModeLevel level) {
  switch (level) {
    case ModeLevel::kDefault:
      return "default";
    case ModeLevel::kMesh:
      return "mesh";
    case ModeLevel::kNamespace:
      return "namespace";
    case ModeLevel::kWorkload:
      return "workload";
    case ModeLevel::kPort:
      return "port";
  }
  return "default";
}

std::vector<PolicySet::PolicyInfo> PolicySet::Policies() const {
  std::vector<PolicyInfo> out;
  for (const auto& policy : index_->peer_authentications) {
    PolicyInfo info;
    info.id = policy->id;
    info.kind = "PeerAuthentication";
    info.namespace_name = policy->namespace_name;
    info.selector = policy->selector;
    info.where = StrCat(policy->origin.file, ":", policy->origin.line);
    if (policy->mode != ModeSetting::kUnset) info.mode = internal::ToMode(policy->mode);
    for (const auto& [port, setting] : policy->port_modes) {
      if (setting != ModeSetting::kUnset) info.port_modes[port] = internal::ToMode(setting);
    }
    out.push_back(std::move(info));
  }
  for (const auto& policy : index_->authorization_policies) {
    PolicyInfo info;
    info.id = policy->id;
    info.kind = "AuthorizationPolicy";
    info.namespace_name = policy->namespace_name;
    info.selector = policy->selector;
    info.where = StrCat(policy->origin.file, ":", policy->origin.line);
    info.deny = policy->action == Action::kDeny;
    info.rules = policy->rules.size();
    info.l7_rules = policy->l7_rules;
    out.push_back(std::move(info));
  }
  return out;
}

PolicySet::Effective PolicySet::Describe(const PolicyTarget& target) const {
  Effective effective;
  ModeResolution resolution = Resolve(*index_, target);
  effective.mode = resolution.mode;
  if (resolution.decided != nullptr) effective.peer_authentication = resolution.decided->id;
  if (resolution.workload != nullptr) {
    for (const auto& [port, setting] : resolution.workload->port_modes) {
      effective.port_modes[port] = setting == ModeSetting::kUnset ? resolution.mode : internal::ToMode(setting);
    }
  }
  const Index::Namespace* spaces[2] = {
      index_->Find(target.namespace_name),
      target.namespace_name != root_namespace_ ? index_->Find(root_namespace_) : nullptr};
  std::vector<std::pair<std::string, std::string_view>> selected;
  for (bool deny : {true, false}) {
    for (const Index::Namespace* space : spaces) {
      if (space == nullptr) continue;
      for (const AuthorizationPolicy* policy : deny ? space->deny : space->allow) {
        if (!internal::SelectorMatches(policy->selector, target.labels)) continue;
        effective.authorization_policies.push_back(policy->id);
        selected.emplace_back(policy->id, deny ? "DENY" : "ALLOW");
      }
    }
  }

  std::string& out = effective.summary;
  StrAppend(&out, "mode: ", MtlsModeName(effective.mode), "\n");
  StrAppend(&out, "peer_authentication: ",
            effective.peer_authentication.empty() ? std::string("(none: Istio's default)")
                                                  : effective.peer_authentication,
            "\n");
  if (!effective.port_modes.empty()) {
    out += "port_modes:\n";
    for (const auto& [port, mode] : effective.port_modes) StrAppend(&out, "  ", port, ": ", MtlsModeName(mode), "\n");
  }
  if (selected.empty()) {
    out += "authorization_policies: []  # every connection is allowed\n";
  } else {
    out += "authorization_policies:\n";
    for (const auto& [id, action] : selected) StrAppend(&out, "  - ", id, "  # ", action, "\n");
  }
  return effective;
}

}  // namespace meshtls::policy
