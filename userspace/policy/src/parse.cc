// YAML → model. Validation is strict (unknown fields are errors) because a typo in a security
// policy silently changes what it allows: "specs:" would leave an empty spec (deny all) and
// "principal:" would drop a restriction.

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "model.h"

namespace meshtls::policy::internal {
namespace {

constexpr std::string_view kGroupPrefix = "security.istio.io/";

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                  std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for a near miss, else the list of what is accepted.
std::string Hint(std::string_view got, std::initializer_list<std::string_view> known) {
  std::string_view best;
  size_t best_distance = 3;
  for (std::string_view candidate : known) {
    size_t distance = EditDistance(got, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  if (!best.empty()) return StrCat(" (did you mean '", best, "'?)");
  std::string list;
  for (std::string_view candidate : known) StrAppend(&list, list.empty() ? "" : ", ", candidate);
  return StrCat(" (expected one of: ", list, ")");
}

struct Field {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

class Fields {
 public:
  const Field* Find(std::string_view key) const {
    for (const Field& field : fields_) {
      if (field.key == key) return &field;
    }
    return nullptr;
  }
  std::vector<Field>& all() { return fields_; }
  const std::vector<Field>& all() const { return fields_; }

 private:
  std::vector<Field> fields_;
};

const std::initializer_list<std::string_view> kObjectFields = {"apiVersion", "kind", "metadata", "spec",
                                                                   "status"};
const std::initializer_list<std::string_view> kMetadataFields = {
    "name",     "namespace",       "labels",   "annotations",     "uid",          "resourceVersion",
    "generation", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields",
    "ownerReferences", "finalizers", "generateName", "selfLink"};
const std::initializer_list<std::string_view> kPeerAuthenticationFields = {"selector", "mtls", "portLevelMtls"};
const std::initializer_list<std::string_view> kAuthorizationFields = {"selector", "action", "rules", "provider",
                                                                          "targetRef", "targetRefs"};
const std::initializer_list<std::string_view> kSelectorFields = {"matchLabels"};
const std::initializer_list<std::string_view> kMtlsFields = {"mode"};
const std::initializer_list<std::string_view> kRuleFields = {"from", "to", "when"};
const std::initializer_list<std::string_view> kFromFields = {"source"};
const std::initializer_list<std::string_view> kToFields = {"operation"};
const std::initializer_list<std::string_view> kConditionFields = {"key", "values", "notValues"};
const std::initializer_list<std::string_view> kSourceFields = {
    "principals",     "notPrincipals",     "requestPrincipals", "notRequestPrincipals", "namespaces",
    "notNamespaces",  "ipBlocks",          "notIpBlocks",       "remoteIpBlocks",       "notRemoteIpBlocks",
    "serviceAccounts", "notServiceAccounts"};
const std::initializer_list<std::string_view> kOperationFields = {"hosts",   "notHosts", "ports",   "notPorts",
                                                                      "methods", "notMethods", "paths", "notPaths"};
const std::initializer_list<std::string_view> kL4ConditionKeys = {"source.ip", "remote.ip", "source.namespace",
                                                                      "source.principal", "destination.port"};

struct Item {
  std::string text;
  YAML::Node node;
};

class DocumentParser {
 public:
  DocumentParser(const std::string& file, Builder& builder) : file_(file), builder_(builder) {}

  absl::Status ParseDocument(const YAML::Node& doc) {
    if (!doc.IsDefined() || doc.IsNull()) return absl::OkStatus();
    context_.clear();
    last_line_ = std::max(1, Line(doc));
    if (!doc.IsMap()) {
      return Error(doc, "expected a Kubernetes object (a map with apiVersion, kind, metadata and spec)");
    }
    ASSIGN_OR_RETURN(std::string api_version, TopLevelScalar(doc, "apiVersion"));
    ASSIGN_OR_RETURN(std::string kind, TopLevelScalar(doc, "kind"));
    if (kind == "List" && api_version == "v1") return ParseList(doc);
    // Anything else in the directory (a ConfigMap, a Deployment) is someone else's business.
    if (!api_version.starts_with(kGroupPrefix)) {
      Warn(doc, StrCat("skipped ", kind.empty() ? std::string("a document without kind") : kind, " (apiVersion '",
                       api_version, "'): not an Istio security policy"));
      return absl::OkStatus();
    }
    if (kind != "PeerAuthentication" && kind != "AuthorizationPolicy") {
      Warn(doc, StrCat("skipped ", kind, ": only PeerAuthentication and AuthorizationPolicy are enforced"));
      return absl::OkStatus();
    }
    std::string_view version = std::string_view(api_version).substr(kGroupPrefix.size());
    if (version != "v1" && version != "v1beta1") {
      Warn(doc, StrCat("skipped ", kind, " with apiVersion '", api_version,
                       "': only security.istio.io/v1 and v1beta1 are supported"));
      return absl::OkStatus();
    }

    ASSIGN_OR_RETURN(Fields object, FieldsOf(doc, "the object", kObjectFields));
    const Field* metadata = object.Find("metadata");
    if (metadata == nullptr) return Error(doc, StrCat(kind, " has no metadata (metadata.name is required)"));
    if (!metadata->value.IsMap()) return Error(metadata->value, "metadata must be a map");
    ASSIGN_OR_RETURN(Fields meta, FieldsOf(metadata->value, "metadata", kMetadataFields));
    ASSIGN_OR_RETURN(std::string name, OptionalScalar(meta, "name"));
    if (name.empty()) return Error(metadata->value, StrCat(kind, " has no metadata.name"));
    ASSIGN_OR_RETURN(std::string namespace_name, OptionalScalar(meta, "namespace"));
    if (namespace_name.empty()) namespace_name = "default";
    id_ = StrCat(namespace_name, "/", name);
    origin_ = Origin{file_, Line(doc)};
    context_ = StrCat(kind, " ", id_, ": ");

    YAML::Node spec;
    if (const Field* field = object.Find("spec")) spec = field->value;
    if (spec.IsDefined() && !spec.IsNull() && !spec.IsMap()) return Error(spec, "spec must be a map");
    if (kind == "PeerAuthentication") return ParsePeerAuthentication(spec, std::move(namespace_name), std::move(name));
    return ParseAuthorizationPolicy(spec, std::move(namespace_name), std::move(name));
  }

 private:
  int Line(const YAML::Node& node) const {
    YAML::Mark mark = node.Mark();
    return mark.line >= 0 ? mark.line + 1 : last_line_;
  }
  absl::Status Error(const YAML::Node& at, std::string_view message) {
    return absl::InvalidArgumentError(StrCat(file_, ":", Line(at), ": ", context_, message));
  }
  void Warn(const YAML::Node& at, std::string_view message) {
    builder_.warnings.push_back(StrCat(file_, ":", Line(at), ": ", context_, message));
  }

  absl::StatusOr<Fields> FieldsOf(const YAML::Node& map, std::string_view what,
                                  std::initializer_list<std::string_view> known) {
    Fields fields;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar()) return Error(it->first, StrCat("field names in ", what, " must be strings"));
      std::string key = it->first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        return Error(it->first, StrCat("unknown field '", key, "' in ", what, Hint(key, known)));
      }
      if (fields.Find(key) != nullptr) return Error(it->first, StrCat("field '", key, "' appears twice in ", what));
      fields.all().push_back(Field{key, it->first, it->second});
    }
    return fields;
  }

  // Read before knowing the kind, so without judging the other fields (not ours to judge).
  absl::StatusOr<std::string> TopLevelScalar(const YAML::Node& doc, std::string_view key) {
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      if (!it->first.IsScalar() || it->first.Scalar() != key) continue;
      if (it->second.IsNull()) return std::string();
      if (!it->second.IsScalar()) return Error(it->second, StrCat("'", key, "' must be a string"));
      return it->second.Scalar();
    }
    return std::string();
  }

  absl::StatusOr<std::string> OptionalScalar(const Fields& fields, std::string_view key) {
    const Field* field = fields.Find(key);
    if (field == nullptr || field->value.IsNull()) return std::string();
    if (!field->value.IsScalar()) return Error(field->value, StrCat("'", key, "' must be a string"));
    return field->value.Scalar();
  }

  // A YAML list of scalars; null or absent is empty (as in Istio, where empty means absent).
  absl::StatusOr<std::vector<Item>> ScalarList(const Fields& fields, std::string_view key) {
    std::vector<Item> items;
    const Field* field = fields.Find(key);
    if (field == nullptr || field->value.IsNull()) return items;
    if (!field->value.IsSequence()) {
      return Error(field->value, StrCat("'", key, "' must be a list, e.g. ", key, ": [\"...\"]"));
    }
    for (const YAML::Node& entry : field->value) {
      if (!entry.IsScalar()) return Error(entry, StrCat("entries of '", key, "' must be strings"));
      items.push_back(Item{entry.Scalar(), entry});
    }
    return items;
  }

  // The list of maps under `key` (rules, from, to, when).
  absl::StatusOr<std::vector<YAML::Node>> MapList(const Fields& fields, std::string_view key) {
    std::vector<YAML::Node> maps;
    const Field* field = fields.Find(key);
    if (field == nullptr || field->value.IsNull()) return maps;
    if (!field->value.IsSequence()) return Error(field->value, StrCat("'", key, "' must be a list"));
    for (const YAML::Node& entry : field->value) {
      if (entry.IsNull()) {
        maps.push_back(YAML::Node(YAML::NodeType::Map));
        continue;
      }
      if (!entry.IsMap()) return Error(entry, StrCat("entries of '", key, "' must be maps"));
      maps.push_back(entry);
    }
    return maps;
  }

  absl::Status ParseList(const YAML::Node& doc) {
    ASSIGN_OR_RETURN(Fields list, FieldsOf(doc, "the List", {"apiVersion", "kind", "metadata", "items"}));
    const Field* items = list.Find("items");
    if (items == nullptr || items->value.IsNull()) return absl::OkStatus();
    if (!items->value.IsSequence()) return Error(items->value, "'items' must be a list");
    for (const YAML::Node& item : items->value) RETURN_IF_ERROR(ParseDocument(item));
    return absl::OkStatus();
  }

  absl::StatusOr<Selector> ParseSelector(const Fields& spec) {
    Selector selector;
    const Field* field = spec.Find("selector");
    if (field == nullptr || field->value.IsNull()) return selector;
    if (!field->value.IsMap()) return Error(field->value, "selector must be a map with matchLabels");
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(field->value, "selector", kSelectorFields));
    const Field* labels = fields.Find("matchLabels");
    if (labels == nullptr || labels->value.IsNull()) return selector;
    if (!labels->value.IsMap()) return Error(labels->value, "matchLabels must be a map of label: value");
    for (auto it = labels->value.begin(); it != labels->value.end(); ++it) {
      if (!it->first.IsScalar() || !(it->second.IsScalar() || it->second.IsNull())) {
        return Error(it->first, "matchLabels must be a map of label: value (strings)");
      }
      selector[it->first.Scalar()] = it->second.IsNull() ? "" : it->second.Scalar();
    }
    return selector;
  }

  absl::StatusOr<ModeSetting> ParseMode(const YAML::Node& map, std::string_view what) {
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(map, what, kMtlsFields));
    ASSIGN_OR_RETURN(std::string mode, OptionalScalar(fields, "mode"));
    if (mode.empty() || mode == "UNSET") return ModeSetting::kUnset;
    if (mode == "STRICT") return ModeSetting::kStrict;
    if (mode == "PERMISSIVE") return ModeSetting::kPermissive;
    if (mode == "DISABLE") return ModeSetting::kDisable;
    return Error(fields.Find("mode")->value,
                 StrCat("bad mtls mode '", mode, "'", Hint(mode, {"STRICT", "PERMISSIVE", "DISABLE", "UNSET"})));
  }

  absl::StatusOr<uint16_t> ParsePort(const std::string& text, const YAML::Node& at, std::string_view what) {
    unsigned value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc() || end != text.data() + text.size() || value == 0 || value > 65535) {
      return Error(at, StrCat("bad port '", text, "' in ", what, ": must be a number from 1 to 65535"));
    }
    return static_cast<uint16_t>(value);
  }

  absl::Status ParsePeerAuthentication(const YAML::Node& spec_node, std::string namespace_name, std::string name) {
    auto policy = std::make_unique<PeerAuthentication>();
    policy->namespace_name = std::move(namespace_name);
    policy->name = std::move(name);
    policy->id = id_;
    policy->origin = origin_;
    Fields spec;
    if (spec_node.IsMap()) {
      ASSIGN_OR_RETURN(spec, FieldsOf(spec_node, "spec", kPeerAuthenticationFields));
    }
    ASSIGN_OR_RETURN(policy->selector, ParseSelector(spec));
    if (const Field* mtls = spec.Find("mtls"); mtls != nullptr && !mtls->value.IsNull()) {
      if (!mtls->value.IsMap()) return Error(mtls->value, "mtls must be a map, e.g. mtls: {mode: STRICT}");
      ASSIGN_OR_RETURN(policy->mode, ParseMode(mtls->value, "mtls"));
    }
    if (const Field* ports = spec.Find("portLevelMtls"); ports != nullptr && !ports->value.IsNull()) {
      if (!ports->value.IsMap()) return Error(ports->value, "portLevelMtls must be a map of port: {mode: ...}");
      for (auto it = ports->value.begin(); it != ports->value.end(); ++it) {
        if (!it->first.IsScalar()) return Error(it->first, "portLevelMtls keys must be port numbers");
        ASSIGN_OR_RETURN(uint16_t port, ParsePort(it->first.Scalar(), it->first, "portLevelMtls"));
        if (!it->second.IsMap()) return Error(it->second, "a portLevelMtls entry must be a map, e.g. {mode: DISABLE}");
        ASSIGN_OR_RETURN(policy->port_modes[port], ParseMode(it->second, "portLevelMtls"));
      }
      if (policy->selector.empty() && !policy->port_modes.empty()) {
        // Istio ignores port-level settings without a selector: the port is a workload's port.
        Warn(ports->key_node, "portLevelMtls is ignored on a policy without a selector (as Istio does)");
        policy->port_modes.clear();
      }
    }
    if (!policy->selector.empty() && policy->namespace_name == builder_.root_namespace) {
      Warn(spec.Find("selector")->key_node,
           "a selector in the root namespace selects workloads of the root namespace only, not mesh-wide");
    }
    builder_.peer_authentications.push_back(std::move(policy));
    return absl::OkStatus();
  }

  absl::StatusOr<StringMatch> ParseStringMatch(const Item& item, std::string_view what) {
    const std::string& text = item.text;
    if (text.empty()) return Error(item.node, StrCat("empty value in ", what));
    StringMatch match;
    if (text == "*") {
      match.kind = StringMatch::Kind::kPresence;
    } else if (text.front() == '*') {
      match.kind = StringMatch::Kind::kSuffix;
      match.value = text.substr(1);
    } else if (text.back() == '*') {
      match.kind = StringMatch::Kind::kPrefix;
      match.value = text.substr(0, text.size() - 1);
    } else {
      match.value = text;
    }
    if (match.value.find('*') != std::string::npos) {
      return Error(item.node, StrCat("'", text, "' in ", what,
                                     ": only '*', 'prefix*' and '*suffix' wildcards are supported"));
    }
    return match;
  }

  absl::StatusOr<std::vector<StringMatch>> StringMatches(const Fields& fields, std::string_view key) {
    ASSIGN_OR_RETURN(std::vector<Item> items, ScalarList(fields, key));
    std::vector<StringMatch> matches;
    for (const Item& item : items) {
      ASSIGN_OR_RETURN(StringMatch match, ParseStringMatch(item, key));
      matches.push_back(std::move(match));
    }
    return matches;
  }

  absl::StatusOr<std::vector<Cidr>> Cidrs(const std::vector<Item>& items, std::string_view what) {
    std::vector<Cidr> cidrs;
    for (const Item& item : items) {
      auto cidr = Cidr::Parse(item.text);
      if (!cidr.ok()) {
        // Cidr's message starts with the quoted text, which ours already shows.
        std::string reason(cidr.status().message());
        std::string quoted = StrCat("'", item.text, "'");
        if (reason.starts_with(quoted)) reason = reason.substr(quoted.size());
        if (reason.starts_with(": ")) reason = reason.substr(2);
        if (reason.starts_with(" ")) reason = reason.substr(1);
        return Error(item.node, StrCat("bad address block '", item.text, "' in ", what, ": ", reason,
                                       " (expected e.g. 10.0.0.0/8, 10.1.2.3 or fd00::/64)"));
      }
      cidrs.push_back(*cidr);
    }
    return cidrs;
  }
  absl::StatusOr<std::vector<Cidr>> CidrField(const Fields& fields, std::string_view key) {
    ASSIGN_OR_RETURN(std::vector<Item> items, ScalarList(fields, key));
    return Cidrs(items, key);
  }

  absl::StatusOr<std::vector<uint16_t>> Ports(const std::vector<Item>& items, std::string_view what) {
    std::vector<uint16_t> ports;
    for (const Item& item : items) {
      ASSIGN_OR_RETURN(uint16_t port, ParsePort(item.text, item.node, what));
      ports.push_back(port);
    }
    return ports;
  }

  void WarnL7(const YAML::Node& at, std::string_view what, Action action, size_t rule_index) {
    Warn(at, StrCat("rule ", rule_index, ": ", what, "; ",
                    action == Action::kAllow ? "this ALLOW rule never matches"
                                             : "this DENY rule is enforced on its L4 fields only (it denies more)"));
  }
  void WarnL7Field(const Field& field, Action action, size_t rule_index) {
    WarnL7(field.key_node, StrCat("'", field.key, "' is an L7 (HTTP) attribute that meshtls cannot enforce"), action,
           rule_index);
  }

  // serviceAccounts: ["ns/sa"] is the identity ".../ns/<ns>/sa/<sa>" in any trust domain.
  absl::StatusOr<std::vector<StringMatch>> ServiceAccounts(const Fields& fields, std::string_view key) {
    ASSIGN_OR_RETURN(std::vector<Item> items, ScalarList(fields, key));
    std::vector<StringMatch> matches;
    for (const Item& item : items) {
      auto slash = item.text.find('/');
      if (slash == std::string::npos || slash == 0 || slash + 1 == item.text.size() ||
          item.text.find('/', slash + 1) != std::string::npos || item.text.find('*') != std::string::npos) {
        return Error(item.node, StrCat("'", item.text, "' in ", key, ": expected NAMESPACE/SERVICEACCOUNT"));
      }
      StringMatch match;
      match.kind = StringMatch::Kind::kSuffix;
      match.value = StrCat("/ns/", item.text.substr(0, slash), "/sa/", item.text.substr(slash + 1));
      matches.push_back(std::move(match));
    }
    return matches;
  }

  absl::StatusOr<Source> ParseSource(const YAML::Node& node, Action action, size_t rule_index, Rule& rule) {
    if (!node.IsMap()) return Error(node, "source must be a map");
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(node, "source", kSourceFields));
    Source source;
    ASSIGN_OR_RETURN(source.principals, StringMatches(fields, "principals"));
    ASSIGN_OR_RETURN(source.not_principals, StringMatches(fields, "notPrincipals"));
    ASSIGN_OR_RETURN(source.namespaces, StringMatches(fields, "namespaces"));
    ASSIGN_OR_RETURN(source.not_namespaces, StringMatches(fields, "notNamespaces"));
    ASSIGN_OR_RETURN(source.ip_blocks, CidrField(fields, "ipBlocks"));
    ASSIGN_OR_RETURN(source.not_ip_blocks, CidrField(fields, "notIpBlocks"));
    ASSIGN_OR_RETURN(source.remote_ip_blocks, CidrField(fields, "remoteIpBlocks"));
    ASSIGN_OR_RETURN(source.not_remote_ip_blocks, CidrField(fields, "notRemoteIpBlocks"));
    ASSIGN_OR_RETURN(std::vector<StringMatch> accounts, ServiceAccounts(fields, "serviceAccounts"));
    ASSIGN_OR_RETURN(std::vector<StringMatch> not_accounts, ServiceAccounts(fields, "notServiceAccounts"));
    if ((!accounts.empty() || !not_accounts.empty()) &&
        (!source.principals.empty() || !source.not_principals.empty() || !source.namespaces.empty() ||
         !source.not_namespaces.empty())) {
      return Error(node, "serviceAccounts cannot be combined with principals or namespaces (as in Istio)");
    }
    // A service account is a principal constraint; one list of alternatives each way.
    source.principals.insert(source.principals.end(), accounts.begin(), accounts.end());
    source.not_principals.insert(source.not_principals.end(), not_accounts.begin(), not_accounts.end());

    bool any = false;
    for (const Field& field : fields.all()) {
      ASSIGN_OR_RETURN(std::vector<Item> items, ScalarList(fields, field.key));
      if (items.empty()) continue;
      any = true;
      if (field.key == "requestPrincipals" || field.key == "notRequestPrincipals") {
        rule.uses_l7 = true;
        WarnL7Field(field, action, rule_index);
      }
    }
    if (!any) return Error(node, "source must not be empty (Istio rejects it); remove it to match any source");
    return source;
  }

  absl::StatusOr<Operation> ParseOperation(const YAML::Node& node, Action action, size_t rule_index, Rule& rule) {
    if (!node.IsMap()) return Error(node, "operation must be a map");
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(node, "operation", kOperationFields));
    Operation operation;
    ASSIGN_OR_RETURN(std::vector<Item> ports, ScalarList(fields, "ports"));
    ASSIGN_OR_RETURN(operation.ports, Ports(ports, "ports"));
    ASSIGN_OR_RETURN(std::vector<Item> not_ports, ScalarList(fields, "notPorts"));
    ASSIGN_OR_RETURN(operation.not_ports, Ports(not_ports, "notPorts"));
    bool any = false;
    for (const Field& field : fields.all()) {
      ASSIGN_OR_RETURN(std::vector<Item> items, ScalarList(fields, field.key));
      if (items.empty()) continue;
      any = true;
      if (field.key != "ports" && field.key != "notPorts") {
        rule.uses_l7 = true;
        WarnL7Field(field, action, rule_index);
      }
    }
    if (!any) return Error(node, "operation must not be empty (Istio rejects it); remove it to match any operation");
    return operation;
  }

  // Returns nullopt for a condition that is not L4 (after the warning).
  absl::StatusOr<std::optional<Condition>> ParseCondition(const YAML::Node& node, Action action, size_t rule_index,
                                                          Rule& rule) {
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(node, "when", kConditionFields));
    ASSIGN_OR_RETURN(std::string key, OptionalScalar(fields, "key"));
    if (key.empty()) return Error(node, "a 'when' condition needs a key, e.g. key: source.ip");
    ASSIGN_OR_RETURN(std::vector<Item> values, ScalarList(fields, "values"));
    ASSIGN_OR_RETURN(std::vector<Item> not_values, ScalarList(fields, "notValues"));
    if (values.empty() && not_values.empty()) {
      return Error(node, StrCat("condition '", key, "' needs values or notValues"));
    }
    const YAML::Node& key_node = fields.Find("key")->value;
    Condition condition;
    if (key == "source.ip" || key == "remote.ip") {
      condition.key = ConditionKey::kSourceIp;
      ASSIGN_OR_RETURN(condition.ip_values, Cidrs(values, key));
      ASSIGN_OR_RETURN(condition.not_ip_values, Cidrs(not_values, key));
    } else if (key == "source.namespace" || key == "source.principal") {
      condition.key = key == "source.namespace" ? ConditionKey::kSourceNamespace : ConditionKey::kSourcePrincipal;
      for (const Item& item : values) {
        ASSIGN_OR_RETURN(StringMatch match, ParseStringMatch(item, key));
        condition.values.push_back(std::move(match));
      }
      for (const Item& item : not_values) {
        ASSIGN_OR_RETURN(StringMatch match, ParseStringMatch(item, key));
        condition.not_values.push_back(std::move(match));
      }
    } else if (key == "destination.port") {
      condition.key = ConditionKey::kDestinationPort;
      ASSIGN_OR_RETURN(condition.port_values, Ports(values, key));
      ASSIGN_OR_RETURN(condition.not_port_values, Ports(not_values, key));
    } else {
      rule.uses_l7 = true;
      std::string hint;
      // A near miss of an L4 key is almost certainly a typo, worth saying.
      if (!key.starts_with("request.") && !key.starts_with("experimental.")) {
        std::string maybe = Hint(key, kL4ConditionKeys);
        if (maybe.starts_with(" (did")) hint = maybe;
      }
      WarnL7(key_node,
             StrCat("condition '", key, "' is not an L4 key meshtls can enforce (source.ip, remote.ip, ",
                    "source.namespace, source.principal, destination.port)", hint),
             action, rule_index);
      return std::optional<Condition>();
    }
    return std::optional<Condition>(std::move(condition));
  }

  absl::StatusOr<Rule> ParseRule(const YAML::Node& node, Action action, size_t rule_index) {
    ASSIGN_OR_RETURN(Fields fields, FieldsOf(node, "a rule", kRuleFields));
    Rule rule;
    ASSIGN_OR_RETURN(std::vector<YAML::Node> from, MapList(fields, "from"));
    for (const YAML::Node& entry : from) {
      ASSIGN_OR_RETURN(Fields entry_fields, FieldsOf(entry, "from", kFromFields));
      const Field* source = entry_fields.Find("source");
      if (source == nullptr || source->value.IsNull()) {
        return Error(entry, "a 'from' entry needs a source, e.g. - source: {principals: [...]}");
      }
      ASSIGN_OR_RETURN(Source parsed, ParseSource(source->value, action, rule_index, rule));
      rule.from.push_back(std::move(parsed));
    }
    ASSIGN_OR_RETURN(std::vector<YAML::Node> to, MapList(fields, "to"));
    for (const YAML::Node& entry : to) {
      ASSIGN_OR_RETURN(Fields entry_fields, FieldsOf(entry, "to", kToFields));
      const Field* operation = entry_fields.Find("operation");
      if (operation == nullptr || operation->value.IsNull()) {
        return Error(entry, "a 'to' entry needs an operation, e.g. - operation: {ports: [\"8080\"]}");
      }
      ASSIGN_OR_RETURN(Operation parsed, ParseOperation(operation->value, action, rule_index, rule));
      rule.to.push_back(std::move(parsed));
    }
    ASSIGN_OR_RETURN(std::vector<YAML::Node> when, MapList(fields, "when"));
    for (const YAML::Node& entry : when) {
      ASSIGN_OR_RETURN(std::optional<Condition> condition, ParseCondition(entry, action, rule_index, rule));
      if (condition) rule.when.push_back(std::move(*condition));
    }
    return rule;
  }

  absl::Status ParseAuthorizationPolicy(const YAML::Node& spec_node, std::string namespace_name, std::string name) {
    auto policy = std::make_unique<AuthorizationPolicy>();
    policy->namespace_name = std::move(namespace_name);
    policy->name = std::move(name);
    policy->id = id_;
    policy->origin = origin_;
    Fields spec;
    if (spec_node.IsMap()) {
      ASSIGN_OR_RETURN(spec, FieldsOf(spec_node, "spec", kAuthorizationFields));
    }
    ASSIGN_OR_RETURN(policy->selector, ParseSelector(spec));
    ASSIGN_OR_RETURN(std::string action, OptionalScalar(spec, "action"));
    const YAML::Node at = spec.Find("action") != nullptr ? spec.Find("action")->value : spec_node;
    if (action == "CUSTOM") {
      return Error(at, "action CUSTOM delegates to an external authorizer, which meshtls cannot call; "
                       "use ALLOW or DENY");
    }
    if (spec.Find("provider") != nullptr) return Error(spec.Find("provider")->key_node, "provider needs action CUSTOM");
    if (action == "AUDIT") {
      Warn(at, "action AUDIT is ignored (meshtls has no audit log); the policy has no effect");
      return absl::OkStatus();
    }
    if (action.empty() || action == "ALLOW") {
      policy->action = Action::kAllow;
    } else if (action == "DENY") {
      policy->action = Action::kDeny;
    } else {
      return Error(at, StrCat("bad action '", action, "'", Hint(action, {"ALLOW", "DENY", "AUDIT", "CUSTOM"})));
    }
    for (std::string_view target_field : {"targetRef", "targetRefs"}) {
      if (const Field* field = spec.Find(target_field)) {
        Warn(field->key_node, StrCat("skipped: ", target_field,
                                     " attaches the policy to a waypoint or gateway, not to workloads"));
        return absl::OkStatus();
      }
    }
    ASSIGN_OR_RETURN(std::vector<YAML::Node> rules, MapList(spec, "rules"));
    for (size_t i = 0; i < rules.size(); ++i) {
      ASSIGN_OR_RETURN(Rule rule, ParseRule(rules[i], policy->action, i));
      if (rule.uses_l7) ++policy->l7_rules;
      policy->rules.push_back(std::move(rule));
    }
    builder_.authorization_policies.push_back(std::move(policy));
    return absl::OkStatus();
  }

  const std::string& file_;
  Builder& builder_;
  int last_line_ = 1;
  std::string context_;  // "Kind ns/name: " once known, to prefix messages
  std::string id_;
  Origin origin_;
};

}  // namespace

absl::Status Builder::AddYaml(std::string_view yaml, const std::string& file_name) {
  try {
    std::vector<YAML::Node> documents = YAML::LoadAll(std::string(yaml));
    DocumentParser parser(file_name, *this);
    for (const YAML::Node& document : documents) RETURN_IF_ERROR(parser.ParseDocument(document));
  } catch (const YAML::Exception& e) {
    int line = e.mark.line >= 0 ? e.mark.line + 1 : 1;
    return absl::InvalidArgumentError(StrCat(file_name, ":", line, ": YAML syntax error: ", e.msg));
  }
  return absl::OkStatus();
}

}  // namespace meshtls::policy::internal
