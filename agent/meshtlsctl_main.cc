// meshtlsctl: the meshtls command line. Offline CA work, and the agent's status API.
//   meshtlsctl ca init --dir DIR [--trust-domain TD]
//   meshtlsctl ca issue --dir DIR --spiffe-id ID [--ttl 24h] --out PREFIX [--force]
//   meshtlsctl ca inspect FILE [-o table|json]
//   meshtlsctl [--socket PATH] [-o table|json|yaml] [--timeout 5s]
//       status | workloads | connections [--workload NS/NAME] | certs | policy [--workload NS/NAME]
//       | tap [--kind KIND,...] [--workload NS/NAME] | rotate (--spiffe-id ID | --all)
//       | policy check --to NS/NAME --port P (--from-principal ID | --from-namespace NS | --plaintext)
//         [--from-ip IP] [--policy-dir DIR --workloads FILE]
//       | audit [--fail-on warning|critical] [--policy-dir DIR --workloads FILE]
// Exit codes: 0 ok, 1 the operation failed (audit: a finding at or above --fail-on), 2 bad usage.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <atomic>
#include <thread>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/ctl/client.h"
#include "meshtls/ctl/format.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/inspect/policy_report.h"
#include "meshtls/policy/policy.h"
#include "meshtls/workload/registry.h"
#include "meshtls/workload/workload.h"

namespace meshtls {
namespace {

using Clock = std::chrono::system_clock;

// "90s", "30m", "24h", "7d" (one number, one unit).
absl::StatusOr<std::chrono::seconds> ParseDuration(const std::string& text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr == text.data() || ptr + 1 != end || value == 0) {
    return absl::InvalidArgumentError(
        StrCat("bad duration '", text, "': use a positive number and one of s, m, h, d (e.g. 24h)"));
  }
  switch (*ptr) {
    case 's': return std::chrono::seconds(value);
    case 'm': return std::chrono::seconds(value * 60);
    case 'h': return std::chrono::seconds(value * 3600);
    case 'd': return std::chrono::seconds(value * 86400);
    default:
      return absl::InvalidArgumentError(StrCat("bad duration unit in '", text, "': use s, m, h or d"));
  }
}

std::string Iso8601(Clock::time_point t) {
  const std::time_t tt = Clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Remaining(Clock::time_point until) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(until - Clock::now()).count();
  if (s <= 0) return "expired";
  if (s < 3600) return fmt::format("{}m", s / 60);
  if (s < 86400 * 2) return fmt::format("{}h{}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d", s / 86400);
}

absl::Status WriteNew(const std::string& path, const std::string& data, mode_t mode, bool force) {
  if (force) ::unlink(path.c_str());
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) {
    if (errno == EEXIST) return absl::AlreadyExistsError(StrCat(path, " exists (use --force to replace it)"));
    return ErrnoStatus(errno, StrCat("create ", path));
  }
  if (::write(fd.get(), data.data(), data.size()) != static_cast<ssize_t>(data.size()) || ::fsync(fd.get()) != 0) {
    return ErrnoStatus(errno, StrCat("write ", path));
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& st) {
  std::cerr << "meshtlsctl: " << st.message() << "\n";
  return 1;
}

int CaInit(const std::string& dir, const std::string& trust_domain) {
  auto ca = identity::CertificateAuthority::Init(dir, trust_domain);
  if (!ca.ok()) return Fail(ca.status());
  auto summary = identity::SummarizeCertificates((*ca)->root_pem() + (*ca)->intermediate_pem());
  std::cout << "created a CA for trust domain " << (*ca)->trust_domain() << " in " << dir << "\n";
  for (const auto& c : *summary) {
    std::cout << "  " << (c.issuer == c.subject ? "root        " : "intermediate") << "  serial "
              << c.serial_hex << "  valid until " << Iso8601(c.not_after) << "\n";
  }
  std::cout << "  keys: " << dir << "/root.key, " << dir << "/intermediate.key (0600)\n";
  return 0;
}

int CaIssue(const std::string& dir, const std::string& spiffe_id, const std::string& ttl_text,
            const std::string& prefix, bool force) {
  auto id = SpiffeId::Parse(spiffe_id);
  if (!id.ok()) return Fail(id.status());
  auto ttl = ParseDuration(ttl_text);
  if (!ttl.ok()) return Fail(ttl.status());
  auto ca = identity::CertificateAuthority::Load(dir);
  if (!ca.ok()) return Fail(ca.status());
  identity::IssueOptions options;
  options.ttl = *ttl;
  auto svid = (*ca)->Issue(*id, options);
  if (!svid.ok()) return Fail(svid.status());
  if (absl::Status st = WriteNew(prefix + ".key", svid->private_key_pem, 0600, force); !st.ok()) return Fail(st);
  if (absl::Status st = WriteNew(prefix + ".crt", svid->chain_pem, 0644, force); !st.ok()) return Fail(st);
  std::cout << "issued " << id->ToString() << "  serial " << svid->serial_hex << "  valid until "
            << Iso8601(svid->not_after) << "\n  " << prefix << ".crt (leaf + intermediate), " << prefix
            << ".key (0600)\n";
  return 0;
}

int CaInspect(const std::string& file, const std::string& output) {
  std::ifstream in(file);
  if (!in) return Fail(ErrnoStatus(errno, StrCat("cannot read ", file)));
  std::stringstream ss;
  ss << in.rdbuf();
  auto certs = identity::SummarizeCertificates(ss.str());
  if (!certs.ok()) return Fail(absl::InvalidArgumentError(StrCat(file, ": ", certs.status().message())));
  if (output == "json") {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& c : *certs) {
      list.push_back({{"subject", c.subject},
                      {"issuer", c.issuer},
                      {"spiffe_ids", c.uri_sans},
                      {"serial", c.serial_hex},
                      {"not_before", Iso8601(c.not_before)},
                      {"not_after", Iso8601(c.not_after)},
                      {"seconds_left", std::chrono::duration_cast<std::chrono::seconds>(
                                           c.not_after - Clock::now()).count()},
                      {"ca", c.is_ca}});
    }
    std::cout << list.dump(2) << "\n";
    return 0;
  }
  for (size_t i = 0; i < certs->size(); ++i) {
    const auto& c = (*certs)[i];
    std::cout << (i == 0 ? "certificate" : "chain[" + std::to_string(i) + "]") << (c.is_ca ? " (CA)" : "") << "\n";
    std::cout << "  spiffe id:  " << (c.uri_sans.empty() ? "-" : c.uri_sans[0]) << "\n";
    std::cout << "  subject:    " << c.subject << "\n  issuer:     " << c.issuer << "\n";
    std::cout << "  serial:     " << c.serial_hex << "\n";
    std::cout << "  valid:      " << Iso8601(c.not_before) << " .. " << Iso8601(c.not_after) << " ("
              << Remaining(c.not_after) << " left)\n";
  }
  return 0;
}

// ---- The agent's status API ----

constexpr int kExitUsage = 2;

int Usage(const std::string& message) {
  std::cerr << "meshtlsctl: " << message << "\n";
  return kExitUsage;
}

template <typename Response, typename Render>
int Print(const absl::StatusOr<Response>& response, Render render, const ctl::RenderOptions& options) {
  if (!response.ok()) return Fail(response.status());
  std::cout << render(*response, options) << std::flush;
  return 0;
}

// Ctrl-C must end `tap` with the call cancelled and exit 0, not kill it mid-line. SIGINT and
// SIGTERM are blocked before gRPC starts its threads (which inherit the mask), so only this
// watcher takes them; a second signal gives up on a clean end.
class SignalCanceller {
 public:
  explicit SignalCanceller(const sigset_t& signals, ctl::StatusClient& client)
      : signals_(signals), thread_([this, &client] { Run(client); }) {}
  ~SignalCanceller() {
    done_ = true;
    thread_.join();
  }

 private:
  void Run(ctl::StatusClient& client) {
    bool cancelled = false;
    timespec tick{0, 100 * 1000 * 1000};  // how often to notice that the stream ended by itself
    while (!done_) {
      if (::sigtimedwait(&signals_, nullptr, &tick) <= 0) continue;
      if (cancelled) std::_Exit(130);
      cancelled = true;
      client.CancelWatch();
    }
  }

  sigset_t signals_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

int Tap(const ctl::ClientOptions& client_options, const v1::WatchEventsRequest& request,
        const ctl::RenderOptions& options) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ctl::StatusClient client(client_options);
  absl::Status status;
  {
    SignalCanceller canceller(signals, client);
    status = client.WatchEvents(request, [&](const v1::Event& event) {
      // stderr, so that stdout stays one event per line (or document) for jq and friends.
      if (event.dropped_before() > 0) std::cerr << ctl::DroppedEventsWarning(event.dropped_before()) << std::flush;
      std::cout << ctl::RenderEvent(event, options) << std::flush;
    });
  }
  if (!status.ok()) return Fail(status);
  return 0;
}

// Policies and workloads from files, for `policy check` and `audit` without an agent (in CI,
// before a change ships). The same loaders as the agent's, so a file the agent would reject is
// rejected here with the same message.
struct OfflineInputs {
  std::shared_ptr<const policy::PolicySet> policies;
  workload::WorkloadSnapshot workloads;
};

absl::StatusOr<OfflineInputs> LoadOffline(const std::string& policy_dir, const std::string& workloads_file,
                                          const std::string& root_namespace) {
  OfflineInputs inputs;
  ASSIGN_OR_RETURN(inputs.policies, policy::PolicySet::LoadDirectory(policy_dir, root_namespace));
  workload::StaticWorkloadFile file(workloads_file);
  ASSIGN_OR_RETURN(std::vector<workload::Workload> list, file.Load());
  ASSIGN_OR_RETURN(inputs.workloads, workload::WorkloadSnapshot::Create(std::move(list)));
  return inputs;
}

bool AtOrAbove(v1::Severity severity, v1::Severity threshold) {
  return static_cast<int>(severity) >= static_cast<int>(threshold);
}

}  // namespace
}  // namespace meshtls

int main(int argc, char** argv) {
  using meshtls::ctl::StatusClient;
  namespace ctl = meshtls::ctl;
  namespace v1 = meshtls::v1;

  CLI::App app{"meshtlsctl: inspect and operate meshtls"};
  app.require_subcommand(1);
  // Global options may follow the subcommand too: `meshtlsctl certs -o json`.
  app.fallthrough();
  std::string socket = ctl::kDefaultSocketPath, api_output = "table", timeout_text = "5s";
  app.add_option("--socket", socket, "the agent's status socket")
      ->envname(ctl::kSocketEnvVar)
      ->capture_default_str();
  app.add_option("-o,--output", api_output, "table, json or yaml")
      ->check(CLI::IsMember({"table", "json", "yaml"}))
      ->capture_default_str();
  app.add_option("--timeout", timeout_text, "how long to wait for an answer: 5s, 1m")->capture_default_str();

  CLI::App* ca = app.add_subcommand("ca", "offline work with the embedded CA (also for a CA shared by several nodes)");
  ca->require_subcommand(1);

  std::string dir, trust_domain = "cluster.local", spiffe_id, ttl = "24h", out, file, output = "table";
  bool force = false;
  CLI::App* init = ca->add_subcommand("init", "create a root (10 y) and an intermediate (1 y) CA in a new directory");
  init->add_option("--dir", dir, "directory to create (must not exist or be empty)")->required();
  init->add_option("--trust-domain", trust_domain, "SPIFFE trust domain")->capture_default_str();
  CLI::App* issue = ca->add_subcommand("issue", "issue an X.509 SVID from a CA directory");
  issue->add_option("--dir", dir, "CA directory (from ca init)")->required();
  issue->add_option("--spiffe-id", spiffe_id, "spiffe://<trust-domain>/ns/<ns>/sa/<sa>")->required();
  issue->add_option("--ttl", ttl, "lifetime: 90s, 30m, 24h, 7d")->capture_default_str();
  issue->add_option("--out", out, "writes PREFIX.crt (leaf + intermediate) and PREFIX.key (0600)")->required();
  issue->add_flag("--force", force, "replace existing output files");
  CLI::App* inspect = ca->add_subcommand("inspect", "print SPIFFE ID, serial, validity and chain of a PEM file");
  inspect->add_option("file", file, "PEM certificate file")->required();
  inspect->add_option("-o,--output", output, "table or json")->check(CLI::IsMember({"table", "json"}))->capture_default_str();

  std::string workload, kinds_text, rotate_id;
  bool rotate_all = false;
  CLI::App* status_cmd = app.add_subcommand("status", "the agent: version, uptime, datapath and why, kernel, BPF, counters");
  CLI::App* workloads_cmd = app.add_subcommand("workloads", "workloads in the registry, marking those served here");
  CLI::App* connections_cmd = app.add_subcommand("connections", "live connections through this agent");
  connections_cmd->add_option("--workload", workload, "only from or to this workload (namespace/name)");
  CLI::App* certs_cmd = app.add_subcommand("certs", "the SVIDs this agent holds, and the trust bundle");
  CLI::App* policy_cmd = app.add_subcommand("policy", "the effective mTLS mode and authorization per served workload");
  policy_cmd->add_option("--workload", workload, "only this workload (namespace/name)");
  policy_cmd->require_subcommand(0, 1);
  std::string check_to, check_principal, check_namespace, check_ip, policy_dir, workloads_file,
      root_namespace = "istio-system", fail_on = "critical";
  uint32_t check_port = 0;
  bool check_plaintext = false;
  auto add_offline = [&](CLI::App* cmd) {
    CLI::Option* dir_opt = cmd->add_option("--policy-dir", policy_dir,
                                           "offline: a directory of PeerAuthentication/AuthorizationPolicy YAML");
    CLI::Option* file_opt = cmd->add_option("--workloads", workloads_file,
                                            "offline: a workloads file (the agent's format; netns and cgroup may be left out)");
    dir_opt->needs(file_opt);
    file_opt->needs(dir_opt);
    cmd->add_option("--root-namespace", root_namespace, "offline: the mesh-wide policy namespace")->capture_default_str();
    cmd->add_option("--trust-domain", trust_domain, "offline: the trust domain of --from-namespace")->capture_default_str();
  };
  CLI::App* check_cmd = policy_cmd->add_subcommand("check", "what the agent would do with one connection, and why");
  check_cmd->add_option("--to", check_to, "destination workload (namespace/name)")->required();
  check_cmd->add_option("--port", check_port, "destination port")->required()->check(CLI::Range(1, 65535));
  CLI::Option* from_principal = check_cmd->add_option(
      "--from-principal", check_principal, "client identity: TRUST_DOMAIN/ns/NS/sa/SA (or its spiffe:// URI)");
  CLI::Option* from_namespace =
      check_cmd->add_option("--from-namespace", check_namespace, "a client in this namespace (service account default)");
  CLI::Option* from_plaintext = check_cmd->add_flag("--plaintext", check_plaintext, "a client without mTLS");
  from_principal->excludes(from_namespace)->excludes(from_plaintext);
  from_namespace->excludes(from_plaintext);
  check_cmd->add_option("--from-ip", check_ip, "client address, for ipBlocks");
  add_offline(check_cmd);
  CLI::App* audit_cmd = app.add_subcommand("audit", "gaps in the mesh's security posture, with a severity each");
  audit_cmd->add_option("--fail-on", fail_on, "exit 1 when a finding is at or above: info, warning or critical")
      ->check(CLI::IsMember({"info", "warning", "critical"}))
      ->capture_default_str();
  add_offline(audit_cmd);
  CLI::App* tap_cmd = app.add_subcommand("tap", "stream handshakes, denials, rotations, reloads and closes until Ctrl-C");
  tap_cmd->add_option("--kind", kinds_text, "only these kinds, comma-separated: handshake,denial,rotation,reload,close");
  tap_cmd->add_option("--workload", workload, "only events concerning this workload (namespace/name)");
  CLI::App* rotate_cmd = app.add_subcommand("rotate", "renew SVIDs now and print their new serials");
  CLI::Option* rotate_id_opt = rotate_cmd->add_option("--spiffe-id", rotate_id, "the identity to renew");
  rotate_cmd->add_flag("--all", rotate_all, "renew every identity")->excludes(rotate_id_opt);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a ParseError too, with exit code 0.
    return app.exit(e) == 0 ? 0 : meshtls::kExitUsage;
  }

  if (init->parsed()) return meshtls::CaInit(dir, trust_domain);
  if (issue->parsed()) return meshtls::CaIssue(dir, spiffe_id, ttl, out, force);
  if (inspect->parsed()) return meshtls::CaInspect(file, output);

  auto timeout = meshtls::ParseDuration(timeout_text);
  if (!timeout.ok()) return meshtls::Usage(meshtls::StrCat("--timeout: ", timeout.status().message()));
  if (!workload.empty() && !ctl::IsWorkloadName(workload)) {
    return meshtls::Usage(meshtls::StrCat("--workload '", workload, "': use namespace/name"));
  }
  ctl::ClientOptions client_options;
  client_options.socket_path = socket;
  client_options.timeout = *timeout;
  ctl::RenderOptions options;
  options.format = *ctl::ParseOutputFormat(api_output);
  options.now = std::chrono::system_clock::now();

  if (tap_cmd->parsed()) {
    v1::WatchEventsRequest request;
    auto kinds = ctl::ParseEventKinds(kinds_text);
    if (!kinds.ok()) return meshtls::Usage(meshtls::StrCat("--kind: ", kinds.status().message()));
    for (v1::EventKind kind : *kinds) request.add_kinds(kind);
    request.set_workload(workload);
    return meshtls::Tap(client_options, request, options);
  }
  if (rotate_cmd->parsed() && rotate_id.empty() && !rotate_all) {
    return meshtls::Usage("rotate: say which identity (--spiffe-id ID) or --all");
  }

  if (check_cmd->parsed()) {
    if (!ctl::IsWorkloadName(check_to)) return meshtls::Usage(meshtls::StrCat("--to '", check_to, "': use namespace/name"));
    if (check_principal.empty() && check_namespace.empty() && !check_plaintext) {
      return meshtls::Usage("policy check: say who connects: --from-principal ID, --from-namespace NS or --plaintext");
    }
    v1::CheckAccessRequest request;
    request.set_destination_workload(check_to);
    request.set_port(check_port);
    request.set_source_principal(check_principal);
    request.set_source_namespace(check_namespace);
    request.set_plaintext(check_plaintext);
    request.set_source_ip(check_ip);
    if (!policy_dir.empty()) {
      auto inputs = meshtls::LoadOffline(policy_dir, workloads_file, root_namespace);
      if (!inputs.ok()) return meshtls::Fail(inputs.status());
      return meshtls::Print(meshtls::inspect::CheckAccess(*inputs->policies, inputs->workloads, trust_domain, request),
                            ctl::RenderCheckAccess, options);
    }
    StatusClient client(client_options);
    return meshtls::Print(client.CheckAccess(request), ctl::RenderCheckAccess, options);
  }
  if (audit_cmd->parsed()) {
    absl::StatusOr<v1::AuditResponse> audit;
    if (!policy_dir.empty()) {
      auto inputs = meshtls::LoadOffline(policy_dir, workloads_file, root_namespace);
      if (!inputs.ok()) return meshtls::Fail(inputs.status());
      v1::AuditResponse response;
      for (v1::Finding& f : meshtls::inspect::AuditPolicies(*inputs->policies, inputs->workloads)) {
        *response.add_findings() = std::move(f);
      }
      audit = std::move(response);
    } else {
      StatusClient client(client_options);
      audit = client.Audit();
    }
    if (const int rc = meshtls::Print(audit, ctl::RenderAudit, options); rc != 0) return rc;
    const v1::Severity threshold = *ctl::ParseSeverity(fail_on);
    for (const auto& finding : audit->findings()) {
      if (meshtls::AtOrAbove(finding.severity(), threshold)) return 1;
    }
    return 0;
  }

  StatusClient client(client_options);
  if (status_cmd->parsed()) return meshtls::Print(client.GetStatus(), ctl::RenderStatus, options);
  if (workloads_cmd->parsed()) return meshtls::Print(client.ListWorkloads(), ctl::RenderWorkloads, options);
  if (connections_cmd->parsed()) {
    v1::ListConnectionsRequest request;
    request.set_workload(workload);
    return meshtls::Print(client.ListConnections(request), ctl::RenderConnections, options);
  }
  if (certs_cmd->parsed()) return meshtls::Print(client.ListCertificates(), ctl::RenderCertificates, options);
  if (policy_cmd->parsed()) {
    v1::GetPolicyRequest request;
    request.set_workload(workload);
    return meshtls::Print(client.GetPolicy(request), ctl::RenderPolicy, options);
  }
  v1::RotateCertificatesRequest request;
  request.set_spiffe_id(rotate_id);
  return meshtls::Print(client.RotateCertificates(request), ctl::RenderRotation, options);
}
