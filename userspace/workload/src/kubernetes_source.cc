#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "kube_client.h"
#include "kube_reflector.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/workload/kubernetes.h"
#include "meshtls/workload/names.h"

namespace meshtls::workload {
namespace {

using nlohmann::json;

std::string Text(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const json& Field(const json& object, const char* key) {
  static const json kEmpty = json::object();
  const auto it = object.find(key);
  return it != object.end() && it->is_object() ? *it : kEmpty;
}

std::map<std::string, std::string> Labels(const json& metadata) {
  std::map<std::string, std::string> labels;
  for (const auto& [key, value] : Field(metadata, "labels").items()) {
    if (value.is_string()) labels[key] = value.get<std::string>();
  }
  return labels;
}

// What the source keeps of a Pod: a full one is mostly managedFields and container specs.
json TrimPod(const json& pod) {
  const json& metadata = Field(pod, "metadata");
  const json& spec = Field(pod, "spec");
  const json& status = Field(pod, "status");
  json out;
  out["metadata"] = {{"name", Text(metadata, "name")},
                     {"namespace", Text(metadata, "namespace")},
                     {"uid", Text(metadata, "uid")},
                     {"resourceVersion", Text(metadata, "resourceVersion")},
                     {"creationTimestamp", Text(metadata, "creationTimestamp")},
                     {"labels", Field(metadata, "labels")}};
  if (metadata.contains("deletionTimestamp") && !metadata["deletionTimestamp"].is_null()) {
    out["metadata"]["deletionTimestamp"] = metadata["deletionTimestamp"];
  }
  out["spec"] = {{"nodeName", Text(spec, "nodeName")},
                 {"serviceAccountName", Text(spec, "serviceAccountName")},
                 {"hostNetwork", spec.value("hostNetwork", false)}};
  out["status"] = {{"phase", Text(status, "phase")}, {"podIP", Text(status, "podIP")}};
  if (status.contains("podIPs") && status["podIPs"].is_array()) out["status"]["podIPs"] = status["podIPs"];
  return out;
}

json TrimNamespace(const json& ns) {
  const json& metadata = Field(ns, "metadata");
  return {{"metadata",
           {{"name", Text(metadata, "name")},
            {"uid", Text(metadata, "uid")},
            {"resourceVersion", Text(metadata, "resourceVersion")},
            {"labels", Field(metadata, "labels")}}}};
}

KubePod ParsePod(const json& pod) {
  const json& metadata = Field(pod, "metadata");
  const json& spec = Field(pod, "spec");
  const json& status = Field(pod, "status");
  KubePod out;
  out.name = Text(metadata, "name");
  out.namespace_name = Text(metadata, "namespace");
  out.uid = Text(metadata, "uid");
  out.labels = Labels(metadata);
  out.created = Text(metadata, "creationTimestamp");
  out.terminating = metadata.contains("deletionTimestamp") && !metadata["deletionTimestamp"].is_null();
  out.node = Text(spec, "nodeName");
  out.service_account = Text(spec, "serviceAccountName");
  if (out.service_account.empty()) out.service_account = "default";  // what the API server assigns
  out.host_network = spec.value("hostNetwork", false);
  out.phase = Text(status, "phase");
  std::vector<std::string> addresses;
  if (status.contains("podIPs") && status["podIPs"].is_array()) {
    for (const json& entry : status["podIPs"]) {
      if (entry.is_object()) addresses.push_back(Text(entry, "ip"));
    }
  }
  if (addresses.empty()) addresses.push_back(Text(status, "podIP"));
  for (const std::string& address : addresses) {
    if (auto ip = IpAddress::Parse(address); ip.ok()) out.ips.push_back(*ip);
  }
  return out;
}

}  // namespace

BuildResult BuildWorkloads(const std::vector<KubePod>& pods,
                           const std::map<std::string, std::map<std::string, std::string>>& namespace_labels,
                           std::string_view node_name, const MeshSelection& selection,
                           const std::function<std::optional<PodPlacement>(const KubePod&)>& locate) {
  BuildResult result;
  auto skip = [&](const KubePod& pod, std::string_view why) {
    result.skipped.push_back(StrCat(pod.namespace_name, "/", pod.name, ": ", why));
  };
  std::vector<const KubePod*> candidates;
  for (const KubePod& pod : pods) {
    const auto pod_label = pod.labels.find(selection.label);
    const std::string pod_mode = pod_label == pod.labels.end() ? "" : pod_label->second;
    std::string ns_mode;
    if (auto ns = namespace_labels.find(pod.namespace_name); ns != namespace_labels.end()) {
      if (auto label = ns->second.find(selection.label); label != ns->second.end()) ns_mode = label->second;
    }
    const bool meshed = pod_mode == "enabled" || (ns_mode == "enabled" && pod_mode != "disabled");
    if (!meshed) continue;  // not part of the mesh: not even worth a log line
    if (pod.host_network) {
      skip(pod, "hostNetwork pods share the node's network namespace and cannot be meshed");
    } else if (pod.phase == "Succeeded" || pod.phase == "Failed") {
      skip(pod, StrCat("finished (", pod.phase, ")"));
    } else if (pod.ips.empty()) {
      skip(pod, "no IP yet");
    } else if (!IsDns1123Subdomain(pod.name) || !IsDns1123Label(pod.namespace_name) ||
               !IsDns1123Label(pod.service_account)) {
      skip(pod, "name, namespace or service account is not a valid DNS name");
    } else {
      candidates.push_back(&pod);
    }
  }
  // Live before terminating, then newest first: the pod that owns an IP now gets it.
  std::sort(candidates.begin(), candidates.end(), [](const KubePod* a, const KubePod* b) {
    if (a->terminating != b->terminating) return !a->terminating;
    if (a->created != b->created) return a->created > b->created;
    return a->uid < b->uid;
  });
  std::set<IpAddress> claimed;
  for (const KubePod* pod : candidates) {
    Workload w;
    w.name = pod->name;
    w.namespace_name = pod->namespace_name;
    w.service_account = pod->service_account;
    w.labels = pod->labels;
    for (const IpAddress& ip : pod->ips) {
      if (claimed.insert(ip).second) w.ips.push_back(ip);
    }
    if (w.ips.empty()) {
      skip(*pod, "its IPs belong to a newer pod");
      continue;
    }
    if (pod->node == node_name) {
      if (std::optional<PodPlacement> placement = locate(*pod)) {
        w.node = pod->node;
        w.netns_path = placement->netns_path;
        w.cgroup_path = placement->cgroup_path;
      } else {
        result.unplaced_local++;  // resolvable by IP, served once its sandbox is found
      }
    } else {
      w.node = pod->node;
    }
    result.workloads.push_back(std::move(w));
  }
  return result;
}

struct KubernetesWorkloadSource::Impl {
  KubernetesSourceOptions options;
  std::unique_ptr<kube::Client> client;
  std::unique_ptr<kube::Reflector> local_pods, remote_pods, namespaces;
  PodLocator locator;
  std::mutex placements_mutex;
  std::map<std::string, PodPlacement> placements;  // by pod uid; kept while still valid

  explicit Impl(KubernetesSourceOptions o) : options(std::move(o)), locator(options.locator) {}

  std::vector<kube::Reflector*> Reflectors() const {
    std::vector<kube::Reflector*> out = {local_pods.get(), namespaces.get()};
    if (remote_pods) out.push_back(remote_pods.get());
    return out;
  }
};

KubernetesWorkloadSource::KubernetesWorkloadSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

KubernetesWorkloadSource::~KubernetesWorkloadSource() { Stop(); }

void KubernetesWorkloadSource::Stop() {
  for (kube::Reflector* reflector : impl_->Reflectors()) reflector->Stop();
}

absl::StatusOr<std::unique_ptr<KubernetesWorkloadSource>> KubernetesWorkloadSource::Create(
    KubernetesSourceOptions options) {
  if (!IsDns1123Subdomain(options.node_name)) {
    return absl::InvalidArgumentError(StrCat("node name '", options.node_name,
                                             "' is not a valid Kubernetes node name (set NODE_NAME from spec.nodeName)"));
  }
  if (!IsLabelKey(options.selection.label)) {
    return absl::InvalidArgumentError(StrCat("'", options.selection.label, "' is not a valid label key"));
  }
  if (options.api.insecure_skip_tls_verify) {
    spdlog::warn("kubernetes: the API server's certificate is NOT verified (insecure-skip-tls-verify in the kubeconfig)");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  ASSIGN_OR_RETURN(impl->client, kube::Client::Create(impl->options.api));
  auto reflector = [&](std::string name, std::string path, std::string selector, auto trim) {
    kube::ReflectorOptions r;
    r.name = std::move(name);
    r.path = std::move(path);
    r.field_selector = std::move(selector);
    r.watch_timeout = impl->options.watch_timeout;
    r.backoff_initial = impl->options.backoff_initial;
    r.backoff_max = impl->options.backoff_max;
    r.page_size = impl->options.page_size;
    r.trim = trim;
    return std::make_unique<kube::Reflector>(*impl->client, std::move(r), impl->options.on_change);
  };
  const std::string& node = impl->options.node_name;
  impl->local_pods = reflector("pods on this node", "/api/v1/pods", StrCat("spec.nodeName=", node), TrimPod);
  if (impl->options.remote_pods) {
    impl->remote_pods = reflector("pods on other nodes", "/api/v1/pods", StrCat("spec.nodeName!=", node), TrimPod);
  }
  impl->namespaces = reflector("namespaces", "/api/v1/namespaces", "", TrimNamespace);
  for (kube::Reflector* r : impl->Reflectors()) r->Start();
  return std::unique_ptr<KubernetesWorkloadSource>(new KubernetesWorkloadSource(std::move(impl)));
}

absl::Status KubernetesWorkloadSource::WaitForSync(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (kube::Reflector* r : impl_->Reflectors()) all = all && r->synced();
    if (all) return absl::OkStatus();
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<std::string> problems;
  for (const KubeWatchStats& s : Stats()) {
    if (!s.synced) problems.push_back(StrCat(s.resource, ": ", s.last_error.empty() ? "no answer yet" : s.last_error));
  }
  return absl::UnavailableError(StrCat("the Kubernetes API server at ", impl_->options.api.server,
                                       " did not answer within ", timeout.count(), " ms: ", Join(problems, "; ")));
}

absl::StatusOr<std::vector<Workload>> KubernetesWorkloadSource::Load() {
  for (kube::Reflector* r : impl_->Reflectors()) {
    if (!r->synced()) return absl::UnavailableError(StrCat("kubernetes: ", r->Stats().resource, " not listed yet"));
  }
  std::map<std::string, std::map<std::string, std::string>> namespace_labels;
  for (const json& ns : impl_->namespaces->Items()) {
    const json& metadata = Field(ns, "metadata");
    namespace_labels[Text(metadata, "name")] = Labels(metadata);
  }
  std::vector<KubePod> pods;
  for (const json& pod : impl_->local_pods->Items()) pods.push_back(ParsePod(pod));
  if (impl_->remote_pods) {
    for (const json& pod : impl_->remote_pods->Items()) pods.push_back(ParsePod(pod));
  }

  std::lock_guard lock(impl_->placements_mutex);
  std::map<std::string, PodPlacement> placements;
  auto locate = [&](const KubePod& pod) -> std::optional<PodPlacement> {
    // A placement is kept while it holds, so a pod's netns path (and with it its listeners) does
    // not change under it on every reload.
    if (auto known = impl_->placements.find(pod.uid);
        known != impl_->placements.end() && impl_->locator.StillValid(known->second)) {
      return placements[pod.uid] = known->second;
    }
    absl::StatusOr<PodPlacement> found = impl_->locator.Locate(pod.uid);
    if (!found.ok()) {
      spdlog::debug("kubernetes: {}/{} not placed yet: {}", pod.namespace_name, pod.name, found.status().message());
      return std::nullopt;
    }
    return placements[pod.uid] = *found;
  };
  BuildResult built = BuildWorkloads(pods, namespace_labels, impl_->options.node_name, impl_->options.selection, locate);
  impl_->placements = std::move(placements);  // pods gone from the API are forgotten here
  unplaced_ = built.unplaced_local;
  for (const std::string& why : built.skipped) spdlog::debug("kubernetes: not meshed: {}", why);
  return std::move(built.workloads);
}

std::string KubernetesWorkloadSource::Describe() const {
  return StrCat("kubernetes ", impl_->options.api.server, ", pods on node ", impl_->options.node_name);
}

std::string KubernetesWorkloadSource::Health() const {
  std::vector<std::string> watches;
  for (const KubeWatchStats& s : Stats()) {
    std::string line = StrCat(s.resource, ": ", s.synced ? "synced" : "NOT SYNCED", " at resourceVersion ",
                              s.resource_version.empty() ? "-" : s.resource_version, ", ", s.events, " events, ",
                              s.lists, " lists (", s.expired, " after 410), ", s.errors, " errors");
    if (!s.last_error.empty()) line += StrCat(" (last: ", s.last_error, ")");
    watches.push_back(std::move(line));
  }
  return StrCat(Describe(), "; ", Join(watches, "; "));
}

std::vector<KubeWatchStats> KubernetesWorkloadSource::Stats() const {
  std::vector<KubeWatchStats> out;
  for (kube::Reflector* r : impl_->Reflectors()) out.push_back(r->Stats());
  return out;
}

}  // namespace meshtls::workload
