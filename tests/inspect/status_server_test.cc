// gRPC's async call templates (used below for the health and reflection calls) trip GCC's
// -Wnull-dereference once inlined here; the code is gRPC's, not ours.
#pragma GCC diagnostic ignored "-Wnull-dereference"

#include "meshtls/inspect/status_server.h"

#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "inspect/fake_agent_view.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/v1/status.grpc.pb.h"
#include "testing/test_util.h"

namespace meshtls::inspect {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using google::protobuf::UnknownFieldSet;
using google::protobuf::util::MessageDifferencer;
using testing::FakeAgentView;

// Returns an error for every call that can fail, with the code the test sets.
class FailingView : public FakeAgentView {
 public:
  absl::StatusOr<v1::GetPolicyResponse> Policy(const std::string&) const override {
    return absl::Status(code.load(), "test failure");
  }
  absl::StatusOr<v1::RotateCertificatesResponse> Rotate(const std::string&) override {
    return absl::Status(code.load(), "test failure");
  }
  std::atomic<absl::StatusCode> code{absl::StatusCode::kUnknown};
};

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

// A socket file with nothing behind it, as a crashed agent leaves.
void MakeStaleSocket(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
  ASSERT_TRUE(fd.valid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
}

// --- Raw calls for services whose generated C++ stubs Debian does not ship (health,
// reflection): messages are built and read by field number.

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

// Waits for the completion of the operation tagged `tag`.
bool Await(grpc::CompletionQueue& cq, intptr_t tag) {
  void* got = nullptr;
  bool ok = false;
  if (cq.AsyncNext(&got, &ok, In(10s)) != grpc::CompletionQueue::GOT_EVENT) return false;
  return ok && reinterpret_cast<intptr_t>(got) == tag;
}

// grpc.health.v1.Health/Check: HealthCheckRequest{service = 1}, HealthCheckResponse{status = 1}.
// Returns the serving status (1 = SERVING), or -1 with the call's error.
int HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                grpc::Status* status) {
  UnknownFieldSet request;
  if (!service.empty()) request.AddLengthDelimited(1, service);
  std::string request_bytes;
  request.SerializeToString(&request_bytes);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", ToBuffer(request_bytes), &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  call->Finish(&response, status, reinterpret_cast<void*>(1));
  if (!Await(cq, 1) || !status->ok()) return -1;
  UnknownFieldSet fields;
  if (!fields.ParseFromString(FromBuffer(response))) return -1;
  // proto3 leaves out a zero (UNKNOWN) status.
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1) return static_cast<int>(fields.field(i).varint());
  }
  return 0;
}

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo with list_services (field 7);
// the answer's list_services_response (6) holds ServiceResponse (1) messages with a name (1).
std::vector<std::string> ReflectionServices(const std::shared_ptr<grpc::Channel>& channel) {
  UnknownFieldSet request;
  request.AddLengthDelimited(7, "*");
  std::string request_bytes;
  request.SerializeToString(&request_bytes);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  EXPECT_TRUE(Await(cq, 1));
  call->Write(ToBuffer(request_bytes), reinterpret_cast<void*>(2));
  EXPECT_TRUE(Await(cq, 2));
  call->WritesDone(reinterpret_cast<void*>(3));
  EXPECT_TRUE(Await(cq, 3));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  const bool got_response = Await(cq, 4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  EXPECT_TRUE(Await(cq, 5));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> names;
  if (!got_response) return names;
  UnknownFieldSet top;
  EXPECT_TRUE(top.ParseFromString(FromBuffer(response)));
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;
    UnknownFieldSet list;
    EXPECT_TRUE(list.ParseFromString(top.field(i).length_delimited()));
    for (int j = 0; j < list.field_count(); ++j) {
      UnknownFieldSet service;
      EXPECT_TRUE(service.ParseFromString(list.field(j).length_delimited()));
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) names.push_back(service.field(k).length_delimited());
      }
    }
  }
  return names;
}

class StatusServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/meshtls-status-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // Missing on purpose: Start() must create it.
    socket_path_ = dir_ + "/run/meshtls/status.sock";
    options_.socket_path = socket_path_;
  }
  void TearDown() override {
    server_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  void StartServer() {
    auto server = StatusServer::Start(options_, &view_, &bus_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::shared_ptr<grpc::Channel> Channel(const grpc::ChannelArguments& args = {}) {
    return grpc::CreateCustomChannel("unix:" + socket_path_, grpc::InsecureChannelCredentials(),
                                     args);
  }
  std::unique_ptr<v1::StatusService::Stub> Stub() { return v1::StatusService::NewStub(Channel()); }

  std::string dir_;
  std::string socket_path_;
  StatusServerOptions options_;
  FakeAgentView view_;
  EventBus bus_;
  std::unique_ptr<StatusServer> server_;
};

#define EXPECT_PROTO_EQ(a, b)                                                    \
  EXPECT_TRUE(MessageDifferencer::Equals(a, b)) << (a).DebugString() << "\nvs\n" \
                                                << (b).DebugString()

TEST_F(StatusServerTest, SocketIsOwnerOnlyInANewDirectory) {
  StartServer();
  struct stat st {};
  ASSERT_EQ(::lstat(socket_path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());  // root when the agent runs as root, as it does
  ASSERT_EQ(::stat((dir_ + "/run/meshtls").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST_F(StatusServerTest, EveryRpcReturnsWhatTheViewReturns) {
  StartServer();
  auto stub = Stub();
  {
    grpc::ClientContext context;
    v1::GetStatusResponse response;
    ASSERT_TRUE(stub->GetStatus(&context, {}, &response).ok());
    EXPECT_PROTO_EQ(response, view_.Status());
  }
  {
    grpc::ClientContext context;
    v1::ListWorkloadsResponse response;
    ASSERT_TRUE(stub->ListWorkloads(&context, {}, &response).ok());
    EXPECT_PROTO_EQ(response, view_.Workloads());
    EXPECT_EQ(response.workloads_size(), 3);
  }
  for (const char* workload : {"", "data/db", "default/client", "nobody/here"}) {
    grpc::ClientContext context;
    v1::ListConnectionsRequest request;
    request.set_workload(workload);
    v1::ListConnectionsResponse response;
    ASSERT_TRUE(stub->ListConnections(&context, request, &response).ok());
    EXPECT_PROTO_EQ(response, view_.Connections(workload));
  }
  {
    grpc::ClientContext context;
    v1::ListCertificatesResponse response;
    ASSERT_TRUE(stub->ListCertificates(&context, {}, &response).ok());
    EXPECT_PROTO_EQ(response, view_.Certificates());
  }
  for (const char* workload : {"", "default/web"}) {
    grpc::ClientContext context;
    v1::GetPolicyRequest request;
    request.set_workload(workload);
    v1::GetPolicyResponse response;
    ASSERT_TRUE(stub->GetPolicy(&context, request, &response).ok());
    EXPECT_PROTO_EQ(response, *view_.Policy(workload));
  }
  for (const std::string& id : {std::string(""), std::string(FakeAgentView::kWebId)}) {
    grpc::ClientContext context;
    v1::RotateCertificatesRequest request;
    request.set_spiffe_id(id);
    v1::RotateCertificatesResponse response;
    ASSERT_TRUE(stub->RotateCertificates(&context, request, &response).ok());
    EXPECT_PROTO_EQ(response, *view_.Rotate(id));
    EXPECT_EQ(response.rotated_size(), id.empty() ? 2 : 1);
  }
  EXPECT_EQ(view_.rotate_calls(), 4);  // two through the API, two by the test
  {
    grpc::ClientContext context;
    v1::CheckAccessRequest request;
    request.set_destination_workload("default/web");
    request.set_port(8080);
    request.set_source_principal("cluster.local/ns/data/sa/db");
    v1::CheckAccessResponse response;
    ASSERT_TRUE(stub->CheckAccess(&context, request, &response).ok());
    EXPECT_PROTO_EQ(response, *view_.CheckAccess(request));
    EXPECT_EQ(response.reason(), "deny_policy_matched");
  }
  {
    grpc::ClientContext context;
    v1::AuditResponse response;
    ASSERT_TRUE(stub->Audit(&context, {}, &response).ok());
    EXPECT_PROTO_EQ(response, view_.Audit());
    EXPECT_EQ(response.findings_size(), 1);
  }
}

TEST_F(StatusServerTest, NotFoundComesThroughWithItsMessage) {
  StartServer();
  auto stub = Stub();
  {
    grpc::ClientContext context;
    v1::GetPolicyRequest request;
    request.set_workload("nobody/here");
    v1::GetPolicyResponse response;
    grpc::Status status = stub->GetPolicy(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status.error_message(), "workload nobody/here is not served by this agent");
  }
  {
    grpc::ClientContext context;
    v1::RotateCertificatesRequest request;
    request.set_spiffe_id("spiffe://cluster.local/ns/x/sa/y");
    v1::RotateCertificatesResponse response;
    grpc::Status status = stub->RotateCertificates(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status.error_message(), "no SVID held for spiffe://cluster.local/ns/x/sa/y");
  }
  {
    grpc::ClientContext context;
    v1::CheckAccessRequest request;
    request.set_destination_workload("nobody/here");
    v1::CheckAccessResponse response;
    grpc::Status status = stub->CheckAccess(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status.error_message(), "no workload 'nobody/here' in the registry");
  }
}

TEST(StatusServerErrorTest, EveryAbslCodeMapsToTheSameGrpcCode) {
  char tmpl[] = "/tmp/meshtls-status-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  FailingView view;
  EventBus bus;
  StatusServerOptions options;
  options.socket_path = dir + "/status.sock";
  auto server = StatusServer::Start(options, &view, &bus);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::StatusService::NewStub(
      grpc::CreateChannel("unix:" + options.socket_path, grpc::InsecureChannelCredentials()));
  for (int code = 1; code <= 16; ++code) {
    view.code = static_cast<absl::StatusCode>(code);
    grpc::ClientContext policy_context;
    v1::GetPolicyResponse policy;
    grpc::Status status = stub->GetPolicy(&policy_context, {}, &policy);
    EXPECT_EQ(static_cast<int>(status.error_code()), code);
    EXPECT_EQ(status.error_message(), "test failure");
    grpc::ClientContext rotate_context;
    v1::RotateCertificatesResponse rotated;
    status = stub->RotateCertificates(&rotate_context, {}, &rotated);
    EXPECT_EQ(static_cast<int>(status.error_code()), code);
  }
  server->reset();
  fs::remove_all(dir);
}

TEST_F(StatusServerTest, HealthServiceAnswersServing) {
  StartServer();
  auto channel = Channel();
  for (const char* service : {"", "meshtls.v1.StatusService"}) {
    grpc::Status status;
    EXPECT_EQ(HealthCheck(channel, service, &status), 1) << "service '" << service << "'";
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  grpc::Status status;
  EXPECT_EQ(HealthCheck(channel, "no.such.Service", &status), -1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(StatusServerTest, ReflectionListsTheStatusService) {
  StartServer();
  std::vector<std::string> services = ReflectionServices(Channel());
  EXPECT_NE(std::find(services.begin(), services.end(), "meshtls.v1.StatusService"),
            services.end());
  EXPECT_NE(std::find(services.begin(), services.end(), "grpc.health.v1.Health"), services.end());
}

TEST_F(StatusServerTest, StaleSocketIsReplaced) {
  fs::create_directories(fs::path(socket_path_).parent_path());
  MakeStaleSocket(socket_path_);
  ASSERT_TRUE(fs::is_socket(socket_path_));
  StartServer();
  grpc::ClientContext context;
  v1::GetStatusResponse response;
  EXPECT_TRUE(Stub()->GetStatus(&context, {}, &response).ok());
  struct stat st {};
  ASSERT_EQ(::lstat(socket_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(StatusServerTest, LiveAgentIsRefusedAndKeepsServing) {
  StartServer();
  FakeAgentView other_view;
  EventBus other_bus;
  auto second = StatusServer::Start(options_, &other_view, &other_bus);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(
      std::string(second.status().message()).find("another agent is running on " + socket_path_),
      std::string::npos)
      << second.status();
  grpc::ClientContext context;
  v1::GetStatusResponse response;
  EXPECT_TRUE(Stub()->GetStatus(&context, {}, &response).ok());
}

TEST_F(StatusServerTest, AnyListenerOnThePathIsRefused) {
  fs::create_directories(fs::path(socket_path_).parent_path());
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  socket_path_.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  auto server = StatusServer::Start(options_, &view_, &bus_);
  ASSERT_FALSE(server.ok());
  EXPECT_NE(std::string(server.status().message()).find("another agent is running on"),
            std::string::npos);
  EXPECT_TRUE(fs::is_socket(socket_path_));
}

TEST_F(StatusServerTest, RegularFileIsRefusedAndLeftAlone) {
  fs::create_directories(fs::path(socket_path_).parent_path());
  std::ofstream(socket_path_) << "precious";
  auto server = StatusServer::Start(options_, &view_, &bus_);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(server.status().message()).find("is not a socket"), std::string::npos)
      << server.status();
  EXPECT_EQ(::meshtls::testing::ReadFile(socket_path_), "precious");
}

TEST_F(StatusServerTest, SymlinkIsRefusedAndLeftAlone) {
  fs::create_directories(fs::path(socket_path_).parent_path());
  const std::string target = dir_ + "/elsewhere.sock";
  MakeStaleSocket(target);
  fs::create_symlink(target, socket_path_);
  auto server = StatusServer::Start(options_, &view_, &bus_);
  ASSERT_FALSE(server.ok());
  EXPECT_TRUE(fs::is_symlink(socket_path_));
  EXPECT_TRUE(fs::is_socket(target));
}

TEST_F(StatusServerTest, BadOptionsAreRejected) {
  EXPECT_EQ(StatusServer::Start(options_, nullptr, &bus_).status().code(),
            absl::StatusCode::kInvalidArgument);
  StatusServerOptions too_long;
  too_long.socket_path = "/tmp/" + std::string(200, 'x');
  EXPECT_EQ(StatusServer::Start(too_long, &view_, &bus_).status().code(),
            absl::StatusCode::kInvalidArgument);
  StatusServerOptions nothing;
  nothing.socket_path = "";
  EXPECT_EQ(StatusServer::Start(nothing, &view_, &bus_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StatusServerTest, ShutdownRemovesTheSocketAndIsIdempotent) {
  StartServer();
  server_->Shutdown();
  EXPECT_FALSE(fs::exists(socket_path_));
  server_->Shutdown();
  // The next agent starts cleanly.
  StartServer();
  EXPECT_TRUE(fs::is_socket(socket_path_));
}

TEST_F(StatusServerTest, TcpPortOnLoopback) {
  // Find a free port, then give it back for the server.
  int port = 0;
  {
    UniqueFd probe(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::getsockname(probe.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port = ntohs(addr.sin_port);
  }
  options_.tcp_port = port;
  StartServer();
  EXPECT_EQ(server_->tcp_port(), port);
  auto stub = v1::StatusService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::GetStatusResponse response;
  EXPECT_TRUE(stub->GetStatus(&context, {}, &response).ok());
  EXPECT_EQ(response.node_name(), FakeAgentView::kNode);
}

v1::Event Ev(v1::EventKind kind, const std::string& workload, const std::string& detail) {
  v1::Event event;
  event.set_kind(kind);
  event.set_workload(workload);
  event.set_detail(detail);
  return event;
}

TEST_F(StatusServerTest, WatchEventsAppliesTheFilter) {
  StartServer();
  auto stub = Stub();
  grpc::ClientContext filtered_context;
  filtered_context.set_deadline(In(10s));
  v1::WatchEventsRequest filter;
  filter.add_kinds(v1::EVENT_KIND_DENIAL);
  filter.add_kinds(v1::EVENT_KIND_HANDSHAKE);
  filter.set_workload("default/web");
  auto filtered = stub->WatchEvents(&filtered_context, filter);
  grpc::ClientContext all_context;
  all_context.set_deadline(In(10s));
  auto all = stub->WatchEvents(&all_context, {});
  ASSERT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 2; }));

  bus_.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", "1"));
  bus_.Publish(Ev(v1::EVENT_KIND_ROTATION, "default/web", "2"));
  bus_.Publish(Ev(v1::EVENT_KIND_DENIAL, "data/db", "3"));
  bus_.Publish(Ev(v1::EVENT_KIND_DENIAL, "default/web", "4"));
  bus_.Publish(Ev(v1::EVENT_KIND_CLOSE, "default/web", "5"));

  std::vector<std::string> got;
  v1::Event event;
  while (got.size() < 2 && filtered->Read(&event)) {
    got.push_back(event.detail());
    EXPECT_EQ(event.dropped_before(), 0u);
    EXPECT_GT(event.time().seconds(), 0);
  }
  EXPECT_EQ(got, std::vector<std::string>({"1", "4"}));
  got.clear();
  while (got.size() < 5 && all->Read(&event)) got.push_back(event.detail());
  EXPECT_EQ(got, std::vector<std::string>({"1", "2", "3", "4", "5"}));

  filtered_context.TryCancel();
  all_context.TryCancel();
  EXPECT_EQ(filtered->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(all->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(StatusServerTest, CancelledWatcherFreesItsSubscription) {
  StartServer();
  auto stub = Stub();
  grpc::ClientContext context;
  auto stream = stub->WatchEvents(&context, {});
  ASSERT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 1; }));
  context.TryCancel();
  EXPECT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 0; }, 2s));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(StatusServerTest, WatchEventsEndOnShutdown) {
  StartServer();
  auto stub = Stub();
  grpc::ClientContext context;
  auto stream = stub->WatchEvents(&context, {});
  ASSERT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 1; }));
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ(bus_.subscriber_count(), 0u);
  v1::Event event;
  EXPECT_FALSE(stream->Read(&event));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

long RssKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// 100,000 events of 4 KiB (400 MB if the server kept them) against a client reading one event
// per 100 ms: the server's queue stays within its capacity and the client is told what it lost.
TEST_F(StatusServerTest, SlowWatcherLosesEventsNotMemory) {
  constexpr int kEvents = 100000;
  StartServer();
  const long rss_before = RssKiB();
  // Without BDP probing the client's flow-control window stays at its initial 64 KiB, so what
  // sits in gRPC's buffers rather than in the subscription is small and fixed.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto stub = v1::StatusService::NewStub(Channel(args));
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  auto stream = stub->WatchEvents(&context, {});
  ASSERT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 1; }));

  std::atomic<bool> published{false};
  std::thread publisher([&] {
    const std::string payload(4096, 'x');
    for (int i = 0; i < kEvents; ++i) {
      bus_.Publish(Ev(v1::EVENT_KIND_HANDSHAKE, "default/web", payload + std::to_string(i)));
      if (i % 1000 == 999) std::this_thread::sleep_for(20ms);  // spread over ~2 s
    }
    published = true;
  });

  uint64_t reads = 0;
  uint64_t reported_dropped = 0;
  int reads_until_gap = -1;
  long rss_peak = rss_before;
  v1::Event event;
  // Keep reading slowly while events are published, and until the loss has been reported.
  while ((!published.load() || reported_dropped == 0) && reads < 300 && stream->Read(&event)) {
    ++reads;
    reported_dropped += event.dropped_before();
    if (reported_dropped > 0 && reads_until_gap < 0) reads_until_gap = static_cast<int>(reads);
    rss_peak = std::max(rss_peak, RssKiB());
    std::this_thread::sleep_for(100ms);
  }
  publisher.join();
  context.TryCancel();
  stream->Finish();

  EXPECT_GT(reported_dropped, 0u) << "after " << reads << " reads";
  EXPECT_GT(bus_.dropped_total(), 0u);
  EXPECT_LE(bus_.peak_queued(), options_.watch_queue_capacity);
  EXPECT_EQ(bus_.published_total(), static_cast<uint64_t>(kEvents));
  // What the client saw or was told it lost never exceeds what was published.
  EXPECT_LE(reads + reported_dropped, static_cast<uint64_t>(kEvents));
#if !defined(__SANITIZE_ADDRESS__)  // ASan's quarantine holds freed memory on purpose
  EXPECT_LT(rss_peak - rss_before, 100 * 1024) << "KiB";
#endif
  EXPECT_TRUE(WaitFor([&] { return bus_.subscriber_count() == 0; }, 2s));
  std::printf(
      "slow watcher: %llu reads, first gap reported on read %d, %llu reported dropped, "
      "peak queue %zu, rss +%ld KiB\n",
      static_cast<unsigned long long>(reads), reads_until_gap,
      static_cast<unsigned long long>(reported_dropped), bus_.peak_queued(), rss_peak - rss_before);
}

}  // namespace
}  // namespace meshtls::inspect
