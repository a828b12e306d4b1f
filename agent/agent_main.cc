// meshtls-agent: the per-node daemon. It wires the libraries together: configuration, the
// embedded CA and SVIDs, policies, the workload registry, eBPF steering, and the node proxy
// with one event loop per core. See docs/config.md for every setting.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <vector>

#include "meshtls/agent/config.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/logging.h"
#include "meshtls/common/malloc_tuning.h"
#include "meshtls/common/openssl_setup.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/datapath/cgroup_steering.h"
#include "meshtls/datapath/inbound_capture.h"
#include "meshtls/datapath/local_leg_shortcut.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/identity/svid_store.h"
#include "meshtls/policy/policy.h"
#include "meshtls/proxy/access_log.h"
#include "meshtls/proxy/node_proxy.h"
#include "meshtls/telemetry/metrics.h"
#include "meshtls/tls/connection_registry.h"
#include "meshtls/tls/identity_contexts.h"
#include "meshtls/tls/ktls_selftest.h"
#include "meshtls/tls/relay.h"
#include "meshtls/workload/kubernetes.h"
#include "meshtls/workload/registry.h"
#include "meshtls/inspect/event_bus.h"
#include "meshtls/inspect/status_server.h"
#include "meshtls/telemetry/metrics_server.h"
#include "inspection.h"
#include "observer.h"
#include "spdlog/spdlog.h"

namespace meshtls::agent {
namespace {

// SIGTERM, SIGINT and SIGHUP arrive through a signalfd on the control loop. They are blocked in
// main() before any thread exists, so that every thread inherits the mask and none of them
// takes the default action (which would kill the agent on a SIGHUP).
sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, sig);
  return set;
}

// The TLS 1.3 suites whose kTLS passed the self-test. ChaCha20-Poly1305 first: the kTLS relay
// cannot replace a key (no KeyUpdate through kTLS yet), and ChaCha20 has no practical record
// limit, while an AES-GCM kTLS connection must end at recordsPerKey (key_limit). The server's
// order decides (SSL_OP_CIPHER_SERVER_PREFERENCE).
std::vector<std::string> KtlsCipherSuites(const tls::KtlsSupport& ktls) {
  std::vector<std::string> suites;
  suites.reserve(3);
  for (tls::KtlsCipher cipher : {tls::KtlsCipher::kChacha20Poly1305, tls::KtlsCipher::kAes128Gcm, tls::KtlsCipher::kAes256Gcm}) {
    if (ktls.Supports(cipher)) suites.push_back(std::string(tls::KtlsCipherName(cipher)));
  }
  return suites;
}

class Agent {
 public:
  explicit Agent(AgentConfig config) : config_(std::move(config)) {}
  // A Start() that failed half-way leaves worker threads running: stop them in order rather than
  // let std::thread's destructor abort the process.
  ~Agent() { Shutdown(); }
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  absl::Status Start() {
    ASSIGN_OR_RETURN(control_, EventLoop::Create());

    // Identity: the embedded CA under the state dir (made once, 0600), SVIDs in memory only.
    // An explicit caDir is a CA shared by several nodes (a Secret made with `meshtlsctl ca init`):
    // it must exist, since a fresh per-node CA there would split the mesh's trust silently.
    const std::string ca_dir = config_.ca_dir.empty() ? config_.state_dir + "/ca" : config_.ca_dir;
    ASSIGN_OR_RETURN(ca_, config_.ca_dir.empty()
                              ? identity::CertificateAuthority::LoadOrInit(ca_dir, config_.trust_domain)
                              : identity::CertificateAuthority::Load(ca_dir));
    if (ca_->trust_domain() != config_.trust_domain) {
      return absl::FailedPreconditionError(StrCat("the CA in ", ca_dir, " is for trust domain '", ca_->trust_domain(),
                                                  "' but trustDomain is '", config_.trust_domain, "'"));
    }
    metrics_ = std::make_shared<telemetry::Metrics>();
    identity::SvidStoreOptions svid_options;
    svid_options.issue.ttl = std::chrono::duration_cast<std::chrono::seconds>(config_.svid_ttl);
    svid_options.metrics = metrics_;
    svids_ = std::make_unique<identity::SvidStore>(*ca_, svid_options);

    RETURN_IF_ERROR(ChooseDatapath());
    metrics_->KtlsUnavailable(!ktls_.available);
    metrics_->BuildInfo(MESHTLS_VERSION, tls::DatapathName(datapath_));
    tls::TlsContextOptions context_options;
    context_options.trust_bundle_pem = ca_->TrustBundlePem();
    context_options.trust_domain = config_.trust_domain;
    context_options.export_traffic_secrets = datapath_ == tls::Datapath::kKtlsSplice;
    if (datapath_ == tls::Datapath::kKtlsSplice) {
      // Only the ciphers whose kTLS records the self-test saw right on the wire.
      context_options.cipher_suites = KtlsCipherSuites(ktls_);
    }
    identities_ = std::make_unique<tls::IdentityContexts>(*svids_, context_options);

    ASSIGN_OR_RETURN(access_log_, proxy::AccessLog::Create(
                                  config_.access_log,
                                  {static_cast<double>(config_.access_log_handshake_events_per_second),
                                   static_cast<double>(config_.access_log_handshake_events_burst)}));
    observer_ = std::make_unique<AgentObserver>(metrics_, &events_, access_log_.get());
    ExportCaExpiry();
    ASSIGN_OR_RETURN(policies_, policy::PolicyStore::Create(
                                    *control_, config_.policy_dir, config_.root_namespace,
                                    [this](const std::shared_ptr<const policy::PolicySet>& set) {
                                      spdlog::info("policies reloaded: {} PeerAuthentication, {} AuthorizationPolicy",
                                                   set->peer_authentication_count(), set->authorization_policy_count());
                                      metrics_->PolicyReload(true);
                                      observer_->Publish(v1::EVENT_KIND_RELOAD, "", "", "ok", "policies",
                                                         StrCat(set->peer_authentication_count(), " PeerAuthentication, ",
                                                                set->authorization_policy_count(), " AuthorizationPolicy"));
                                      if (proxy_) proxy_->OnPolicyChange();
                                    },
                                    [this](const absl::Status& error) {
                                      metrics_->PolicyReload(false);
                                      observer_->Publish(v1::EVENT_KIND_RELOAD, "", "", "error", "policies",
                                                         std::string(error.message()));
                                    }));
    for (const std::string& warning : policies_->Current()->warnings()) spdlog::warn("policy: {}", warning);
    RETURN_IF_ERROR(CreateWorkloadRegistry());

    RETURN_IF_ERROR(StartBpf());

    const unsigned workers = config_.workers != 0 ? config_.workers : std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < workers; ++i) {
      ASSIGN_OR_RETURN(std::unique_ptr<EventLoop> loop, EventLoop::Create());
      workers_.push_back(std::move(loop));
    }
    for (auto& loop : workers_) threads_.emplace_back([l = loop.get()] { l->Run(); });

    proxy::ProxyOptions proxy_options;
    proxy_options.node_name = config_.node_name;
    proxy_options.trust_domain = config_.trust_domain;
    proxy_options.ports = {config_.ports.outbound, config_.ports.inbound_capture, config_.ports.tunnel};
    proxy_options.datapath = datapath_;
    proxy_options.ktls_rekey = datapath_ == tls::Datapath::kKtlsSplice && ktls_.rekey;
    proxy_options.local_leg_shortcut = shortcut_ != nullptr;
    proxy_options.handshake_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config_.handshake_timeout);
    proxy_options.max_pending_handshakes = config_.max_pending_handshakes;
    proxy_options.max_connections = config_.max_connections;
    proxy_options.key_lifetime.max_records_per_key = config_.records_per_key;
    proxy_options.key_lifetime.peer_key_update_burst = config_.peer_key_update_burst;
    proxy_options.key_lifetime.peer_key_updates_per_second = config_.peer_key_updates_per_minute / 60.0;
    proxy::ProxyDependencies deps;
    for (auto& loop : workers_) deps.workers.push_back(loop.get());
    deps.identities = identities_.get();
    deps.policies = policies_.get();
    deps.steering = steering_.get();
    deps.capture = capture_.get();
    deps.access_log = access_log_.get();
    deps.registry = &registry_;
    deps.observer = observer_.get();
    ASSIGN_OR_RETURN(proxy_, proxy::NodeProxy::Create(proxy_options, deps));
    if (absl::Status st = proxy_->Reconcile(workloads_->Current()); !st.ok()) {
      spdlog::error("some workloads are not served: {}", st.message());
    }
    if (steering_) steering_->PruneStaleLinks();
    if (shortcut_) shortcut_->PruneStaleLinks();
    if (kube_source_ == nullptr) {
      ASSIGN_OR_RETURN(workload_watcher_,
                       workload::WatchWorkloadFile(*control_, *workloads_, config_.workloads,
                                                   [this](const absl::StatusOr<workload::WorkloadDiff>& diff) {
                                                     OnWorkloadsReloaded(diff);
                                                   }));
    } else {
      SchedulePlacementRetry();
    }
    ScheduleSvidTick();
    ScheduleReadinessGauge();
    RETURN_IF_ERROR(WatchSignals());
    RETURN_IF_ERROR(StartInspection());
    spdlog::info("meshtls-agent ready: node {}, trust domain {}, datapath {}, {} worker loop(s), serving {} workload(s)",
                 config_.node_name, config_.trust_domain, tls::DatapathName(datapath_), workers_.size(),
                 proxy_->ServedWorkloads().size());
    return absl::OkStatus();
  }

  int Run() {
    control_->Run();
    Shutdown();
    return exit_code_;
  }

 private:
  // The kTLS probe, then the self-test on this kernel (ktls_selftest.h): a cipher is used with
  // kTLS only once the wire was seen to carry its ciphertext. auto falls back to userspace-tls,
  // a forced ktls-splice refuses to start.
  absl::Status ChooseDatapath() {
    ktls_ = tls::ProbeKtls();
    if (ktls_.available && config_.datapath != DatapathChoice::kUserspaceTls) {
      tls::KtlsSelfTestOptions self_test_options;
      const char* fault_env = std::getenv("MESHTLS_KTLS_SELFTEST_FAULT");
      const std::string fault = fault_env != nullptr ? fault_env : "";
      if (!fault.empty()) {
        if (fault != "wrong_tx_key" && fault != "wrong_rekey") {
          return absl::InvalidArgumentError(StrCat("MESHTLS_KTLS_SELFTEST_FAULT='", fault,
                                                   "': the faults are wrong_tx_key and wrong_rekey"));
        }
        spdlog::warn("MESHTLS_KTLS_SELFTEST_FAULT={}: the kTLS self-test gets a wrong key on purpose (tests only)", fault);
        self_test_options.corrupt_tx_key = fault == "wrong_tx_key";
        self_test_options.corrupt_rekey = fault == "wrong_rekey";
      }
      ktls_self_test_ = tls::RunKtlsSelfTest(ktls_, self_test_options);
      ktls_.aes128gcm = ktls_self_test_.Passed(tls::KtlsCipher::kAes128Gcm);
      ktls_.aes256gcm = ktls_self_test_.Passed(tls::KtlsCipher::kAes256Gcm);
      ktls_.chacha20poly1305 = ktls_self_test_.Passed(tls::KtlsCipher::kChacha20Poly1305);
      ktls_.available = ktls_self_test_.any_passed();
      if (ktls_.rekey && !ktls_self_test_.RekeyPassed()) {
        ktls_.rekey = false;
        ktls_.rekey_detail = StrCat("kTLS rekeying disabled: the start-up self-test failed (", ktls_self_test_.Summary(), ")");
        spdlog::error("{}; kTLS connections will not send or follow KeyUpdates", ktls_.rekey_detail);
      } else if (ktls_.rekey) {
        StrAppend(&ktls_.rekey_detail, "; KeyUpdate proven both ways by the start-up self-test");
      }
      StrAppend(&ktls_.detail, "; start-up self-test: ", ktls_self_test_.Summary());
      if (ktls_.available) {
        spdlog::info("kTLS self-test: {}", ktls_self_test_.Summary());
      } else {
        spdlog::error("kTLS self-test failed, kernel TLS disabled: {}", ktls_self_test_.Summary());
      }
    }
    switch (config_.datapath) {
      case DatapathChoice::kAuto:
        datapath_ = ktls_.available ? tls::Datapath::kKtlsSplice : tls::Datapath::kUserspaceTls;
        datapath_reason_ = ktls_.available ? StrCat("kernel TLS proven by the start-up probe and self-test: ", ktls_.detail)
                                           : StrCat("no kernel TLS, OpenSSL encrypts: ", ktls_.detail);
        if (ktls_.available) {
          spdlog::info("datapath ktls-splice: {}", ktls_.detail);
        } else {
          spdlog::warn("datapath userspace-tls (OpenSSL encrypts in this process): {}", ktls_.detail);
        }
        return absl::OkStatus();
      case DatapathChoice::kKtlsSplice:
        if (!ktls_.available) {
          return absl::FailedPreconditionError(StrCat("datapath ktls-splice was requested, but ", ktls_.detail));
        }
        datapath_ = tls::Datapath::kKtlsSplice;
        break;
      case DatapathChoice::kUserspaceTls:
        datapath_ = tls::Datapath::kUserspaceTls;
        break;
    }
    datapath_reason_ = StrCat("forced by configuration (datapath: ", Name(config_.datapath), ")");
    spdlog::info("datapath {} (forced)", Name(config_.datapath));
    return absl::OkStatus();
  }

  absl::Status StartBpf() {
    datapath::SteeringConfig steering_config;
    steering_config.outbound_port = config_.ports.outbound;
    steering_config.inbound_capture_port = config_.ports.inbound_capture;
    steering_config.tunnel_port = config_.ports.tunnel;
    steering_config.pin_dir = config_.bpf_pin_dir;
    ASSIGN_OR_RETURN(steering_, datapath::CgroupSteering::Create(steering_config));
    RETURN_IF_ERROR(steering_->AttachTo(config_.cgroup_root));
    ASSIGN_OR_RETURN(capture_, datapath::InboundCapture::Create(steering_config));
    if (ShortcutWanted()) {
      ASSIGN_OR_RETURN(shortcut_, datapath::LocalLegShortcut::Create(steering_config));
      RETURN_IF_ERROR(shortcut_->AttachTo(config_.cgroup_root));
      ASSIGN_OR_RETURN(std::string own, datapath::OwnCgroupPath());
      if (own != config_.cgroup_root) RETURN_IF_ERROR(shortcut_->AttachTo(own));
      spdlog::info("local-leg sockmap shortcut on");
    }
    if (config_.leave_bpf_attached_on_exit) {
      steering_->LeaveAttachedOnExit();
      capture_->LeaveAttachedOnExit();
      if (shortcut_) shortcut_->LeaveAttachedOnExit();
    }
    return absl::OkStatus();
  }

  absl::Status StartInspection() {
    AgentParts parts;
    parts.config = &config_;
    parts.started = started_;
    parts.datapath = datapath_;
    parts.datapath_reason = datapath_reason_;
    parts.ktls = ktls_;
    parts.ktls_self_test = ktls_self_test_.Summary();
    parts.worker_loops = static_cast<unsigned>(workers_.size());
    parts.ca = ca_.get();
    parts.svids = svids_.get();
    parts.policies = policies_.get();
    parts.workloads = workloads_.get();
    parts.steering = steering_.get();
    parts.capture = capture_.get();
    parts.shortcut = shortcut_.get();
    parts.proxy = proxy_.get();
    inspection_ = std::make_unique<AgentInspection>(parts);
    inspect::StatusServerOptions status_options;
    status_options.socket_path = config_.status_socket;
    ASSIGN_OR_RETURN(status_server_, inspect::StatusServer::Start(status_options, inspection_.get(), &events_));
    telemetry::MetricsServerOptions metrics_options;
    metrics_options.address = config_.metrics_address;
    metrics_options.metrics_port = config_.ports.metrics;
    metrics_options.readiness_port = config_.ports.readiness;
    ASSIGN_OR_RETURN(metrics_server_, telemetry::MetricsServer::Start(metrics_options, metrics_, [this] { return Readiness(); }));
    spdlog::info("status API on {}, metrics on {}:{}/metrics, readiness on {}:{}/healthz/ready", config_.status_socket,
                 config_.metrics_address.ToString(), config_.ports.metrics, config_.metrics_address.ToString(),
                 config_.ports.readiness);
    return absl::OkStatus();
  }

  // Ready when every pod of this node is served (listeners up), each has its SVID, and the BPF
  // programs are attached.
  telemetry::ReadinessReport Readiness() const {
    telemetry::ReadinessReport report;
    const auto local = workloads_->Current()->OnNode(config_.node_name);
    const auto served = proxy_->ServedWorkloads();
    if (served.size() < local.size()) {
      report.not_ready_reasons.push_back(
          StrCat("listeners not up: serving ", served.size(), " of ", local.size(), " local workloads"));
    }
    const auto states = svids_->States();
    for (const workload::Workload* w : local) {
      const SpiffeId id = w->Identity(config_.trust_domain);
      const bool held = std::any_of(states.begin(), states.end(), [&](const identity::SvidState& s) { return s.id == id; });
      if (!held) report.not_ready_reasons.push_back(StrCat("certificates not loaded: no SVID for ", id.ToString()));
    }
    if (steering_->Links().empty()) report.not_ready_reasons.push_back("BPF not attached");
    report.ready = report.not_ready_reasons.empty();
    return report;
  }

  // `auto` is off on every kernel for now. `make bench-steering` measured the shortcut faster on
  // this host (6.18: 1.2-1.4x the relay's throughput, lower p50 RTT), but it also caught an
  // application's *blocking* recv() returning EAGAIN on a sockmap socket after a half-close, on
  // every kernel tried: a behaviour change applications would see. `on` opts in
  // (ARCHITECTURE.md).
  bool ShortcutWanted() const {
    if (config_.local_leg_shortcut == LocalLegShortcut::kOn) {
      spdlog::warn("local-leg shortcut on (localLegShortcut: on): applications' blocking recv() may see a "
                   "spurious EAGAIN on some kernels (ARCHITECTURE.md)");
      return true;
    }
    if (config_.local_leg_shortcut == LocalLegShortcut::kAuto) {
      spdlog::info("local-leg shortcut off (localLegShortcut: auto; see ARCHITECTURE.md, \"Is the shortcut worth it?\")");
    }
    return false;
  }

  // meshtls_ready follows the readiness check, so alerts need no probe of their own.
  void ScheduleReadinessGauge() {
    metrics_->Ready(Readiness().ready);
    const tls::KeyUpdateCounters& keys = tls::GlobalKeyUpdateCounters();
    metrics_->KeyUpdates(keys.sent.load(), keys.received.load(), keys.floods.load());
    control_->AddTimer(EventLoop::Clock::now() + std::chrono::seconds(5), [this] { ScheduleReadinessGauge(); });
  }

  void ExportCaExpiry() {
    std::vector<telemetry::Metrics::CaCertificate> out;
    auto add = [&](const std::string& pem, const char* role) {
      auto certs = identity::SummarizeCertificates(pem);
      if (!certs.ok()) return;
      for (const identity::CertificateSummary& cert : *certs) out.push_back({role, cert.subject, cert.not_after});
    };
    add(ca_->TrustBundlePem(), "root");
    add(ca_->intermediate_pem(), "intermediate");
    metrics_->CaExpiry(out);
  }

  void ScheduleSvidTick() {
    std::map<std::string, std::string> before;
    for (const identity::SvidState& state : svids_->States()) before[state.id.ToString()] = state.serial_hex;
    const auto next = svids_->Tick();
    for (const identity::SvidState& state : svids_->States()) {
      auto it = before.find(state.id.ToString());
      if (it != before.end() && it->second != state.serial_hex) {
        observer_->Publish(v1::EVENT_KIND_ROTATION, "", state.id.ToString(), "ok", "renewed", StrCat("serial ", state.serial_hex));
      } else if (it != before.end() && state.failures > 0) {
        observer_->Publish(v1::EVENT_KIND_ROTATION, "", state.id.ToString(), "error", "issuance_failed", state.last_error);
      }
    }
    const auto delay = std::max(std::chrono::system_clock::duration(std::chrono::seconds(1)),
                                next - std::chrono::system_clock::now());
    control_->AddTimer(EventLoop::Clock::now() + std::min<std::chrono::system_clock::duration>(delay, std::chrono::minutes(5)),
                       [this] { ScheduleSvidTick(); });
  }

  absl::Status WatchSignals() {
    const sigset_t set = HandledSignals();
    signal_fd_.reset(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!signal_fd_) return ErrnoStatus(errno, "signalfd");
    return control_->Add(signal_fd_.get(), EPOLLIN, [this](uint32_t) {
      signalfd_siginfo info{};
      while (::read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
        if (info.ssi_signo == SIGHUP) {
          Reload();
        } else {
          Drain(info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        }
      }
    });
  }

  void Reload() {
    spdlog::info("SIGHUP: reloading policies and workloads");
    if (absl::Status st = policies_->Reload(); !st.ok()) spdlog::error("policy reload rejected: {}", st.message());
    auto diff = workloads_->Reload();
    if (!diff.ok()) {
      spdlog::error("workloads reload rejected: {}", diff.status().message());
      return;
    }
    (void)proxy_->Reconcile(workloads_->Current());
  }

  // Stops accepting, lets connections finish up to drainTimeout, then closes the rest.
  void Drain(const char* why) {
    if (draining_) {
      spdlog::warn("{} again: closing every connection now", why);
      proxy_->AbortAll();
      control_->Stop();
      return;
    }
    draining_ = true;
    const int64_t open = proxy_->counters().active_connections.load();
    spdlog::info("{}: draining {} connection(s), at most {} ms", why, open,
                 std::chrono::duration_cast<std::chrono::milliseconds>(config_.drain_timeout).count());
    proxy_->StopAccepting();
    drain_deadline_ = EventLoop::Clock::now() + std::chrono::duration_cast<EventLoop::Clock::duration>(config_.drain_timeout);
    CheckDrained();
  }

  void CheckDrained() {
    const int64_t open = proxy_->counters().active_connections.load() + proxy_->counters().pending_handshakes.load();
    if (open <= 0) {
      spdlog::info("drained");
      control_->Stop();
      return;
    }
    if (EventLoop::Clock::now() >= drain_deadline_) {
      spdlog::warn("drain deadline passed: closing {} connection(s)", open);
      proxy_->AbortAll();
      // Give the loops a moment to reset the sockets before they stop.
      control_->AddTimer(EventLoop::Clock::now() + std::chrono::milliseconds(200), [this] { control_->Stop(); });
      return;
    }
    control_->AddTimer(EventLoop::Clock::now() + std::chrono::milliseconds(50), [this] { CheckDrained(); });
  }

  // The static file (watched with inotify) or the Kubernetes API (list + watch).
  absl::Status CreateWorkloadRegistry() {
    if (config_.workload_source == WorkloadSourceKind::kFile) {
      ASSIGN_OR_RETURN(workloads_, workload::WorkloadRegistry::Create(
                                       std::make_unique<workload::StaticWorkloadFile>(config_.workloads)));
      return absl::OkStatus();
    }
    workload::KubernetesSourceOptions options;
    if (config_.kubernetes.kubeconfig.empty()) {
      ASSIGN_OR_RETURN(options.api, workload::KubeApiConfig::InCluster());
    } else {
      ASSIGN_OR_RETURN(options.api, workload::KubeApiConfig::FromKubeconfig(config_.kubernetes.kubeconfig));
    }
    options.node_name = config_.node_name;
    options.selection.label = config_.kubernetes.mesh_label;
    options.remote_pods = config_.kubernetes.remote_pods;
    // Pods are looked for where the connect hooks attach: a pod outside cgroupRoot could not be
    // steered anyway.
    options.locator.cgroup_root = config_.cgroup_root;
    // Watch events come in bursts (a rollout is dozens of MODIFIED events): one reload per 100 ms.
    options.on_change = [this] {
      if (kube_reload_pending_.exchange(true)) return;
      control_->Post([this] {
        control_->AddTimer(EventLoop::Clock::now() + std::chrono::milliseconds(100), [this] {
          kube_reload_pending_ = false;
          if (workloads_) OnWorkloadsReloaded(workloads_->Reload());
        });
      });
    };
    spdlog::info("workloads from the Kubernetes API at {}, node {}", options.api.Describe(), options.node_name);
    ASSIGN_OR_RETURN(std::unique_ptr<workload::KubernetesWorkloadSource> source,
                     workload::KubernetesWorkloadSource::Create(std::move(options)));
    RETURN_IF_ERROR(source->WaitForSync(std::chrono::seconds(60)));
    kube_source_ = source.get();
    ASSIGN_OR_RETURN(workloads_, workload::WorkloadRegistry::Create(std::move(source)));
    return absl::OkStatus();
  }

  void OnWorkloadsReloaded(const absl::StatusOr<workload::WorkloadDiff>& diff) {
    if (!diff.ok()) {
      spdlog::error("workloads reload rejected, keeping the last good set: {}", diff.status().message());
      observer_->Publish(v1::EVENT_KIND_RELOAD, "", "", "error", "workloads", std::string(diff.status().message()));
      return;
    }
    // Pod churn outside the mesh wakes the Kubernetes source too; only real changes are news.
    if (diff->empty() && kube_source_ != nullptr) return;
    observer_->Publish(v1::EVENT_KIND_RELOAD, "", "", "ok", "workloads",
                       StrCat("+", diff->added.size(), " -", diff->removed.size(), " ~", diff->changed.size()));
    spdlog::info("workloads reloaded: +{} -{} ~{}", diff->added.size(), diff->removed.size(), diff->changed.size());
    if (proxy_) (void)proxy_->Reconcile(workloads_->Current());
  }

  // A pod on this node shows up in the API before its sandbox runs; look for it again until it does.
  void SchedulePlacementRetry() {
    control_->AddTimer(EventLoop::Clock::now() + std::chrono::seconds(2), [this] {
      if (kube_source_ == nullptr) return;
      if (kube_source_->unplaced_local_pods() > 0) OnWorkloadsReloaded(workloads_->Reload());
      SchedulePlacementRetry();
    });
  }

  void Shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    if (kube_source_ != nullptr) kube_source_->Stop();
    if (status_server_) status_server_->Shutdown();
    status_server_.reset();
    metrics_server_.reset();
    workload_watcher_.reset();
    proxy_.reset();  // unwatches listeners on the running loops, then closes them
    for (auto& loop : workers_) loop->Stop();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
    workers_.clear();
    policies_.reset();
    spdlog::info("meshtls-agent stopped (BPF programs {})",
                 config_.leave_bpf_attached_on_exit ? "left attached: STRICT pods fail closed until the agent is back"
                                                    : "detached");
  }

  AgentConfig config_;
  std::unique_ptr<EventLoop> control_;
  std::unique_ptr<identity::CertificateAuthority> ca_;
  std::shared_ptr<telemetry::Metrics> metrics_;
  std::unique_ptr<identity::SvidStore> svids_;
  tls::Datapath datapath_ = tls::Datapath::kUserspaceTls;
  std::unique_ptr<tls::IdentityContexts> identities_;
  std::unique_ptr<proxy::AccessLog> access_log_;
  std::unique_ptr<policy::PolicyStore> policies_;
  std::unique_ptr<workload::WorkloadRegistry> workloads_;
  std::unique_ptr<FileWatcher> workload_watcher_;
  workload::KubernetesWorkloadSource* kube_source_ = nullptr;  // owned by workloads_, when the source is Kubernetes
  std::atomic<bool> kube_reload_pending_{false};
  std::unique_ptr<datapath::CgroupSteering> steering_;
  std::unique_ptr<datapath::InboundCapture> capture_;
  std::unique_ptr<datapath::LocalLegShortcut> shortcut_;
  tls::ConnectionRegistry registry_;
  std::vector<std::unique_ptr<EventLoop>> workers_;
  std::vector<std::thread> threads_;
  std::unique_ptr<proxy::NodeProxy> proxy_;
  UniqueFd signal_fd_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  tls::KtlsSupport ktls_;
  tls::KtlsSelfTestResult ktls_self_test_;
  std::string datapath_reason_;
  inspect::EventBus events_;
  std::unique_ptr<AgentObserver> observer_;
  std::unique_ptr<AgentInspection> inspection_;
  std::unique_ptr<inspect::StatusServer> status_server_;
  std::unique_ptr<telemetry::MetricsServer> metrics_server_;
  bool draining_ = false;
  bool shut_down_ = false;
  EventLoop::Clock::time_point drain_deadline_;
  int exit_code_ = 0;
};

}  // namespace
}  // namespace meshtls::agent

int main(int argc, char** argv) {
  // First, before any thread: it may execute the agent again with glibc tuned (malloc_tuning.h).
  const meshtls::MallocTuning malloc_tuning = meshtls::TuneMallocOrReexec(argv);
  CLI::App app{"meshtls-agent: the per-node mTLS agent (sidecar-less, eBPF steering, kTLS)"};
  meshtls::agent::FlagOverrides flags;
  meshtls::agent::AddFlags(app, &flags);
  CLI11_PARSE(app, argc, argv);
  auto config = meshtls::agent::ResolveConfig(flags);
  if (!config.ok()) {
    std::fprintf(stderr, "meshtls-agent: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (flags.print_config) {
    std::fputs(meshtls::agent::DumpConfig(*config).c_str(), stdout);
    return 0;
  }
  if (absl::Status st = meshtls::ConfigureLogging(meshtls::agent::Name(config->log_level)); !st.ok()) {
    std::fprintf(stderr, "meshtls-agent: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  meshtls::LogMallocTuning(malloc_tuning);
  // Before any key or certificate is loaded (openssl_setup.h).
  meshtls::LogOpenSslSetup(meshtls::ConfigureOpenSsl(config->openssl_builtin_ec));
  ::signal(SIGPIPE, SIG_IGN);
  const sigset_t handled = meshtls::agent::HandledSignals();
  pthread_sigmask(SIG_BLOCK, &handled, nullptr);
  meshtls::agent::Agent agent(*std::move(config));
  if (absl::Status st = agent.Start(); !st.ok()) {
    spdlog::critical("cannot start: {}", st.message());
    return 1;
  }
  return agent.Run();
}
