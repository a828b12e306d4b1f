#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls_maps.h"

struct cgroup_sock_addr;
struct bpf_link;

namespace meshtls::datapath {

// One attached BPF program, for the status API.
struct AttachedLink {
  std::string program_name;  // e.g. meshtls_connect4
  std::string attach_point;  // cgroup or netns path
  uint32_t program_id = 0;
  uint32_t link_id = 0;
  std::string pin_path;
};

struct SteeringConfig {
  uint16_t outbound_port = 15001;
  uint16_t inbound_capture_port = 15006;
  uint16_t tunnel_port = 15008;
  // Where maps and links are pinned (e.g. /sys/fs/bpf/meshtls), so that they outlive the agent
  // and a restarted agent adopts them. Empty: nothing pinned, everything ends with the object.
  std::string pin_dir;
};

// The cgroup sock_addr programs (connect4 redirect, getpeername4) and their maps, with a typed
// map API that the agent reconciles from its workload registry.
class CgroupSteering {
 public:
  static absl::StatusOr<std::unique_ptr<CgroupSteering>> Create(const SteeringConfig& config);
  ~CgroupSteering();

  // Attaches connect4/6, getpeername4/6 and sock_ops to a cgroup v2 directory (effective for its subtree).
  // With a pin_dir, a link pinned by an earlier agent for the same cgroup and program is adopted
  // and switched to this agent's program: never a second attachment.
  absl::Status AttachTo(const std::string& cgroup_path);
  // After AttachTo() for every wanted cgroup: detaches links an earlier agent pinned for
  // cgroups that are no longer wanted. Returns how many were removed.
  int PruneStaleLinks();
  std::vector<AttachedLink> Links() const;

  // Keep the programs attached and the maps pinned after this object is gone (an agent restart
  // or upgrade). Without it, destruction detaches everything and removes the pins.
  void LeaveAttachedOnExit() { leave_attached_ = true; }

  absl::Status SetMeshedCgroup(uint64_t cgroup_id, const meshtls_workload& workload);
  absl::Status RemoveMeshedCgroup(uint64_t cgroup_id);
  absl::Status AddMeshEndpoint(in_addr address);
  absl::Status RemoveMeshEndpoint(in_addr address);
  absl::Status AddMeshEndpoint(in6_addr address);
  absl::Status RemoveMeshEndpoint(in6_addr address);
  absl::Status AddExcludedPort(uint16_t port);

  // The destination the application asked for, from the agent's accepted socket (its peer is the
  // application's end; SO_NETNS_COOKIE tells which pod). nullopt: not a steered connection.
  absl::StatusOr<std::optional<meshtls_original_destination>> OriginalDestinationOf(int accepted_fd) const;
  // How many steered connections are tracked (entries leave when connections close).
  absl::StatusOr<size_t> TrackedConnectionCount() const;

  // The destination a steered socket asked for, by that socket's cookie (SO_COOKIE).
  absl::StatusOr<std::optional<meshtls_original_destination>> OriginalDestination(uint64_t cookie) const;
  absl::Status ForgetOriginalDestination(uint64_t cookie);

 private:
  CgroupSteering() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool leave_attached_ = false;
};

// Mounts bpffs at `mount_point` unless one is there already.
absl::Status EnsureBpffs(const std::string& mount_point = "/sys/fs/bpf");

// How many programs are attached to `cgroup_path` for `attach_type` (e.g. BPF_CGROUP_INET4_CONNECT).
absl::StatusOr<uint32_t> AttachedProgramCount(const std::string& cgroup_path, int attach_type);

// The cgroup id of a cgroup v2 directory (its inode number), as bpf_get_current_cgroup_id() sees it.
absl::StatusOr<uint64_t> CgroupId(const std::string& cgroup_path);

}  // namespace meshtls::datapath
