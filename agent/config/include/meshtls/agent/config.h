#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "meshtls/common/ip_address.h"
#include "meshtls/common/openssl_setup.h"

namespace CLI {
class App;
}

namespace meshtls::agent {

// The agent daemon's configuration: defaults < the YAML file < command-line flags
// (docs/config.md lists every field).

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };
// Which relay carries tunnel bytes; kAuto picks ktls-splice where the running kernel has kTLS.
enum class DatapathChoice { kAuto, kKtlsSplice, kUserspaceTls };
// The sockmap shortcut between an app and the agent on the plaintext local leg; kAuto enables it
// where the start-up self-test passes.
enum class LocalLegShortcut { kAuto, kOn, kOff };
// Where the workload registry's pods come from.
enum class WorkloadSourceKind { kFile, kKubernetes };

// The names used in the file, on the command line and by ConfigureLogging().
std::string_view Name(LogLevel level);
std::string_view Name(DatapathChoice datapath);
std::string_view Name(LocalLegShortcut shortcut);
std::string_view Name(WorkloadSourceKind source);
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);
absl::StatusOr<DatapathChoice> ParseDatapathChoice(std::string_view name);
absl::StatusOr<LocalLegShortcut> ParseLocalLegShortcut(std::string_view name);
absl::StatusOr<WorkloadSourceKind> ParseWorkloadSourceKind(std::string_view name);

inline constexpr std::string_view kDefaultConfigPath = "/etc/meshtls/agent.yaml";

struct Ports {
  uint16_t outbound = 15001;         // in each pod's netns: redirected outbound connections
  uint16_t inbound_capture = 15006;  // in each pod's netns: sk_lookup-captured inbound connections
  uint16_t tunnel = 15008;           // in each pod's netns: mTLS tunnels from other agents
  uint16_t metrics = 15020;          // on the host, at metrics_address
  uint16_t readiness = 15021;        // on the host, at metrics_address
  bool operator==(const Ports&) const = default;
};

struct KubernetesSettings {
  std::string kubeconfig;                   // empty: the pod's service account (in-cluster)
  std::string mesh_label = "meshtls.io/mode";  // namespaces (and pods) with value "enabled" are meshed
  bool remote_pods = true;                  // also watch pods on other nodes (their identities)
  bool operator==(const KubernetesSettings&) const = default;
};

struct AgentConfig {
  std::string node_name;  // Defaults(): $NODE_NAME, else the lowercased hostname
  std::string trust_domain = "cluster.local";
  std::string state_dir = "/var/lib/meshtls";
  std::string policy_dir = "/etc/meshtls/policies";
  std::string root_namespace = "istio-system";  // policies here apply mesh-wide, as in Istio
  std::string workloads = "/etc/meshtls/workloads.yaml";
  WorkloadSourceKind workload_source = WorkloadSourceKind::kFile;
  KubernetesSettings kubernetes;
  std::string ca_dir;  // empty: <state_dir>/ca, made on first start
  LogLevel log_level = LogLevel::kInfo;
  DatapathChoice datapath = DatapathChoice::kAuto;
  LocalLegShortcut local_leg_shortcut = LocalLegShortcut::kAuto;
  // OpenSSL's built-in EC code for certificate keys (openssl_setup.h): auto or off.
  BuiltinEcKeys openssl_builtin_ec = BuiltinEcKeys::kAuto;
  Ports ports;
  IpAddress metrics_address = *IpAddress::Parse("127.0.0.1");
  std::string status_socket = "/run/meshtls/status.sock";
  std::string cgroup_root = "/sys/fs/cgroup/unified";  // where the BPF cgroup programs attach
  std::string bpf_pin_dir = "/sys/fs/bpf/meshtls";
  // An agent upgrade restarts the process; leaving the programs attached keeps pods steered (and
  // STRICT pods fail closed) in between. Set false to have a clean exit remove them.
  bool leave_bpf_attached_on_exit = true;
  uint32_t workers = 0;  // 0: one per CPU
  std::chrono::nanoseconds drain_timeout = std::chrono::seconds(5);
  std::chrono::nanoseconds handshake_timeout = std::chrono::seconds(10);
  uint32_t max_pending_handshakes = 1024;
  uint32_t max_connections = 65536;
  // TLS key lifetime (userspace-tls): records per traffic key before a KeyUpdate (AES-GCM is
  // good for 2^24.5), and the KeyUpdates a peer may send (a burst, then per minute).
  uint64_t records_per_key = uint64_t{1} << 23;
  uint32_t peer_key_update_burst = 16;
  uint32_t peer_key_updates_per_minute = 60;
  std::chrono::nanoseconds svid_ttl = std::chrono::hours(24);
  std::string access_log = "stdout";  // stdout | stderr | off | an absolute file path
  // The access log's mtls_handshake lines: a burst, then per second. A flood of failing
  // handshakes (a scanner, a peer with the wrong CA) is counted, not written line by line.
  uint32_t access_log_handshake_events_per_second = 50;
  uint32_t access_log_handshake_events_burst = 200;

  // The built-in defaults plus the node name from the environment.
  static AgentConfig Defaults();
  bool operator==(const AgentConfig&) const = default;
};

// Parses the YAML text of a config file over `defaults`: keys present replace fields, absent ones
// keep them. Errors, one per line, read "FILE:LINE: reason (fix)"; unknown keys are errors (with a
// did-you-mean), since a misspelt key silently keeping its default is worse than not starting.
absl::StatusOr<AgentConfig> ParseConfig(std::string_view yaml, std::string_view file_name,
                                        AgentConfig defaults = AgentConfig::Defaults());
// Reads and parses `path` over AgentConfig::Defaults(); a missing file is an error.
absl::StatusOr<AgentConfig> LoadConfigFile(const std::string& path);
// The checks that need the final values (after flags): ports distinct and nonzero, durations
// positive, paths absolute, limits consistent, names valid. Reports every problem found.
absl::Status Validate(const AgentConfig& config);
// Every field as YAML in the file's own syntax (ParseConfig reads it back to an equal config), for
// --print-config and the status API.
std::string DumpConfig(const AgentConfig& config);

// Command-line flags; only those given on the command line are set.
struct FlagOverrides {
  std::optional<std::string> config;  // --config: the file to load instead of kDefaultConfigPath
  std::optional<std::string> state_dir;
  std::optional<std::string> policy_dir;
  std::optional<std::string> workloads;
  std::optional<std::string> trust_domain;
  std::optional<std::string> node_name;
  std::optional<std::string> log_level;
  std::optional<std::string> datapath;
  std::optional<std::string> local_leg_shortcut;
  std::optional<std::string> openssl_builtin_ec;
  std::optional<std::string> workers;
  std::optional<std::string> status_socket;
  bool print_config = false;  // --print-config: print the final configuration and exit
};

// Registers the flags on `app`; parsing the command line fills `flags` (which must outlive `app`).
void AddFlags(CLI::App& app, FlagOverrides* flags);
// Applies the flags given. Relative paths on the command line are taken from the current
// directory (in the file they must be absolute). Errors name the flag.
absl::Status ApplyOverrides(const FlagOverrides& flags, AgentConfig* config);
// The start-up sequence in one call: defaults, then the file (--config, else kDefaultConfigPath if
// it exists), then the flags, then Validate().
absl::StatusOr<AgentConfig> ResolveConfig(const FlagOverrides& flags);

}  // namespace meshtls::agent
