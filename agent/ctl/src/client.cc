#include "meshtls/ctl/client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/ctl/humanize.h"

namespace meshtls::ctl {
namespace {

constexpr char kHint[] = "(is meshtls-agent running? --socket to choose another)";

// gRPC reports every failure to connect as UNAVAILABLE with a transport-specific message; a
// connect() of our own says which one it was.
absl::Status ProbeSocket(const std::string& path) {
  const auto unreachable = [&](std::string_view why) {
    return absl::UnavailableError(StrCat("cannot reach the agent at ", path, ": ", why, " ", kHint));
  };
  const auto denied = [&] { return absl::PermissionDeniedError(StrCat("permission denied on ", path, ": run as root")); };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == EACCES) return denied();
    return unreachable("no socket there");
  }
  if (!S_ISSOCK(st.st_mode)) return unreachable("not a socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        StrCat("socket path ", path, " is too long (", sizeof(addr.sun_path) - 1, " bytes at most)"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  // Non-blocking: a connect to a listener whose backlog is full would otherwise hang here.
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return absl::OkStatus();  // cannot tell; let the gRPC error speak
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    if (err == EACCES || err == EPERM) return denied();
    if (err == ECONNREFUSED) return unreachable("nobody listens on the socket");
    if (err == ENOENT) return unreachable("no socket there");
  }
  return absl::OkStatus();
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

absl::Status DescribeRpcError(const grpc::Status& status, const ClientOptions& options) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  // A deadline can also run out while gRPC is still retrying a connect that cannot succeed.
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    if (absl::Status probe = ProbeSocket(options.socket_path); !probe.ok()) return probe;
  }
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::Status(code, StrCat(CodeName(status.error_code()), ": the agent at ", options.socket_path,
                                     " did not answer within ", HumanDuration(std::chrono::duration_cast<std::chrono::seconds>(options.timeout)),
                                     " (--timeout to wait longer)"));
  }
  return absl::Status(code, StrCat(CodeName(status.error_code()), ": ", status.error_message()));
}

StatusClient::StatusClient(ClientOptions options)
    : options_(std::move(options)),
      stub_(v1::StatusService::NewStub(
          grpc::CreateChannel(StrCat("unix:", options_.socket_path), grpc::InsecureChannelCredentials()))) {}

namespace {

template <typename Response, typename Request, typename Call>
absl::StatusOr<Response> Unary(const ClientOptions& options, const Request& request, Call call) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + options.timeout);
  Response response;
  grpc::Status status = call(&context, request, &response);
  if (!status.ok()) return DescribeRpcError(status, options);
  return response;
}

}  // namespace

absl::StatusOr<v1::GetStatusResponse> StatusClient::GetStatus() {
  return Unary<v1::GetStatusResponse>(options_, v1::GetStatusRequest(), [&](auto* c, const auto& q, auto* r) {
    return stub_->GetStatus(c, q, r);
  });
}

absl::StatusOr<v1::ListWorkloadsResponse> StatusClient::ListWorkloads() {
  return Unary<v1::ListWorkloadsResponse>(options_, v1::ListWorkloadsRequest(), [&](auto* c, const auto& q, auto* r) {
    return stub_->ListWorkloads(c, q, r);
  });
}

absl::StatusOr<v1::ListConnectionsResponse> StatusClient::ListConnections(const v1::ListConnectionsRequest& request) {
  return Unary<v1::ListConnectionsResponse>(options_, request, [&](auto* c, const auto& q, auto* r) {
    return stub_->ListConnections(c, q, r);
  });
}

absl::StatusOr<v1::ListCertificatesResponse> StatusClient::ListCertificates() {
  return Unary<v1::ListCertificatesResponse>(options_, v1::ListCertificatesRequest(),
                                             [&](auto* c, const auto& q, auto* r) {
                                               return stub_->ListCertificates(c, q, r);
                                             });
}

absl::StatusOr<v1::GetPolicyResponse> StatusClient::GetPolicy(const v1::GetPolicyRequest& request) {
  return Unary<v1::GetPolicyResponse>(options_, request, [&](auto* c, const auto& q, auto* r) {
    return stub_->GetPolicy(c, q, r);
  });
}

absl::StatusOr<v1::RotateCertificatesResponse> StatusClient::RotateCertificates(
    const v1::RotateCertificatesRequest& request) {
  return Unary<v1::RotateCertificatesResponse>(options_, request, [&](auto* c, const auto& q, auto* r) {
    return stub_->RotateCertificates(c, q, r);
  });
}

absl::StatusOr<v1::CheckAccessResponse> StatusClient::CheckAccess(const v1::CheckAccessRequest& request) {
  return Unary<v1::CheckAccessResponse>(options_, request, [&](auto* c, const auto& q, auto* r) {
    return stub_->CheckAccess(c, q, r);
  });
}

absl::StatusOr<v1::AuditResponse> StatusClient::Audit() {
  return Unary<v1::AuditResponse>(options_, v1::AuditRequest{}, [&](auto* c, const auto& q, auto* r) {
    return stub_->Audit(c, q, r);
  });
}

absl::Status StatusClient::WatchEvents(const v1::WatchEventsRequest& request,
                                       const std::function<void(const v1::Event&)>& on_event) {
  grpc::ClientContext context;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (watch_cancelled_) return absl::OkStatus();
    watch_context_ = &context;
  }
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader = stub_->WatchEvents(&context, request);
  v1::Event event;
  while (reader->Read(&event)) on_event(event);
  grpc::Status status = reader->Finish();
  bool cancelled = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    watch_context_ = nullptr;
    cancelled = watch_cancelled_;
  }
  if (cancelled || status.ok()) return absl::OkStatus();
  return DescribeRpcError(status, options_);
}

void StatusClient::CancelWatch() {
  std::lock_guard<std::mutex> lock(mu_);
  watch_cancelled_ = true;
  if (watch_context_ != nullptr) watch_context_->TryCancel();
}

}  // namespace meshtls::ctl
