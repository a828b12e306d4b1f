// Privileged (root, BPF, cgroup v2, network namespaces): the connect4 redirect and getpeername4
// on the running kernel. Every test makes its own cgroups and netns and removes them.
#include "meshtls/datapath/cgroup_steering.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <bpf/bpf.h>

#include "gtest/gtest.h"
#include "privileged_util.h"

namespace meshtls::datapath {
namespace {

namespace fs = std::filesystem;

class CgroupSteeringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "privileged test: run as root (CI does)";
    root_ = Cgroup2Root();
    ASSERT_FALSE(root_.empty()) << "no cgroup2 mount";
    base_ = root_ + "/meshtls-test-" + std::to_string(::getpid());
    ASSERT_TRUE(fs::create_directories(base_ + "/meshed")) << base_;
    fs::create_directories(base_ + "/plain");
    auto steering = CgroupSteering::Create(SteeringConfig{});
    ASSERT_TRUE(steering.ok()) << steering.status();
    steering_ = std::move(*steering);
    ASSERT_TRUE(steering_->AttachTo(base_).ok());
    meshed_id_ = *CgroupId(base_ + "/meshed");
    ASSERT_TRUE(steering_->SetMeshedCgroup(meshed_id_, {7, MESHTLS_MODE_STRICT, {}}).ok());
    ::inet_pton(AF_INET, "192.0.2.10", &endpoint_);  // TEST-NET-1: never routed anywhere
    ASSERT_TRUE(steering_->AddMeshEndpoint(endpoint_).ok());
  }
  void TearDown() override {
    steering_.reset();  // detaches the programs
    if (!base_.empty()) {
      ::rmdir((base_ + "/meshed").c_str());
      ::rmdir((base_ + "/plain").c_str());
      ::rmdir(base_.c_str());
    }
  }
  std::string root_, base_;
  std::unique_ptr<CgroupSteering> steering_;
  uint64_t meshed_id_ = 0;
  in_addr endpoint_{};
};

TEST_F(CgroupSteeringTest, MeshedConnectIsRedirectedAndTheAppSeesTheOriginalPeer) {
  const int rc = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    int listener = ListenOn(15001);
    if (listener < 0) return 1;
    int error = 0;
    int client = ConnectTo(endpoint_, 80, &error);
    if (client < 0) return 2;
    int accepted = ::accept(listener, nullptr, nullptr);
    if (accepted < 0) return 3;
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    ::getpeername(client, reinterpret_cast<sockaddr*>(&peer), &len);
    if (peer.sin_addr.s_addr != endpoint_.s_addr || ntohs(peer.sin_port) != 80) return 4;
    uint64_t cookie = 0;
    socklen_t cookie_len = sizeof(cookie);
    if (::getsockopt(client, SOL_SOCKET, SO_COOKIE, &cookie, &cookie_len) != 0) return 5;
    auto original = steering_->OriginalDestination(cookie);  // map fds are inherited
    if (!original.ok() || !*original) return 6;
    if ((*original)->addr4 != endpoint_.s_addr || ntohs((*original)->port) != 80) return 7;
    // Loopback and non-endpoint destinations are left alone.
    in_addr other{};
    ::inet_pton(AF_INET, "192.0.2.11", &other);
    if (ConnectTo(other, 80, &error) >= 0 || error != ENETUNREACH) return 8;
    return 0;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

TEST_F(CgroupSteeringTest, AttachedLinksAreDescribedWithKernelIds) {
  const std::vector<AttachedLink> links = steering_->Links();
  ASSERT_EQ(links.size(), 5u);  // connect4/6, getpeername4/6, sockops
  for (const AttachedLink& link : links) {
    EXPECT_GT(link.program_id, 0u);
    EXPECT_GT(link.link_id, 0u);
    EXPECT_EQ(link.attach_point, base_);
    EXPECT_EQ(link.program_name.rfind("meshtls_", 0), 0u) << link.program_name;
  }
}

TEST_F(CgroupSteeringTest, NonMeshedCgroupIsUntouched) {
  const int rc = RunInCgroupAndNetns(base_ + "/plain", [&] {
    int listener = ListenOn(15001);
    if (listener < 0) return 1;
    int error = 0;
    // Not redirected: the netns has no route to the endpoint, so the connect fails at once.
    if (ConnectTo(endpoint_, 80, &error) >= 0) return 2;
    return error == ENETUNREACH ? 0 : 3;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

TEST_F(CgroupSteeringTest, ExcludedPortsAndAgentPortsAreNotRedirected) {
  ASSERT_TRUE(steering_->AddExcludedPort(5432).ok());
  const int rc = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    int listener = ListenOn(15001);
    if (listener < 0) return 1;
    for (uint16_t port : {5432, 15008, 15001}) {
      int error = 0;
      if (ConnectTo(endpoint_, port, &error) >= 0 || error != ENETUNREACH) return 10 + (port % 10);
    }
    return 0;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

TEST_F(CgroupSteeringTest, AgentReadsTheOriginalDestinationFromTheAcceptedSocketAndNothingLeaks) {
  const int rc = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    const rlimit files{4096, 4096};
    if (::setrlimit(RLIMIT_NOFILE, &files) != 0) return 9;
    int listener = ListenOn(15001);
    if (listener < 0) return 1;
    std::vector<int> clients, accepted;
    for (int i = 0; i < 1000; ++i) {
      int error = 0;
      int fd = ConnectTo(endpoint_, static_cast<uint16_t>(30000 + i), &error);
      if (fd < 0) return 2;
      clients.push_back(fd);
      int a = ::accept(listener, nullptr, nullptr);
      if (a < 0) return 3;
      accepted.push_back(a);
    }
    // Accept order equals connect order here; the agent side knows only the accepted socket.
    for (int i = 0; i < 1000; ++i) {
      auto original = steering_->OriginalDestinationOf(accepted[i]);
      if (!original.ok() || !*original) return 4;
      if ((*original)->addr4 != endpoint_.s_addr || ntohs((*original)->port) != 30000 + i) return 5;
    }
    auto tracked = steering_->TrackedConnectionCount();
    if (!tracked.ok() || *tracked != 1000) return 6;
    // A connection the agent accepted that was not steered has no entry.
    int direct = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in self{};
    self.sin_family = AF_INET;
    self.sin_port = htons(15001);
    self.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(direct, reinterpret_cast<sockaddr*>(&self), sizeof(self)) != 0) return 7;
    int direct_accepted = ::accept(listener, nullptr, nullptr);
    auto none = steering_->OriginalDestinationOf(direct_accepted);
    if (!none.ok() || none->has_value()) return 8;
    for (int fd : clients) ::close(fd);
    for (int fd : accepted) ::close(fd);
    // Entries leave with their sockets (the close path runs as the sockets finish closing).
    for (int tries = 0; tries < 100; ++tries) {
      if (*steering_->TrackedConnectionCount() == 0) return 0;
      ::usleep(20000);
    }
    return 10;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

TEST_F(CgroupSteeringTest, OriginalDestinationsAreExactForAThousandConcurrentConnections) {
  const int rc = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    const rlimit files{4096, 4096};  // the VM guest starts with 1024
    if (::setrlimit(RLIMIT_NOFILE, &files) != 0) return 9;
    int listener = ListenOn(15001);
    if (listener < 0) return 1;
    std::vector<int> clients;
    for (int i = 0; i < 1000; ++i) {
      // Many destinations on one endpoint: ports 20000..20999.
      int error = 0;
      int fd = ConnectTo(endpoint_, static_cast<uint16_t>(20000 + i), &error);
      if (fd < 0) return 2;
      clients.push_back(fd);
      int accepted = ::accept(listener, nullptr, nullptr);
      if (accepted < 0) return 3;
      ::close(accepted);  // only the connecting side's entry matters here
    }
    for (int i = 0; i < 1000; ++i) {
      uint64_t cookie = 0;
      socklen_t len = sizeof(cookie);
      ::getsockopt(clients[i], SOL_SOCKET, SO_COOKIE, &cookie, &len);
      auto original = steering_->OriginalDestination(cookie);
      if (!original.ok() || !*original || ntohs((*original)->port) != 20000 + i) return 4;
    }
    return 0;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

TEST_F(CgroupSteeringTest, Ipv6ConnectIsRedirectedToTheLoopbackListener) {
  in6_addr endpoint6{};
  ::inet_pton(AF_INET6, "2001:db8::10", &endpoint6);  // documentation prefix: never routed
  ASSERT_TRUE(steering_->AddMeshEndpoint(endpoint6).ok());
  const int rc = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    int listener = ::socket(AF_INET6, SOCK_STREAM, 0);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(15001);
    a.sin6_addr = in6addr_loopback;
    if (::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(listener, 8) != 0) return 1;
    int client = ::socket(AF_INET6, SOCK_STREAM, 0);
    sockaddr_in6 dst{};
    dst.sin6_family = AF_INET6;
    dst.sin6_port = htons(443);
    dst.sin6_addr = endpoint6;
    if (::connect(client, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0) return 2;
    sockaddr_in6 peer{};
    socklen_t len = sizeof(peer);
    ::getpeername(client, reinterpret_cast<sockaddr*>(&peer), &len);
    if (std::memcmp(&peer.sin6_addr, &endpoint6, sizeof(endpoint6)) != 0 || ntohs(peer.sin6_port) != 443) return 3;
    uint64_t cookie = 0;
    socklen_t cookie_len = sizeof(cookie);
    ::getsockopt(client, SOL_SOCKET, SO_COOKIE, &cookie, &cookie_len);
    auto original = steering_->OriginalDestination(cookie);
    if (!original.ok() || !*original || (*original)->family != AF_INET6 || ntohs((*original)->port) != 443) return 4;
    return 0;
  });
  EXPECT_EQ(rc, 0) << "failed step " << rc;
}

class PinnedSteeringTest : public CgroupSteeringTest {
 protected:
  void SetUp() override {
    CgroupSteeringTest::SetUp();
    steering_.reset();  // the base fixture's unpinned attachment goes away
    ASSERT_TRUE(EnsureBpffs().ok());
    config_.pin_dir = "/sys/fs/bpf/meshtls-test-" + std::to_string(::getpid());
  }
  void TearDown() override {
    CgroupSteeringTest::TearDown();
    std::error_code ec;
    fs::remove_all(config_.pin_dir, ec);
  }
  uint32_t Attached() { return *AttachedProgramCount(base_, BPF_CGROUP_INET4_CONNECT); }
  std::unique_ptr<CgroupSteering> Start() {
    auto s = CgroupSteering::Create(config_);
    EXPECT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE((*s)->AttachTo(base_).ok());
    return std::move(*s);
  }
  SteeringConfig config_;
};

TEST_F(PinnedSteeringTest, KilledAgentFailsClosedAndRestartAdoptsWithoutDuplicates) {
  ASSERT_EQ(Attached(), 0u);
  auto first = Start();
  ASSERT_TRUE(first->SetMeshedCgroup(meshed_id_, {1, MESHTLS_MODE_STRICT, {}}).ok());
  ASSERT_TRUE(first->AddMeshEndpoint(endpoint_).ok());
  ASSERT_EQ(Attached(), 1u);
  // The agent dies (as after kill -9): its pins keep the programs attached.
  first->LeaveAttachedOnExit();
  first.reset();
  EXPECT_EQ(Attached(), 1u);

  // With no agent listening, a STRICT pod's connect to a mesh endpoint is refused: it is still
  // steered to the agent's port, never sent in plaintext to the endpoint.
  const int refused = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    int error = 0;
    if (ConnectTo(endpoint_, 80, &error) >= 0) return 1;
    return error == ECONNREFUSED ? 0 : 2;
  });
  EXPECT_EQ(refused, 0) << "failed step " << refused;

  // A restarted agent adopts the pinned links (no second attachment) and the pinned maps (the
  // workload entries survive), and steering works again.
  auto second = Start();
  EXPECT_EQ(Attached(), 1u) << "restart stacked a duplicate attachment";
  const int redirected = RunInCgroupAndNetns(base_ + "/meshed", [&] {
    int listener = ListenOn(15001);
    int error = 0;
    if (listener < 0) return 1;
    return ConnectTo(endpoint_, 80, &error) >= 0 ? 0 : 2;
  });
  EXPECT_EQ(redirected, 0) << "failed step " << redirected;

  // A clean shutdown detaches and removes the pins.
  second.reset();
  EXPECT_EQ(Attached(), 0u);
  EXPECT_TRUE(fs::is_empty(config_.pin_dir + "/links"));
}

TEST_F(PinnedSteeringTest, AnIncompatiblePinnedMapIsReplacedNotFatal) {
  // Left behind by some other version: same name, different value size.
  fs::create_directories(config_.pin_dir + "/maps");
  const int stale = bpf_map_create(BPF_MAP_TYPE_HASH, "meshed_cgroups", 8, 64, 16, nullptr);
  ASSERT_GE(stale, 0);
  ASSERT_EQ(bpf_obj_pin(stale, (config_.pin_dir + "/maps/meshed_cgroups").c_str()), 0);
  ::close(stale);
  auto steering = CgroupSteering::Create(config_);
  ASSERT_TRUE(steering.ok()) << steering.status();
  ASSERT_TRUE((*steering)->SetMeshedCgroup(meshed_id_, {1, MESHTLS_MODE_STRICT, {}}).ok());
  const int pinned = bpf_obj_get((config_.pin_dir + "/maps/meshed_cgroups").c_str());
  ASSERT_GE(pinned, 0);
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  ASSERT_EQ(bpf_obj_get_info_by_fd(pinned, &info, &len), 0);
  EXPECT_EQ(info.value_size, sizeof(meshtls_workload)) << "the stale map must have been replaced";
  ::close(pinned);
}

TEST_F(PinnedSteeringTest, UnpinnedSteeringDetachesWithTheObject) {
  auto steering = CgroupSteering::Create(SteeringConfig{});
  ASSERT_TRUE(steering.ok());
  ASSERT_TRUE((*steering)->AttachTo(base_).ok());
  EXPECT_EQ(Attached(), 1u);
  steering->reset();
  EXPECT_EQ(Attached(), 0u);
}

}  // namespace
}  // namespace meshtls::datapath
