// Privileged: sk_lookup inbound capture between two network namespaces joined by a veth pair
// that the test creates (addresses from TEST-NET-1) and removes.
#include "meshtls/datapath/inbound_capture.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace meshtls::datapath {
namespace {

int Sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

class InboundCaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "privileged test: run as root (CI does)";
    const std::string id = std::to_string(::getpid());
    client_ns_ = "meshtls-c-" + id;
    pod_ns_ = "meshtls-p-" + id;
    ASSERT_EQ(Sh("ip netns add " + client_ns_), 0);
    ASSERT_EQ(Sh("ip netns add " + pod_ns_), 0);
    ASSERT_EQ(Sh("ip link add mtc" + id + " netns " + client_ns_ + " type veth peer name mtp" + id + " netns " + pod_ns_), 0);
    ASSERT_EQ(Sh("ip -n " + client_ns_ + " addr add 192.0.2.1/24 dev mtc" + id), 0);
    ASSERT_EQ(Sh("ip -n " + pod_ns_ + " addr add 192.0.2.2/24 dev mtp" + id), 0);
    for (const std::string& ns : {client_ns_, pod_ns_}) {
      ASSERT_EQ(Sh("ip -n " + ns + " link set lo up"), 0);
    }
    ASSERT_EQ(Sh("ip -n " + client_ns_ + " link set mtc" + id + " up"), 0);
    ASSERT_EQ(Sh("ip -n " + pod_ns_ + " link set mtp" + id + " up"), 0);
    ::inet_pton(AF_INET, "192.0.2.2", &pod_ip_);

    app_ = Listen(8080);
    capture_ = Listen(15006);
    tunnel_ = Listen(15008);
    auto capture = InboundCapture::Create(SteeringConfig{});
    ASSERT_TRUE(capture.ok()) << capture.status();
    inbound_ = std::move(*capture);
    ASSERT_TRUE(inbound_->AttachToNetns("/run/netns/" + pod_ns_).ok());
  }
  void TearDown() override {
    inbound_.reset();
    Sh("ip netns del " + client_ns_);
    Sh("ip netns del " + pod_ns_);
  }

  UniqueFd Listen(uint16_t port) {
    auto fd = SocketInNetns("/run/netns/" + pod_ns_, AF_INET, SOCK_STREAM | SOCK_NONBLOCK);
    EXPECT_TRUE(fd.ok()) << fd.status();
    const int one = 1;
    ::setsockopt(fd->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    EXPECT_EQ(::bind(fd->get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd->get(), 64), 0);
    return std::move(*fd);
  }

  // Connects from the client netns to the pod; returns 0 or the errno.
  int Connect(uint16_t port) {
    auto fd = SocketInNetns("/run/netns/" + client_ns_, AF_INET, SOCK_STREAM);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr = pod_ip_;
    const int rc = ::connect(fd->get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
    const int error = rc == 0 ? 0 : errno;
    if (rc == 0) clients_.push_back(std::move(*fd));
    return error;
  }

  // Which listener accepted the last connection: 'a'pp, 'c'apture, 't'unnel or '-'.
  char WhoAccepted() {
    pollfd fds[3] = {{app_.get(), POLLIN, 0}, {capture_.get(), POLLIN, 0}, {tunnel_.get(), POLLIN, 0}};
    if (::poll(fds, 3, 2000) <= 0) return '-';
    const char names[3] = {'a', 'c', 't'};
    for (int i = 0; i < 3; ++i) {
      if (fds[i].revents & POLLIN) {
        int accepted = ::accept(fds[i].fd, nullptr, nullptr);
        if (accepted >= 0) ::close(accepted);
        return names[i];
      }
    }
    return '-';
  }

  std::string client_ns_, pod_ns_;
  in_addr pod_ip_{};
  UniqueFd app_, capture_, tunnel_;
  std::vector<UniqueFd> clients_;
  std::unique_ptr<InboundCapture> inbound_;
};

ino_t NetnsInode(const char* path) {
  struct stat st {};
  return ::stat(path, &st) == 0 ? st.st_ino : 0;
}

TEST_F(InboundCaptureTest, SocketInNetnsOpensThereAndLeavesTheCallerAtHome) {
  const ino_t home = NetnsInode("/proc/thread-self/ns/net");
  ASSERT_NE(home, 0u);
  for (int i = 0; i < 3; ++i) {
    auto fd = SocketInNetns("/run/netns/" + pod_ns_, AF_INET, SOCK_STREAM);
    ASSERT_TRUE(fd.ok()) << fd.status();
    EXPECT_EQ(NetnsInode("/proc/thread-self/ns/net"), home) << "the calling thread must be back in its netns";
    // 192.0.2.2 exists only in the pod's namespace: binding it proves where the socket lives.
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr = pod_ip_;
    EXPECT_EQ(::bind(fd->get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << std::strerror(errno);
  }
  EXPECT_FALSE(SocketInNetns("/run/netns/meshtls-no-such-netns", AF_INET, SOCK_STREAM).ok());
  EXPECT_EQ(NetnsInode("/proc/thread-self/ns/net"), home);
}

TEST_F(InboundCaptureTest, StrictAndPermissiveGoToTheCaptureListenerButNotTheTunnelPort) {
  ASSERT_TRUE(inbound_->SetPod(pod_ip_, {1, MESHTLS_MODE_STRICT, {}}).ok());
  ASSERT_TRUE(inbound_->SetCaptureListener(pod_ip_, capture_.get()).ok());
  ASSERT_EQ(Connect(8080), 0);
  EXPECT_EQ(WhoAccepted(), 'c');
  ASSERT_EQ(Connect(15008), 0);
  EXPECT_EQ(WhoAccepted(), 't') << "the tunnel port must never be captured";
  ASSERT_TRUE(inbound_->SetPod(pod_ip_, {1, MESHTLS_MODE_PERMISSIVE, {}}).ok());
  ASSERT_EQ(Connect(8080), 0);
  EXPECT_EQ(WhoAccepted(), 'c');
}

TEST_F(InboundCaptureTest, DisableAndUnknownPodsAreLeftAlone) {
  ASSERT_TRUE(inbound_->SetCaptureListener(pod_ip_, capture_.get()).ok());
  ASSERT_EQ(Connect(8080), 0);
  EXPECT_EQ(WhoAccepted(), 'a') << "a pod not in the map";
  ASSERT_TRUE(inbound_->SetPod(pod_ip_, {1, MESHTLS_MODE_DISABLE, {}}).ok());
  ASSERT_EQ(Connect(8080), 0);
  EXPECT_EQ(WhoAccepted(), 'a');
}

TEST_F(InboundCaptureTest, StrictWithoutTheCaptureListenerIsRefusedPermissivePasses) {
  ASSERT_TRUE(inbound_->SetPod(pod_ip_, {1, MESHTLS_MODE_STRICT, {}}).ok());
  EXPECT_EQ(Connect(8080), ECONNREFUSED) << "STRICT must fail closed without the agent";
  EXPECT_EQ(WhoAccepted(), '-');
  ASSERT_TRUE(inbound_->SetPod(pod_ip_, {1, MESHTLS_MODE_PERMISSIVE, {}}).ok());
  ASSERT_EQ(Connect(8080), 0);
  EXPECT_EQ(WhoAccepted(), 'a');
}

TEST_F(InboundCaptureTest, ARestartedAgentAdoptsThePinnedLinkKeepsStrictClosedAndPrunesStaleOnes) {
  inbound_.reset();
  const std::string pin_dir = "/sys/fs/bpf/meshtls-capture-test-" + std::to_string(::getpid());
  SteeringConfig config;
  config.pin_dir = pin_dir;
  {
    auto first = InboundCapture::Create(config);
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE((*first)->AttachToNetns("/run/netns/" + pod_ns_).ok());
    ASSERT_TRUE((*first)->SetPod(pod_ip_, {1, MESHTLS_MODE_STRICT, {}}).ok());
    ASSERT_TRUE((*first)->SetCaptureListener(pod_ip_, capture_.get()).ok());
    (*first)->LeaveAttachedOnExit();
  }
  // The agent is gone and so is its listener: the pinned program still refuses STRICT traffic.
  capture_.reset();
  EXPECT_EQ(Connect(8080), ECONNREFUSED) << "STRICT must fail closed while the agent is down";
  {
    auto second = InboundCapture::Create(config);
    ASSERT_TRUE(second.ok()) << second.status();
    ASSERT_TRUE((*second)->AttachToNetns("/run/netns/" + pod_ns_).ok());
    EXPECT_EQ((*second)->PruneStaleLinks(), 0);
    capture_ = Listen(15006);
    ASSERT_TRUE((*second)->SetCaptureListener(pod_ip_, capture_.get()).ok());
    ASSERT_EQ(Connect(8080), 0);
    EXPECT_EQ(WhoAccepted(), 'c') << "the pod mode survived the restart in the pinned map";
    // One program in the netns, not two: a second attachment would have to be a second link.
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(pin_dir + "/links"),
                            std::filesystem::directory_iterator()), 1);
    (*second)->LeaveAttachedOnExit();
  }
  {
    // A third agent whose registry no longer has this pod: the stale link goes.
    auto third = InboundCapture::Create(config);
    ASSERT_TRUE(third.ok()) << third.status();
    EXPECT_EQ((*third)->PruneStaleLinks(), 1);
    capture_.reset();
    EXPECT_EQ(Connect(8080), 0) << "without the program the pod's own listener answers";
    EXPECT_EQ(WhoAccepted(), 'a');
  }
  std::filesystem::remove_all(pin_dir);
}

}  // namespace
}  // namespace meshtls::datapath
