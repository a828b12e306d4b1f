#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/ip_address.h"
#include "meshtls/identity/spiffe_id.h"

namespace meshtls::workload {

// One pod as the mesh sees it. Pods on other nodes only need `ips` and the identity fields: the
// local agent uses them to know whom a destination address belongs to.
struct Workload {
  std::string name;
  std::string namespace_name;
  std::string service_account;
  std::string node;  // the node whose agent serves it; empty: no agent claims it
  std::map<std::string, std::string> labels;
  std::string netns_path;   // /run/netns/NAME or /proc/PID/ns/net; empty for remote pods
  std::string cgroup_path;  // cgroup v2 directory of the pod's processes; empty for remote pods
  std::vector<IpAddress> ips;

  // "namespace/name", unique in a snapshot.
  std::string uid() const;
  // spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>. `trust_domain` must be valid
  // (the agent's configuration is validated at start-up); an invalid one aborts, since there is
  // no identity to fall back to.
  SpiffeId Identity(std::string_view trust_domain) const;

  bool operator==(const Workload&) const = default;
};

// Where workloads come from. The static file is the first; the Kubernetes pod watch comes later
// behind the same interface, so the registry and everything downstream stay unchanged.
class WorkloadSource {
 public:
  virtual ~WorkloadSource() = default;
  // The complete current set (not a delta). Errors leave the caller's previous set in force.
  virtual absl::StatusOr<std::vector<Workload>> Load() = 0;
  // For logs and the status API, e.g. "static file /etc/meshtls/workloads.yaml".
  virtual std::string Describe() const = 0;
  // Describe() plus the source's health, for the status API (a watch's sync state and errors).
  virtual std::string Health() const { return Describe(); }
};

// Parses the static workload file format (docs/workloads.md). Every problem found is reported, one
// per line, as "FILE:LINE: reason (fix)"; `file_name` is only used in those messages.
absl::StatusOr<std::vector<Workload>> ParseWorkloads(std::string_view yaml,
                                                     std::string_view file_name);

class StaticWorkloadFile : public WorkloadSource {
 public:
  explicit StaticWorkloadFile(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<std::vector<Workload>> Load() override;
  std::string Describe() const override;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace meshtls::workload
