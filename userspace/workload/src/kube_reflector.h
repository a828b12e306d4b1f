#pragma once
// Internal: list + watch of one Kubernetes resource, kept as an in-memory cache. Written here
// rather than taken from a library because Debian ships no C++ Kubernetes client; it follows
// client-go's reflector: list (paginated), then watch from the list's resourceVersion with
// bookmarks, resume from the last seen version after a timeout or a dropped connection (with
// backoff), relist on 410 Gone.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "kube_client.h"
#include "meshtls/workload/kubernetes.h"

namespace meshtls::workload::kube {

struct ReflectorOptions {
  std::string name;            // for logs and stats
  std::string path;            // e.g. /api/v1/pods
  std::string field_selector;  // empty: none
  std::chrono::seconds watch_timeout{300};
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  uint32_t page_size = 500;
  // Keeps only what the consumer needs of each object (full pods are mostly managedFields).
  std::function<nlohmann::json(const nlohmann::json&)> trim;
};

class Reflector {
 public:
  Reflector(Client& client, ReflectorOptions options, std::function<void()> on_change);
  ~Reflector();
  void Start();
  void Stop();

  bool synced() const { return synced_.load(); }
  std::vector<nlohmann::json> Items() const;
  KubeWatchStats Stats() const;

 private:
  enum class WatchEnd { kResume, kRelist, kFailed, kStopped };
  void Run();
  absl::Status List();
  WatchEnd Watch();
  bool Sleep(std::chrono::milliseconds duration);  // false when stopping
  std::chrono::milliseconds NextBackoff();
  void Fail(std::string error);
  void Changed();

  Client& client_;
  ReflectorOptions options_;
  std::function<void()> on_change_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> synced_{false};
  std::chrono::milliseconds backoff_{0};

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::string, nlohmann::json> items_;  // by metadata.uid
  KubeWatchStats stats_;
  std::thread thread_;
};

}  // namespace meshtls::workload::kube
