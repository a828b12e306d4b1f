#include <spdlog/spdlog.h>

#include "meshtls/common/strings.h"
#include "meshtls/policy/policy.h"

namespace meshtls::policy {

absl::StatusOr<std::unique_ptr<PolicyStore>> PolicyStore::Create(EventLoop& loop, std::string dir,
                                                                 std::string root_namespace,
                                                                 ReloadCallback on_reload,
                                                                 ReloadFailedCallback on_reload_failed) {
  std::unique_ptr<PolicyStore> store(
      new PolicyStore(std::move(dir), std::move(root_namespace), std::move(on_reload), nullptr));
  store->on_reload_failed_ = std::move(on_reload_failed);
  PolicyStore* raw = store.get();
  // Watch before the first load, so that a change made while loading is not missed.
  auto watcher = FileWatcher::Create(loop, {store->dir_}, kDebounce, [raw] {
    // The error is kept in last_error() and logged; the last good set stays in force.
    (void)raw->Reload();
  });
  if (!watcher.ok()) return watcher.status();
  store->watcher_ = *std::move(watcher);
  auto initial = PolicySet::LoadDirectory(store->dir_, store->root_namespace_);
  if (!initial.ok()) return initial.status();
  for (const std::string& warning : (*initial)->warnings()) spdlog::warn("policy: {}", warning);
  spdlog::info("policy: loaded {} PeerAuthentication and {} AuthorizationPolicy from {}",
               (*initial)->peer_authentication_count(), (*initial)->authorization_policy_count(), store->dir_);
  store->current_ = *std::move(initial);
  return store;
}

PolicyStore::PolicyStore(std::string dir, std::string root_namespace, ReloadCallback on_reload,
                         std::shared_ptr<const PolicySet> initial)
    : dir_(std::move(dir)),
      root_namespace_(std::move(root_namespace)),
      on_reload_(std::move(on_reload)),
      current_(std::move(initial)) {}

PolicyStore::~PolicyStore() = default;

std::shared_ptr<const PolicySet> PolicyStore::Current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

std::optional<std::string> PolicyStore::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

absl::Status PolicyStore::Reload() {
  std::lock_guard reload_lock(reload_mutex_);
  auto loaded = PolicySet::LoadDirectory(dir_, root_namespace_);
  if (!loaded.ok()) {
    spdlog::error("policy: reload of {} failed, keeping the previous policy: {}", dir_, loaded.status().message());
    {
      std::lock_guard lock(mutex_);
      last_error_ = std::string(loaded.status().message());
    }
    if (on_reload_failed_) on_reload_failed_(loaded.status());
    return loaded.status();
  }
  std::shared_ptr<const PolicySet> set = *std::move(loaded);
  for (const std::string& warning : set->warnings()) spdlog::warn("policy: {}", warning);
  spdlog::info("policy: loaded {} PeerAuthentication and {} AuthorizationPolicy from {}",
               set->peer_authentication_count(), set->authorization_policy_count(), dir_);
  {
    std::lock_guard lock(mutex_);
    current_ = set;
    last_error_.reset();
  }
  if (on_reload_) on_reload_(set);
  return absl::OkStatus();
}

}  // namespace meshtls::policy
