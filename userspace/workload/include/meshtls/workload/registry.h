#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/file_watcher.h"
#include "meshtls/common/ip_address.h"
#include "meshtls/workload/workload.h"

namespace meshtls::workload {

// An immutable set of workloads with its lookup indexes. Shared across threads through
// shared_ptr<const WorkloadSnapshot>: readers never lock and never see a half-applied reload.
class WorkloadSnapshot {
 public:
  WorkloadSnapshot() = default;  // empty
  // Fails if two workloads share a uid or an IP, since lookups by either must be unambiguous.
  // Workloads are kept sorted by namespace, then name.
  static absl::StatusOr<WorkloadSnapshot> Create(std::vector<Workload> workloads);

  const Workload* FindByIp(const IpAddress& ip) const;
  const Workload* Find(std::string_view uid) const;
  std::vector<const Workload*> OnNode(std::string_view node) const;
  const std::vector<Workload>& all() const { return workloads_; }
  size_t size() const { return workloads_.size(); }

 private:
  std::vector<Workload> workloads_;
  absl::flat_hash_map<IpAddress, size_t> by_ip_;
};

struct WorkloadDiff {
  std::vector<Workload> added;
  std::vector<Workload> removed;
  std::vector<std::pair<Workload, Workload>> changed;  // {before, after}
  bool empty() const { return added.empty() && removed.empty() && changed.empty(); }
};

// Matches workloads by uid; each list is in (namespace, name) order.
WorkloadDiff Diff(const WorkloadSnapshot& before, const WorkloadSnapshot& after);

// Holds the current snapshot of one source. A failed reload keeps the last good snapshot, so a
// bad edit never unmeshes running pods; the error stays visible in last_error() until a reload
// succeeds.
class WorkloadRegistry {
 public:
  // The initial load must succeed: an agent with no idea of its pods must not start.
  static absl::StatusOr<std::unique_ptr<WorkloadRegistry>> Create(
      std::unique_ptr<WorkloadSource> source);

  // Thread-safe; the snapshot stays valid for as long as the caller holds it.
  std::shared_ptr<const WorkloadSnapshot> Current() const;
  // Loads the source and swaps the snapshot in. Reloads are serialized; safe from any thread.
  absl::StatusOr<WorkloadDiff> Reload();
  std::optional<std::string> last_error() const;
  const WorkloadSource& source() const { return *source_; }

 private:
  WorkloadRegistry(std::unique_ptr<WorkloadSource> source,
                   std::shared_ptr<const WorkloadSnapshot> first);

  std::unique_ptr<WorkloadSource> source_;
  std::mutex
      reload_mutex_;  // held for a whole Reload(), so diffs are computed against the right base
  mutable std::mutex mutex_;  // guards current_ and last_error_; never held while loading
  std::shared_ptr<const WorkloadSnapshot> current_;
  std::optional<std::string> last_error_;
};

// Reloads `registry` on `loop` whenever the file at `path` changes (in-place writes, renames and
// ConfigMap symlink swaps alike), then calls `on_reload` with the diff or the error. The registry
// and the loop must outlive the returned watcher; destroying it stops the watching.
using ReloadCallback = std::function<void(const absl::StatusOr<WorkloadDiff>&)>;
absl::StatusOr<std::unique_ptr<FileWatcher>> WatchWorkloadFile(
    EventLoop& loop, WorkloadRegistry& registry, const std::string& path, ReloadCallback on_reload,
    std::chrono::milliseconds debounce = std::chrono::milliseconds(100));

}  // namespace meshtls::workload
