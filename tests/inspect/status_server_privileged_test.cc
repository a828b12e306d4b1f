// The socket's mode is the status API's only access control: prove that a non-root client is
// turned away. Switching to `nobody` needs root, so this test is labelled privileged.
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "inspect/fake_agent_view.h"
#include "meshtls/inspect/status_server.h"

namespace meshtls::inspect {
namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

struct ClientResult {
  int exit_code = -1;
  std::string output;
};

// Runs `inspect_fake_agent get-status` in a fresh process (as `uid` when set): gRPC's threads
// in this process make any gRPC call after fork() unsafe, so the child execs at once.
ClientResult RunClient(const std::string& socket_path, bool as_nobody) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDOUT_FILENO);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    if (as_nobody && (::setgroups(0, nullptr) != 0 || ::setgid(kNogroup) != 0 ||
                      ::setuid(kNobody) != 0 || ::getuid() != kNobody)) {
      std::printf("could not become nobody\n");
      ::_exit(3);
    }
    const char* argv[] = {MESHTLS_FAKE_AGENT, "get-status", socket_path.c_str(), nullptr};
    ::execv(argv[0], const_cast<char* const*>(argv));
    std::printf("exec %s failed\n", argv[0]);
    ::_exit(4);
  }
  ::close(pipe_fds[1]);
  ClientResult result;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0) {
    result.output.append(buffer, static_cast<size_t>(n));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(StatusServerPrivilegedTest, NonRootClientIsDenied) {
  ASSERT_EQ(::geteuid(), 0u) << "privileged test: run as root (CI does)";
  char tmpl[] = "/tmp/meshtls-status-priv-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  // A traversable directory, so that only the socket's own mode can stop `nobody`.
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  testing::FakeAgentView view;
  EventBus bus;
  StatusServerOptions options;
  options.socket_path = dir + "/status.sock";
  auto server = StatusServer::Start(options, &view, &bus);
  ASSERT_TRUE(server.ok()) << server.status();

  struct stat st {};
  ASSERT_EQ(::stat(options.socket_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  // The same client as root gets through: a denial below is about the user, not the client.
  ClientResult as_root = RunClient(options.socket_path, /*as_nobody=*/false);
  EXPECT_EQ(as_root.exit_code, 0) << as_root.output;
  EXPECT_NE(as_root.output.find("code=0 "), std::string::npos) << as_root.output;

  ClientResult as_nobody = RunClient(options.socket_path, /*as_nobody=*/true);
  EXPECT_EQ(as_nobody.exit_code, 1) << as_nobody.output;
  EXPECT_NE(as_nobody.output.find("code=14 "), std::string::npos)
      << as_nobody.output;  // UNAVAILABLE
  EXPECT_NE(as_nobody.output.find("Permission denied"), std::string::npos) << as_nobody.output;

  (*server)->Shutdown();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace meshtls::inspect
