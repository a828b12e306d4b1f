#include "meshtls/datapath/cgroup_steering.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "meshtls/bpf/cgroup_sock_addr.skel.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/datapath/bpf_skeleton.h"
#include "link_pins.h"
#include "spdlog/spdlog.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(cgroup_sock_addr);

struct CgroupSteering::Impl {
  explicit Impl(BpfSkeleton<cgroup_sock_addr> s) : skeleton(std::move(s)) {}
  BpfSkeleton<cgroup_sock_addr> skeleton;
  std::unique_ptr<LinkPins> links;
  std::string pin_dir;
};

namespace {

std::vector<bpf_map*> Maps(cgroup_sock_addr* s) {
  return {s->maps.meshed_cgroups, s->maps.mesh_endpoints4, s->maps.mesh_endpoints6, s->maps.excluded_ports,
          s->maps.steered_connections,
          s->maps.original_destinations};
}

std::vector<bpf_program*> Programs(cgroup_sock_addr* s) {
  return {s->progs.meshtls_connect4, s->progs.meshtls_getpeername4, s->progs.meshtls_connect6,
          s->progs.meshtls_getpeername6, s->progs.meshtls_sockops};
}

}  // namespace

absl::Status EnsureBpffs(const std::string& mount_point) {
  struct statfs fs {};
  if (::statfs(mount_point.c_str(), &fs) == 0 && fs.f_type == BPF_FS_MAGIC) return absl::OkStatus();
  RETURN_IF_ERROR(MakeDirs(mount_point));
  if (::mount("bpf", mount_point.c_str(), "bpf", 0, "mode=0700") != 0) {
    return ErrnoStatus(errno, StrCat("mount bpffs at ", mount_point));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> AttachedProgramCount(const std::string& cgroup_path, int attach_type) {
  UniqueFd cgroup(::open(cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup) return ErrnoStatus(errno, StrCat("open cgroup ", cgroup_path));
  uint32_t ids[64];
  uint32_t count = 64;
  uint32_t flags = 0;
  if (bpf_prog_query(cgroup.get(), static_cast<bpf_attach_type>(attach_type), 0, &flags, ids, &count) != 0) {
    return ErrnoStatus(errno, "bpf_prog_query");
  }
  return count;
}

absl::StatusOr<std::unique_ptr<CgroupSteering>> CgroupSteering::Create(const SteeringConfig& config) {
  if (!config.pin_dir.empty()) {
    RETURN_IF_ERROR(EnsureBpffs(std::filesystem::path(config.pin_dir).parent_path().string()));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/maps"));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/links"));
  }
  // Open, configure and load; maps pinned by an earlier agent are reused (their contents survive
  // the restart).
  auto open_and_load = [&]() -> absl::StatusOr<BpfSkeleton<cgroup_sock_addr>> {
    ASSIGN_OR_RETURN(BpfSkeleton<cgroup_sock_addr> skeleton, BpfSkeleton<cgroup_sock_addr>::Open());
    SetAgentPorts(skeleton, config);
    for (bpf_map* map : Maps(skeleton.get())) {
      if (config.pin_dir.empty()) break;
      const std::string path = StrCat(config.pin_dir, "/maps/", bpf_map__name(map));
      if (bpf_map__set_pin_path(map, path.c_str()) != 0) return ErrnoStatus(errno, "set pin path");
    }
    RETURN_IF_ERROR(skeleton.Load());
    return skeleton;
  };
  absl::StatusOr<BpfSkeleton<cgroup_sock_addr>> skeleton = open_and_load();
  if (!skeleton.ok() && !config.pin_dir.empty()) {
    // A pinned map from an incompatible earlier version: replace it rather than refuse to start.
    spdlog::warn("BPF load with the pinned maps failed ({}); replacing the pinned maps",
                 skeleton.status().message());
    for (const char* name : {"meshed_cgroups", "mesh_endpoints4", "mesh_endpoints6", "excluded_ports",
                             "steered_connections", "original_destinations"}) {
      ::unlink(StrCat(config.pin_dir, "/maps/", name).c_str());
    }
    skeleton = open_and_load();
  }
  if (!skeleton.ok()) return skeleton.status();
  std::unique_ptr<CgroupSteering> steering(new CgroupSteering());
  steering->impl_ = std::make_unique<Impl>(*std::move(skeleton));
  steering->impl_->pin_dir = config.pin_dir;
  steering->impl_->links = std::make_unique<LinkPins>(config.pin_dir);
  return steering;
}

CgroupSteering::~CgroupSteering() {
  if (!impl_) return;
  const bool unpin = !leave_attached_ && !impl_->pin_dir.empty();
  impl_->links->set_leave_attached(leave_attached_);
  impl_->links.reset();
  if (unpin) {
    for (bpf_map* map : Maps(impl_->skeleton.get())) bpf_map__unpin(map, nullptr);
  }
}

absl::Status CgroupSteering::AttachTo(const std::string& cgroup_path) {
  UniqueFd cgroup(::open(cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup) return ErrnoStatus(errno, StrCat("open cgroup ", cgroup_path));
  ASSIGN_OR_RETURN(uint64_t cgroup_id, CgroupId(cgroup_path));
  for (bpf_program* program : Programs(impl_->skeleton.get())) {
    RETURN_IF_ERROR(impl_->links->AttachOrAdopt(
        program, StrCat(cgroup_id, "-", bpf_program__name(program)),
        [&] { return bpf_program__attach_cgroup(program, cgroup.get()); }, cgroup_path));
  }
  return absl::OkStatus();
}

std::vector<AttachedLink> CgroupSteering::Links() const { return impl_->links->Describe(); }

int CgroupSteering::PruneStaleLinks() {
  std::vector<std::string> names;
  for (bpf_program* program : Programs(impl_->skeleton.get())) names.push_back(bpf_program__name(program));
  return impl_->links->PruneUnclaimed(names);
}

namespace {
absl::Status Update(bpf_map* map, const void* key, const void* value) {
  if (bpf_map__update_elem(map, key, bpf_map__key_size(map), value, bpf_map__value_size(map), BPF_ANY) != 0) {
    return ErrnoStatus(errno, StrCat("update map ", bpf_map__name(map)));
  }
  return absl::OkStatus();
}
absl::Status Delete(bpf_map* map, const void* key) {
  if (bpf_map__delete_elem(map, key, bpf_map__key_size(map), 0) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, StrCat("delete from map ", bpf_map__name(map)));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status CgroupSteering::SetMeshedCgroup(uint64_t cgroup_id, const meshtls_workload& workload) {
  return Update(impl_->skeleton->maps.meshed_cgroups, &cgroup_id, &workload);
}

absl::Status CgroupSteering::RemoveMeshedCgroup(uint64_t cgroup_id) {
  return Delete(impl_->skeleton->maps.meshed_cgroups, &cgroup_id);
}

absl::Status CgroupSteering::AddMeshEndpoint(in_addr address) {
  const meshtls_endpoint4 key{address.s_addr};
  const uint8_t present = 1;
  return Update(impl_->skeleton->maps.mesh_endpoints4, &key, &present);
}

absl::Status CgroupSteering::RemoveMeshEndpoint(in_addr address) {
  const meshtls_endpoint4 key{address.s_addr};
  return Delete(impl_->skeleton->maps.mesh_endpoints4, &key);
}

absl::Status CgroupSteering::AddMeshEndpoint(in6_addr address) {
  meshtls_endpoint6 key{};
  std::memcpy(key.addr, &address, sizeof(key.addr));
  const uint8_t present = 1;
  return Update(impl_->skeleton->maps.mesh_endpoints6, &key, &present);
}

absl::Status CgroupSteering::RemoveMeshEndpoint(in6_addr address) {
  meshtls_endpoint6 key{};
  std::memcpy(key.addr, &address, sizeof(key.addr));
  return Delete(impl_->skeleton->maps.mesh_endpoints6, &key);
}

absl::Status CgroupSteering::AddExcludedPort(uint16_t port) {
  const uint8_t present = 1;
  return Update(impl_->skeleton->maps.excluded_ports, &port, &present);
}

absl::StatusOr<std::optional<meshtls_original_destination>> CgroupSteering::OriginalDestination(
    uint64_t cookie) const {
  meshtls_original_destination value{};
  bpf_map* map = impl_->skeleton->maps.original_destinations;
  if (bpf_map__lookup_elem(map, &cookie, sizeof(cookie), &value, sizeof(value), 0) != 0) {
    if (errno == ENOENT) return std::nullopt;
    return ErrnoStatus(errno, "lookup original destination");
  }
  return value;
}

absl::StatusOr<std::optional<meshtls_original_destination>> CgroupSteering::OriginalDestinationOf(
    int accepted_fd) const {
  sockaddr_storage peer{};
  socklen_t len = sizeof(peer);
  if (::getpeername(accepted_fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) {
    return ErrnoStatus(errno, "getpeername");
  }
  meshtls_connection_key key{};
  socklen_t cookie_len = sizeof(key.netns_cookie);
  if (::getsockopt(accepted_fd, SOL_SOCKET, SO_NETNS_COOKIE, &key.netns_cookie, &cookie_len) != 0) {
    return ErrnoStatus(errno, "getsockopt(SO_NETNS_COOKIE)");
  }
  if (peer.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&peer);
    key.family = AF_INET;
    key.port = in->sin_port;
    key.addr[0] = in->sin_addr.s_addr;
  } else if (peer.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&peer);
    key.family = AF_INET6;
    key.port = in6->sin6_port;
    std::memcpy(key.addr, &in6->sin6_addr, sizeof(key.addr));
  } else {
    return std::nullopt;
  }
  meshtls_original_destination value{};
  bpf_map* map = impl_->skeleton->maps.steered_connections;
  if (bpf_map__lookup_elem(map, &key, sizeof(key), &value, sizeof(value), 0) != 0) {
    if (errno == ENOENT) return std::nullopt;
    return ErrnoStatus(errno, "lookup steered connection");
  }
  return value;
}

absl::StatusOr<size_t> CgroupSteering::TrackedConnectionCount() const {
  bpf_map* map = impl_->skeleton->maps.steered_connections;
  meshtls_connection_key key{}, next{};
  size_t count = 0;
  const void* previous = nullptr;
  while (bpf_map__get_next_key(map, previous, &next, sizeof(next)) == 0) {
    ++count;
    key = next;
    previous = &key;
  }
  return count;
}

absl::Status CgroupSteering::ForgetOriginalDestination(uint64_t cookie) {
  return Delete(impl_->skeleton->maps.original_destinations, &cookie);
}

absl::StatusOr<uint64_t> CgroupId(const std::string& cgroup_path) {
  struct stat st {};
  if (::stat(cgroup_path.c_str(), &st) != 0) return ErrnoStatus(errno, StrCat("stat ", cgroup_path));
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace meshtls::datapath
