#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls_maps.h"

struct cgroup_sock_addr;
struct bpf_link;

namespace meshtls::datapath {

struct SteeringConfig {
  uint16_t outbound_port = 15001;
  uint16_t inbound_capture_port = 15006;
  uint16_t tunnel_port = 15008;
};

// The cgroup sock_addr programs (connect4 redirect, getpeername4) and their maps, with a typed
// map API that the agent reconciles from its workload registry.
class CgroupSteering {
 public:
  static absl::StatusOr<std::unique_ptr<CgroupSteering>> Create(const SteeringConfig& config);
  ~CgroupSteering();

  // Attaches connect4 and getpeername4 to a cgroup v2 directory (effective for its subtree).
  absl::Status AttachTo(const std::string& cgroup_path);

  absl::Status SetMeshedCgroup(uint64_t cgroup_id, const meshtls_workload& workload);
  absl::Status RemoveMeshedCgroup(uint64_t cgroup_id);
  absl::Status AddMeshEndpoint(in_addr address);
  absl::Status RemoveMeshEndpoint(in_addr address);
  absl::Status AddExcludedPort(uint16_t port);

  // The destination a steered socket asked for, by that socket's cookie (SO_COOKIE).
  absl::StatusOr<std::optional<meshtls_original_destination>> OriginalDestination(uint64_t cookie) const;
  absl::Status ForgetOriginalDestination(uint64_t cookie);

 private:
  CgroupSteering() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The cgroup id of a cgroup v2 directory (its inode number), as bpf_get_current_cgroup_id() sees it.
absl::StatusOr<uint64_t> CgroupId(const std::string& cgroup_path);

}  // namespace meshtls::datapath
