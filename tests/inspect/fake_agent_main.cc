// A stand-in agent for clients the project did not write, and for client calls that must run in
// another process (as another user):
//   inspect_fake_agent serve SOCKET        serves FakeAgentView; prints "ready" once listening,
//                                          stops on SIGTERM/SIGINT
//   inspect_fake_agent get-status SOCKET   one GetStatus call; prints "code=N message=..." and
//                                          exits 0 only if it succeeded
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "inspect/fake_agent_view.h"
#include "meshtls/common/logging.h"
#include "meshtls/inspect/event_bus.h"
#include "meshtls/inspect/status_server.h"
#include "meshtls/v1/status.grpc.pb.h"

namespace {

using meshtls::inspect::EventBus;
using meshtls::inspect::StatusServer;
using meshtls::inspect::StatusServerOptions;
using meshtls::inspect::testing::FakeAgentView;

int Serve(const std::string& socket_path) {
  // Blocked before gRPC starts its threads, so that only sigwait() below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  FakeAgentView view;
  EventBus events;
  StatusServerOptions options;
  options.socket_path = socket_path;
  auto server = StatusServer::Start(options, &view, &events);
  if (!server.ok()) {
    std::fprintf(stderr, "inspect_fake_agent: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  (*server)->Shutdown();
  return 0;
}

int GetStatus(const std::string& socket_path) {
  auto channel = grpc::CreateChannel("unix:" + socket_path, grpc::InsecureChannelCredentials());
  auto stub = meshtls::v1::StatusService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  meshtls::v1::GetStatusResponse response;
  grpc::Status status = stub->GetStatus(&context, {}, &response);
  std::printf("code=%d message=%s\n", static_cast<int>(status.error_code()),
              status.error_message().c_str());
  return status.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Logs to stderr: stdout carries the "ready" line and results that callers parse.
  (void)meshtls::ConfigureLogging("info");
  if (argc == 3 && std::string(argv[1]) == "serve") return Serve(argv[2]);
  if (argc == 3 && std::string(argv[1]) == "get-status") return GetStatus(argv[2]);
  std::fprintf(stderr, "usage: %s serve|get-status SOCKET\n", argv[0]);
  return 2;
}
