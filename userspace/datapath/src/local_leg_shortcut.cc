#include "meshtls/datapath/local_leg_shortcut.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "link_pins.h"
#include "meshtls/bpf/local_leg.skel.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/datapath/bpf_skeleton.h"
#include "spdlog/spdlog.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(local_leg);

struct LocalLegShortcut::Impl {
  Impl(BpfSkeleton<local_leg> s, const std::string& dir) : skeleton(std::move(s)), links(dir), pin_dir(dir) {}
  BpfSkeleton<local_leg> skeleton;
  LinkPins links;
  std::string pin_dir;
};

namespace {
constexpr const char* kPinnedMaps[] = {"local_legs", "local_leg_bypass"};
}

absl::StatusOr<std::unique_ptr<LocalLegShortcut>> LocalLegShortcut::Create(const SteeringConfig& config) {
  if (!config.pin_dir.empty()) {
    RETURN_IF_ERROR(EnsureBpffs(std::filesystem::path(config.pin_dir).parent_path().string()));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/maps"));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/links"));
  }
  auto open_and_load = [&]() -> absl::StatusOr<BpfSkeleton<local_leg>> {
    ASSIGN_OR_RETURN(BpfSkeleton<local_leg> skeleton, BpfSkeleton<local_leg>::Open());
    SetAgentPorts(skeleton, config);
    if (!config.pin_dir.empty()) {
      for (bpf_map* map : {skeleton->maps.local_legs, skeleton->maps.local_leg_bypass}) {
        const std::string path = StrCat(config.pin_dir, "/maps/", bpf_map__name(map));
        if (bpf_map__set_pin_path(map, path.c_str()) != 0) return ErrnoStatus(errno, "set pin path");
      }
    }
    RETURN_IF_ERROR(skeleton.Load());
    return skeleton;
  };
  absl::StatusOr<BpfSkeleton<local_leg>> skeleton = open_and_load();
  if (!skeleton.ok() && !config.pin_dir.empty()) {
    spdlog::warn("BPF load with the pinned local-leg maps failed ({}); replacing them", skeleton.status().message());
    for (const char* name : kPinnedMaps) ::unlink(StrCat(config.pin_dir, "/maps/", name).c_str());
    skeleton = open_and_load();
  }
  if (!skeleton.ok()) return skeleton.status();
  // sk_msg programs attach to the map, not through a link (libbpf 1.1 has no sockmap links);
  // attaching again replaces the program, so a restart never stacks two.
  const int prog_fd = bpf_program__fd((*skeleton)->progs.meshtls_local_leg_msg);
  const int map_fd = bpf_map__fd((*skeleton)->maps.local_legs);
  if (bpf_prog_attach(prog_fd, map_fd, BPF_SK_MSG_VERDICT, 0) != 0) {
    return ErrnoStatus(errno, "attach the sk_msg program to the local_legs sockhash");
  }
  std::unique_ptr<LocalLegShortcut> shortcut(new LocalLegShortcut());
  shortcut->impl_ = std::make_unique<Impl>(*std::move(skeleton), config.pin_dir);
  return shortcut;
}

LocalLegShortcut::~LocalLegShortcut() {
  if (!impl_) return;
  impl_->links.set_leave_attached(leave_attached_);
  if (leave_attached_) return;
  bpf_prog_detach2(bpf_program__fd(impl_->skeleton->progs.meshtls_local_leg_msg),
                   bpf_map__fd(impl_->skeleton->maps.local_legs), BPF_SK_MSG_VERDICT);
  if (!impl_->pin_dir.empty()) {
    bpf_map__unpin(impl_->skeleton->maps.local_legs, nullptr);
    bpf_map__unpin(impl_->skeleton->maps.local_leg_bypass, nullptr);
  }
}

absl::Status LocalLegShortcut::AttachTo(const std::string& cgroup_path) {
  UniqueFd cgroup(::open(cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup) return ErrnoStatus(errno, StrCat("open cgroup ", cgroup_path));
  ASSIGN_OR_RETURN(uint64_t cgroup_id, CgroupId(cgroup_path));
  bpf_program* program = impl_->skeleton->progs.meshtls_local_leg_sockops;
  return impl_->links.AttachOrAdopt(program, StrCat(cgroup_id, "-", bpf_program__name(program)),
                                    [&] { return bpf_program__attach_cgroup(program, cgroup.get()); },
                                    cgroup_path);
}

std::vector<AttachedLink> LocalLegShortcut::Links() const { return impl_->links.Describe(); }

int LocalLegShortcut::PruneStaleLinks() {
  return impl_->links.PruneUnclaimed({bpf_program__name(impl_->skeleton->progs.meshtls_local_leg_sockops)});
}

absl::StatusOr<bool> LocalLegShortcut::IsShortcut(int fd) const {
  sockaddr_storage local{}, remote{};
  socklen_t local_len = sizeof(local), remote_len = sizeof(remote);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) return ErrnoStatus(errno, "getsockname");
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_len) != 0) return ErrnoStatus(errno, "getpeername");
  meshtls_leg_key key{};
  socklen_t cookie_len = sizeof(key.netns_cookie);
  if (::getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &key.netns_cookie, &cookie_len) != 0) {
    return ErrnoStatus(errno, "getsockopt(SO_NETNS_COOKIE)");
  }
  key.family = local.ss_family;
  if (local.ss_family == AF_INET) {
    const auto* l = reinterpret_cast<const sockaddr_in*>(&local);
    const auto* r = reinterpret_cast<const sockaddr_in*>(&remote);
    key.local_addr[0] = l->sin_addr.s_addr;
    key.remote_addr[0] = r->sin_addr.s_addr;
    key.local_port = ntohs(l->sin_port);
    key.remote_port = ntohs(r->sin_port);
  } else if (local.ss_family == AF_INET6) {
    const auto* l = reinterpret_cast<const sockaddr_in6*>(&local);
    const auto* r = reinterpret_cast<const sockaddr_in6*>(&remote);
    std::memcpy(key.local_addr, &l->sin6_addr, 16);
    std::memcpy(key.remote_addr, &r->sin6_addr, 16);
    key.local_port = ntohs(l->sin6_port);
    key.remote_port = ntohs(r->sin6_port);
  } else {
    return false;
  }
  uint64_t cookie = 0;  // a sockhash lookup from userspace returns the socket's cookie
  if (bpf_map_lookup_elem(bpf_map__fd(impl_->skeleton->maps.local_legs), &key, &cookie) != 0) {
    if (errno == ENOENT) return false;
    return ErrnoStatus(errno, "lookup local_legs");
  }
  return true;
}

absl::StatusOr<size_t> LocalLegShortcut::LegCount() const {
  const int map_fd = bpf_map__fd(impl_->skeleton->maps.local_legs);
  meshtls_leg_key key{}, next{};
  size_t count = 0;
  const void* previous = nullptr;
  while (bpf_map_get_next_key(map_fd, previous, &next) == 0) {
    ++count;
    key = next;
    previous = &key;
  }
  return count;
}

absl::StatusOr<std::string> OwnCgroupPath() {
  std::string mount_point;
  std::ifstream mounts("/proc/mounts");
  std::string device, path, type, rest;
  while (mounts >> device >> path >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") {
      mount_point = path;
      break;
    }
  }
  if (mount_point.empty()) return absl::NotFoundError("no cgroup2 file system is mounted");
  std::ifstream file("/proc/self/cgroup");
  std::string line;
  while (std::getline(file, line)) {
    // cgroup v2 is the "0::<path>" line (also in a hybrid layout).
    if (line.rfind("0::", 0) != 0) continue;
    const std::string relative = line.substr(3);
    return relative == "/" ? mount_point : mount_point + relative;
  }
  return absl::NotFoundError("no cgroup v2 entry in /proc/self/cgroup");
}

}  // namespace meshtls::datapath
