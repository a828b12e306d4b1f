#pragma once

#include <bpf/libbpf.h>

#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/datapath/cgroup_steering.h"

namespace meshtls::datapath {

// The links of one BPF object, pinned under <pin_dir>/links so that they outlive the agent.
// Reconciling on start-up: a pinned link for the same hook is adopted and switched to the new
// program (never a second attachment); pins this run does not claim can be pruned.
class LinkPins {
 public:
  explicit LinkPins(std::string pin_dir) : pin_dir_(std::move(pin_dir)) {}
  ~LinkPins();
  LinkPins(const LinkPins&) = delete;
  LinkPins& operator=(const LinkPins&) = delete;

  // `pin_name` names the hook and program (e.g. "cgroup-1234-meshtls_connect4"). `attach`
  // attaches a fresh link (nullptr + errno on failure).
  absl::Status AttachOrAdopt(bpf_program* program, const std::string& pin_name,
                             const std::function<bpf_link*()>& attach, const std::string& what);
  // Detaches and unpins links pinned earlier for any of `program_names` but not claimed by
  // AttachOrAdopt in this run (their cgroup or netns left the mesh). Returns how many.
  int PruneUnclaimed(const std::vector<std::string>& program_names);
  // Detaches everything this object attached, or leaves it attached and pinned.
  void set_leave_attached(bool leave) { leave_attached_ = leave; }
  size_t size() const { return links_.size(); }
  std::vector<AttachedLink> Describe() const;

 private:
  std::string pin_dir_;
  struct Entry {
    bpf_link* link;
    std::string pin;   // "" if unpinned
    std::string what;  // the cgroup or netns it is attached to
    std::string program;  // the full name (the kernel keeps 15 characters)
  };
  std::vector<Entry> links_;
  std::set<std::string> claimed_;
  bool leave_attached_ = false;
};

// Creates <dir> and its parents.
absl::Status MakeDirs(const std::string& path);

}  // namespace meshtls::datapath
