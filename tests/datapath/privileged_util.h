#pragma once
// Helpers shared by the privileged datapath tests: cgroups, network namespaces, sockets.
#include <arpa/inet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <string>

namespace meshtls::datapath {

inline std::string Cgroup2Root() {
  std::ifstream mounts("/proc/mounts");
  std::string dev, path, type, rest;
  while (mounts >> dev >> path >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return path;
  }
  return "";
}

// Runs `body` in a child process inside `cgroup`, in a fresh network namespace with lo up.
// Returns the child's exit code (0 = all good; other values name the failed step).
inline int RunInCgroupAndNetns(const std::string& cgroup, const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::ofstream(cgroup + "/cgroup.procs") << "0" << std::flush;
    if (::unshare(CLONE_NEWNET) != 0) _exit(90);
    int s = ::socket(AF_INET, SOCK_DGRAM, 0);
    ifreq ifr{};
    std::strcpy(ifr.ifr_name, "lo");
    ifr.ifr_flags = IFF_UP;
    if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0) _exit(91);
    ::close(s);
    _exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 99;
}

inline int ListenOn(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 1024) != 0) return -1;
  return fd;
}

inline int ConnectTo(in_addr addr, uint16_t port, int* error) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr = addr;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    *error = errno;
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace meshtls::datapath
