#include "meshtls/workload/workload.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/workload/names.h"

namespace meshtls::workload {

std::string Workload::uid() const { return StrCat(namespace_name, "/", name); }

SpiffeId Workload::Identity(std::string_view trust_domain) const {
  absl::StatusOr<SpiffeId> id =
      SpiffeId::ForWorkload(trust_domain, namespace_name, service_account);
  if (!id.ok()) {
    // Only an invalid trust domain gets here (parsing validated the rest); handing out some other
    // identity instead would be a security bug, so stop loudly.
    std::fprintf(stderr, "meshtls: no SPIFFE ID for workload %s in trust domain '%.*s': %s\n",
                 uid().c_str(), static_cast<int>(trust_domain.size()), trust_domain.data(),
                 std::string(id.status().message()).c_str());
    std::abort();
  }
  return *std::move(id);
}

namespace {

// Enough to fix a whole file in one go without flooding a log line.
constexpr size_t kMaxErrors = 20;

const std::vector<std::string_view> kTopLevelKeys = {"workloads"};
const std::vector<std::string_view> kWorkloadKeys = {
    "name", "namespace", "serviceAccount", "node", "labels", "netns", "cgroup", "ips"};
// Names people bring from Kubernetes manifests or other tools, too far from ours for SuggestKey.
const std::vector<std::pair<std::string_view, std::string_view>> kAliases = {
    {"serviceaccountname", "serviceAccount"},
    {"sa", "serviceAccount"},
    {"nodename", "node"},
    {"netnspath", "netns"},
    {"netnamespace", "netns"},
    {"cgrouppath", "cgroup"},
    {"ip", "ips"},
    {"podips", "ips"},
    {"podip", "ips"},
    {"addresses", "ips"},
    {"ns", "namespace"},
    {"podname", "name"}};

constexpr std::string_view kSubdomainRule =
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most "
    "253 characters";
constexpr std::string_view kLabelRule =
    "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 "
    "characters";

class Errors {
 public:
  explicit Errors(std::string_view file_name) : file_name_(file_name) {}
  void Add(int line, std::string_view reason, std::string_view fix) {
    errors_.emplace_back(line, StrCat(file_name_, ":", line, ": ", reason, " (", fix, ")"));
  }
  bool empty() const { return errors_.empty(); }
  // In file order, whatever order the checks ran in.
  absl::Status ToStatus() const {
    std::vector<std::pair<int, std::string>> sorted = errors_;
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::string> lines;
    for (size_t i = 0; i < sorted.size() && i < kMaxErrors; ++i) lines.push_back(sorted[i].second);
    if (sorted.size() > kMaxErrors)
      lines.push_back(
          StrCat(file_name_, ": ", sorted.size() - kMaxErrors, " more errors not shown"));
    return absl::InvalidArgumentError(Join(lines, "\n"));
  }

 private:
  std::string file_name_;
  std::vector<std::pair<int, std::string>> errors_;
};

// yaml-cpp marks are 0-based, and null nodes carry no mark of their own.
int LineOf(const YAML::Node& node) { return node.Mark().line < 0 ? 1 : node.Mark().line + 1; }

std::string NodeKind(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  if (node.IsNull()) return "empty";
  return StrCat("'", node.Scalar(), "'");
}

void UnknownKey(Errors& errors, int line, const std::string& key,
                const std::vector<std::string_view>& known, std::string_view where) {
  std::optional<std::string> suggestion = SuggestKey(key, known);
  if (!suggestion) {
    const std::string folded = ToLower(key);
    for (const auto& [alias, target] : kAliases) {
      if (folded == alias && std::find(known.begin(), known.end(), target) != known.end()) {
        suggestion = std::string(target);
      }
    }
  }
  if (suggestion) {
    errors.Add(line, StrCat("unknown key '", key, "' in ", where),
               StrCat("did you mean '", *suggestion, "'?"));
  } else {
    std::vector<std::string> names(known.begin(), known.end());
    errors.Add(line, StrCat("unknown key '", key, "' in ", where),
               StrCat("known keys: ", Join(names, ", ")));
  }
}

// A field that must hold one string. Errors are reported at the key's line: a null value's own
// mark points past it.
std::optional<std::string> StringField(Errors& errors, const std::string& key, int key_line,
                                       const YAML::Node& value, std::string_view example) {
  if (value.IsNull()) {
    errors.Add(key_line, StrCat("'", key, "' has no value"), StrCat("e.g. ", key, ": ", example));
    return std::nullopt;
  }
  if (!value.IsScalar()) {
    errors.Add(key_line, StrCat("'", key, "' must be a single string, not ", NodeKind(value)),
               StrCat("e.g. ", key, ": ", example));
    return std::nullopt;
  }
  return value.Scalar();
}

struct ParsedWorkload {
  Workload workload;
  int line = 0;
  std::vector<int> ip_lines;  // parallel to workload.ips
};

std::optional<ParsedWorkload> ParseOne(Errors& errors, const YAML::Node& item) {
  const int line = LineOf(item);
  if (!item.IsMap()) {
    errors.Add(line, StrCat("a workload must be a map of fields, not ", NodeKind(item)),
               "start each entry with '- name: ...' and indent its other fields under it");
    return std::nullopt;
  }
  ParsedWorkload parsed;
  parsed.line = line;
  Workload& w = parsed.workload;
  bool ok = true;
  std::set<std::string> seen;
  bool has_ips = false;
  // A string field that must follow a Kubernetes name rule; kept only if it does.
  auto named_field = [&](const std::string& key, int key_line, const YAML::Node& value,
                         std::string_view example, bool (*valid)(std::string_view),
                         std::string_view what, std::string_view rule, std::string* out) {
    std::optional<std::string> v = StringField(errors, key, key_line, value, example);
    if (v && !valid(*v)) {
      errors.Add(key_line, StrCat(key, " '", *v, "' is not a valid ", what), rule);
      v.reset();
    }
    if (v) {
      *out = *v;
    } else {
      ok = false;
    }
  };
  for (auto it = item.begin(); it != item.end(); ++it) {
    const YAML::Node key_node = it->first;
    const YAML::Node value = it->second;
    const int key_line = LineOf(key_node);
    if (!key_node.IsScalar()) {
      errors.Add(key_line, "a workload field name must be a plain word",
                 "e.g. name, namespace, ips");
      ok = false;
      continue;
    }
    const std::string key = key_node.Scalar();
    if (!seen.insert(key).second) {
      errors.Add(key_line, StrCat("'", key, "' is given twice in this workload"),
                 "keep only one of them");
      ok = false;
      continue;
    }
    if (key == "name") {
      named_field(key, key_line, value, "sleep-7f9c", IsDns1123Subdomain, "pod name",
                  kSubdomainRule, &w.name);
    } else if (key == "namespace") {
      named_field(key, key_line, value, "default", IsDns1123Label, "namespace name", kLabelRule,
                  &w.namespace_name);
    } else if (key == "serviceAccount") {
      named_field(key, key_line, value, "sleep", IsDns1123Label, "service account name", kLabelRule,
                  &w.service_account);
    } else if (key == "node") {
      named_field(key, key_line, value, "node-1", IsDns1123Subdomain, "node name",
                  "use the node's name as 'kubectl get nodes' shows it", &w.node);
    } else if (key == "netns" || key == "cgroup") {
      auto v = StringField(
          errors, key, key_line, value,
          key == "netns" ? "/run/netns/pod-sleep" : "/sys/fs/cgroup/unified/meshtls/pod-sleep");
      if (v && (v->empty() || v->front() != '/')) {
        errors.Add(key_line, StrCat(key, " '", *v, "' is not an absolute path"),
                   key == "netns" ? "e.g. /run/netns/pod-sleep or /proc/1234/ns/net"
                                  : "give the pod's cgroup v2 directory, e.g. "
                                    "/sys/fs/cgroup/unified/meshtls/pod-sleep");
        v.reset();
      }
      if (!v) {
        ok = false;
      } else {
        (key == "netns" ? w.netns_path : w.cgroup_path) = *v;
      }
    } else if (key == "labels") {
      if (value.IsNull()) continue;  // "labels:" with nothing under it is just no labels
      if (!value.IsMap()) {
        errors.Add(key_line, StrCat("'labels' must be a map, not ", NodeKind(value)),
                   "e.g. labels: {app: sleep}");
        ok = false;
        continue;
      }
      for (auto label_it = value.begin(); label_it != value.end(); ++label_it) {
        const YAML::Node label_key_node = label_it->first;
        const YAML::Node label_value_node = label_it->second;
        const int label_line = LineOf(label_key_node);
        if (!label_key_node.IsScalar() || !IsLabelKey(label_key_node.Scalar())) {
          errors.Add(label_line,
                     StrCat("label key ", NodeKind(label_key_node),
                            " is not a valid Kubernetes label key"),
                     "[prefix/]name, the name at most 63 letters, digits, '-', '_' or '.'");
          ok = false;
          continue;
        }
        const std::string label_key = label_key_node.Scalar();
        std::string label_value;
        if (label_value_node.IsScalar()) {
          label_value = label_value_node.Scalar();
        } else if (!label_value_node.IsNull()) {
          errors.Add(label_line, StrCat("label '", label_key, "' must have a single string value"),
                     "e.g. app: sleep");
          ok = false;
          continue;
        }
        if (!IsLabelValue(label_value)) {
          errors.Add(label_line,
                     StrCat("label value '", label_value, "' of '", label_key, "' is not valid"),
                     "at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                     "letter or digit");
          ok = false;
          continue;
        }
        if (!w.labels.emplace(label_key, label_value).second) {
          errors.Add(label_line, StrCat("label '", label_key, "' is given twice"),
                     "keep only one of them");
          ok = false;
        }
      }
    } else if (key == "ips") {
      has_ips = true;
      if (!value.IsSequence()) {
        errors.Add(key_line, StrCat("'ips' must be a list, not ", NodeKind(value)),
                   "e.g. ips: [10.0.1.2, fd00::1:2]");
        ok = false;
        continue;
      }
      if (value.size() == 0) {
        errors.Add(key_line, "'ips' is empty",
                   "list at least one of the pod's addresses, e.g. ips: [10.0.1.2]");
        ok = false;
        continue;
      }
      for (const YAML::Node& entry : value) {
        const int ip_line = entry.IsNull() ? key_line : LineOf(entry);
        if (!entry.IsScalar()) {
          errors.Add(ip_line, StrCat("an entry of 'ips' is ", NodeKind(entry), ", not an address"),
                     "one plain address per entry, e.g. 10.0.1.2");
          ok = false;
          continue;
        }
        absl::StatusOr<IpAddress> ip = IpAddress::Parse(entry.Scalar());
        if (!ip.ok()) {
          errors.Add(ip_line, StrCat("'", entry.Scalar(), "' is not an IP address"),
                     "write a plain IPv4 or IPv6 address, without prefix length or port");
          ok = false;
          continue;
        }
        if (std::find(w.ips.begin(), w.ips.end(), *ip) != w.ips.end()) {
          errors.Add(ip_line, StrCat("IP ", ip->ToString(), " is listed twice"),
                     "remove the repeated entry");
          ok = false;
          continue;
        }
        w.ips.push_back(*ip);
        parsed.ip_lines.push_back(ip_line);
      }
    } else {
      UnknownKey(errors, key_line, key, kWorkloadKeys, "a workload");
      ok = false;
    }
  }
  auto require = [&](std::string_view key, std::string_view fix) {
    if (seen.count(std::string(key)) == 0) {
      errors.Add(line, StrCat("workload is missing '", key, "'"), fix);
      ok = false;
    }
  };
  require("name", "the pod's name, e.g. name: sleep-7f9c");
  require("namespace", "the pod's namespace, e.g. namespace: default");
  require("serviceAccount",
          "the pod's service account, which names its identity, e.g. serviceAccount: sleep");
  if (!has_ips) require("ips", "the pod's addresses, e.g. ips: [10.0.1.2]");
  if (!ok) return std::nullopt;
  return parsed;
}

}  // namespace

absl::StatusOr<std::vector<Workload>> ParseWorkloads(std::string_view yaml,
                                                     std::string_view file_name) {
  Errors errors(file_name);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::ParserException& e) {
    errors.Add(e.mark.line < 0 ? 1 : e.mark.line + 1, StrCat("YAML syntax error: ", e.msg),
               "check indentation (spaces, not tabs), quoting and brackets near this line");
    return errors.ToStatus();
  }
  // An empty or truncated file must not read as "no workloads": that would unmesh every pod in the
  // middle of a non-atomic rewrite. Zero workloads has to be said explicitly.
  if (root.IsNull()) {
    errors.Add(1, "the file has no 'workloads' list", "write 'workloads: []' for no workloads");
    return errors.ToStatus();
  }
  if (!root.IsMap()) {
    errors.Add(LineOf(root),
               StrCat("the top level must be a map with a 'workloads' list, not ", NodeKind(root)),
               "start the file with 'workloads:'");
    return errors.ToStatus();
  }
  YAML::Node list;
  int list_line = 1;
  bool found = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const YAML::Node key_node = it->first;
    const int key_line = LineOf(key_node);
    const std::string key = key_node.IsScalar() ? key_node.Scalar() : "";
    if (key != "workloads") {
      UnknownKey(errors, key_line, key, kTopLevelKeys, "the top level");
      continue;
    }
    if (found) {
      errors.Add(key_line, "'workloads' is given twice", "merge the two lists into one");
      continue;
    }
    found = true;
    list.reset(it->second);
    list_line = key_line;
  }
  if (!found) {
    if (errors.empty())
      errors.Add(1, "the file has no 'workloads' list", "write 'workloads: []' for no workloads");
    return errors.ToStatus();
  }
  if (list.IsNull()) {
    errors.Add(list_line, "'workloads' has no value",
               "list the workloads under it, or write 'workloads: []' for none");
    return errors.ToStatus();
  }
  if (!list.IsSequence()) {
    errors.Add(list_line, StrCat("'workloads' must be a list, not ", NodeKind(list)),
               "start each workload with '- name: ...'");
    return errors.ToStatus();
  }

  std::vector<ParsedWorkload> parsed;
  for (const YAML::Node& item : list) {
    std::optional<ParsedWorkload> one = ParseOne(errors, item);
    if (one) parsed.push_back(std::move(*one));
  }

  // Uniqueness is checked among the workloads that parsed, so one typo does not also produce a
  // cascade of conflicts.
  absl::flat_hash_map<std::string, const ParsedWorkload*> by_uid;
  absl::flat_hash_map<IpAddress, std::pair<const ParsedWorkload*, int>> by_ip;
  for (const ParsedWorkload& p : parsed) {
    const std::string uid = p.workload.uid();
    auto [existing, inserted] = by_uid.emplace(uid, &p);
    if (!inserted) {
      errors.Add(p.line,
                 StrCat("workload ", uid, " is defined twice (first at line ",
                        existing->second->line, ")"),
                 "namespace/name must be unique: rename or remove one");
      continue;
    }
    for (size_t i = 0; i < p.workload.ips.size(); ++i) {
      const IpAddress& ip = p.workload.ips[i];
      auto [owner, fresh] = by_ip.emplace(ip, std::make_pair(&p, p.ip_lines[i]));
      if (!fresh) {
        errors.Add(
            p.ip_lines[i],
            StrCat("IP ", ip.ToString(), " of ", uid, " is already claimed by ",
                   owner->second.first->workload.uid(), " (line ", owner->second.second, ")"),
            "each pod IP belongs to exactly one workload");
      }
    }
  }
  if (!errors.empty()) return errors.ToStatus();
  std::vector<Workload> out;
  out.reserve(parsed.size());
  for (ParsedWorkload& p : parsed) out.push_back(std::move(p.workload));
  return out;
}

absl::StatusOr<std::vector<Workload>> StaticWorkloadFile::Load() {
  std::ifstream in(path_);
  if (!in) {
    absl::Status error = ErrnoStatus(errno, StrCat("cannot read workload file ", path_));
    return absl::Status(error.code(),
                        StrCat(error.message(),
                               " (create it, or point the agent's 'workloads' setting or "
                               "--workloads flag at the right file)"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return ErrnoStatus(errno, StrCat("reading workload file ", path_));
  return ParseWorkloads(text.str(), path_);
}

std::string StaticWorkloadFile::Describe() const { return StrCat("static file ", path_); }

}  // namespace meshtls::workload
