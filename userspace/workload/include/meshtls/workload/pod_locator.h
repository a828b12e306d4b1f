#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meshtls::workload {

// Where a pod on this node lives.
struct PodPlacement {
  std::string cgroup_path;  // the pod-level cgroup v2 directory (its containers are below it)
  std::string netns_path;   // /run/netns/<name> pinned by the runtime, else /proc/<pid>/ns/net
  int sandbox_pid = 0;      // the pod's oldest process (the sandbox / pause container)
  unsigned long long sandbox_started = 0;  // its start time, so a reused PID is not mistaken for it
};

struct PodLocatorOptions {
  // cgroup v2 directory under which kubelet's pod cgroups are searched; empty: the host's cgroup2
  // mount from /proc/self/mounts. Both kubelet cgroup drivers are understood:
  // systemd  .../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/...
  // cgroupfs .../kubepods/burstable/pod<uid>/<container>
  std::string cgroup_root;
  std::string proc_root = "/proc";  // the host's (the DaemonSet runs with hostPID)
  // Where container runtimes pin pod network namespaces (containerd, CRI-O: /var/run/netns,
  // which is /run/netns). A pinned path outlives any one process, so it is preferred.
  std::string netns_dir = "/run/netns";
};

// Maps a pod UID to its cgroup and network namespace by reading the cgroup tree: kubelet names
// each pod's cgroup after its UID, and the processes in it share the pod's netns. This needs no
// container-runtime API (no CRI socket, no runtime-specific client) and works under any cgroup
// namespace, since cgroup.procs is read from the host's tree rather than /proc/<pid>/cgroup.
class PodLocator {
 public:
  explicit PodLocator(PodLocatorOptions options);

  // NotFound when no cgroup carries the UID or no process runs in it yet.
  absl::StatusOr<PodPlacement> Locate(std::string_view pod_uid) const;
  // Whether a placement found earlier is still right (its process is still there, or its
  // pinned netns still exists).
  bool StillValid(const PodPlacement& placement) const;

 private:
  PodLocatorOptions options_;
};

}  // namespace meshtls::workload
