#include "kube_reflector.h"

#include <spdlog/spdlog.h>

#include <random>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"

namespace meshtls::workload::kube {
namespace {

std::string ResourceVersionOf(const nlohmann::json& object) {
  const auto metadata = object.find("metadata");
  if (metadata == object.end() || !metadata->is_object()) return "";
  return metadata->value("resourceVersion", "");
}

std::string UidOf(const nlohmann::json& object) {
  const auto metadata = object.find("metadata");
  if (metadata == object.end() || !metadata->is_object()) return "";
  return metadata->value("uid", "");
}

std::string StatusMessage(const Response& response) {
  const nlohmann::json status = nlohmann::json::parse(response.body, nullptr, false);
  if (status.is_object() && status.contains("message") && status["message"].is_string()) {
    return StrCat("HTTP ", response.status, ": ", status["message"].get<std::string>());
  }
  return StrCat("HTTP ", response.status);
}

}  // namespace

Reflector::Reflector(Client& client, ReflectorOptions options, std::function<void()> on_change)
    : client_(client), options_(std::move(options)), on_change_(std::move(on_change)) {
  stats_.resource = options_.name;
}

Reflector::~Reflector() { Stop(); }

void Reflector::Start() { thread_ = std::thread([this] { Run(); }); }

void Reflector::Stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::vector<nlohmann::json> Reflector::Items() const {
  std::lock_guard lock(mutex_);
  std::vector<nlohmann::json> out;
  out.reserve(items_.size());
  for (const auto& [uid, item] : items_) out.push_back(item);
  return out;
}

KubeWatchStats Reflector::Stats() const {
  std::lock_guard lock(mutex_);
  KubeWatchStats stats = stats_;
  stats.synced = synced_.load();
  return stats;
}

bool Reflector::Sleep(std::chrono::milliseconds duration) {
  std::unique_lock lock(mutex_);
  wake_.wait_for(lock, duration, [this] { return stop_.load(); });
  return !stop_.load();
}

std::chrono::milliseconds Reflector::NextBackoff() {
  backoff_ = backoff_.count() == 0 ? options_.backoff_initial : std::min(backoff_ * 2, options_.backoff_max);
  // ±20 % jitter, so the agents of a whole cluster do not reconnect in step after an outage.
  thread_local std::mt19937 random{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  return std::chrono::milliseconds(static_cast<long long>(static_cast<double>(backoff_.count()) * jitter(random)));
}

void Reflector::Fail(std::string error) {
  spdlog::warn("kubernetes {}: {}", options_.name, error);
  std::lock_guard lock(mutex_);
  stats_.errors++;
  stats_.last_error = std::move(error);
}

void Reflector::Changed() {
  if (on_change_) on_change_();
}

void Reflector::Run() {
  bool need_list = true;
  while (!stop_) {
    if (need_list) {
      if (absl::Status listed = List(); !listed.ok()) {
        if (stop_) break;
        Fail(StrCat("list failed: ", listed.message()));
        if (!Sleep(NextBackoff())) break;
        continue;
      }
      need_list = false;
      backoff_ = std::chrono::milliseconds(0);
      Changed();
    }
    switch (Watch()) {
      case WatchEnd::kResume:
        break;
      case WatchEnd::kRelist:
        need_list = true;
        break;
      case WatchEnd::kFailed:
        if (!Sleep(NextBackoff())) return;
        break;
      case WatchEnd::kStopped:
        return;
    }
  }
}

absl::Status Reflector::List() {
  std::map<std::string, nlohmann::json> items;
  std::string continue_token, resource_version;
  do {
    std::string query = Query({{"limit", std::to_string(options_.page_size)}});
    if (!options_.field_selector.empty()) query += "&" + Query({{"fieldSelector", options_.field_selector}});
    if (!continue_token.empty()) query += "&" + Query({{"continue", continue_token}});
    ASSIGN_OR_RETURN(Response response, client_.Get(StrCat(options_.path, "?", query), std::chrono::seconds(60)));
    if (response.status != 200) {
      // A continue token can expire (410) between pages: the next attempt starts over.
      return absl::UnavailableError(StatusMessage(response));
    }
    const nlohmann::json list = nlohmann::json::parse(response.body, nullptr, false);
    if (!list.is_object() || !list.contains("items")) {
      return absl::DataLossError("the API server's list answer is not a Kubernetes list");
    }
    if (list["items"].is_array()) {
      for (const nlohmann::json& item : list["items"]) {
        const std::string uid = UidOf(item);
        if (!uid.empty()) items[uid] = options_.trim ? options_.trim(item) : item;
      }
    }
    const nlohmann::json& metadata = list.value("metadata", nlohmann::json::object());
    resource_version = metadata.value("resourceVersion", "");
    continue_token = metadata.value("continue", "");
  } while (!continue_token.empty() && !stop_);
  std::lock_guard lock(mutex_);
  items_ = std::move(items);
  stats_.resource_version = resource_version;
  stats_.lists++;
  synced_ = true;
  return absl::OkStatus();
}

Reflector::WatchEnd Reflector::Watch() {
  std::string resource_version;
  {
    std::lock_guard lock(mutex_);
    resource_version = stats_.resource_version;
    stats_.watches++;
  }
  std::string query = Query({{"watch", "1"},
                             {"allowWatchBookmarks", "true"},
                             {"resourceVersion", resource_version},
                             {"timeoutSeconds", std::to_string(options_.watch_timeout.count())}});
  if (!options_.field_selector.empty()) query += "&" + Query({{"fieldSelector", options_.field_selector}});

  bool expired = false;
  bool got_events = false;
  std::string broken;
  auto on_line = [&](std::string_view line) {
    const nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
    if (!event.is_object() || !event.contains("type") || !event.contains("object") || !event["type"].is_string()) {
      broken = StrCat("unreadable watch event: ", line.substr(0, 200));
      return false;
    }
    const std::string type = event["type"].get<std::string>();
    const nlohmann::json& object = event["object"];
    if (type == "ERROR") {
      if (object.value("code", 0) == 410) {
        expired = true;
      } else {
        broken = StrCat("watch error: ", object.value("message", std::string("(no message)")));
      }
      return false;
    }
    const std::string version = ResourceVersionOf(object);
    bool changed = false;
    {
      std::lock_guard lock(mutex_);
      if (!version.empty()) stats_.resource_version = version;
      if (type == "BOOKMARK") {
        stats_.bookmarks++;
      } else if (type == "ADDED" || type == "MODIFIED" || type == "DELETED") {
        stats_.events++;
        const std::string uid = UidOf(object);
        if (type == "DELETED") {
          changed = items_.erase(uid) > 0;
        } else if (!uid.empty()) {
          items_[uid] = options_.trim ? options_.trim(object) : object;
          changed = true;
        }
      }
    }
    got_events = true;
    if (changed) Changed();
    return true;
  };
  // The server ends the watch after timeoutSeconds; the client's own deadline is only for a
  // connection that died without a FIN (TCP keepalive usually notices first).
  const auto deadline = options_.watch_timeout + std::chrono::seconds(30);
  absl::StatusOr<Response> response = client_.Stream(StrCat(options_.path, "?", query), deadline, on_line, stop_);
  if (stop_) return WatchEnd::kStopped;
  if (got_events) backoff_ = std::chrono::milliseconds(0);
  if (expired || (response.ok() && response->status == 410)) {
    std::lock_guard lock(mutex_);
    stats_.expired++;
    spdlog::info("kubernetes {}: resourceVersion {} expired (410 Gone), listing again", options_.name,
                 stats_.resource_version);
    return WatchEnd::kRelist;
  }
  if (!broken.empty()) {
    Fail(broken);
    return WatchEnd::kFailed;
  }
  if (!response.ok()) {
    if (absl::IsDeadlineExceeded(response.status())) return WatchEnd::kResume;
    Fail(StrCat("watch interrupted: ", response.status().message()));
    return WatchEnd::kFailed;
  }
  if (response->status != 200) {
    Fail(StrCat("watch refused: ", StatusMessage(*response)));
    return WatchEnd::kFailed;
  }
  backoff_ = std::chrono::milliseconds(0);
  return WatchEnd::kResume;  // the server's timeout: resume from the last version seen
}

}  // namespace meshtls::workload::kube
