#include <CLI/CLI.hpp>
#include <charconv>
#include <filesystem>
#include <string>
#include <vector>

#include "meshtls/agent/config.h"
#include "meshtls/common/strings.h"

namespace meshtls::agent {
namespace {

void AddString(CLI::App& app, const std::string& name, std::optional<std::string>* target,
               const std::string& help) {
  app.add_option_function<std::string>(
         name, [target](const std::string& value) { *target = value; }, help)
      ->type_name("TEXT");
}

// Flags are typed by people in a shell, where relative paths are natural; the file's paths must
// be absolute because its readers (a DaemonSet, systemd) have no meaningful current directory.
absl::Status SetPath(std::string_view flag, const std::optional<std::string>& value,
                     std::string* out) {
  if (!value) return absl::OkStatus();
  if (value->empty()) return absl::InvalidArgumentError(StrCat(flag, ": the path is empty"));
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(*value, ec);
  if (ec)
    return absl::InvalidArgumentError(
        StrCat(flag, ": cannot make '", *value, "' absolute: ", ec.message()));
  *out = absolute.lexically_normal().string();
  return absl::OkStatus();
}

template <typename Enum>
absl::Status SetEnum(std::string_view flag, const std::optional<std::string>& value, Enum* out,
                     absl::StatusOr<Enum> (*parse)(std::string_view)) {
  if (!value) return absl::OkStatus();
  absl::StatusOr<Enum> parsed = parse(*value);
  if (!parsed.ok())
    return absl::InvalidArgumentError(StrCat(flag, ": ", parsed.status().message()));
  *out = *parsed;
  return absl::OkStatus();
}

}  // namespace

void AddFlags(CLI::App& app, FlagOverrides* flags) {
  AddString(app, "--config", &flags->config,
            StrCat("agent configuration file (default: ", kDefaultConfigPath, " if it exists)"));
  AddString(app, "--state-dir", &flags->state_dir, "overrides stateDir");
  AddString(app, "--policy-dir", &flags->policy_dir, "overrides policyDir");
  AddString(app, "--workloads", &flags->workloads,
            "overrides workloads (the static workload file)");
  AddString(app, "--trust-domain", &flags->trust_domain, "overrides trustDomain");
  AddString(app, "--node-name", &flags->node_name,
            "overrides nodeName (default: $NODE_NAME, else the hostname)");
  AddString(app, "--log-level", &flags->log_level,
            "overrides logLevel: trace|debug|info|warn|error|off");
  AddString(app, "--datapath", &flags->datapath,
            "overrides datapath: auto|ktls-splice|userspace-tls");
  AddString(app, "--local-leg-shortcut", &flags->local_leg_shortcut,
            "overrides localLegShortcut: auto|on|off");
  AddString(app, "--openssl-builtin-ec", &flags->openssl_builtin_ec,
            "overrides opensslBuiltinEc: auto|off");
  AddString(app, "--workers", &flags->workers, "overrides workers (0: one per CPU)");
  AddString(app, "--status-socket", &flags->status_socket, "overrides statusSocket");
  app.add_flag("--print-config", flags->print_config,
               "print the resulting configuration as YAML and exit");
}

absl::Status ApplyOverrides(const FlagOverrides& flags, AgentConfig* config) {
  // Applied to a copy, so a bad flag leaves *config as it was.
  AgentConfig next = *config;
  std::vector<std::string> problems;
  auto add = [&](const absl::Status& status) {
    if (!status.ok()) problems.emplace_back(status.message());
  };
  add(SetPath("--state-dir", flags.state_dir, &next.state_dir));
  add(SetPath("--policy-dir", flags.policy_dir, &next.policy_dir));
  add(SetPath("--workloads", flags.workloads, &next.workloads));
  add(SetPath("--status-socket", flags.status_socket, &next.status_socket));
  if (flags.trust_domain) next.trust_domain = *flags.trust_domain;
  if (flags.node_name) next.node_name = *flags.node_name;
  add(SetEnum("--log-level", flags.log_level, &next.log_level, ParseLogLevel));
  add(SetEnum("--datapath", flags.datapath, &next.datapath, ParseDatapathChoice));
  add(SetEnum("--local-leg-shortcut", flags.local_leg_shortcut, &next.local_leg_shortcut,
              ParseLocalLegShortcut));
  add(SetEnum("--openssl-builtin-ec", flags.openssl_builtin_ec, &next.openssl_builtin_ec,
              ParseBuiltinEcKeys));
  if (flags.workers) {
    uint32_t workers = 0;
    const std::string& text = *flags.workers;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), workers);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
      problems.push_back(
          StrCat("--workers: '", text, "' is not a whole number (0 means one per CPU)"));
    } else {
      next.workers = workers;
    }
  }
  if (!problems.empty()) return absl::InvalidArgumentError(Join(problems, "; "));
  *config = std::move(next);
  return absl::OkStatus();
}

absl::StatusOr<AgentConfig> ResolveConfig(const FlagOverrides& flags) {
  AgentConfig config = AgentConfig::Defaults();
  if (flags.config) {
    absl::StatusOr<AgentConfig> loaded = LoadConfigFile(*flags.config);
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  } else if (std::error_code ec; std::filesystem::exists(kDefaultConfigPath, ec)) {
    absl::StatusOr<AgentConfig> loaded = LoadConfigFile(std::string(kDefaultConfigPath));
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  }
  if (absl::Status applied = ApplyOverrides(flags, &config); !applied.ok()) return applied;
  if (absl::Status valid = Validate(config); !valid.ok()) return valid;
  return config;
}

}  // namespace meshtls::agent
