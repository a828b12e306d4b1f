#include "meshtls/agent/config.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "meshtls/agent/duration.h"
#include "meshtls/common/strings.h"

namespace meshtls::agent {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::nanoseconds;
using std::chrono::seconds;

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// Tests must not depend on the machine's hostname or environment.
AgentConfig Base() {
  AgentConfig config;
  config.node_name = "node-1";
  return config;
}

std::string ErrorOf(const std::string& yaml) {
  auto parsed = ParseConfig(yaml, "agent.yaml", Base());
  EXPECT_FALSE(parsed.ok()) << yaml;
  return parsed.ok() ? "" : std::string(parsed.status().message());
}

TEST(AgentConfigTest, Defaults) {
  AgentConfig c;
  EXPECT_EQ(c.trust_domain, "cluster.local");
  EXPECT_EQ(c.state_dir, "/var/lib/meshtls");
  EXPECT_EQ(c.policy_dir, "/etc/meshtls/policies");
  EXPECT_EQ(c.root_namespace, "istio-system");
  EXPECT_EQ(c.workloads, "/etc/meshtls/workloads.yaml");
  EXPECT_EQ(c.log_level, LogLevel::kInfo);
  EXPECT_EQ(c.datapath, DatapathChoice::kAuto);
  EXPECT_EQ(c.local_leg_shortcut, LocalLegShortcut::kAuto);
  EXPECT_EQ(c.openssl_builtin_ec, BuiltinEcKeys::kAuto);
  EXPECT_EQ(c.ports, (Ports{15001, 15006, 15008, 15020, 15021}));
  EXPECT_EQ(c.metrics_address.ToString(), "127.0.0.1");
  EXPECT_EQ(c.status_socket, "/run/meshtls/status.sock");
  EXPECT_EQ(c.cgroup_root, "/sys/fs/cgroup/unified");
  EXPECT_EQ(c.bpf_pin_dir, "/sys/fs/bpf/meshtls");
  EXPECT_TRUE(c.leave_bpf_attached_on_exit);
  EXPECT_EQ(c.workers, 0u);
  EXPECT_EQ(c.drain_timeout, seconds(5));
  EXPECT_EQ(c.handshake_timeout, seconds(10));
  EXPECT_EQ(c.max_pending_handshakes, 1024u);
  EXPECT_EQ(c.max_connections, 65536u);
  EXPECT_EQ(c.svid_ttl, hours(24));
  EXPECT_EQ(c.access_log, "stdout");
  EXPECT_EQ(c.access_log_handshake_events_per_second, 50u);
  EXPECT_EQ(c.access_log_handshake_events_burst, 200u);

  ASSERT_EQ(setenv("NODE_NAME", "worker-7", 1), 0);
  EXPECT_EQ(AgentConfig::Defaults().node_name, "worker-7");
  ASSERT_EQ(unsetenv("NODE_NAME"), 0);
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(AgentConfig::Defaults().node_name, ToLower(host));

  EXPECT_TRUE(Validate(Base()).ok()) << Validate(Base());
  // An empty file (or only comments) keeps every default.
  auto empty = ParseConfig("# nothing yet\n", "agent.yaml", Base());
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, Base());
}

TEST(AgentConfigTest, TheCommentedExampleParsesToTheDefaults) {
  auto loaded = LoadConfigFile(MESHTLS_EXAMPLES_DIR "/agent.yaml");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  // The example documents the defaults, so it must not drift from them.
  EXPECT_EQ(*loaded, Base()) << DumpConfig(*loaded);
  EXPECT_TRUE(Validate(*loaded).ok());
}

TEST(AgentConfigTest, ParsesEveryField) {
  auto c = ParseConfig(
      "nodeName: worker-2.example\n"
      "trustDomain: prod.example.org\n"
      "stateDir: /srv/meshtls\n"
      "policyDir: /srv/policies\n"
      "rootNamespace: mesh-root\n"
      "workloads: /srv/w.yaml\n"
      "logLevel: debug\n"
      "datapath: userspace-tls\n"
      "localLegShortcut: off\n"
      "ports: {outbound: 1, inboundCapture: 2, tunnel: 3, metrics: 4, readiness: 65535}\n"
      "metricsAddress: ::1\n"
      "statusSocket: /tmp/s.sock\n"
      "cgroupRoot: /sys/fs/cgroup\n"
      "bpfPinDir: /sys/fs/bpf/x\n"
      "leaveBpfAttachedOnExit: false\n"
      "workers: 8\n"
      "opensslBuiltinEc: off\n"
      "drainTimeout: 1m30s\n"
      "handshakeTimeout: 250ms\n"
      "maxPendingHandshakes: 10\n"
      "maxConnections: 100\n"
      "svidTtl: 1.5h\n"
      "accessLog: /var/log/meshtls/access.log\n"
      "accessLogHandshakeEventsPerSecond: 5\n"
      "accessLogHandshakeEventsBurst: 1000000\n",
      "agent.yaml", Base());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->node_name, "worker-2.example");
  EXPECT_EQ(c->trust_domain, "prod.example.org");
  EXPECT_EQ(c->state_dir, "/srv/meshtls");
  EXPECT_EQ(c->policy_dir, "/srv/policies");
  EXPECT_EQ(c->root_namespace, "mesh-root");
  EXPECT_EQ(c->workloads, "/srv/w.yaml");
  EXPECT_EQ(c->log_level, LogLevel::kDebug);
  EXPECT_EQ(c->datapath, DatapathChoice::kUserspaceTls);
  EXPECT_EQ(c->local_leg_shortcut, LocalLegShortcut::kOff);
  EXPECT_EQ(c->openssl_builtin_ec, BuiltinEcKeys::kOff);
  EXPECT_EQ(c->ports, (Ports{1, 2, 3, 4, 65535}));
  EXPECT_EQ(c->metrics_address.ToString(), "::1");
  EXPECT_EQ(c->status_socket, "/tmp/s.sock");
  EXPECT_EQ(c->cgroup_root, "/sys/fs/cgroup");
  EXPECT_EQ(c->bpf_pin_dir, "/sys/fs/bpf/x");
  EXPECT_FALSE(c->leave_bpf_attached_on_exit);
  EXPECT_EQ(c->workers, 8u);
  EXPECT_EQ(c->drain_timeout, seconds(90));
  EXPECT_EQ(c->handshake_timeout, milliseconds(250));
  EXPECT_EQ(c->max_pending_handshakes, 10u);
  EXPECT_EQ(c->max_connections, 100u);
  EXPECT_EQ(c->svid_ttl, minutes(90));
  EXPECT_EQ(c->access_log, "/var/log/meshtls/access.log");
  EXPECT_EQ(c->access_log_handshake_events_per_second, 5u);
  EXPECT_EQ(c->access_log_handshake_events_burst, 1'000'000u);
  EXPECT_TRUE(Validate(*c).ok()) << Validate(*c);

  // Keys not in the file keep the defaults passed in.
  AgentConfig base = Base();
  base.workers = 3;
  auto partial = ParseConfig("logLevel: warn\n", "agent.yaml", base);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->workers, 3u);
  EXPECT_EQ(partial->log_level, LogLevel::kWarn);
}

TEST(AgentConfigTest, EachErrorNamesTheLineAndTheKey) {
  EXPECT_CONTAINS(
      ErrorOf("logLevel: info\nstateDir: var/lib\n"),
      "agent.yaml:2: stateDir 'var/lib' is not an absolute path (e.g. /var/lib/meshtls)");
  EXPECT_CONTAINS(
      ErrorOf("\n\nlogLevel: verbose\n"),
      "agent.yaml:3: logLevel: 'verbose' is not one of trace|debug|info|warn|error|off");
  EXPECT_CONTAINS(ErrorOf("datapath: ktls\n"),
                  "agent.yaml:1: datapath: 'ktls' is not one of auto|ktls-splice|userspace-tls");
  EXPECT_CONTAINS(ErrorOf("localLegShortcut: yes\n"),
                  "agent.yaml:1: localLegShortcut: 'yes' is not one of auto|on|off");
  EXPECT_CONTAINS(ErrorOf("ports:\n  outbound: 15001\n  tunnel: 70000\n"),
                  "agent.yaml:3: ports.tunnel is 70000, more than 65535");
  EXPECT_CONTAINS(ErrorOf("ports:\n  tunnel: 0\n"), "agent.yaml:2: ports.tunnel is 0, less than 1");
  EXPECT_CONTAINS(ErrorOf("ports:\n  tunnel: http\n"),
                  "agent.yaml:2: ports.tunnel must be a whole number, not 'http'");
  EXPECT_CONTAINS(ErrorOf("ports: 15008\n"), "agent.yaml:1: ports must be a map, not '15008'");
  EXPECT_CONTAINS(ErrorOf("workers: -1\n"),
                  "agent.yaml:1: workers must be a whole number, not '-1'");
  EXPECT_CONTAINS(ErrorOf("workers: 5000\n"), "agent.yaml:1: workers is 5000, more than 1024");
  EXPECT_CONTAINS(ErrorOf("maxConnections: 0\n"), "agent.yaml:1: maxConnections is 0, less than 1");
  EXPECT_CONTAINS(ErrorOf("maxConnections: 99999999999\n"),
                  "agent.yaml:1: maxConnections is 99999999999, more than");
  EXPECT_CONTAINS(ErrorOf("leaveBpfAttachedOnExit: yes\n"),
                  "agent.yaml:1: leaveBpfAttachedOnExit must be true or false, not 'yes'");
  EXPECT_CONTAINS(ErrorOf("metricsAddress: 127.0.0.1:15020\n"),
                  "agent.yaml:1: metricsAddress '127.0.0.1:15020' is not an IP address");
  EXPECT_CONTAINS(ErrorOf("trustDomain: Cluster.Local\n"),
                  "agent.yaml:1: trustDomain 'Cluster.Local' is not a valid SPIFFE trust domain");
  EXPECT_CONTAINS(ErrorOf("trustDomain: a/b\n"), "agent.yaml:1: trustDomain 'a/b' is not a valid");
  EXPECT_CONTAINS(ErrorOf("nodeName: Node_1\n"),
                  "agent.yaml:1: nodeName 'Node_1' is not a valid node name");
  EXPECT_CONTAINS(ErrorOf("rootNamespace: istio.system\n"),
                  "agent.yaml:1: rootNamespace 'istio.system' is not a valid namespace name");
  EXPECT_CONTAINS(
      ErrorOf("accessLog: access.log\n"),
      "agent.yaml:1: accessLog 'access.log' is neither stdout, stderr, off nor an absolute path");
  EXPECT_CONTAINS(ErrorOf("accessLogHandshakeEventsPerSecond: 0\n"),
                  "agent.yaml:1: accessLogHandshakeEventsPerSecond is 0, less than 1");
  EXPECT_CONTAINS(ErrorOf("accessLogHandshakeEventsBurst: 1000001\n"),
                  "agent.yaml:1: accessLogHandshakeEventsBurst is 1000001, more than 1000000");
  EXPECT_CONTAINS(ErrorOf("accessLogHandshakeEventsBurst: 2.5\n"),
                  "agent.yaml:1: accessLogHandshakeEventsBurst must be a whole number, not '2.5'");
  EXPECT_CONTAINS(ErrorOf("stateDir:\nlogLevel: info\n"), "agent.yaml:1: stateDir has no value");
  EXPECT_CONTAINS(ErrorOf("stateDir: [/a, /b]\n"),
                  "agent.yaml:1: stateDir must be a single value, not a list");
  EXPECT_CONTAINS(ErrorOf("workers: 1\nworkers: 2\n"), "agent.yaml:2: workers is given twice");
  EXPECT_CONTAINS(ErrorOf("- stateDir: /a\n"),
                  "agent.yaml:1: the top level must be a map of settings, not a list");
  EXPECT_CONTAINS(ErrorOf("ports:\n  tunnel: 15008\n\tmetrics: 1\n"),
                  "agent.yaml:3: YAML syntax error");
  // Every problem is reported, not only the first.
  std::string all = ErrorOf("logLevel: loud\nworkers: x\nsvidTtl: forever\n");
  EXPECT_CONTAINS(all, "agent.yaml:1:");
  EXPECT_CONTAINS(all, "agent.yaml:2:");
  EXPECT_CONTAINS(all, "agent.yaml:3:");
}

TEST(AgentConfigTest, UnknownKeysSuggestTheIntendedOne) {
  EXPECT_CONTAINS(ErrorOf("statedir: /x\n"),
                  "agent.yaml:1: unknown key 'statedir' (did you mean 'stateDir'?)");
  EXPECT_CONTAINS(ErrorOf("logLevel: info\ntrust_domain: x\n"),
                  "agent.yaml:2: unknown key 'trust_domain' (did you mean 'trustDomain'?)");
  EXPECT_CONTAINS(ErrorOf("handshakeTimout: 5s\n"),
                  "agent.yaml:1: unknown key 'handshakeTimout' (did you mean 'handshakeTimeout'?)");
  EXPECT_CONTAINS(ErrorOf("leave-bpf-attached-on-exit: true\n"),
                  "did you mean 'leaveBpfAttachedOnExit'?");
  EXPECT_CONTAINS(
      ErrorOf("ports:\n  inbound_capture: 1\n"),
      "agent.yaml:2: unknown key 'inbound_capture' under ports (did you mean 'inboundCapture'?)");
  EXPECT_CONTAINS(ErrorOf("tunnel: 15008\n"),
                  "agent.yaml:1: unknown key 'tunnel' (did you mean 'tunnel' under 'ports:'?)");
  EXPECT_CONTAINS(ErrorOf("colour: blue\n"),
                  "agent.yaml:1: unknown key 'colour' (known keys: nodeName, trustDomain,");
}

TEST(DurationTest, ParsesGoStyleDurations) {
  EXPECT_EQ(*ParseDuration("5s"), seconds(5));
  EXPECT_EQ(*ParseDuration("500ms"), milliseconds(500));
  EXPECT_EQ(*ParseDuration("24h"), hours(24));
  EXPECT_EQ(*ParseDuration("1h30m"), minutes(90));
  EXPECT_EQ(*ParseDuration("1.5s"), milliseconds(1500));
  EXPECT_EQ(*ParseDuration(".5m"), seconds(30));
  EXPECT_EQ(*ParseDuration("2h45m10s1ms2us3ns"),
            hours(2) + minutes(45) + seconds(10) + nanoseconds(1002003));
  EXPECT_EQ(*ParseDuration("10us"), nanoseconds(10000));
  EXPECT_EQ(*ParseDuration("10\xC2\xB5s"), nanoseconds(10000));
  EXPECT_EQ(*ParseDuration("0"), nanoseconds(0));
  EXPECT_EQ(*ParseDuration("-1.5h"), -minutes(90));
  EXPECT_EQ(*ParseDuration("2562047h"), hours(2562047));

  for (const char* bad : {"", "5", "s", "5 s", "5sec", "1h 30m", "1.h.", "--5s", "9999999999999h",
                          "2562048h", "1e3s", "5s5", "0x10s"}) {
    auto parsed = ParseDuration(bad);
    EXPECT_FALSE(parsed.ok()) << "'" << bad << "' parsed as " << parsed->count();
  }
  EXPECT_CONTAINS(std::string(ParseDuration("5").status().message()),
                  "'5' is not a duration: a number has no unit");
  EXPECT_CONTAINS(std::string(ParseDuration("5sec").status().message()), "unknown unit 'sec'");
}

TEST(DurationTest, FormatsTheShortestExactForm) {
  EXPECT_EQ(FormatDuration(hours(24)), "24h");
  EXPECT_EQ(FormatDuration(minutes(90)), "1h30m");
  EXPECT_EQ(FormatDuration(milliseconds(1500)), "1s500ms");
  EXPECT_EQ(FormatDuration(nanoseconds(0)), "0s");
  EXPECT_EQ(FormatDuration(-seconds(5)), "-5s");
  for (nanoseconds d :
       {nanoseconds(1), nanoseconds(1001), hours(2562047) + nanoseconds(1),
        -hours(3) - nanoseconds(7), nanoseconds(std::numeric_limits<int64_t>::max())}) {
    EXPECT_EQ(*ParseDuration(FormatDuration(d)), d) << FormatDuration(d);
  }
}

TEST(AgentConfigTest, DurationsInTheFileAreCheckedAndMustBePositive) {
  EXPECT_CONTAINS(
      ErrorOf("drainTimeout: 5\n"),
      "agent.yaml:1: drainTimeout: '5' is not a duration: a number has no unit (write e.g. 5s");
  EXPECT_CONTAINS(ErrorOf("logLevel: info\nhandshakeTimeout: 0s\n"),
                  "agent.yaml:2: handshakeTimeout is 0s but must be longer than 0");
  EXPECT_CONTAINS(ErrorOf("svidTtl: -1h\n"),
                  "agent.yaml:1: svidTtl is -1h but must be longer than 0");
}

TEST(AgentConfigTest, ClashingPortsInTheFileNameTheLaterLine) {
  EXPECT_CONTAINS(ErrorOf("ports:\n  tunnel: 15020\n"),
                  "agent.yaml:2: ports.tunnel is 15020, the same as ports.metrics (every port must "
                  "be different)");
  EXPECT_CONTAINS(ErrorOf("ports:\n  metrics: 9000\n  readiness: 9000\n"),
                  "agent.yaml:3: ports.readiness is 9000, the same as ports.metrics");
}

TEST(AgentConfigTest, ValidateCatchesWhatOnlyTheFinalValuesShow) {
  AgentConfig c = Base();
  c.ports.readiness = c.ports.metrics;
  c.ports.tunnel = 0;
  c.handshake_timeout = nanoseconds(0);
  c.state_dir = "relative";
  c.max_pending_handshakes = 100;
  c.max_connections = 10;
  c.access_log_handshake_events_burst = 0;
  c.node_name = "";
  absl::Status s = Validate(c);
  ASSERT_FALSE(s.ok());
  const std::string m(s.message());
  EXPECT_CONTAINS(
      m, "ports.readiness and ports.metrics are both 15020 (every port must be different)");
  EXPECT_CONTAINS(m, "ports.tunnel is 0");
  EXPECT_CONTAINS(m, "handshakeTimeout is 0s but must be longer than 0");
  EXPECT_CONTAINS(m, "stateDir 'relative' is not an absolute path");
  EXPECT_CONTAINS(m, "maxPendingHandshakes (100) is more than maxConnections (10)");
  EXPECT_CONTAINS(m, "nodeName is empty");
  EXPECT_CONTAINS(m, "accessLogHandshakeEventsBurst is 0");
}

TEST(AgentConfigTest, DumpConfigRoundTrips) {
  AgentConfig c = Base();
  c.node_name = "n.example";
  c.trust_domain = "td.example";
  c.state_dir = "/a b/with: colon";
  c.workloads = "/w #not a comment.yaml";
  c.log_level = LogLevel::kOff;
  c.datapath = DatapathChoice::kKtlsSplice;
  c.local_leg_shortcut = LocalLegShortcut::kOn;
  c.openssl_builtin_ec = BuiltinEcKeys::kOff;
  c.ports = Ports{1001, 1002, 1003, 1004, 1005};
  c.metrics_address = *IpAddress::Parse("fd00::20");
  c.leave_bpf_attached_on_exit = false;
  c.workers = 12;
  c.drain_timeout = milliseconds(1500);
  c.handshake_timeout = nanoseconds(1);
  c.svid_ttl = hours(1) + minutes(30);
  c.access_log = "off";
  c.access_log_handshake_events_per_second = 7;
  c.access_log_handshake_events_burst = 9;
  c.workload_source = WorkloadSourceKind::kKubernetes;
  c.kubernetes = KubernetesSettings{"/etc/kube/config", "example.com/mesh", false};
  c.ca_dir = "/etc/meshtls/ca";
  for (const AgentConfig& config : {Base(), c}) {
    const std::string dumped = DumpConfig(config);
    auto parsed = ParseConfig(dumped, "dump", AgentConfig());
    ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << dumped;
    EXPECT_EQ(*parsed, config) << dumped;
  }
  const std::string dumped = DumpConfig(c);
  EXPECT_CONTAINS(dumped, "drainTimeout: 1s500ms\n");
  EXPECT_CONTAINS(dumped, "svidTtl: 1h30m\n");
  EXPECT_CONTAINS(dumped, "  inboundCapture: 1002\n");
  EXPECT_CONTAINS(dumped, "leaveBpfAttachedOnExit: false\n");
}

TEST(AgentConfigTest, KubernetesSourceAndSharedCa) {
  auto parsed = ParseConfig("workloadSource: kubernetes\nkubernetes:\n  meshLabel: example.com/mesh\n"
                            "  remotePods: false\ncaDir: /etc/meshtls/ca\n",
                            "agent.yaml", AgentConfig());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->workload_source, WorkloadSourceKind::kKubernetes);
  EXPECT_EQ(parsed->kubernetes.mesh_label, "example.com/mesh");
  EXPECT_FALSE(parsed->kubernetes.remote_pods);
  EXPECT_TRUE(parsed->kubernetes.kubeconfig.empty()) << "empty means in-cluster";
  EXPECT_EQ(parsed->ca_dir, "/etc/meshtls/ca");
  EXPECT_EQ(AgentConfig().workload_source, WorkloadSourceKind::kFile);
  EXPECT_TRUE(AgentConfig().ca_dir.empty());

  EXPECT_CONTAINS(ErrorOf("workloadSource: k8s\n"), "agent.yaml:1: workloadSource: 'k8s' is not one of");
  EXPECT_CONTAINS(ErrorOf("kubernetes:\n  meshLabel: 'bad label'\n"),
                  "agent.yaml:2: kubernetes.meshLabel 'bad label' is not a Kubernetes label key");
  EXPECT_CONTAINS(ErrorOf("kubernetes:\n  kubeConfig: /x\n"),
                  "agent.yaml:2: unknown key 'kubeConfig' under kubernetes (did you mean 'kubeconfig'?)");
  EXPECT_CONTAINS(ErrorOf("kubernetes:\n  kubeconfig: relative/config\n"), "agent.yaml:2: kubernetes.kubeconfig");
  EXPECT_CONTAINS(ErrorOf("caDir: ca\n"), "agent.yaml:1: caDir");
  EXPECT_CONTAINS(ErrorOf("kubernetes: [a]\n"), "agent.yaml:1: kubernetes must be a map");
}

class FlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/meshtls-config-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Parses `args` (without the program name) the way the daemon's main() will.
  FlagOverrides Parse(std::vector<std::string> args) {
    CLI::App app{"test"};
    FlagOverrides flags;
    AddFlags(app, &flags);
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last-first
    app.parse(reversed);
    return flags;
  }

  std::string dir_;
};

TEST_F(FlagsTest, FlagsGivenWinOverTheFileAndOthersLeaveItAlone) {
  const std::string file = dir_ + "/agent.yaml";
  std::ofstream(file)
      << "stateDir: /from/file\nlogLevel: debug\nworkers: 2\ntrustDomain: file.example\n";
  FlagOverrides flags =
      Parse({"--config", file, "--state-dir", "/from/flag", "--log-level", "error", "--datapath",
             "userspace-tls", "--workers", "6", "--node-name", "flag-node", "--print-config"});
  EXPECT_TRUE(flags.print_config);
  EXPECT_EQ(flags.config, file);
  EXPECT_FALSE(flags.policy_dir.has_value());

  auto resolved = ResolveConfig(flags);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->state_dir, "/from/flag");
  EXPECT_EQ(resolved->log_level, LogLevel::kError);
  EXPECT_EQ(resolved->datapath, DatapathChoice::kUserspaceTls);
  EXPECT_EQ(resolved->workers, 6u);
  EXPECT_EQ(resolved->node_name, "flag-node");
  EXPECT_EQ(resolved->trust_domain, "file.example");         // from the file: no flag given
  EXPECT_EQ(resolved->policy_dir, "/etc/meshtls/policies");  // default: neither

  // The remaining flags, and relative paths taken from the current directory.
  AgentConfig c = Base();
  flags = Parse({"--policy-dir", "pol", "--workloads", "./w.yaml", "--trust-domain", "t.example",
                 "--local-leg-shortcut", "off", "--status-socket", "/x/s.sock",
                 "--openssl-builtin-ec", "off"});
  ASSERT_TRUE(ApplyOverrides(flags, &c).ok());
  EXPECT_EQ(c.policy_dir, (std::filesystem::current_path() / "pol").string());
  EXPECT_EQ(c.workloads, (std::filesystem::current_path() / "w.yaml").string());
  EXPECT_EQ(c.trust_domain, "t.example");
  EXPECT_EQ(c.local_leg_shortcut, LocalLegShortcut::kOff);
  EXPECT_EQ(c.openssl_builtin_ec, BuiltinEcKeys::kOff);
  EXPECT_EQ(c.status_socket, "/x/s.sock");
}

TEST_F(FlagsTest, BadFlagsNameTheFlagAndChangeNothing) {
  AgentConfig c = Base();
  absl::Status s =
      ApplyOverrides(Parse({"--log-level", "loud", "--workers", "many", "--state-dir", "/ok",
                            "--openssl-builtin-ec", "on"}), &c);
  ASSERT_FALSE(s.ok());
  EXPECT_CONTAINS(std::string(s.message()),
                  "--log-level: 'loud' is not one of trace|debug|info|warn|error|off");
  EXPECT_CONTAINS(std::string(s.message()), "--workers: 'many' is not a whole number");
  EXPECT_CONTAINS(std::string(s.message()), "--openssl-builtin-ec: 'on' is not one of auto|off");
  EXPECT_EQ(c, Base());

  // Values that parse but are out of range fail in Validate(), through ResolveConfig.
  auto resolved = ResolveConfig(Parse({"--config", MESHTLS_EXAMPLES_DIR "/agent.yaml", "--workers",
                                       "4096", "--trust-domain", "Bad Domain"}));
  ASSERT_FALSE(resolved.ok());
  EXPECT_CONTAINS(std::string(resolved.status().message()), "workers is 4096, more than 1024");
  EXPECT_CONTAINS(std::string(resolved.status().message()),
                  "trustDomain 'Bad Domain' is not a valid SPIFFE trust domain");

  EXPECT_THROW(Parse({"--no-such-flag"}), CLI::ParseError);
}

TEST_F(FlagsTest, AMissingConfigFileIsAClearError) {
  auto missing = LoadConfigFile(dir_ + "/nope.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_CONTAINS(std::string(missing.status().message()),
                  "cannot read agent config " + dir_ + "/nope.yaml: No such file");
  EXPECT_FALSE(ResolveConfig(Parse({"--config", dir_ + "/nope.yaml"})).ok());
  auto directory = LoadConfigFile(dir_);
  ASSERT_FALSE(directory.ok());
  EXPECT_CONTAINS(std::string(directory.status().message()), "is a directory");

  std::ofstream(dir_ + "/bad.yaml") << "logLevel: info\nworkrs: 2\n";
  auto bad = LoadConfigFile(dir_ + "/bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_CONTAINS(std::string(bad.status().message()),
                  dir_ + "/bad.yaml:2: unknown key 'workrs' (did you mean 'workers'?)");
}

}  // namespace
}  // namespace meshtls::agent
