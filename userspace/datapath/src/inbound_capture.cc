#include "meshtls/datapath/inbound_capture.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>

#include <cerrno>
#include <thread>
#include <vector>

#include "meshtls/bpf/sk_lookup.skel.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/datapath/bpf_skeleton.h"

namespace meshtls::datapath {

MESHTLS_BPF_SKELETON(sk_lookup);

struct InboundCapture::Impl {
  explicit Impl(BpfSkeleton<sk_lookup> s) : skeleton(std::move(s)) {}
  ~Impl() {
    for (bpf_link* link : links) bpf_link__destroy(link);
  }
  BpfSkeleton<sk_lookup> skeleton;
  std::vector<bpf_link*> links;
};

absl::StatusOr<std::unique_ptr<InboundCapture>> InboundCapture::Create(const SteeringConfig& config) {
  ASSIGN_OR_RETURN(BpfSkeleton<sk_lookup> skeleton, BpfSkeleton<sk_lookup>::Open());
  SetAgentPorts(skeleton, config);
  RETURN_IF_ERROR(skeleton.Load());
  std::unique_ptr<InboundCapture> capture(new InboundCapture());
  capture->impl_ = std::make_unique<Impl>(std::move(skeleton));
  return capture;
}

InboundCapture::~InboundCapture() = default;

absl::Status InboundCapture::AttachToNetns(const std::string& netns_path) {
  UniqueFd netns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns) return ErrnoStatus(errno, StrCat("open netns ", netns_path));
  bpf_link* link = bpf_program__attach_netns(impl_->skeleton->progs.meshtls_inbound, netns.get());
  if (link == nullptr) return ErrnoStatus(errno, StrCat("attach sk_lookup to ", netns_path));
  impl_->links.push_back(link);
  return absl::OkStatus();
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
  UniqueFd netns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netns) return ErrnoStatus(errno, StrCat("open netns ", netns_path));
  absl::StatusOr<UniqueFd> result = absl::InternalError("not run");
  std::thread worker([&] {
    if (::setns(netns.get(), CLONE_NEWNET) != 0) {
      result = ErrnoStatus(errno, StrCat("setns ", netns_path));
      return;
    }
    UniqueFd fd(::socket(domain, type | SOCK_CLOEXEC, 0));
    if (!fd) {
      result = ErrnoStatus(errno, "socket");
      return;
    }
    result = std::move(fd);
  });
  worker.join();
  return result;
}

}  // namespace meshtls::datapath
