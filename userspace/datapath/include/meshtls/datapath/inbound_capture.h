#pragma once

#include <netinet/in.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/datapath/cgroup_steering.h"
#include "meshtls_maps.h"

namespace meshtls::datapath {

// The sk_lookup program (inbound capture), attached to each meshed pod's network namespace.
class InboundCapture {
 public:
  static absl::StatusOr<std::unique_ptr<InboundCapture>> Create(const SteeringConfig& config);
  ~InboundCapture();

  // Attaches to the network namespace at `netns_path` (/proc/PID/ns/net or /run/netns/NAME).
  // With a pin_dir, the link is pinned and a restarted agent adopts it (never a second one).
  absl::Status AttachToNetns(const std::string& netns_path);
  // After AttachToNetns() for every wanted netns: detaches links pinned for other namespaces.
  int PruneStaleLinks();
  std::vector<AttachedLink> Links() const;
  // Keep the sk_lookup links and pod modes after this object is gone (an agent restart).
  void LeaveAttachedOnExit() { leave_attached_ = true; }
  absl::Status SetPod(in_addr pod_ip, const meshtls_workload& workload);
  absl::Status RemovePod(in_addr pod_ip);
  // The agent's capture listener (15006) inside the pod's netns.
  absl::Status SetCaptureListener(in_addr pod_ip, int listener_fd);

 private:
  InboundCapture() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool leave_attached_ = false;
};

// A socket created inside another network namespace (setns on a short-lived thread, so no
// thread of the agent ever changes namespace); usable from any thread afterwards.
absl::StatusOr<UniqueFd> SocketInNetns(const std::string& netns_path, int domain, int type);

}  // namespace meshtls::datapath
