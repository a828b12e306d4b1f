#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/ip_address.h"
#include "meshtls/workload/pod_locator.h"
#include "meshtls/workload/workload.h"

// Pods from the Kubernetes API server: the WorkloadSource a DaemonSet agent uses (docs/kubernetes.md).
namespace meshtls::workload {

// How to reach the API server. Credentials are files where possible, so a rotated service-account
// token is picked up: the token file is read again before every request (and after a 401).
struct KubeApiConfig {
  std::string server;      // https://host:port
  std::string ca_file;     // PEM bundle that signs the server's certificate
  std::string ca_pem;      // or the bundle itself (kubeconfig certificate-authority-data)
  std::string token_file;  // bearer token, re-read before every request
  std::string token;       // or a fixed token (kubeconfig `token`)
  std::string client_cert_file, client_key_file;  // or client certificates
  std::string client_cert_pem, client_key_pem;
  bool insecure_skip_tls_verify = false;  // only if a kubeconfig asks for it; logged loudly

  // The pod's own service account: $KUBERNETES_SERVICE_HOST/PORT and the files under
  // `service_account_dir` (token, ca.crt).
  static absl::StatusOr<KubeApiConfig> InCluster(
      const std::string& service_account_dir = "/var/run/secrets/kubernetes.io/serviceaccount");
  // A kubeconfig file's current context. Relative paths in it are relative to the file.
  static absl::StatusOr<KubeApiConfig> FromKubeconfig(const std::string& path);
  std::string Describe() const;  // the server, and how the agent authenticates (never the secret)
};

// The fields of a Pod the mesh uses, parsed from the API's JSON.
struct KubePod {
  std::string name, namespace_name, uid, service_account, node;
  std::map<std::string, std::string> labels;
  std::vector<IpAddress> ips;  // status.podIPs (status.podIP on old servers)
  std::string phase;           // Pending, Running, Succeeded, Failed, Unknown
  bool host_network = false;
  bool terminating = false;    // metadata.deletionTimestamp is set
  std::string created;         // metadata.creationTimestamp (RFC 3339, sorts as text)
};

struct MeshSelection {
  // A namespace with `label: enabled` is meshed; a pod with `label: disabled` opts out of it and
  // a pod with `label: enabled` opts in from an unmeshed namespace.
  std::string label = "meshtls.io/mode";
};

// Which pods become workloads, and how (pure: unit-tested without an API server):
//  - meshed by MeshSelection; hostNetwork pods never (they share the node's netns), nor pods
//    that finished (Succeeded/Failed: their IPs are reused) or have no IP yet;
//  - an IP claimed by two pods goes to the live one, then the newer (a pod being deleted and its
//    successor can briefly share it); a pod left without IPs is skipped;
//  - pods on `node_name` get netns and cgroup from `locate`; one it cannot place yet (its
//    sandbox has not started) is listed with no node, so it still resolves by IP but nothing
//    tries to serve it until it is placed.
struct BuildResult {
  std::vector<Workload> workloads;
  std::vector<std::string> skipped;  // "ns/name: why", for logs and the status API
  size_t unplaced_local = 0;
};
BuildResult BuildWorkloads(const std::vector<KubePod>& pods,
                           const std::map<std::string, std::map<std::string, std::string>>& namespace_labels,
                           std::string_view node_name, const MeshSelection& selection,
                           const std::function<std::optional<PodPlacement>(const KubePod&)>& locate);

struct KubernetesSourceOptions {
  KubeApiConfig api;
  std::string node_name;  // pods with spec.nodeName == this are served here
  MeshSelection selection;
  // Also watch pods on other nodes (spec.nodeName!=node_name) so connections to them know the
  // identity to expect. Off: only same-node destinations are meshed.
  bool remote_pods = true;
  PodLocatorOptions locator;
  std::chrono::seconds watch_timeout{300};  // server-side timeoutSeconds of each watch
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  uint32_t page_size = 500;  // list pagination (limit/continue)
  // Called on a watch thread whenever the cached pods or namespaces changed; Load() then returns
  // the new set. Typically posts a Reload() onto the agent's control loop.
  std::function<void()> on_change;
};

struct KubeWatchStats {
  std::string resource;  // "pods on this node", "pods on other nodes", "namespaces"
  bool synced = false;
  std::string resource_version;
  uint64_t lists = 0, watches = 0, events = 0, bookmarks = 0, expired = 0, errors = 0;
  std::string last_error;
};

class KubernetesWorkloadSource : public WorkloadSource {
 public:
  // Starts the list/watch threads; they run until destruction. libcurl runs with CURLOPT_NOSIGNAL
  // (threads), so the process must ignore SIGPIPE, as the agent does.
  static absl::StatusOr<std::unique_ptr<KubernetesWorkloadSource>> Create(KubernetesSourceOptions options);
  ~KubernetesWorkloadSource() override;
  // Stops the watch threads (on_change is not called after this returns); Load() keeps answering
  // from the last state. Also done by the destructor.
  void Stop();

  // Waits until every watch has listed once. Unavailable (with each watch's last error) if that
  // takes longer than `timeout`.
  absl::Status WaitForSync(std::chrono::milliseconds timeout);
  // Unavailable until synced, so an agent never starts with half a picture.
  absl::StatusOr<std::vector<Workload>> Load() override;
  std::string Describe() const override;
  // Describe() and, per watch: synced or not, resourceVersion, events, relists, errors, last error.
  std::string Health() const override;

  std::vector<KubeWatchStats> Stats() const;
  // Local pods whose sandbox was not found at the last Load(): the caller should Load() again
  // shortly (their containers are starting).
  size_t unplaced_local_pods() const { return unplaced_.load(); }

 private:
  struct Impl;
  explicit KubernetesWorkloadSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::atomic<size_t> unplaced_{0};
};

}  // namespace meshtls::workload
