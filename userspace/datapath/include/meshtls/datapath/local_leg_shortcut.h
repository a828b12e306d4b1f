#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/datapath/cgroup_steering.h"

namespace meshtls::datapath {

// The sockmap shortcut for the plaintext local leg (application <-> agent outbound listener):
// sock_ops puts both ends of such a connection into a sockhash, and an sk_msg program moves each
// send straight into the other end's receive queue. Only sockets connected to the outbound port
// over loopback are ever inserted: never a tunnel socket, never a socket with the TLS ULP.
//
// Bytes that arrive through the shortcut are visible to recv() but not to splice(), so the
// agent reads its local-leg sockets with recv() while the shortcut is on.
class LocalLegShortcut {
 public:
  static absl::StatusOr<std::unique_ptr<LocalLegShortcut>> Create(const SteeringConfig& config);
  ~LocalLegShortcut();

  // sock_ops must see both ends: attach it to the pods' cgroup subtree (the applications' end)
  // and to the agent's own cgroup (its accepted sockets inherit the listener's cgroup).
  absl::Status AttachTo(const std::string& cgroup_path);
  int PruneStaleLinks();
  std::vector<AttachedLink> Links() const;
  void LeaveAttachedOnExit() { leave_attached_ = true; }

  // Whether the connected socket `fd` is one end of a shortcut leg.
  absl::StatusOr<bool> IsShortcut(int fd) const;
  // How many sockets are in the shortcut map (closed sockets leave it by themselves).
  absl::StatusOr<size_t> LegCount() const;

 private:
  LocalLegShortcut() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool leave_attached_ = false;
};

// The cgroup v2 directory of the calling process (from /proc/self/cgroup, under the cgroup2
// mount point, which is found in /proc/mounts: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
// hybrid layout).
absl::StatusOr<std::string> OwnCgroupPath();

}  // namespace meshtls::datapath
