#pragma once

#include <bpf/libbpf.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace meshtls::datapath {

// Runs `fn` while capturing libbpf's messages (the verifier log among them), so that a failed
// load can be reported with the reason the kernel gave.
std::string CaptureLibbpfLog(const std::function<int()>& fn, int* result);

// Binds a bpftool skeleton type to its generated functions:
//   MESHTLS_BPF_SKELETON(cgroup_sock_addr);
template <typename T>
struct SkeletonTraits;

#define MESHTLS_BPF_SKELETON(name)                                                        \
  template <>                                                                             \
  struct SkeletonTraits<name> {                                                           \
    static name* Open(const bpf_object_open_opts* opts) { return name##__open_opts(opts); } \
    static int Load(name* skeleton) { return name##__load(skeleton); }                    \
    static void Destroy(name* skeleton) { name##__destroy(skeleton); }                    \
    static constexpr const char* kName = #name;                                           \
  }

// RAII over a skeleton, in the order open -> configure rodata (through operator->) -> load.
template <typename T>
class BpfSkeleton {
 public:
  static absl::StatusOr<BpfSkeleton> Open() {
    int error = 0;
    T* raw = nullptr;
    std::string log = CaptureLibbpfLog(
        [&] {
          raw = SkeletonTraits<T>::Open(nullptr);
          return raw ? 0 : -errno;
        },
        &error);
    if (raw == nullptr) {
      return absl::InternalError(std::string("BPF open ") + SkeletonTraits<T>::kName + ": " + log);
    }
    return BpfSkeleton(raw);
  }

  absl::Status Load() {
    int error = 0;
    std::string log = CaptureLibbpfLog([&] { return SkeletonTraits<T>::Load(skeleton_.get()); }, &error);
    if (error != 0) {
      return absl::FailedPreconditionError(std::string("BPF load ") + SkeletonTraits<T>::kName +
                                           " was refused by the kernel: " + log);
    }
    return absl::OkStatus();
  }

  T* operator->() const { return skeleton_.get(); }
  T* get() const { return skeleton_.get(); }

 private:
  explicit BpfSkeleton(T* raw) : skeleton_(raw, &SkeletonTraits<T>::Destroy) {}
  std::unique_ptr<T, void (*)(T*)> skeleton_;
};

// Writes the agent's ports into a skeleton's read-only data (bpf/shared/agent_ports.bpf.h).
template <typename Skeleton, typename Config>
void SetAgentPorts(Skeleton& skeleton, const Config& config) {
  skeleton->rodata->outbound_port = config.outbound_port;
  skeleton->rodata->inbound_capture_port = config.inbound_capture_port;
  skeleton->rodata->tunnel_port = config.tunnel_port;
}

}  // namespace meshtls::datapath
