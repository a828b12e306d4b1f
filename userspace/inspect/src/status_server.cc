#include "meshtls/inspect/status_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/v1/status.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace meshtls::inspect {

namespace {

constexpr mode_t kSocketMode = 0600;
constexpr mode_t kDirMode = 0755;
constexpr char kServiceName[] = "meshtls.v1.StatusService";

// absl and gRPC number their codes alike (both follow google.rpc.Code).
grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        StrCat("socket path ", path, " is longer than ", sizeof(addr.sun_path) - 1, " bytes"));
  }
  path.copy(addr.sun_path, path.size());
  return addr;
}

// mkdir -p for the socket's directory. Directories we create get exactly 0755 whatever the
// umask, so the socket's own mode is what keeps non-root clients out, not a lucky directory mode.
absl::Status MakeParentDirs(const std::string& socket_path) {
  const size_t slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return absl::OkStatus();
  const std::string parent = socket_path.substr(0, slash);
  for (size_t end = parent.find('/', 1);; end = parent.find('/', end + 1)) {
    const std::string dir = parent.substr(0, end);
    if (::mkdir(dir.c_str(), kDirMode) == 0) {
      if (::chmod(dir.c_str(), kDirMode) != 0) return ErrnoStatus(errno, StrCat("chmod ", dir));
    } else if (errno != EEXIST) {
      return ErrnoStatus(errno, StrCat("mkdir ", dir));
    }
    if (end == std::string::npos) break;
  }
  struct stat st {};
  if (::stat(parent.c_str(), &st) != 0) return ErrnoStatus(errno, StrCat("stat ", parent));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(StrCat(parent, " is not a directory"));
  }
  return absl::OkStatus();
}

// gRPC itself unlinks any socket file before binding, which would silently steal the address
// from a running agent; so decide here whether what is at the path is a crash's leftover.
absl::Status ClearStaleSocket(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus(errno, StrCat("stat ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        StrCat(path,
               " exists and is not a socket; refusing to replace it (remove it or choose "
               "another socket path)"));
  }
  ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddress(path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  // Non-blocking so that a live server with a full backlog (EAGAIN) cannot hang us.
  const int rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  fd.reset();
  if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
    return absl::FailedPreconditionError(
        StrCat("another agent is running on ", path, " (it accepts connections); stop it first"));
  }
  if (err != ECONNREFUSED) return ErrnoStatus(err, StrCat("probing existing socket ", path));
  // Unlink only the socket we probed, not something that replaced it in between.
  struct stat again {};
  if (::lstat(path.c_str(), &again) == 0 && again.st_dev == st.st_dev &&
      again.st_ino == st.st_ino && ::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, StrCat("removing stale socket ", path));
  }
  spdlog::warn("status api: replaced stale socket {} (nothing listening on it)", path);
  return absl::OkStatus();
}

// For messages: where the server listens.
std::string Listeners(const StatusServerOptions& options, int tcp_port) {
  std::string out;
  if (!options.socket_path.empty()) StrAppend(&out, "unix:", options.socket_path);
  if (tcp_port != 0) StrAppend(&out, out.empty() ? "" : " and ", "127.0.0.1:", tcp_port);
  return out;
}

}  // namespace

class StatusServiceImpl final : public v1::StatusService::Service {
 public:
  StatusServiceImpl(AgentView* view, EventBus* events, const StatusServerOptions& options)
      : view_(view),
        events_(events),
        capacity_(options.watch_queue_capacity),
        poll_(options.watch_poll_interval) {}

  void Stop() { stopping_.store(true); }

  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                         v1::GetStatusResponse* response) override {
    *response = view_->Status();
    return grpc::Status::OK;
  }

  grpc::Status ListWorkloads(grpc::ServerContext*, const v1::ListWorkloadsRequest*,
                             v1::ListWorkloadsResponse* response) override {
    *response = view_->Workloads();
    return grpc::Status::OK;
  }

  grpc::Status ListConnections(grpc::ServerContext*, const v1::ListConnectionsRequest* request,
                               v1::ListConnectionsResponse* response) override {
    *response = view_->Connections(request->workload());
    return grpc::Status::OK;
  }

  grpc::Status ListCertificates(grpc::ServerContext*, const v1::ListCertificatesRequest*,
                                v1::ListCertificatesResponse* response) override {
    *response = view_->Certificates();
    return grpc::Status::OK;
  }

  grpc::Status GetPolicy(grpc::ServerContext*, const v1::GetPolicyRequest* request,
                         v1::GetPolicyResponse* response) override {
    absl::StatusOr<v1::GetPolicyResponse> policy = view_->Policy(request->workload());
    if (!policy.ok()) return ToGrpc(policy.status());
    *response = *std::move(policy);
    return grpc::Status::OK;
  }

  grpc::Status RotateCertificates(grpc::ServerContext*,
                                  const v1::RotateCertificatesRequest* request,
                                  v1::RotateCertificatesResponse* response) override {
    absl::StatusOr<v1::RotateCertificatesResponse> rotated = view_->Rotate(request->spiffe_id());
    if (!rotated.ok()) return ToGrpc(rotated.status());
    *response = *std::move(rotated);
    return grpc::Status::OK;
  }

  grpc::Status CheckAccess(grpc::ServerContext*, const v1::CheckAccessRequest* request,
                           v1::CheckAccessResponse* response) override {
    absl::StatusOr<v1::CheckAccessResponse> answer = view_->CheckAccess(*request);
    if (!answer.ok()) return ToGrpc(answer.status());
    *response = *std::move(answer);
    return grpc::Status::OK;
  }

  grpc::Status Audit(grpc::ServerContext*, const v1::AuditRequest*, v1::AuditResponse* response) override {
    *response = view_->Audit();
    return grpc::Status::OK;
  }

  grpc::Status WatchEvents(grpc::ServerContext* context, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::Event>* writer) override {
    // The subscription goes with this scope: a cancelled or finished stream stops costing
    // publishers anything at once.
    std::shared_ptr<Subscription> subscription = events_->Subscribe(*request, capacity_);
    // Nothing would wake the loop for a cancelled client, hence the bounded wait.
    while (!context->IsCancelled()) {
      if (stopping_.load()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "meshtls agent is shutting down");
      }
      std::optional<v1::Event> event = subscription->Next(poll_);
      if (!event) {
        if (subscription->closed()) break;
        continue;
      }
      if (!writer->Write(*event)) break;  // the client went away
    }
    return grpc::Status::OK;
  }

 private:
  AgentView* const view_;
  EventBus* const events_;
  const size_t capacity_;
  const std::chrono::milliseconds poll_;
  std::atomic<bool> stopping_{false};
};

StatusServer::StatusServer(const StatusServerOptions& options) : options_(options) {}

StatusServer::~StatusServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<StatusServer>> StatusServer::Start(
    const StatusServerOptions& options, AgentView* view, EventBus* events) {
  if (view == nullptr || events == nullptr) {
    return absl::InvalidArgumentError("status server needs an agent view and an event bus");
  }
  if (options.socket_path.empty() && options.tcp_port == 0) {
    return absl::InvalidArgumentError("status server: neither a socket path nor a TCP port");
  }
  if (options.tcp_port < 0 || options.tcp_port > 65535) {
    return absl::InvalidArgumentError(StrCat("status server: bad TCP port ", options.tcp_port));
  }
  if (!options.socket_path.empty()) {
    RETURN_IF_ERROR(UnixAddress(options.socket_path).status());
    RETURN_IF_ERROR(MakeParentDirs(options.socket_path));
    RETURN_IF_ERROR(ClearStaleSocket(options.socket_path));
  }

  std::unique_ptr<StatusServer> server(new StatusServer(options));
  server->service_ = std::make_unique<StatusServiceImpl>(view, events, options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.socket_path.empty()) {
    builder.AddListeningPort("unix:" + options.socket_path, grpc::InsecureServerCredentials());
  }
  if (options.tcp_port != 0) {
    builder.AddListeningPort(StrCat("127.0.0.1:", options.tcp_port),
                             grpc::InsecureServerCredentials(), &server->bound_tcp_port_);
  }
  builder.RegisterService(server->service_.get());
  // bind() creates the socket file with the umask applied; a umask of 0177 makes it 0600 from
  // its first instant, so there is no window in which another user could connect. The umask is
  // process-wide, but anything another thread creates meanwhile only gets a narrower mode.
  const mode_t old_umask = ::umask(0177);
  server->server_ = builder.BuildAndStart();
  ::umask(old_umask);
  if (server->server_ == nullptr) {
    return absl::UnavailableError(StrCat("status server: could not listen on ",
                                         Listeners(options, options.tcp_port),
                                         " (gRPC logged why)"));
  }

  if (!options.socket_path.empty()) {
    const char* path = options.socket_path.c_str();
    struct stat st {};
    if (::lstat(path, &st) != 0) return ErrnoStatus(errno, StrCat("stat ", options.socket_path));
    // Recorded first so that a failure below still removes the socket (the destructor does).
    server->socket_dev_ = st.st_dev;
    server->socket_ino_ = st.st_ino;
    // Belt and braces for the umask: the mode is what the API's access control rests on.
    if (::chmod(path, kSocketMode) != 0 || ::lstat(path, &st) != 0) {
      return ErrnoStatus(errno, StrCat("securing socket ", options.socket_path));
    }
    if (!S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != kSocketMode || st.st_uid != ::geteuid()) {
      return absl::InternalError(StrCat("socket ", options.socket_path, " has mode ",
                                        fmt::format("{:o}", st.st_mode & 07777), " and owner ",
                                        st.st_uid, ", not 600 and ", ::geteuid()));
    }
  }
  server->server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  spdlog::info("status api listening on {}", Listeners(options, server->bound_tcp_port_));
  return server;
}

void StatusServer::Shutdown() {
  if (shut_down_.exchange(true) || server_ == nullptr) return;
  service_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() + options_.shutdown_grace);
  server_->Wait();
  if (socket_ino_ != 0) {
    struct stat st {};
    const char* path = options_.socket_path.c_str();
    if (::lstat(path, &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_) {
      ::unlink(path);
    }
  }
}

}  // namespace meshtls::inspect
