#include "meshtls/datapath/cgroup_steering.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <vector>

#include "meshtls/bpf/cgroup_sock_addr.skel.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/datapath/bpf_skeleton.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(cgroup_sock_addr);

struct CgroupSteering::Impl {
  explicit Impl(BpfSkeleton<cgroup_sock_addr> s) : skeleton(std::move(s)) {}
  ~Impl() {
    for (bpf_link* link : links) bpf_link__destroy(link);
  }
  BpfSkeleton<cgroup_sock_addr> skeleton;
  std::vector<bpf_link*> links;
};

absl::StatusOr<std::unique_ptr<CgroupSteering>> CgroupSteering::Create(const SteeringConfig& config) {
  ASSIGN_OR_RETURN(BpfSkeleton<cgroup_sock_addr> skeleton, BpfSkeleton<cgroup_sock_addr>::Open());
  skeleton->rodata->outbound_port = config.outbound_port;
  skeleton->rodata->inbound_capture_port = config.inbound_capture_port;
  skeleton->rodata->tunnel_port = config.tunnel_port;
  RETURN_IF_ERROR(skeleton.Load());
  std::unique_ptr<CgroupSteering> steering(new CgroupSteering());
  steering->impl_ = std::make_unique<Impl>(std::move(skeleton));
  return steering;
}

CgroupSteering::~CgroupSteering() = default;

absl::Status CgroupSteering::AttachTo(const std::string& cgroup_path) {
  UniqueFd cgroup(::open(cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup) return ErrnoStatus(errno, StrCat("open cgroup ", cgroup_path));
  for (bpf_program* program : {impl_->skeleton->progs.meshtls_connect4, impl_->skeleton->progs.meshtls_getpeername4}) {
    bpf_link* link = bpf_program__attach_cgroup(program, cgroup.get());
    if (link == nullptr) {
      return ErrnoStatus(errno, StrCat("attach ", bpf_program__name(program), " to ", cgroup_path));
    }
    impl_->links.push_back(link);
  }
  return absl::OkStatus();
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

absl::Status CgroupSteering::ForgetOriginalDestination(uint64_t cookie) {
  return Delete(impl_->skeleton->maps.original_destinations, &cookie);
}

absl::StatusOr<uint64_t> CgroupId(const std::string& cgroup_path) {
  struct stat st {};
  if (::stat(cgroup_path.c_str(), &st) != 0) return ErrnoStatus(errno, StrCat("stat ", cgroup_path));
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace meshtls::datapath
