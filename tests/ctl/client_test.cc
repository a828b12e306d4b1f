// meshtlsctl against a fake agent on a Unix socket in a temp dir, and against no agent at all:
// the client API, the binary's exit codes and messages, tap's Ctrl-C.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <filesystem>
#include <fstream>
#include <thread>

#include "meshtls/common/unique_fd.h"
#include "meshtls/ctl/client.h"
#include "meshtls/ctl/format.h"
#include "samples.h"
#include "testing/test_util.h"

namespace meshtls::ctl {
namespace {

namespace fs = std::filesystem;

// Canned answers from samples.cc. Special inputs: rotate of "spiffe://cluster.local/ns/no/sa/such"
// is NOT_FOUND; GetPolicy for "slow/one" outlasts a 1s timeout; WatchEvents for "test/finite"
// ends after the samples, otherwise it stays open until the client cancels.
class FakeAgent final : public v1::StatusService::Service {
 public:
  grpc::Status GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*, v1::GetStatusResponse* r) override {
    *r = testing::SampleStatus();
    return grpc::Status::OK;
  }
  grpc::Status ListWorkloads(grpc::ServerContext*, const v1::ListWorkloadsRequest*,
                             v1::ListWorkloadsResponse* r) override {
    *r = testing::SampleWorkloads();
    return grpc::Status::OK;
  }
  grpc::Status ListConnections(grpc::ServerContext*, const v1::ListConnectionsRequest* q,
                               v1::ListConnectionsResponse* r) override {
    last_workload = q->workload();
    *r = testing::SampleConnections();
    return grpc::Status::OK;
  }
  grpc::Status ListCertificates(grpc::ServerContext*, const v1::ListCertificatesRequest*,
                                v1::ListCertificatesResponse* r) override {
    *r = testing::SampleCertificates();
    return grpc::Status::OK;
  }
  grpc::Status GetPolicy(grpc::ServerContext* ctx, const v1::GetPolicyRequest* q, v1::GetPolicyResponse* r) override {
    if (q->workload() == "slow/one") {
      for (int i = 0; i < 50 && !ctx->IsCancelled(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    *r = testing::SamplePolicy();
    return grpc::Status::OK;
  }
  grpc::Status RotateCertificates(grpc::ServerContext*, const v1::RotateCertificatesRequest* q,
                                  v1::RotateCertificatesResponse* r) override {
    if (q->spiffe_id() == "spiffe://cluster.local/ns/no/sa/such") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no SVID for spiffe://cluster.local/ns/no/sa/such");
    }
    last_rotate_id = q->spiffe_id();
    *r = testing::SampleRotation();
    return grpc::Status::OK;
  }
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* q,
                           grpc::ServerWriter<v1::Event>* writer) override {
    last_kinds = static_cast<int>(q->kinds_size());
    for (const auto& e : testing::SampleEvents()) writer->Write(e);
    if (q->workload() == "test/finite") return grpc::Status::OK;
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    watch_cancelled = true;
    return grpc::Status::CANCELLED;
  }

  std::string last_workload, last_rotate_id;
  std::atomic<int> last_kinds{-1};
  std::atomic<bool> watch_cancelled{false};
};

struct Result {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadAll(int fd) {
  std::string data;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) data.append(buf, static_cast<size_t>(n));
  return data;
}

// meshtlsctl as a child process. `env`: extra NAME=VALUE pairs. on_started runs with the
// child's pid and its stdout (before it is drained), for tap.
Result RunCtl(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
              const std::function<void(pid_t, int)>& on_started = nullptr) {
  // Built before fork(): the child of a threaded process may only make async-signal-safe calls.
  std::vector<char*> argv{const_cast<char*>(MESHTLSCTL_PATH)};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::string inherited_prefix = std::string(kSocketEnvVar) + "=";
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, inherited_prefix.c_str(), inherited_prefix.size()) != 0) envp.push_back(*e);
  }
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::execve(MESHTLSCTL_PATH, argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  if (on_started) on_started(pid, out[0]);
  Result r;
  // Drain stderr on a thread: a child blocked on a full stderr pipe would never close stdout.
  std::thread err_reader([&] { r.err = ReadAll(err[0]); });
  r.out += ReadAll(out[0]);
  err_reader.join();
  ::close(out[0]);
  ::close(err[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/meshtls-ctl-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Path(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A Unix socket bound at `path`, listening or not.
UniqueFd BoundSocket(const std::string& path, bool listen) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  if (listen) {
    EXPECT_EQ(::listen(fd.get(), 8), 0);
  }
  return fd;
}

std::string Unreachable(const std::string& path, const std::string& why) {
  return "cannot reach the agent at " + path + ": " + why +
         " (is meshtls-agent running? --socket to choose another)";
}

TEST(ClientErrorTest, MissingSocket) {
  TempDir dir;
  ClientOptions options;
  options.socket_path = dir.Path("status.sock");
  StatusClient client(options);
  auto status = client.GetStatus();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(std::string(status.status().message()), Unreachable(options.socket_path, "no socket there"));
  // The stream reports the same way.
  absl::Status watch = client.WatchEvents(v1::WatchEventsRequest(), [](const v1::Event&) {});
  EXPECT_EQ(std::string(watch.message()), Unreachable(options.socket_path, "no socket there"));
}

TEST(ClientErrorTest, NobodyListens) {
  TempDir dir;
  ClientOptions options;
  options.socket_path = dir.Path("status.sock");
  UniqueFd stale = BoundSocket(options.socket_path, /*listen=*/false);
  StatusClient client(options);
  auto certs = client.ListCertificates();
  ASSERT_FALSE(certs.ok());
  EXPECT_EQ(std::string(certs.status().message()), Unreachable(options.socket_path, "nobody listens on the socket"));
}

TEST(ClientErrorTest, NotASocket) {
  TempDir dir;
  ClientOptions options;
  options.socket_path = dir.path();
  EXPECT_EQ(std::string(DescribeRpcError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x"), options).message()),
            Unreachable(dir.path(), "not a socket"));
}

// The socket is root's and 0600, as the agent makes it: anyone else is told to be root. As
// root, the check runs in a child that gave root up.
TEST(ClientErrorTest, PermissionDenied) {
  TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  const std::string path = dir.Path("status.sock");
  UniqueFd listener = BoundSocket(path, /*listen=*/true);
  ::chmod(path.c_str(), 0600);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(2);
    if (::geteuid() != 0) ::chmod(path.c_str(), 0);  // already not root: take our own rights away
    ClientOptions options;
    options.socket_path = path;
    const std::string text(DescribeRpcError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x"), options).message());
    (void)!::write(pipe_fds[1], text.data(), text.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  const std::string text = ReadAll(pipe_fds[0]);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(text, "permission denied on " + path + ": run as root");
}

TEST(ClientErrorTest, GrpcErrorsKeepCodeName) {
  ClientOptions options;
  options.timeout = std::chrono::seconds(3);
  absl::Status st = DescribeRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "no SVID"), options);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(st.message()), "NOT_FOUND: no SVID");
}

TEST(CliTest, MissingSocketAndStaleSocket) {
  TempDir dir;
  const std::string path = dir.Path("status.sock");
  Result r = RunCtl({"--socket", path, "status"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "meshtlsctl: " + Unreachable(path, "no socket there") + "\n");
  EXPECT_EQ(r.out, "");

  UniqueFd stale = BoundSocket(path, /*listen=*/false);
  r = RunCtl({"certs"}, {std::string(kSocketEnvVar) + "=" + path});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "meshtlsctl: " + Unreachable(path, "nobody listens on the socket") + "\n");
}

TEST(CliTest, BadUsageExitsTwo) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"status", "-o", "xml"},
      {"status", "--no-such-flag"},
      {"--timeout", "5x", "status"},
      {"rotate"},
      {"rotate", "--all", "--spiffe-id", "spiffe://cluster.local/ns/shop/sa/cart"},
      {"connections", "--workload", "cart"},
      {"tap", "--kind", "handshake,teleport"},
      {"policy", "check", "--to", "shop/db", "--port", "5432"},  // no source
      {"policy", "check", "--to", "shop/db", "--port", "5432", "--plaintext", "--from-namespace", "x"},
      {"policy", "check", "--to", "db", "--port", "5432", "--plaintext"},
      {"policy", "check", "--to", "shop/db", "--port", "0", "--plaintext"},
      {"policy", "check", "--to", "shop/db", "--port", "5432", "--plaintext", "--policy-dir", "/tmp"},
      {"audit", "--fail-on", "sometimes"},
  };
  for (const auto& args : cases) {
    Result r = RunCtl(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.exit_code, 2) << "meshtlsctl " << joined << "\nstderr: " << r.err;
    EXPECT_FALSE(r.err.empty()) << joined;
    EXPECT_EQ(r.out.find("cannot reach"), std::string::npos) << joined;
  }
  EXPECT_EQ(RunCtl({"tap", "--kind", "teleport"}).err,
            "meshtlsctl: --kind: unknown event kind 'teleport': use handshake, denial, rotation, reload, close\n");
  EXPECT_EQ(RunCtl({"--help"}).exit_code, 0);
}

// Offline: the same answers as the library's golden files, from the files alone.
TEST(CliTest, PolicyCheckAndAuditOffline) {
  const std::string data = MESHTLS_POLICY_CHECK_DIR;
  const std::vector<std::string> offline = {"--policy-dir", "policies", "--workloads", "workloads.yaml"};
  // Relative paths, as in the golden files' warnings.
  const std::filesystem::path before = std::filesystem::current_path();
  ASSERT_EQ(::chdir(data.c_str()), 0);
  std::vector<std::string> args = {"-o", "json", "policy", "check", "--to", "shop/db", "--port", "5432",
                                   "--from-principal", "cluster.local/ns/legacy/sa/billing", "--from-ip", "10.8.1.1"};
  args.insert(args.end(), offline.begin(), offline.end());
  Result r = RunCtl(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, meshtls::testing::ReadFile(data + "/golden/deny_over_allow.json"));

  args = {"audit"};
  args.insert(args.end(), offline.begin(), offline.end());
  r = RunCtl(args);
  EXPECT_EQ(r.exit_code, 1) << "open/insecure is DISABLE: critical\n" << r.out;
  EXPECT_EQ(r.out, meshtls::testing::ReadFile(data + "/golden/audit.txt"));
  // Only the critical finding's namespace: nothing at or above critical is left without it.
  args = {"audit", "--fail-on", "critical", "--policy-dir", "policies", "--workloads", "workloads.yaml"};
  EXPECT_EQ(RunCtl(args).exit_code, 1);

  // A policy file the agent would reject is rejected here too, with its place.
  TempDir dir;
  std::ofstream(dir.Path("bad.yaml")) << "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                         "metadata: {name: x, namespace: y}\nspec: {action: SOMETIMES}\n";
  r = RunCtl({"audit", "--policy-dir", dir.Path(""), "--workloads", data + "/workloads.yaml"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.yaml:"), std::string::npos) << r.err;
  std::filesystem::current_path(before);
}

TEST(CliTest, AuditPassesWhenNothingReachesFailOn) {
  TempDir dir;
  std::ofstream(dir.Path("mesh.yaml")) << "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                                          "metadata: {name: default, namespace: istio-system}\n"
                                          "spec: {mtls: {mode: STRICT}}\n";
  std::ofstream(dir.Path("workloads.yaml"))
      << "workloads:\n  - {name: a, namespace: shop, serviceAccount: a, ips: [10.0.0.1]}\n";
  std::filesystem::create_directory(dir.Path("policies"));
  std::filesystem::rename(dir.Path("mesh.yaml"), dir.Path("policies/mesh.yaml"));
  const std::vector<std::string> offline = {"--policy-dir", dir.Path("policies"), "--workloads", dir.Path("workloads.yaml")};
  std::vector<std::string> args = {"audit"};
  args.insert(args.end(), offline.begin(), offline.end());
  Result r = RunCtl(args);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;  // one warning (the isolation gap), below critical
  EXPECT_NE(r.out.find("namespace_isolation_gap"), std::string::npos) << r.out;
  args.insert(args.begin() + 1, {"--fail-on", "warning"});
  EXPECT_EQ(RunCtl(args).exit_code, 1);
}

class FakeAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = dir_.Path("status.sock");
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_, grpc::InsecureServerCredentials());
    builder.RegisterService(&agent_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)); }

  Result Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket", socket_});
    return RunCtl(args);
  }
  RenderOptions Options(OutputFormat format) const {
    RenderOptions options;
    options.format = format;
    return options;
  }

  TempDir dir_;
  std::string socket_;
  FakeAgent agent_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(FakeAgentTest, EachCommandPrintsWhatTheAgentSaid) {
  // json and yaml do not depend on the clock: compare whole outputs.
  Result r = Ctl({"status", "-o", "json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, RenderStatus(testing::SampleStatus(), Options(OutputFormat::kJson)));
  r = Ctl({"-o", "yaml", "workloads"});
  EXPECT_EQ(r.out, RenderWorkloads(testing::SampleWorkloads(), Options(OutputFormat::kYaml)));
  r = Ctl({"certs", "--output", "json"});
  EXPECT_EQ(r.out, RenderCertificates(testing::SampleCertificates(), Options(OutputFormat::kJson)));
  r = Ctl({"policy", "-o", "yaml"});
  EXPECT_EQ(r.out, RenderPolicy(testing::SamplePolicy(), Options(OutputFormat::kYaml)));

  r = Ctl({"connections", "--workload", "shop/cart"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, RenderConnections(testing::SampleConnections(), Options(OutputFormat::kTable)));
  EXPECT_EQ(agent_.last_workload, "shop/cart");

  r = Ctl({"status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Datapath:            ktls-splice: "), std::string::npos) << r.out;
}

TEST_F(FakeAgentTest, RotatePrintsNewSerialsOrTheGrpcError) {
  Result r = Ctl({"rotate", "--spiffe-id", "spiffe://cluster.local/ns/shop/sa/cart"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("4e01b7c2d9a0ff1e2d"), std::string::npos) << r.out;
  EXPECT_EQ(agent_.last_rotate_id, "spiffe://cluster.local/ns/shop/sa/cart");
  r = Ctl({"rotate", "--all"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(agent_.last_rotate_id, "");

  r = Ctl({"rotate", "--spiffe-id", "spiffe://cluster.local/ns/no/sa/such"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "meshtlsctl: NOT_FOUND: no SVID for spiffe://cluster.local/ns/no/sa/such\n");
  EXPECT_EQ(r.out, "");
}

TEST_F(FakeAgentTest, TimeoutSaysSo) {
  Result r = Ctl({"--timeout", "1s", "policy", "--workload", "slow/one"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "meshtlsctl: DEADLINE_EXCEEDED: the agent at " + socket_ +
                       " did not answer within 1s (--timeout to wait longer)\n");
}

TEST_F(FakeAgentTest, TapPrintsEventsAndDropWarnings) {
  Result r = Ctl({"tap", "--workload", "test/finite", "--kind", "handshake,denial"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(agent_.last_kinds, 2);
  std::string expected;
  for (const auto& e : testing::SampleEvents()) expected += RenderEvent(e, Options(OutputFormat::kTable));
  EXPECT_EQ(r.out, expected);
  EXPECT_EQ(r.err, DroppedEventsWarning(17) + DroppedEventsWarning(1));
}

TEST_F(FakeAgentTest, TapEndsCleanlyOnCtrlC) {
  const size_t events = testing::SampleEvents().size();
  std::string seen;
  Result r = RunCtl({"--socket", socket_, "tap", "-o", "json"}, {}, [&](pid_t pid, int out) {
    // Wait for every sample event, so the stream is surely open, then press Ctrl-C.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (static_cast<size_t>(std::count(seen.begin(), seen.end(), '\n')) < events &&
           std::chrono::steady_clock::now() < deadline) {
      pollfd p{out, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(out, buf, sizeof(buf));
      if (n <= 0) break;
      seen.append(buf, static_cast<size_t>(n));
    }
    ::kill(pid, SIGINT);
  });
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(static_cast<size_t>(std::count(seen.begin(), seen.end(), '\n')), events) << seen;
  EXPECT_EQ(r.err, DroppedEventsWarning(17) + DroppedEventsWarning(1));
  for (int i = 0; i < 50 && !agent_.watch_cancelled; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(agent_.watch_cancelled) << "the agent never saw the call cancelled";
}

}  // namespace
}  // namespace meshtls::ctl
