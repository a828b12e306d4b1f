#include "meshtls/workload/pod_locator.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>
#include <vector>

#include "meshtls/common/strings.h"

namespace meshtls::workload {
namespace {

namespace fs = std::filesystem;

std::string Cgroup2Mount() {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, path, type, rest;
  while (mounts >> device >> path >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return path;
  }
  return "";
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Only kubelet's part of the tree is walked: the QoS levels and pod cgroups under it.
bool LeadsToPods(std::string_view name) {
  return Contains(name, "kubepods") || Contains(name, "kubelet") || name == "besteffort" ||
         name == "burstable";
}

std::optional<fs::path> FindPodCgroup(const fs::path& dir, const std::vector<std::string>& markers,
                                      int depth) {
  if (depth > 6) return std::nullopt;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    const std::string name = it->path().filename().string();
    for (const std::string& marker : markers) {
      // "pod<uid>" ends the name (cgroupfs) or is followed by ".slice" (systemd).
      const size_t at = name.find(marker);
      if (at == std::string::npos) continue;
      const std::string_view after = std::string_view(name).substr(at + marker.size());
      if (after.empty() || after == ".slice") return it->path();
    }
    const bool other_pod = name.rfind("pod", 0) == 0 || Contains(name, "-pod");
    if (LeadsToPods(name) && !other_pod) {
      if (auto found = FindPodCgroup(it->path(), markers, depth + 1)) return found;
    }
  }
  return std::nullopt;
}

void CollectPids(const fs::path& dir, int depth, std::vector<int>* pids) {
  std::ifstream procs(dir / "cgroup.procs");
  int pid = 0;
  while (procs >> pid) pids->push_back(pid);
  if (depth >= 3) return;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec)) CollectPids(it->path(), depth + 1, pids);
  }
}

// Field 22 of /proc/PID/stat (clock ticks since boot); the command name before it may hold spaces
// and parentheses, so fields are counted from the last ')'.
std::optional<unsigned long long> StartTime(const std::string& proc_root, int pid) {
  std::ifstream stat_file(StrCat(proc_root, "/", pid, "/stat"));
  std::string text;
  std::getline(stat_file, text);  // one line
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(fields >> field)) return std::nullopt;
  }
  try {
    return std::stoull(field);
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

PodLocator::PodLocator(PodLocatorOptions options) : options_(std::move(options)) {}

absl::StatusOr<PodPlacement> PodLocator::Locate(std::string_view pod_uid) const {
  const std::string root = options_.cgroup_root.empty() ? Cgroup2Mount() : options_.cgroup_root;
  if (root.empty()) return absl::FailedPreconditionError("no cgroup v2 hierarchy is mounted");
  std::string underscored(pod_uid);
  std::replace(underscored.begin(), underscored.end(), '-', '_');
  const std::vector<std::string> markers = {StrCat("pod", pod_uid), StrCat("pod", underscored)};
  std::optional<fs::path> cgroup = FindPodCgroup(root, markers, 0);
  if (!cgroup) return absl::NotFoundError(StrCat("no cgroup for pod ", pod_uid, " under ", root));

  std::vector<int> pids;
  CollectPids(*cgroup, 0, &pids);
  int sandbox = 0;
  unsigned long long earliest = std::numeric_limits<unsigned long long>::max();
  for (int pid : pids) {
    std::optional<unsigned long long> started = StartTime(options_.proc_root, pid);
    if (started && *started < earliest) {
      earliest = *started;
      sandbox = pid;
    }
  }
  if (sandbox == 0) {
    return absl::NotFoundError(StrCat("pod ", pod_uid, " has no running process in ", cgroup->string()));
  }

  PodPlacement placement;
  placement.cgroup_path = cgroup->string();
  placement.sandbox_pid = sandbox;
  placement.sandbox_started = earliest;
  placement.netns_path = StrCat(options_.proc_root, "/", sandbox, "/ns/net");
  struct stat ns {};
  if (::stat(placement.netns_path.c_str(), &ns) != 0) {
    return absl::NotFoundError(StrCat("pod ", pod_uid, ": process ", sandbox, " exited while being placed"));
  }
  std::error_code ec;
  for (fs::directory_iterator it(options_.netns_dir, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat pinned {};
    if (::stat(it->path().c_str(), &pinned) == 0 && pinned.st_dev == ns.st_dev && pinned.st_ino == ns.st_ino) {
      placement.netns_path = it->path().string();
      break;
    }
  }
  return placement;
}

bool PodLocator::StillValid(const PodPlacement& placement) const {
  std::error_code ec;
  if (!fs::is_directory(placement.cgroup_path, ec)) return false;
  struct stat st {};
  if (::stat(placement.netns_path.c_str(), &st) != 0) return false;
  // A /proc path is only as good as its process; a pinned one stands alone.
  if (placement.netns_path.rfind(options_.proc_root + "/", 0) != 0) return true;
  return StartTime(options_.proc_root, placement.sandbox_pid) == placement.sandbox_started;
}

}  // namespace meshtls::workload
