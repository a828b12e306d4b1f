#pragma once

// The status API client behind meshtlsctl: one gRPC channel to the agent's Unix socket, and
// errors turned into sentences an operator can act on.

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "meshtls/v1/status.grpc.pb.h"

namespace meshtls::ctl {

inline constexpr char kDefaultSocketPath[] = "/run/meshtls/status.sock";
inline constexpr char kSocketEnvVar[] = "MESHTLS_STATUS_SOCKET";

struct ClientOptions {
  std::string socket_path = kDefaultSocketPath;
  // Per unary call. The event stream has none: it runs until cancelled.
  std::chrono::milliseconds timeout{std::chrono::seconds(5)};
};

class StatusClient {
 public:
  explicit StatusClient(ClientOptions options);

  absl::StatusOr<v1::GetStatusResponse> GetStatus();
  absl::StatusOr<v1::ListWorkloadsResponse> ListWorkloads();
  absl::StatusOr<v1::ListConnectionsResponse> ListConnections(const v1::ListConnectionsRequest& request);
  absl::StatusOr<v1::ListCertificatesResponse> ListCertificates();
  absl::StatusOr<v1::GetPolicyResponse> GetPolicy(const v1::GetPolicyRequest& request);
  absl::StatusOr<v1::RotateCertificatesResponse> RotateCertificates(const v1::RotateCertificatesRequest& request);
  absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const v1::CheckAccessRequest& request);
  absl::StatusOr<v1::AuditResponse> Audit();

  // Calls on_event for each event until the agent ends the stream or CancelWatch() is called;
  // both are OK. Blocks.
  absl::Status WatchEvents(const v1::WatchEventsRequest& request,
                           const std::function<void(const v1::Event&)>& on_event);
  // Safe from any thread, before or during WatchEvents (e.g. from a SIGINT watcher).
  void CancelWatch();

  const ClientOptions& options() const { return options_; }

 private:
  ClientOptions options_;
  std::unique_ptr<v1::StatusService::Stub> stub_;
  std::mutex mu_;
  grpc::ClientContext* watch_context_ = nullptr;  // guarded by mu_
  bool watch_cancelled_ = false;                  // guarded by mu_
};

// A failed call as the operator should read it, keeping the gRPC code. An unreachable agent is
// told apart by looking at the socket itself (missing, nobody listening, not ours to open);
// anything else is "CODE_NAME: message".
absl::Status DescribeRpcError(const grpc::Status& status, const ClientOptions& options);

}  // namespace meshtls::ctl
