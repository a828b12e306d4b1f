// glibc malloc tuning (malloc_tuning.h): the decision, and the re-execution itself, watched from
// outside through a probe binary started with a controlled environment.
#include "meshtls/common/malloc_tuning.h"

#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace meshtls {
namespace {

// Plain gtest (the project does not use gmock): a substring check that prints both sides.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

TEST(MallocTuningTest, WithoutGlibcTunablesTheProcessReexecutesWithMeshtlsTunables) {
  const MallocTuningDecision decision = DecideMallocTuning(nullptr, false);
  EXPECT_TRUE(decision.reexec);
  EXPECT_TRUE(Contains(decision.detail, "glibc.malloc.tcache_count=128"));
}

TEST(MallocTuningTest, MeshtlsTunablesAlreadySetMeanInEffect) {
  const std::string ours(kMeshtlsGlibcTunables);
  const MallocTuningDecision decision = DecideMallocTuning(ours.c_str(), false);
  EXPECT_FALSE(decision.reexec);
  EXPECT_TRUE(Contains(decision.detail, "in effect"));
}

TEST(MallocTuningTest, TheOperatorsGlibcTunablesAreLeftAlone) {
  const MallocTuningDecision decision = DecideMallocTuning("glibc.malloc.tcache_count=7", false);
  EXPECT_FALSE(decision.reexec);
  EXPECT_TRUE(Contains(decision.detail,
                       "left to the environment: GLIBC_TUNABLES=glibc.malloc.tcache_count=7"));
  // Empty is a choice too (glibc's defaults).
  EXPECT_FALSE(DecideMallocTuning("", false).reexec);
}

TEST(MallocTuningTest, SecureExecutionsAreNotReexecuted) {
  const MallocTuningDecision decision = DecideMallocTuning(nullptr, true);
  EXPECT_FALSE(decision.reexec);
  EXPECT_TRUE(Contains(decision.detail, "setuid/setcap"));
}

// Runs the probe with exactly `env`, returns its stdout lines.
std::vector<std::string> RunProbe(std::vector<std::string> env) {
  int out[2];
  if (pipe(out) != 0) return {"pipe failed"};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    std::vector<char*> envp;
    for (std::string& entry : env) envp.push_back(entry.data());
    envp.push_back(nullptr);
    char* argv[] = {const_cast<char*>("malloc_tuning_probe"), nullptr};
    execve(MESHTLS_MALLOC_TUNING_PROBE, argv, envp.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;)
    text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::vector<std::string> lines;
  for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos;
       start = end + 1) {
    lines.push_back(text.substr(start, end - start));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) lines.push_back("probe did not exit 0");
  return lines;
}

TEST(MallocTuningTest, TheProbeExecutesItselfOnceAsTheSameProcessWithTheTunablesSet) {
  const std::vector<std::string> lines = RunProbe({"PATH=/usr/bin:/bin"});
  ASSERT_EQ(lines.size(), 3u) << ::testing::PrintToString(lines);
  // Two starts, one process: the second is the re-executed binary.
  const std::string first_pid = lines[0].substr(0, lines[0].find(' ', 6));
  EXPECT_TRUE(Contains(lines[0], "GLIBC_TUNABLES=(unset)"));
  EXPECT_EQ(lines[1], first_pid + " GLIBC_TUNABLES=" + std::string(kMeshtlsGlibcTunables));
  EXPECT_TRUE(Contains(lines[2], "result failed=0 detail=in effect"));
}

TEST(MallocTuningTest, TheProbeRunsOnceUntouchedWhenGlibcTunablesIsSet) {
  const std::vector<std::string> lines =
      RunProbe({"PATH=/usr/bin:/bin", "GLIBC_TUNABLES=glibc.malloc.tcache_count=7"});
  ASSERT_EQ(lines.size(), 2u) << ::testing::PrintToString(lines);
  EXPECT_TRUE(Contains(lines[0], "GLIBC_TUNABLES=glibc.malloc.tcache_count=7"));
  EXPECT_TRUE(Contains(lines[1], "result failed=0 detail=left to the environment"));
}

}  // namespace
}  // namespace meshtls
