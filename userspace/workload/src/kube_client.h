#pragma once
// Internal: HTTPS requests to the Kubernetes API server over libcurl.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "meshtls/workload/kubernetes.h"

namespace meshtls::workload::kube {

struct Response {
  long status = 0;   // HTTP status
  std::string body;  // the whole body (for a stream: only when the status is not 200)
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(KubeApiConfig config);

  // GET `path_and_query` (e.g. "/api/v1/pods?limit=500"). A transport failure is an error; an
  // HTTP error status is a Response (the caller decides, e.g. relist on 410).
  absl::StatusOr<Response> Get(const std::string& path_and_query, std::chrono::seconds timeout);

  // GET a watch stream and hand each complete line to `on_line` as it arrives; `on_line` returns
  // false to stop reading. Returns when the server ends the stream, `on_line` stops it, `stop`
  // becomes true (checked about once a second) or the transfer fails (an error).
  absl::StatusOr<Response> Stream(const std::string& path_and_query, std::chrono::seconds timeout,
                                  const std::function<bool(std::string_view line)>& on_line,
                                  const std::atomic<bool>& stop);

  const KubeApiConfig& config() const { return config_; }

 private:
  explicit Client(KubeApiConfig config) : config_(std::move(config)) {}
  absl::StatusOr<std::string> BearerToken() const;
  absl::StatusOr<Response> Perform(const std::string& path_and_query, std::chrono::seconds timeout,
                                   const std::function<bool(std::string_view)>* on_line,
                                   const std::atomic<bool>* stop);

  KubeApiConfig config_;
};

// "a=b&c=d" with each value percent-encoded.
std::string Query(std::initializer_list<std::pair<std::string_view, std::string>> params);

}  // namespace meshtls::workload::kube
