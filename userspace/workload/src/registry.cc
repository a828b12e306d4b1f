#include "meshtls/workload/registry.h"

#include <algorithm>
#include <tuple>

#include "meshtls/common/strings.h"

namespace meshtls::workload {

absl::StatusOr<WorkloadSnapshot> WorkloadSnapshot::Create(std::vector<Workload> workloads) {
  std::sort(workloads.begin(), workloads.end(), [](const Workload& a, const Workload& b) {
    return std::tie(a.namespace_name, a.name) < std::tie(b.namespace_name, b.name);
  });
  WorkloadSnapshot snapshot;
  for (size_t i = 0; i < workloads.size(); ++i) {
    if (i > 0 && workloads[i].namespace_name == workloads[i - 1].namespace_name &&
        workloads[i].name == workloads[i - 1].name) {
      return absl::InvalidArgumentError(StrCat("workload ", workloads[i].uid(), " appears twice"));
    }
    for (const IpAddress& ip : workloads[i].ips) {
      auto [existing, inserted] = snapshot.by_ip_.emplace(ip, i);
      if (!inserted && existing->second != i) {
        return absl::InvalidArgumentError(StrCat("IP ", ip.ToString(), " is claimed by both ",
                                                 workloads[existing->second].uid(), " and ",
                                                 workloads[i].uid()));
      }
    }
  }
  snapshot.workloads_ = std::move(workloads);
  return snapshot;
}

const Workload* WorkloadSnapshot::FindByIp(const IpAddress& ip) const {
  auto it = by_ip_.find(ip);
  return it == by_ip_.end() ? nullptr : &workloads_[it->second];
}

const Workload* WorkloadSnapshot::Find(std::string_view uid) const {
  // Sorted by (namespace, name), so a binary search needs no second index and no string copies.
  const size_t slash = uid.find('/');
  if (slash == std::string_view::npos) return nullptr;
  const std::string_view ns = uid.substr(0, slash);
  const std::string_view name = uid.substr(slash + 1);
  auto less = [](const Workload& w, std::pair<std::string_view, std::string_view> key) {
    if (w.namespace_name != key.first) return std::string_view(w.namespace_name) < key.first;
    return std::string_view(w.name) < key.second;
  };
  auto it = std::lower_bound(workloads_.begin(), workloads_.end(), std::make_pair(ns, name), less);
  if (it == workloads_.end() || it->namespace_name != ns || it->name != name) return nullptr;
  return &*it;
}

std::vector<const Workload*> WorkloadSnapshot::OnNode(std::string_view node) const {
  std::vector<const Workload*> out;
  for (const Workload& w : workloads_) {
    if (!node.empty() && w.node == node) out.push_back(&w);
  }
  return out;
}

WorkloadDiff Diff(const WorkloadSnapshot& before, const WorkloadSnapshot& after) {
  WorkloadDiff diff;
  for (const Workload& old_workload : before.all()) {
    const Workload* now = after.Find(old_workload.uid());
    if (now == nullptr) {
      diff.removed.push_back(old_workload);
    } else if (!(*now == old_workload)) {
      diff.changed.emplace_back(old_workload, *now);
    }
  }
  for (const Workload& new_workload : after.all()) {
    if (before.Find(new_workload.uid()) == nullptr) diff.added.push_back(new_workload);
  }
  return diff;
}

WorkloadRegistry::WorkloadRegistry(std::unique_ptr<WorkloadSource> source,
                                   std::shared_ptr<const WorkloadSnapshot> first)
    : source_(std::move(source)), current_(std::move(first)) {}

absl::StatusOr<std::unique_ptr<WorkloadRegistry>> WorkloadRegistry::Create(
    std::unique_ptr<WorkloadSource> source) {
  if (source == nullptr)
    return absl::InvalidArgumentError("WorkloadRegistry needs a workload source");
  absl::StatusOr<std::vector<Workload>> loaded = source->Load();
  if (!loaded.ok()) return loaded.status();
  absl::StatusOr<WorkloadSnapshot> snapshot = WorkloadSnapshot::Create(*std::move(loaded));
  if (!snapshot.ok()) {
    return absl::InvalidArgumentError(
        StrCat(source->Describe(), ": ", snapshot.status().message()));
  }
  return std::unique_ptr<WorkloadRegistry>(new WorkloadRegistry(
      std::move(source), std::make_shared<const WorkloadSnapshot>(*std::move(snapshot))));
}

std::shared_ptr<const WorkloadSnapshot> WorkloadRegistry::Current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

std::optional<std::string> WorkloadRegistry::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

absl::StatusOr<WorkloadDiff> WorkloadRegistry::Reload() {
  std::lock_guard reload_lock(reload_mutex_);
  absl::StatusOr<std::vector<Workload>> loaded = source_->Load();
  absl::StatusOr<WorkloadSnapshot> snapshot =
      loaded.ok() ? WorkloadSnapshot::Create(*std::move(loaded))
                  : absl::StatusOr<WorkloadSnapshot>(loaded.status());
  if (!snapshot.ok()) {
    absl::Status error = snapshot.status();
    if (loaded.ok()) {
      // Only the snapshot's own checks can fail here; their messages do not say where from.
      error = absl::InvalidArgumentError(StrCat(source_->Describe(), ": ", error.message()));
    }
    std::lock_guard lock(mutex_);
    last_error_ = std::string(error.message());
    return error;
  }
  auto next = std::make_shared<const WorkloadSnapshot>(*std::move(snapshot));
  // Only Reload() replaces current_ and it holds reload_mutex_, so this is the base the new
  // snapshot replaces.
  WorkloadDiff diff = Diff(*Current(), *next);
  {
    std::lock_guard lock(mutex_);
    current_ = std::move(next);
    last_error_.reset();
  }
  return diff;
}

absl::StatusOr<std::unique_ptr<FileWatcher>> WatchWorkloadFile(EventLoop& loop,
                                                               WorkloadRegistry& registry,
                                                               const std::string& path,
                                                               ReloadCallback on_reload,
                                                               std::chrono::milliseconds debounce) {
  return FileWatcher::Create(loop, {path}, debounce, [&registry, on_reload = std::move(on_reload)] {
    absl::StatusOr<WorkloadDiff> result = registry.Reload();
    if (on_reload) on_reload(result);
  });
}

}  // namespace meshtls::workload
