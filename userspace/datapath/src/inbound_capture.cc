#include "meshtls/datapath/inbound_capture.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "meshtls/bpf/sk_lookup.skel.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/datapath/bpf_skeleton.h"
#include "link_pins.h"
#include "spdlog/spdlog.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(sk_lookup);

struct InboundCapture::Impl {
  Impl(BpfSkeleton<sk_lookup> s, const std::string& pin_dir)
      : skeleton(std::move(s)), links(pin_dir), pinned(!pin_dir.empty()) {}
  BpfSkeleton<sk_lookup> skeleton;
  LinkPins links;  // declared after the skeleton: links go first
  bool pinned;
};

absl::StatusOr<std::unique_ptr<InboundCapture>> InboundCapture::Create(const SteeringConfig& config) {
  if (!config.pin_dir.empty()) {
    RETURN_IF_ERROR(EnsureBpffs(std::filesystem::path(config.pin_dir).parent_path().string()));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/maps"));
    RETURN_IF_ERROR(MakeDirs(config.pin_dir + "/links"));
  }
  auto open_and_load = [&]() -> absl::StatusOr<BpfSkeleton<sk_lookup>> {
    ASSIGN_OR_RETURN(BpfSkeleton<sk_lookup> skeleton, BpfSkeleton<sk_lookup>::Open());
    SetAgentPorts(skeleton, config);
    if (!config.pin_dir.empty()) {
      // Pod modes survive a restart; the listener sockets of a dead agent leave the sockhash
      // by themselves, so STRICT pods are refused until the new agent's listeners are in.
      const std::string path = StrCat(config.pin_dir, "/maps/inbound_pods");
      if (bpf_map__set_pin_path(skeleton->maps.inbound_pods, path.c_str()) != 0) {
        return ErrnoStatus(errno, "set pin path");
      }
    }
    RETURN_IF_ERROR(skeleton.Load());
    return skeleton;
  };
  absl::StatusOr<BpfSkeleton<sk_lookup>> skeleton = open_and_load();
  if (!skeleton.ok() && !config.pin_dir.empty()) {
    spdlog::warn("BPF load with the pinned inbound_pods map failed ({}); replacing it", skeleton.status().message());
    ::unlink(StrCat(config.pin_dir, "/maps/inbound_pods").c_str());
    skeleton = open_and_load();
  }
  if (!skeleton.ok()) return skeleton.status();
  std::unique_ptr<InboundCapture> capture(new InboundCapture());
  capture->impl_ = std::make_unique<Impl>(*std::move(skeleton), config.pin_dir);
  return capture;
}

InboundCapture::~InboundCapture() {
  if (!impl_) return;
  impl_->links.set_leave_attached(leave_attached_);
  if (!leave_attached_ && impl_->pinned) bpf_map__unpin(impl_->skeleton->maps.inbound_pods, nullptr);
}

absl::Status InboundCapture::AttachToNetns(const std::string& netns_path) {
  UniqueFd netns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns) return ErrnoStatus(errno, StrCat("open netns ", netns_path));
  struct stat st {};
  if (::fstat(netns.get(), &st) != 0) return ErrnoStatus(errno, StrCat("stat netns ", netns_path));
  bpf_program* program = impl_->skeleton->progs.meshtls_inbound;
  return impl_->links.AttachOrAdopt(program, StrCat("netns-", st.st_ino, "-", bpf_program__name(program)),
                                    [&] { return bpf_program__attach_netns(program, netns.get()); },
                                    netns_path);
}

std::vector<AttachedLink> InboundCapture::Links() const { return impl_->links.Describe(); }

int InboundCapture::PruneStaleLinks() {
  return impl_->links.PruneUnclaimed({bpf_program__name(impl_->skeleton->progs.meshtls_inbound)});
}

absl::Status InboundCapture::SetPod(in_addr pod_ip, const meshtls_workload& workload) {
  const meshtls_endpoint4 key{pod_ip.s_addr};
  bpf_map* map = impl_->skeleton->maps.inbound_pods;
  if (bpf_map__update_elem(map, &key, sizeof(key), &workload, sizeof(workload), BPF_ANY) != 0) {
    return ErrnoStatus(errno, "update inbound_pods");
  }
  return absl::OkStatus();
}

absl::Status InboundCapture::RemovePod(in_addr pod_ip) {
  const meshtls_endpoint4 key{pod_ip.s_addr};
  bpf_map__delete_elem(impl_->skeleton->maps.inbound_pods, &key, sizeof(key), 0);
  bpf_map__delete_elem(impl_->skeleton->maps.capture_listeners, &key, sizeof(key), 0);
  return absl::OkStatus();
}

absl::Status InboundCapture::SetCaptureListener(in_addr pod_ip, int listener_fd) {
  const meshtls_endpoint4 key{pod_ip.s_addr};
  const uint64_t fd = static_cast<uint64_t>(listener_fd);
  bpf_map* map = impl_->skeleton->maps.capture_listeners;
  if (bpf_map__update_elem(map, &key, sizeof(key), &fd, sizeof(fd), BPF_ANY) != 0) {
    return ErrnoStatus(errno, "update capture_listeners (the socket must be a listening TCP socket)");
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> SocketInNetns(const std::string& netns_path, int domain, int type) {
  // The calling thread enters the pod's netns for the socket() call and returns at once. A helper
  // thread per socket (the earlier way) cost a thread start and a join on every connection, which
  // on a busy node meant waiting for a core: milliseconds per new connection.
  thread_local UniqueFd home(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!home) return ErrnoStatus(errno, "open /proc/thread-self/ns/net");
  UniqueFd netns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns) return ErrnoStatus(errno, StrCat("open netns ", netns_path));
  if (::setns(netns.get(), CLONE_NEWNET) != 0) return ErrnoStatus(errno, StrCat("setns ", netns_path));
  UniqueFd fd(::socket(domain, type | SOCK_CLOEXEC, 0));
  const int socket_errno = errno;
  if (::setns(home.get(), CLONE_NEWNET) != 0) {
    // Every later socket of this thread would be opened in the pod's namespace: never go on.
    const int saved = errno;
    std::fprintf(stderr, "meshtls: cannot return to the agent's network namespace after %s: %s\n",
                 netns_path.c_str(), std::strerror(saved));
    std::abort();
  }
  if (!fd) return ErrnoStatus(socket_errno, "socket");
  return fd;
}

}  // namespace meshtls::datapath
