#include "meshtls/agent/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "meshtls/agent/duration.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/identity/spiffe_id.h"
#include "meshtls/workload/names.h"

namespace meshtls::agent {

// ---- enum names ----

namespace {

template <typename Enum, size_t N>
absl::StatusOr<Enum> ParseName(std::string_view name,
                               const std::array<std::pair<Enum, std::string_view>, N>& table) {
  std::string choices;
  for (const auto& [value, text] : table) {
    if (text == name) return value;
    StrAppend(&choices, choices.empty() ? "" : "|", text);
  }
  return absl::InvalidArgumentError(StrCat("'", name, "' is not one of ", choices));
}

template <typename Enum, size_t N>
std::string_view NameOf(Enum value, const std::array<std::pair<Enum, std::string_view>, N>& table) {
  for (const auto& [v, text] : table) {
    if (v == value) return text;
  }
  return "?";
}

constexpr std::array<std::pair<LogLevel, std::string_view>, 6> kLogLevels = {
    {{LogLevel::kTrace, "trace"},
     {LogLevel::kDebug, "debug"},
     {LogLevel::kInfo, "info"},
     {LogLevel::kWarn, "warn"},
     {LogLevel::kError, "error"},
     {LogLevel::kOff, "off"}}};
constexpr std::array<std::pair<DatapathChoice, std::string_view>, 3> kDatapaths = {
    {{DatapathChoice::kAuto, "auto"},
     {DatapathChoice::kKtlsSplice, "ktls-splice"},
     {DatapathChoice::kUserspaceTls, "userspace-tls"}}};
constexpr std::array<std::pair<LocalLegShortcut, std::string_view>, 3> kShortcuts = {
    {{LocalLegShortcut::kAuto, "auto"},
     {LocalLegShortcut::kOn, "on"},
     {LocalLegShortcut::kOff, "off"}}};

constexpr std::array<std::pair<WorkloadSourceKind, std::string_view>, 2> kWorkloadSources = {
    {{WorkloadSourceKind::kFile, "file"}, {WorkloadSourceKind::kKubernetes, "kubernetes"}}};

}  // namespace

std::string_view Name(WorkloadSourceKind source) { return NameOf(source, kWorkloadSources); }
absl::StatusOr<WorkloadSourceKind> ParseWorkloadSourceKind(std::string_view name) {
  return ParseName(name, kWorkloadSources);
}
std::string_view Name(LogLevel level) { return NameOf(level, kLogLevels); }
std::string_view Name(DatapathChoice datapath) { return NameOf(datapath, kDatapaths); }
std::string_view Name(LocalLegShortcut shortcut) { return NameOf(shortcut, kShortcuts); }
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  return ParseName(name, kLogLevels);
}
absl::StatusOr<DatapathChoice> ParseDatapathChoice(std::string_view name) {
  return ParseName(name, kDatapaths);
}
absl::StatusOr<LocalLegShortcut> ParseLocalLegShortcut(std::string_view name) {
  return ParseName(name, kShortcuts);
}

AgentConfig AgentConfig::Defaults() {
  AgentConfig config;
  if (const char* node = std::getenv("NODE_NAME"); node != nullptr && *node != '\0') {
    config.node_name = node;
  } else {
    char host[256] = {};
    // Kubernetes registers nodes under the lowercased hostname, so that is what a pod's
    // spec.nodeName will say.
    if (gethostname(host, sizeof(host) - 1) == 0) config.node_name = ToLower(host);
  }
  return config;
}

// ---- per-field checks, shared by ParseConfig (with line numbers) and Validate ----

namespace {

struct Problem {
  std::string reason;
  std::string fix;
};
using Check = std::optional<Problem>;

Check AbsolutePath(std::string_view key, std::string_view value, std::string_view example) {
  if (!value.empty() && value.front() == '/') return std::nullopt;
  return Problem{StrCat(key, " '", value, "' is not an absolute path"), StrCat("e.g. ", example)};
}

Check CheckNodeName(std::string_view value) {
  if (workload::IsDns1123Subdomain(value)) return std::nullopt;
  return Problem{
      value.empty() ? "nodeName is empty"
                    : StrCat("nodeName '", value, "' is not a valid node name"),
      "set it, --node-name or $NODE_NAME to this node's name as 'kubectl get nodes' shows it"};
}

Check CheckTrustDomain(std::string_view value) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(StrCat("spiffe://", value));
  if (!value.empty() && id.ok() && id->path().empty()) return std::nullopt;
  return Problem{StrCat("trustDomain '", value, "' is not a valid SPIFFE trust domain"),
                 "lowercase letters, digits, '.', '-' and '_', e.g. cluster.local"};
}

Check CheckRootNamespace(std::string_view value) {
  if (workload::IsDns1123Label(value)) return std::nullopt;
  return Problem{StrCat("rootNamespace '", value, "' is not a valid namespace name"),
                 "lowercase letters, digits and '-', e.g. istio-system"};
}

Check CheckAccessLog(std::string_view value) {
  if (value == "stdout" || value == "stderr" || value == "off" ||
      (!value.empty() && value.front() == '/')) {
    return std::nullopt;
  }
  return Problem{
      StrCat("accessLog '", value, "' is neither stdout, stderr, off nor an absolute path"),
      "e.g. accessLog: /var/log/meshtls/access.log"};
}

Check Positive(std::string_view key, std::chrono::nanoseconds value) {
  if (value.count() > 0) return std::nullopt;
  return Problem{StrCat(key, " is ", FormatDuration(value), " but must be longer than 0"),
                 StrCat("e.g. ", key, ": 5s")};
}

constexpr uint32_t kMaxWorkers = 1024;

Check CheckWorkers(uint32_t value) {
  if (value <= kMaxWorkers) return std::nullopt;
  return Problem{StrCat("workers is ", value, ", more than ", kMaxWorkers),
                 "use 0 for one per CPU"};
}

Check AtLeastOne(std::string_view key, uint32_t value) {
  if (value >= 1) return std::nullopt;
  return Problem{StrCat(key, " is 0"), "it must be at least 1"};
}

struct PortRef {
  std::string_view key;  // under ports:
  uint16_t Ports::*field;
};
constexpr std::array<PortRef, 5> kPorts = {{{"outbound", &Ports::outbound},
                                            {"inboundCapture", &Ports::inbound_capture},
                                            {"tunnel", &Ports::tunnel},
                                            {"metrics", &Ports::metrics},
                                            {"readiness", &Ports::readiness}}};

// ---- YAML reading ----

constexpr size_t kMaxErrors = 20;

class Errors {
 public:
  explicit Errors(std::string_view file_name) : file_name_(file_name) {}
  void Add(int line, std::string_view reason, std::string_view fix) {
    errors_.emplace_back(line, StrCat(file_name_, ":", line, ": ", reason, " (", fix, ")"));
  }
  void Add(int line, const Problem& problem) { Add(line, problem.reason, problem.fix); }
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

int LineOf(const YAML::Node& node) { return node.Mark().line < 0 ? 1 : node.Mark().line + 1; }

std::string Describe(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return StrCat("'", node.Scalar(), "'");
}

// One key: its name (dotted for nested keys), the line of the key, and the value.
struct Entry {
  std::string key;
  int line;
  YAML::Node value;
};

// A value that must be one scalar; problems are reported at the key's line, since a null value's
// own mark points at the next line.
std::optional<std::string> Scalar(Errors& errors, const Entry& e, std::string_view example) {
  if (e.value.IsNull()) {
    errors.Add(e.line, StrCat(e.key, " has no value"),
               StrCat("e.g. ", e.key, ": ", example, ", or remove the line"));
    return std::nullopt;
  }
  if (!e.value.IsScalar()) {
    errors.Add(e.line, StrCat(e.key, " must be a single value, not ", Describe(e.value)),
               StrCat("e.g. ", e.key, ": ", example));
    return std::nullopt;
  }
  return e.value.Scalar();
}

void Report(Errors& errors, const Entry& e, const Check& check) {
  if (check) errors.Add(e.line, *check);
}

void ReadString(Errors& errors, const Entry& e, std::string* out, std::string_view example,
                const std::function<Check(std::string_view)>& check = nullptr) {
  std::optional<std::string> v = Scalar(errors, e, example);
  if (!v) return;
  if (check) {
    if (Check problem = check(*v)) {
      Report(errors, e, problem);
      return;
    }
  }
  *out = *v;
}

void ReadPath(Errors& errors, const Entry& e, std::string* out, std::string_view example) {
  ReadString(errors, e, out, example,
             [&](std::string_view v) { return AbsolutePath(e.key, v, example); });
}

template <typename Enum>
void ReadEnum(Errors& errors, const Entry& e, Enum* out,
              absl::StatusOr<Enum> (*parse)(std::string_view)) {
  std::optional<std::string> v = Scalar(errors, e, "auto");
  if (!v) return;
  absl::StatusOr<Enum> parsed = parse(*v);
  if (!parsed.ok()) {
    const std::string message(parsed.status().message());
    errors.Add(e.line, StrCat(e.key, ": ", message), "use one of the listed values");
    return;
  }
  *out = *parsed;
}

template <typename Int>
std::optional<Int> ReadInt(Errors& errors, const Entry& e, uint64_t min, uint64_t max,
                           std::string_view example) {
  std::optional<std::string> v = Scalar(errors, e, example);
  if (!v) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), value);
  if (ec == std::errc::result_out_of_range ||
      (ec == std::errc() && end == v->data() + v->size() && value > max)) {
    errors.Add(e.line, StrCat(e.key, " is ", *v, ", more than ", max),
               StrCat("e.g. ", e.key, ": ", example));
    return std::nullopt;
  }
  if (ec != std::errc() || end != v->data() + v->size()) {
    errors.Add(e.line, StrCat(e.key, " must be a whole number, not '", *v, "'"),
               StrCat("e.g. ", e.key, ": ", example));
    return std::nullopt;
  }
  if (value < min) {
    errors.Add(e.line, StrCat(e.key, " is ", value, ", less than ", min),
               StrCat("e.g. ", e.key, ": ", example));
    return std::nullopt;
  }
  return static_cast<Int>(value);
}

void ReadBool(Errors& errors, const Entry& e, bool* out) {
  std::optional<std::string> v = Scalar(errors, e, "true");
  if (!v) return;
  // YAML 1.2's booleans only: yes/no/on/off are YAML 1.1 and read differently by other tools.
  if (*v == "true" || *v == "True" || *v == "TRUE") {
    *out = true;
  } else if (*v == "false" || *v == "False" || *v == "FALSE") {
    *out = false;
  } else {
    errors.Add(e.line, StrCat(e.key, " must be true or false, not '", *v, "'"),
               StrCat("e.g. ", e.key, ": true"));
  }
}

void ReadDuration(Errors& errors, const Entry& e, std::chrono::nanoseconds* out,
                  std::string_view example) {
  std::optional<std::string> v = Scalar(errors, e, example);
  if (!v) return;
  absl::StatusOr<std::chrono::nanoseconds> d = ParseDuration(*v);
  if (!d.ok()) {
    // ParseDuration's message already carries the fix in parentheses.
    const std::string message(d.status().message());
    const size_t paren = message.rfind(" (");
    errors.Add(e.line, StrCat(e.key, ": ", message.substr(0, paren)),
               paren == std::string::npos ? "e.g. 5s"
                                          : message.substr(paren + 2, message.size() - paren - 3));
    return;
  }
  if (Check problem = Positive(e.key, *d)) {
    Report(errors, e, problem);
    return;
  }
  *out = *d;
}

// Iterates a map's entries, reporting non-scalar and repeated keys.
std::vector<Entry> Entries(Errors& errors, const YAML::Node& map, std::string_view prefix) {
  std::vector<Entry> entries;
  std::set<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const int line = LineOf(key);
    if (!key.IsScalar()) {
      errors.Add(line, "a key must be a plain word", "e.g. stateDir: /var/lib/meshtls");
      continue;
    }
    std::string name = StrCat(prefix, key.Scalar());
    if (!seen.insert(name).second) {
      errors.Add(line, StrCat(name, " is given twice"), "keep only one of them");
      continue;
    }
    entries.push_back(Entry{std::move(name), line, value});
  }
  return entries;
}

void UnknownKey(Errors& errors, const Entry& e, std::string_view bare_key,
                const std::vector<std::string_view>& known, std::string_view where) {
  const std::string reason = StrCat("unknown key '", bare_key, "'", where);
  if (std::optional<std::string> suggestion = workload::SuggestKey(bare_key, known)) {
    errors.Add(e.line, reason, StrCat("did you mean '", *suggestion, "'?"));
    return;
  }
  if (where.empty()) {
    // A port key written at the top level is a common slip.
    std::vector<std::string_view> port_keys;
    for (const PortRef& p : kPorts) port_keys.push_back(p.key);
    if (std::optional<std::string> port = workload::SuggestKey(bare_key, port_keys)) {
      errors.Add(e.line, reason, StrCat("did you mean '", *port, "' under 'ports:'?"));
      return;
    }
  }
  std::vector<std::string> names(known.begin(), known.end());
  errors.Add(e.line, reason, StrCat("known keys: ", Join(names, ", ")));
}

void ReadPorts(Errors& errors, const Entry& e, Ports* ports,
               std::array<int, kPorts.size()>* lines) {
  if (e.value.IsNull()) return;  // "ports:" with nothing under it changes nothing
  if (!e.value.IsMap()) {
    errors.Add(e.line, StrCat("ports must be a map, not ", Describe(e.value)),
               "e.g. ports: {tunnel: 15008}");
    return;
  }
  std::vector<std::string_view> known;
  for (const PortRef& p : kPorts) known.push_back(p.key);
  for (const Entry& port : Entries(errors, e.value, "ports.")) {
    const std::string_view bare = std::string_view(port.key).substr(6);
    bool matched = false;
    for (size_t i = 0; i < kPorts.size(); ++i) {
      if (kPorts[i].key != bare) continue;
      matched = true;
      if (std::optional<uint16_t> v = ReadInt<uint16_t>(errors, port, 1, 65535, "15008")) {
        ports->*kPorts[i].field = *v;
        (*lines)[i] = port.line;
      }
    }
    if (!matched) UnknownKey(errors, port, bare, known, " under ports");
  }
}

void ReadKubernetes(Errors& errors, const Entry& e, KubernetesSettings* out) {
  if (e.value.IsNull()) return;
  if (!e.value.IsMap()) {
    errors.Add(e.line, StrCat("kubernetes must be a map, not ", Describe(e.value)),
               "e.g. kubernetes: {meshLabel: meshtls.io/mode}");
    return;
  }
  const std::vector<std::string_view> known = {"kubeconfig", "meshLabel", "remotePods"};
  for (const Entry& k : Entries(errors, e.value, "kubernetes.")) {
    const std::string_view bare = std::string_view(k.key).substr(11);
    if (bare == "kubeconfig") {
      ReadString(errors, k, &out->kubeconfig, "/etc/kubernetes/kubeconfig", [&](std::string_view v) {
        return v.empty() ? Check() : AbsolutePath(k.key, v, "/etc/kubernetes/kubeconfig");
      });
    } else if (bare == "meshLabel") {
      ReadString(errors, k, &out->mesh_label, "meshtls.io/mode", [](std::string_view v) -> Check {
        if (workload::IsLabelKey(v)) return Check();
        return Problem{StrCat("kubernetes.meshLabel '", v, "' is not a Kubernetes label key"),
                       "e.g. meshtls.io/mode"};
      });
    } else if (bare == "remotePods") {
      ReadBool(errors, k, &out->remote_pods);
    } else {
      UnknownKey(errors, k, bare, known, " under kubernetes");
    }
  }
}

const std::vector<std::string_view> kTopLevelKeys = {"nodeName",
                                                     "trustDomain",
                                                     "stateDir",
                                                     "policyDir",
                                                     "rootNamespace",
                                                     "workloads",
                                                     "workloadSource",
                                                     "kubernetes",
                                                     "caDir",
                                                     "logLevel",
                                                     "datapath",
                                                     "localLegShortcut",
                                                     "opensslBuiltinEc",
                                                     "ports",
                                                     "metricsAddress",
                                                     "statusSocket",
                                                     "cgroupRoot",
                                                     "bpfPinDir",
                                                     "leaveBpfAttachedOnExit",
                                                     "workers",
                                                     "drainTimeout",
                                                     "handshakeTimeout",
                                                     "maxPendingHandshakes",
                                                     "maxConnections",
                                                     "recordsPerKey",
                                                     "peerKeyUpdateBurst",
                                                     "peerKeyUpdatesPerMinute",
                                                     "svidTtl",
                                                     "accessLog",
                                                     "accessLogHandshakeEventsPerSecond",
                                                     "accessLogHandshakeEventsBurst"};

}  // namespace

absl::StatusOr<AgentConfig> ParseConfig(std::string_view yaml, std::string_view file_name,
                                        AgentConfig defaults) {
  Errors errors(file_name);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::ParserException& e) {
    errors.Add(e.mark.line < 0 ? 1 : e.mark.line + 1, StrCat("YAML syntax error: ", e.msg),
               "check indentation (spaces, not tabs), quoting and brackets near this line");
    return errors.ToStatus();
  }
  AgentConfig config = std::move(defaults);
  if (root.IsNull()) return config;  // an empty file (or only comments) keeps every default
  if (!root.IsMap()) {
    errors.Add(LineOf(root),
               StrCat("the top level must be a map of settings, not ", Describe(root)),
               "e.g. stateDir: /var/lib/meshtls");
    return errors.ToStatus();
  }

  std::array<int, kPorts.size()> port_lines = {};
  for (const Entry& e : Entries(errors, root, "")) {
    const std::string& k = e.key;
    if (k == "nodeName") {
      ReadString(errors, e, &config.node_name, "node-1", CheckNodeName);
    } else if (k == "trustDomain") {
      ReadString(errors, e, &config.trust_domain, "cluster.local", CheckTrustDomain);
    } else if (k == "stateDir") {
      ReadPath(errors, e, &config.state_dir, "/var/lib/meshtls");
    } else if (k == "policyDir") {
      ReadPath(errors, e, &config.policy_dir, "/etc/meshtls/policies");
    } else if (k == "rootNamespace") {
      ReadString(errors, e, &config.root_namespace, "istio-system", CheckRootNamespace);
    } else if (k == "workloads") {
      ReadPath(errors, e, &config.workloads, "/etc/meshtls/workloads.yaml");
    } else if (k == "workloadSource") {
      ReadEnum(errors, e, &config.workload_source, ParseWorkloadSourceKind);
    } else if (k == "kubernetes") {
      ReadKubernetes(errors, e, &config.kubernetes);
    } else if (k == "caDir") {
      ReadPath(errors, e, &config.ca_dir, "/etc/meshtls/ca");
    } else if (k == "logLevel") {
      ReadEnum(errors, e, &config.log_level, ParseLogLevel);
    } else if (k == "datapath") {
      ReadEnum(errors, e, &config.datapath, ParseDatapathChoice);
    } else if (k == "localLegShortcut") {
      ReadEnum(errors, e, &config.local_leg_shortcut, ParseLocalLegShortcut);
    } else if (k == "opensslBuiltinEc") {
      ReadEnum(errors, e, &config.openssl_builtin_ec, ParseBuiltinEcKeys);
    } else if (k == "ports") {
      ReadPorts(errors, e, &config.ports, &port_lines);
    } else if (k == "metricsAddress") {
      if (std::optional<std::string> v = Scalar(errors, e, "127.0.0.1")) {
        absl::StatusOr<IpAddress> ip = IpAddress::Parse(*v);
        if (ip.ok()) {
          config.metrics_address = *ip;
        } else {
          errors.Add(e.line, StrCat("metricsAddress '", *v, "' is not an IP address"),
                     "an address without port, e.g. 127.0.0.1 or ::1; the port is ports.metrics");
        }
      }
    } else if (k == "statusSocket") {
      ReadPath(errors, e, &config.status_socket, "/run/meshtls/status.sock");
    } else if (k == "cgroupRoot") {
      ReadPath(errors, e, &config.cgroup_root, "/sys/fs/cgroup/unified");
    } else if (k == "bpfPinDir") {
      ReadPath(errors, e, &config.bpf_pin_dir, "/sys/fs/bpf/meshtls");
    } else if (k == "leaveBpfAttachedOnExit") {
      ReadBool(errors, e, &config.leave_bpf_attached_on_exit);
    } else if (k == "workers") {
      if (auto v = ReadInt<uint32_t>(errors, e, 0, kMaxWorkers, "0")) config.workers = *v;
    } else if (k == "drainTimeout") {
      ReadDuration(errors, e, &config.drain_timeout, "5s");
    } else if (k == "handshakeTimeout") {
      ReadDuration(errors, e, &config.handshake_timeout, "10s");
    } else if (k == "maxPendingHandshakes") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, std::numeric_limits<uint32_t>::max(), "1024")) {
        config.max_pending_handshakes = *v;
      }
    } else if (k == "maxConnections") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, std::numeric_limits<uint32_t>::max(), "65536")) {
        config.max_connections = *v;
      }
    } else if (k == "recordsPerKey") {
      // 2^24 at most: RFC 8446 §5.5 puts AES-GCM's limit at 2^24.5 full records.
      if (auto v = ReadInt<uint64_t>(errors, e, 1, uint64_t{1} << 24, "8388608")) config.records_per_key = *v;
    } else if (k == "peerKeyUpdateBurst") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, 1'000'000, "16")) config.peer_key_update_burst = *v;
    } else if (k == "peerKeyUpdatesPerMinute") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, 60'000'000, "60")) config.peer_key_updates_per_minute = *v;
    } else if (k == "svidTtl") {
      ReadDuration(errors, e, &config.svid_ttl, "24h");
    } else if (k == "accessLog") {
      ReadString(errors, e, &config.access_log, "stdout", CheckAccessLog);
    } else if (k == "accessLogHandshakeEventsPerSecond") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, 1'000'000, "50")) {
        config.access_log_handshake_events_per_second = *v;
      }
    } else if (k == "accessLogHandshakeEventsBurst") {
      if (auto v = ReadInt<uint32_t>(errors, e, 1, 1'000'000, "200")) config.access_log_handshake_events_burst = *v;
    } else {
      UnknownKey(errors, e, k, kTopLevelKeys, "");
    }
  }

  // Clashing ports are reported here, where the line is known; Validate() catches the rest.
  for (size_t i = 0; i < kPorts.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (config.ports.*kPorts[i].field != config.ports.*kPorts[j].field) continue;
      if (port_lines[i] == 0 && port_lines[j] == 0) continue;
      const size_t later = port_lines[i] >= port_lines[j] ? i : j;
      const size_t other = later == i ? j : i;
      errors.Add(port_lines[later],
                 StrCat("ports.", kPorts[later].key, " is ", config.ports.*kPorts[later].field,
                        ", the same as ports.", kPorts[other].key),
                 "every port must be different");
    }
  }
  if (!errors.empty()) return errors.ToStatus();
  return config;
}

absl::StatusOr<AgentConfig> LoadConfigFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        StrCat("agent config ", path, " is a directory (pass the YAML file itself, e.g. --config ",
               kDefaultConfigPath, ")"));
  }
  std::ifstream in(path);
  if (!in) {
    absl::Status error = ErrnoStatus(errno, StrCat("cannot read agent config ", path));
    return absl::Status(error.code(),
                        StrCat(error.message(),
                               " (check the --config path; without --config the built-in defaults "
                               "apply unless ",
                               kDefaultConfigPath, " exists)"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return ErrnoStatus(errno, StrCat("reading agent config ", path));
  return ParseConfig(text.str(), path);
}

absl::Status Validate(const AgentConfig& c) {
  std::vector<std::string> problems;
  auto add = [&](const Check& check) {
    if (check) problems.push_back(StrCat(check->reason, " (", check->fix, ")"));
  };
  add(CheckNodeName(c.node_name));
  add(CheckTrustDomain(c.trust_domain));
  add(AbsolutePath("stateDir", c.state_dir, "/var/lib/meshtls"));
  add(AbsolutePath("policyDir", c.policy_dir, "/etc/meshtls/policies"));
  add(CheckRootNamespace(c.root_namespace));
  add(AbsolutePath("workloads", c.workloads, "/etc/meshtls/workloads.yaml"));
  if (!c.ca_dir.empty()) add(AbsolutePath("caDir", c.ca_dir, "/etc/meshtls/ca"));
  if (!c.kubernetes.kubeconfig.empty()) {
    add(AbsolutePath("kubernetes.kubeconfig", c.kubernetes.kubeconfig, "/etc/kubernetes/kubeconfig"));
  }
  add(AbsolutePath("statusSocket", c.status_socket, "/run/meshtls/status.sock"));
  add(AbsolutePath("cgroupRoot", c.cgroup_root, "/sys/fs/cgroup/unified"));
  add(AbsolutePath("bpfPinDir", c.bpf_pin_dir, "/sys/fs/bpf/meshtls"));
  add(CheckAccessLog(c.access_log));
  add(CheckWorkers(c.workers));
  add(Positive("drainTimeout", c.drain_timeout));
  add(Positive("handshakeTimeout", c.handshake_timeout));
  add(Positive("svidTtl", c.svid_ttl));
  add(AtLeastOne("maxPendingHandshakes", c.max_pending_handshakes));
  add(AtLeastOne("maxConnections", c.max_connections));
  add(AtLeastOne("accessLogHandshakeEventsPerSecond", c.access_log_handshake_events_per_second));
  add(AtLeastOne("accessLogHandshakeEventsBurst", c.access_log_handshake_events_burst));
  if (c.max_pending_handshakes > c.max_connections) {
    problems.push_back(StrCat("maxPendingHandshakes (", c.max_pending_handshakes,
                              ") is more than maxConnections (", c.max_connections,
                              ") (every pending handshake is a connection: lower it)"));
  }
  for (size_t i = 0; i < kPorts.size(); ++i) {
    const uint16_t port = c.ports.*kPorts[i].field;
    if (port == 0)
      problems.push_back(
          StrCat("ports.", kPorts[i].key, " is 0 (give a port between 1 and 65535)"));
    for (size_t j = 0; j < i; ++j) {
      if (port != 0 && port == c.ports.*kPorts[j].field) {
        problems.push_back(StrCat("ports.", kPorts[i].key, " and ports.", kPorts[j].key,
                                  " are both ", port, " (every port must be different)"));
      }
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(StrCat("invalid configuration: ", Join(problems, "; ")));
}

std::string DumpConfig(const AgentConfig& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "nodeName" << YAML::Value << c.node_name;
  out << YAML::Key << "trustDomain" << YAML::Value << c.trust_domain;
  out << YAML::Key << "stateDir" << YAML::Value << c.state_dir;
  out << YAML::Key << "policyDir" << YAML::Value << c.policy_dir;
  out << YAML::Key << "rootNamespace" << YAML::Value << c.root_namespace;
  out << YAML::Key << "workloads" << YAML::Value << c.workloads;
  out << YAML::Key << "workloadSource" << YAML::Value << std::string(Name(c.workload_source));
  out << YAML::Key << "kubernetes" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "kubeconfig" << YAML::Value << c.kubernetes.kubeconfig;
  out << YAML::Key << "meshLabel" << YAML::Value << c.kubernetes.mesh_label;
  out << YAML::Key << "remotePods" << YAML::Value << c.kubernetes.remote_pods;
  out << YAML::EndMap;
  if (!c.ca_dir.empty()) out << YAML::Key << "caDir" << YAML::Value << c.ca_dir;  // empty: <stateDir>/ca
  out << YAML::Key << "logLevel" << YAML::Value << std::string(Name(c.log_level));
  out << YAML::Key << "datapath" << YAML::Value << std::string(Name(c.datapath));
  out << YAML::Key << "localLegShortcut" << YAML::Value << std::string(Name(c.local_leg_shortcut));
  out << YAML::Key << "opensslBuiltinEc" << YAML::Value << std::string(Name(c.openssl_builtin_ec));
  out << YAML::Key << "ports" << YAML::Value << YAML::BeginMap;
  for (const PortRef& p : kPorts) {
    out << YAML::Key << std::string(p.key) << YAML::Value
        << static_cast<unsigned>(c.ports.*p.field);
  }
  out << YAML::EndMap;
  out << YAML::Key << "metricsAddress" << YAML::Value << c.metrics_address.ToString();
  out << YAML::Key << "statusSocket" << YAML::Value << c.status_socket;
  out << YAML::Key << "cgroupRoot" << YAML::Value << c.cgroup_root;
  out << YAML::Key << "bpfPinDir" << YAML::Value << c.bpf_pin_dir;
  out << YAML::Key << "leaveBpfAttachedOnExit" << YAML::Value << c.leave_bpf_attached_on_exit;
  out << YAML::Key << "workers" << YAML::Value << c.workers;
  out << YAML::Key << "drainTimeout" << YAML::Value << FormatDuration(c.drain_timeout);
  out << YAML::Key << "handshakeTimeout" << YAML::Value << FormatDuration(c.handshake_timeout);
  out << YAML::Key << "maxPendingHandshakes" << YAML::Value << c.max_pending_handshakes;
  out << YAML::Key << "maxConnections" << YAML::Value << c.max_connections;
  out << YAML::Key << "recordsPerKey" << YAML::Value << c.records_per_key;
  out << YAML::Key << "peerKeyUpdateBurst" << YAML::Value << c.peer_key_update_burst;
  out << YAML::Key << "peerKeyUpdatesPerMinute" << YAML::Value << c.peer_key_updates_per_minute;
  out << YAML::Key << "svidTtl" << YAML::Value << FormatDuration(c.svid_ttl);
  out << YAML::Key << "accessLog" << YAML::Value << c.access_log;
  out << YAML::Key << "accessLogHandshakeEventsPerSecond" << YAML::Value
      << c.access_log_handshake_events_per_second;
  out << YAML::Key << "accessLogHandshakeEventsBurst" << YAML::Value << c.access_log_handshake_events_burst;
  out << YAML::EndMap;
  return StrCat(out.c_str(), "\n");
}

}  // namespace meshtls::agent
