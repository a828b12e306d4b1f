// Privileged: real processes in real network namespaces and cgroup v2 directories laid out as
// kubelet lays them out, found by pod UID.

#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "datapath/privileged_util.h"
#include "meshtls/workload/pod_locator.h"

namespace meshtls::workload {
namespace {

namespace fs = std::filesystem;

// A "pod": a sleeping child moved into `cgroup`, in the network namespace at `netns` (a pinned
// one from `ip netns add`) or in a fresh unnamed one when `netns` is empty.
class PodProcess {
 public:
  PodProcess(const std::string& cgroup, const std::string& netns) {
    int ready[2];
    if (::pipe(ready) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(ready[0]);
      std::ofstream(cgroup + "/cgroup.procs") << "0" << std::flush;
      if (netns.empty()) {
        if (::unshare(CLONE_NEWNET) != 0) _exit(2);
      } else {
        const int fd = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) _exit(3);
      }
      (void)!::write(ready[1], "x", 1);
      ::pause();
      _exit(0);
    }
    ::close(ready[1]);
    char byte;
    ok_ = ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
  }
  ~PodProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool ok() const { return ok_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool ok_ = false;
};

class PodLocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "this privileged test needs root (netns and cgroups); run it as root";
    const std::string mount = datapath::Cgroup2Root();
    ASSERT_FALSE(mount.empty()) << "no cgroup v2 hierarchy is mounted";
    root_ = mount + "/meshtls-test-kubelet-" + std::to_string(::getpid());
    ASSERT_TRUE(fs::create_directories(root_));
    netns_ = "meshtls-kube-" + std::to_string(::getpid());
    ASSERT_EQ(std::system(("ip netns add " + netns_).c_str()), 0);
  }
  void TearDown() override {
    (void)std::system(("ip netns delete " + netns_ + " 2>/dev/null").c_str());
    // cgroups are removed leaf first, once their processes are gone.
    std::vector<fs::path> dirs;
    for (auto it = fs::recursive_directory_iterator(root_); it != fs::recursive_directory_iterator(); ++it) {
      if (it->is_directory()) dirs.push_back(it->path());
    }
    std::sort(dirs.rbegin(), dirs.rend());
    for (const fs::path& d : dirs) ::rmdir(d.c_str());
    ::rmdir(root_.c_str());
  }
  std::string Make(const fs::path& relative) {
    const fs::path dir = fs::path(root_) / relative;
    fs::create_directories(dir);
    return dir.string();
  }

  std::string root_, netns_;
};

TEST_F(PodLocatorTest, SystemdDriverLayoutWithAPinnedNetns) {
  const std::string uid = "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f60";
  const std::string pod = Make("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8e7d6c5b_4a39_4281_9f0e_1d2c3b4a5f60.slice");
  const std::string sandbox_cg = Make(fs::path(pod) / "cri-containerd-aaaa.scope");
  const std::string app_cg = Make(fs::path(pod) / "cri-containerd-bbbb.scope");
  // Another pod whose UID shares a prefix: never mistaken for this one.
  Make("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8e7d6c5b_4a39_4281_9f0e_1d2c3b4a5f6f.slice");

  PodProcess sandbox(sandbox_cg, "/run/netns/" + netns_);
  ASSERT_TRUE(sandbox.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // start times differ by a tick
  PodProcess app(app_cg, "/run/netns/" + netns_);
  ASSERT_TRUE(app.ok());

  PodLocatorOptions options;
  options.cgroup_root = root_;
  PodLocator locator(options);
  auto placement = locator.Locate(uid);
  ASSERT_TRUE(placement.ok()) << placement.status();
  EXPECT_EQ(placement->cgroup_path, pod);
  EXPECT_EQ(placement->sandbox_pid, sandbox.pid()) << "the oldest process is the sandbox";
  EXPECT_EQ(placement->netns_path, "/run/netns/" + netns_) << "the runtime's pinned netns is preferred";
  EXPECT_TRUE(locator.StillValid(*placement));

  EXPECT_TRUE(absl::IsNotFound(locator.Locate("00000000-0000-4000-8000-000000000000").status()));
}

TEST_F(PodLocatorTest, CgroupfsDriverLayoutFallsBackToProc) {
  const std::string uid = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";
  const std::string pod = Make("kubepods/besteffort/pod" + uid);
  const std::string container = Make(fs::path(pod) / "0123456789abcdef");
  auto placement = PodLocator(PodLocatorOptions{root_, "/proc", "/run/netns"}).Locate(uid);
  EXPECT_TRUE(absl::IsNotFound(placement.status())) << "a pod cgroup with no process is not placed";

  {
    PodProcess sandbox(container, "");  // an unnamed netns, as a runtime that does not pin it
    ASSERT_TRUE(sandbox.ok());
    PodLocator locator(PodLocatorOptions{root_, "/proc", "/run/netns"});
    placement = locator.Locate(uid);
    ASSERT_TRUE(placement.ok()) << placement.status();
    EXPECT_EQ(placement->cgroup_path, pod);
    EXPECT_EQ(placement->netns_path, "/proc/" + std::to_string(sandbox.pid()) + "/ns/net");
    struct stat mine {}, theirs {};
    ASSERT_EQ(::stat("/proc/self/ns/net", &mine), 0);
    ASSERT_EQ(::stat(placement->netns_path.c_str(), &theirs), 0);
    EXPECT_NE(mine.st_ino, theirs.st_ino) << "the pod's netns, not the test's";
    EXPECT_TRUE(locator.StillValid(*placement));
  }
  // The process is gone: the /proc path no longer stands for the pod.
  EXPECT_FALSE(PodLocator(PodLocatorOptions{root_, "/proc", "/run/netns"}).StillValid(*placement));
}

}  // namespace
}  // namespace meshtls::workload
