// make bench-steering: the app -> agent local leg, as the agent really steers it, against no agent.
//   bench_steering [--config all|direct|relay|relay+shortcut] [--bytes B] [--rtts N] [--label TEXT]
// Root only (BPF, cgroup v2, a network namespace). One JSON line per configuration on stdout.
// Not a test: it asserts nothing about speed; it does refuse to report a configuration that is not
// what its name says (a shortcut that did not engage, a connection that was not steered).
//
// Process layout: the server and the agent are threads of this process, which sits in an "agent"
// cgroup; each app phase is a forked child in a "meshed" cgroup. All share one fresh netns.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/tcp.h>  // glibc's tcp_info lacks tcpi_bytes_received
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meshtls/common/event_loop.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/datapath/cgroup_steering.h"
#include "meshtls/datapath/local_leg_shortcut.h"
#include "meshtls/tls/plain_relay.h"
#include "privileged_util.h"
#include "spdlog/spdlog.h"

namespace {

using namespace meshtls;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr uint16_t kMeshPort = 80;
constexpr const char* kMeshAddress = "192.0.2.10";  // TEST-NET-1: reachable only through the redirect
constexpr size_t kChunk = 256 * 1024;
constexpr size_t kMessage = 64;
// More than this many local-leg bytes through TCP means the shortcut fell back (the unit test
// uses the same bound: a few bytes may precede the sockhash insertion on some kernels).
constexpr uint64_t kShortcutTcpSlack = 4096;

enum class Config { kDirect, kRelay, kRelayShortcut };

const char* Name(Config c) {
  switch (c) {
    case Config::kDirect:
      return "direct";
    case Config::kRelay:
      return "relay";
    case Config::kRelayShortcut:
      return "relay+shortcut";
  }
  return "?";
}

struct Figures {
  double gbit_per_s = 0;
  double cpu_s_per_gb = 0;
  double rtt_p50_us = 0;
  double rtt_p99_us = 0;
  // Bytes the agent's accepted local-leg sockets received through TCP (not through the shortcut).
  uint64_t local_leg_tcp_bytes = 0;
  // The same for the app's sockets (the answers coming back to it).
  uint64_t app_tcp_bytes = 0;
  // EAGAIN from recv() on the app's blocking socket. Never happens on plain TCP; with the
  // shortcut, tcp_bpf_recvmsg() returns it when bytes arrive through TCP while it waits on the
  // sk_msg queue. The app retries (as a benchmark must, to finish) but it is counted and shown.
  uint64_t app_spurious_eagain = 0;
  std::string error;
};

double ProcessTreeCpuSeconds() {
  auto seconds = [](const rusage& r) {
    return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  };
  rusage self{}, children{};
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);  // reaped children only: read it after waitpid()
  return seconds(self) + seconds(children);
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text << std::flush;
  if (!out) return absl::InternalError(StrCat("write ", text, " to ", path));
  return absl::OkStatus();
}

void NoDelay(int fd) {
  // A real agent and a latency-sensitive app both disable Nagle; without it the 64-byte
  // ping-pong measures delayed ACKs, not the datapath.
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

uint64_t TcpBytesReceived(int fd) {
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return 0;
  return info.tcpi_bytes_received;
}

sockaddr_in Address(in_addr addr, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr = addr;
  return a;
}

absl::StatusOr<UniqueFd> Listen(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket");
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a = Address(in_addr{htonl(INADDR_LOOPBACK)}, port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return ErrnoStatus(errno, "bind");
  if (::listen(fd.get(), 64) != 0) return ErrnoStatus(errno, "listen");
  return fd;
}

uint16_t PortOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

UniqueFd Connect(in_addr addr, uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = Address(addr, port);
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return UniqueFd();
  NoDelay(fd.get());
  return fd;
}

// `eagain`: where to count EAGAIN on a blocking socket (then retried); null: EAGAIN fails.
bool ReadExactly(int fd, char* buf, size_t n, uint64_t* eagain = nullptr) {
  for (size_t got = 0; got < n;) {
    const ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r < 0 && errno == EAGAIN && eagain) {
      ++*eagain;
      continue;
    }
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const char* buf, size_t n) {
  for (size_t done = 0; done < n;) {
    const ssize_t w = ::send(fd, buf + done, n - done, MSG_NOSIGNAL);
    if (w <= 0) return false;
    done += static_cast<size_t>(w);
  }
  return true;
}

// The agent: a listener on the outbound port in this process's (agent) cgroup, and one
// PlainRelay per accepted connection to the server, on its own event loop thread.
class Agent {
 public:
  static absl::StatusOr<std::unique_ptr<Agent>> Start(const datapath::CgroupSteering* steering,
                                                      const datapath::LocalLegShortcut* shortcut,
                                                      uint16_t server_port) {
    std::unique_ptr<Agent> agent(new Agent());
    agent->steering_ = steering;
    agent->shortcut_ = shortcut;
    agent->server_port_ = server_port;
    ASSIGN_OR_RETURN(agent->listener_, Listen(datapath::SteeringConfig{}.outbound_port));
    // OnAccept() drains the backlog until EAGAIN; a blocking accept would stall the loop.
    if (::fcntl(agent->listener_.get(), F_SETFL, O_NONBLOCK) != 0) return ErrnoStatus(errno, "fcntl(O_NONBLOCK)");
    ASSIGN_OR_RETURN(agent->loop_, EventLoop::Create());
    Agent* self = agent.get();
    RETURN_IF_ERROR(agent->loop_->Add(agent->listener_.get(), EPOLLIN, [self](uint32_t) { self->OnAccept(); }));
    agent->thread_ = std::thread([self] { self->loop_->Run(); });
    return agent;
  }

  ~Agent() {
    if (loop_) loop_->Stop();
    if (thread_.joinable()) thread_.join();
  }

  // Waits until every relay started so far has closed; returns the first error seen, if any.
  std::string WaitIdle(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_.empty()) return error_;
        if (open_relays_ == 0) return "";
      }
      if (Clock::now() > deadline) return "agent: relays still open after the app finished";
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  uint64_t local_leg_tcp_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return local_leg_tcp_bytes_;
  }

 private:
  Agent() = default;

  void Fail(std::string what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) error_ = std::move(what);
  }

  void OnAccept() {
    for (;;) {
      UniqueFd local(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!local) return;
      if (absl::Status st = Relay(std::move(local)); !st.ok()) Fail(StrCat("agent: ", st.message()));
    }
  }

  absl::Status Relay(UniqueFd local) {
    ASSIGN_OR_RETURN(auto original, steering_->OriginalDestinationOf(local.get()));
    in_addr mesh{};
    ::inet_pton(AF_INET, kMeshAddress, &mesh);
    if (!original || original->family != AF_INET || original->addr4 != mesh.s_addr ||
        ntohs(original->port) != kMeshPort) {
      return absl::FailedPreconditionError("accepted a connection that was not steered from 192.0.2.10:80");
    }
    if (shortcut_) {
      ASSIGN_OR_RETURN(bool in_map, shortcut_->IsShortcut(local.get()));
      if (!in_map) return absl::FailedPreconditionError("the accepted local leg is not in the shortcut sockhash");
    }
    NoDelay(local.get());
    // Stands in for the tunnel socket: a second loopback TCP leg, as in the real agent.
    UniqueFd upstream = Connect(in_addr{htonl(INADDR_LOOPBACK)}, server_port_);
    if (!upstream) return ErrnoStatus(errno, "connect to the server");
    // A second reference keeps the socket open after the relay closes its fd, so TCP_INFO can
    // still tell how many bytes of this leg went through TCP rather than through the shortcut.
    auto watch = std::make_shared<UniqueFd>(::fcntl(local.get(), F_DUPFD_CLOEXEC, 0));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++open_relays_;
    }
    tls::PlainRelayOptions options;
    options.a_read_with_recv = shortcut_ != nullptr;
    auto relay = tls::PlainRelay::Start(*loop_, std::move(local), std::move(upstream), options,
                                        [this, watch](const tls::PlainRelayResult& r) {
                                          std::lock_guard<std::mutex> lock(mutex_);
                                          local_leg_tcp_bytes_ += TcpBytesReceived(watch->get());
                                          --open_relays_;
                                          if (r.reason != tls::FailureReason::kNone && error_.empty()) {
                                            error_ = StrCat("relay: ", r.detail);
                                          }
                                        });
    if (!relay.ok()) {
      std::lock_guard<std::mutex> lock(mutex_);
      --open_relays_;
      return relay.status();
    }
    return absl::OkStatus();
  }

  const datapath::CgroupSteering* steering_ = nullptr;
  const datapath::LocalLegShortcut* shortcut_ = nullptr;
  uint16_t server_port_ = 0;
  UniqueFd listener_;
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
  std::mutex mutex_;
  int open_relays_ = 0;
  uint64_t local_leg_tcp_bytes_ = 0;
  std::string error_;
};

// Runs `body` in a child placed in the meshed cgroup; the child writes its `result` bytes back
// through a pipe. Returns the child's exit code (0: fine; others name the failed step).
int RunApp(const std::string& app_cgroup, const std::function<int(std::string*)>& body, std::string* result) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return 100;
  const pid_t pid = ::fork();
  if (pid < 0) return 101;
  if (pid == 0) {
    ::close(fds[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed benchmark (the cgroup would stay busy)
    if (!WriteFile(app_cgroup + "/cgroup.procs", "0").ok()) _exit(102);
    std::string out;
    const int code = body(&out);
    if (code == 0 && ::write(fds[1], out.data(), out.size()) != static_cast<ssize_t>(out.size())) _exit(103);
    _exit(code);
  }
  ::close(fds[1]);
  char buf[4096];
  result->clear();
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) result->append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Target {
  in_addr addr;
  uint16_t port;
};

// Throughput: the app sends `bytes` in 256 KiB writes and half-closes; the server counts to EOF and
// answers one byte, so the app's clock covers delivery of the last byte, not only its send().
void MeasureThroughput(int server_listener, const Target& target, const std::string& app_cgroup, uint64_t bytes,
                       Agent* agent, Figures* f) {
  std::atomic<uint64_t> received{0};
  std::thread server([&] {
    UniqueFd conn(::accept4(server_listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    NoDelay(conn.get());
    std::vector<char> buf(kChunk);
    uint64_t total = 0;
    for (ssize_t n; (n = ::recv(conn.get(), buf.data(), buf.size(), 0)) > 0;) total += static_cast<uint64_t>(n);
    received = total;
    WriteAll(conn.get(), "k", 1);
  });
  const double cpu0 = ProcessTreeCpuSeconds();
  std::string out;
  const int code = RunApp(
      app_cgroup,
      [&](std::string* result) {
        UniqueFd fd = Connect(target.addr, target.port);
        if (!fd) return 10;
        std::vector<char> buf(kChunk, 'x');
        const auto t0 = Clock::now();
        for (uint64_t sent = 0; sent < bytes;) {
          const ssize_t n = ::send(fd.get(), buf.data(), std::min<uint64_t>(buf.size(), bytes - sent), MSG_NOSIGNAL);
          if (n <= 0) return 11;
          sent += static_cast<uint64_t>(n);
        }
        ::shutdown(fd.get(), SHUT_WR);
        char ack = 0;
        uint64_t eagain = 0;
        errno = 0;
        if (!ReadExactly(fd.get(), &ack, 1, &eagain) || ack != 'k') {
          fprintf(stderr, "bench_steering: app: no acknowledgement from the server: %s\n",
                  errno ? std::strerror(errno) : "end of stream");
          return 12;
        }
        const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
        if (eagain) fprintf(stderr, "bench_steering: app: %llu spurious EAGAIN waiting for the last byte's answer\n",
                            static_cast<unsigned long long>(eagain));
        *result = StrCat(seconds, " ", eagain, " ", TcpBytesReceived(fd.get()));
        return 0;
      },
      &out);
  if (code != 0) {
    // Unblock a server still waiting in accept() or recv() (the app died before connecting).
    ::shutdown(server_listener, SHUT_RD);
  }
  server.join();
  if (agent) {
    if (std::string e = agent->WaitIdle(std::chrono::seconds(30)); !e.empty()) f->error = e;
  }
  const double cpu = ProcessTreeCpuSeconds() - cpu0;
  if (code != 0) {
    if (f->error.empty()) {
      f->error = StrCat("throughput app failed at step ", code, " (the server received ", received.load(), " of ",
                        bytes, " bytes)");
    }
    return;
  }
  if (received != bytes) {
    if (f->error.empty()) f->error = StrCat("server received ", received.load(), " of ", bytes, " bytes");
    return;
  }
  double seconds = 0;
  unsigned long long eagain = 0, app_tcp = 0;
  if (std::sscanf(out.c_str(), "%lf %llu %llu", &seconds, &eagain, &app_tcp) != 3 || seconds <= 0) {
    f->error = "throughput app sent no figures";
    return;
  }
  f->app_spurious_eagain += eagain;
  f->app_tcp_bytes += app_tcp;
  f->gbit_per_s = static_cast<double>(bytes) * 8 / seconds / 1e9;
  f->cpu_s_per_gb = cpu / (static_cast<double>(bytes) / 1e9);
}

// Latency: a fresh connection; 64-byte request, 64-byte answer, one at a time.
void MeasureLatency(int server_listener, const Target& target, const std::string& app_cgroup, int rtts, Agent* agent,
                    Figures* f) {
  std::thread server([&] {
    UniqueFd conn(::accept4(server_listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    NoDelay(conn.get());
    char buf[kMessage];
    while (ReadExactly(conn.get(), buf, sizeof(buf)) && WriteAll(conn.get(), buf, sizeof(buf))) {
    }
  });
  std::string out;
  const int code = RunApp(
      app_cgroup,
      [&](std::string* result) {
        UniqueFd fd = Connect(target.addr, target.port);
        if (!fd) return 20;
        char buf[kMessage];
        std::memset(buf, 'p', sizeof(buf));
        // Warm-up: first-touch page faults and wakeups of idle threads are not the datapath.
        const int warmup = std::max(100, rtts / 10);
        uint64_t eagain = 0;
        std::vector<double> us;
        us.reserve(static_cast<size_t>(rtts));
        for (int i = 0; i < warmup + rtts; ++i) {
          const auto t0 = Clock::now();
          if (!WriteAll(fd.get(), buf, sizeof(buf)) || !ReadExactly(fd.get(), buf, sizeof(buf), &eagain)) return 21;
          if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
        }
        if (eagain) fprintf(stderr, "bench_steering: app: %llu spurious EAGAIN during the ping-pong\n",
                            static_cast<unsigned long long>(eagain));
        std::sort(us.begin(), us.end());
        *result = StrCat(us[us.size() / 2], " ", us[us.size() * 99 / 100], " ", eagain, " ", TcpBytesReceived(fd.get()));
        return 0;
      },
      &out);
  if (code != 0) ::shutdown(server_listener, SHUT_RD);
  server.join();
  if (agent) {
    if (std::string e = agent->WaitIdle(std::chrono::seconds(30)); !e.empty() && f->error.empty()) f->error = e;
  }
  if (code != 0) {
    if (f->error.empty()) f->error = StrCat("latency app failed at step ", code);
    return;
  }
  unsigned long long eagain = 0, app_tcp = 0;
  if (std::sscanf(out.c_str(), "%lf %lf %llu %llu", &f->rtt_p50_us, &f->rtt_p99_us, &eagain, &app_tcp) != 4) {
    if (f->error.empty()) f->error = "latency app sent no figures";
    return;
  }
  f->app_spurious_eagain += eagain;
  f->app_tcp_bytes += app_tcp;
}

struct Cgroups {
  std::string base, app, agent, original;
};

Figures RunConfig(Config config, const Cgroups& cg, uint64_t bytes, int rtts) {
  Figures f;
  auto fail = [&f](const absl::Status& st) {
    f.error = std::string(st.message());
    return f;
  };
  // A fresh server listener per configuration: a failed run cannot leave a connection queued
  // for the next one.
  auto server = Listen(0);
  if (!server.ok()) return fail(server.status());
  const uint16_t server_port = PortOf(server->get());

  std::unique_ptr<datapath::CgroupSteering> steering;
  std::unique_ptr<datapath::LocalLegShortcut> shortcut;
  std::unique_ptr<Agent> agent;
  Target target{in_addr{htonl(INADDR_LOOPBACK)}, server_port};
  if (config != Config::kDirect) {
    auto s = datapath::CgroupSteering::Create(datapath::SteeringConfig{});
    if (!s.ok()) return fail(s.status());
    steering = *std::move(s);
    if (absl::Status st = steering->AttachTo(cg.app); !st.ok()) return fail(st);
    auto id = datapath::CgroupId(cg.app);
    if (!id.ok()) return fail(id.status());
    if (absl::Status st = steering->SetMeshedCgroup(*id, {1, MESHTLS_MODE_STRICT, {}}); !st.ok()) return fail(st);
    ::inet_pton(AF_INET, kMeshAddress, &target.addr);
    target.port = kMeshPort;
    if (absl::Status st = steering->AddMeshEndpoint(target.addr); !st.ok()) return fail(st);
  }
  if (config == Config::kRelayShortcut) {
    auto s = datapath::LocalLegShortcut::Create(datapath::SteeringConfig{});
    if (!s.ok()) return fail(s.status());
    shortcut = *std::move(s);
    // Both ends: the app's socket is born in the meshed cgroup, the accepted one inherits the
    // listener's cgroup, which is this process's (agent) cgroup.
    for (const std::string& path : {cg.app, cg.agent}) {
      if (absl::Status st = shortcut->AttachTo(path); !st.ok()) return fail(st);
    }
  }
  if (steering) {
    auto a = Agent::Start(steering.get(), shortcut.get(), server_port);
    if (!a.ok()) return fail(a.status());
    agent = *std::move(a);
  }
  MeasureThroughput(server->get(), target, cg.app, bytes, agent.get(), &f);
  if (f.error.empty()) MeasureLatency(server->get(), target, cg.app, rtts, agent.get(), &f);
  if (agent) f.local_leg_tcp_bytes = agent->local_leg_tcp_bytes();
  if (f.error.empty() && shortcut && f.local_leg_tcp_bytes > 2 * kShortcutTcpSlack) {
    f.error = StrCat("the shortcut fell back to TCP: ", f.local_leg_tcp_bytes,
                     " local-leg bytes reached the agent through TCP");
  }
  if (f.error.empty() && shortcut && f.app_tcp_bytes > 2 * kShortcutTcpSlack) {
    f.error = StrCat("the shortcut fell back to TCP towards the app: ", f.app_tcp_bytes, " bytes");
  }
  if (f.error.empty() && config == Config::kRelay && f.local_leg_tcp_bytes < bytes) {
    f.error = "the relay's local leg did not carry the stream over TCP";
  }
  agent.reset();  // before the programs go: the loop thread may still touch the maps
  return f;
}

std::string JsonEscaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

// A killed run leaves its cgroups behind; remove those whose owner is gone.
void RemoveStaleCgroups(const std::string& root) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string prefix = "meshtls-bench-steering-";
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid = name.substr(prefix.size());
    if (fs::exists("/proc/" + pid)) continue;
    ::rmdir((entry.path() / "app").c_str());
    ::rmdir((entry.path() / "agent").c_str());
    ::rmdir(entry.path().c_str());
  }
}

absl::Status EnterFreshNetnsWithLoopback() {
  if (::unshare(CLONE_NEWNET) != 0) return ErrnoStatus(errno, "unshare(CLONE_NEWNET)");
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  ifr.ifr_flags = IFF_UP;
  if (!s || ::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return ErrnoStatus(errno, "set lo up");
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  const uint64_t bytes = std::stoull(Arg(argc, argv, "--bytes", std::to_string(4ULL << 30)));
  const int rtts = std::stoi(Arg(argc, argv, "--rtts", "20000"));
  const std::string which = Arg(argc, argv, "--config", "all");
  const std::string label = Arg(argc, argv, "--label", "host");
  std::vector<Config> configs;
  for (Config c : {Config::kDirect, Config::kRelay, Config::kRelayShortcut}) {
    if (which == "all" || which == Name(c)) configs.push_back(c);
  }
  if (configs.empty() || bytes == 0 || rtts <= 0) {
    fprintf(stderr, "usage: bench_steering [--config all|direct|relay|relay+shortcut] [--bytes B] [--rtts N] "
                    "[--label TEXT]\n");
    return 2;
  }
  if (::geteuid() != 0) {
    fprintf(stderr, "bench_steering: needs root (BPF, cgroups, a network namespace)\n");
    return 2;
  }
  const std::string root = datapath::Cgroup2Root();
  if (root.empty()) {
    fprintf(stderr, "bench_steering: no cgroup2 mount in /proc/mounts\n");
    return 2;
  }
  RemoveStaleCgroups(root);
  Cgroups cg;
  cg.base = StrCat(root, "/meshtls-bench-steering-", ::getpid());
  cg.app = cg.base + "/app";
  cg.agent = cg.base + "/agent";
  auto original = datapath::OwnCgroupPath();
  if (!original.ok()) {
    fprintf(stderr, "bench_steering: %s\n", std::string(original.status().message()).c_str());
    return 2;
  }
  cg.original = *original;
  std::error_code ec;
  fs::create_directories(cg.app, ec);
  fs::create_directories(cg.agent, ec);
  // From here on every exit path goes through cleanup: the cgroups must not outlive the run.
  auto cleanup = [&cg] {
    (void)WriteFile(cg.original + "/cgroup.procs", "0");
    for (const std::string& dir : {cg.app, cg.agent, cg.base}) {
      if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) {
        fprintf(stderr, "bench_steering: could not remove %s: %s\n", dir.c_str(), std::strerror(errno));
      }
    }
  };
  // Before any thread exists: moving a process moves all its threads, and the listener (hence
  // every accepted local-leg socket) takes the cgroup its creator is in at socket() time.
  if (absl::Status st = WriteFile(cg.agent + "/cgroup.procs", "0"); !st.ok()) {
    fprintf(stderr, "bench_steering: %s\n", std::string(st.message()).c_str());
    cleanup();
    return 2;
  }
  if (absl::Status st = EnterFreshNetnsWithLoopback(); !st.ok()) {
    fprintf(stderr, "bench_steering: %s\n", std::string(st.message()).c_str());
    cleanup();
    return 2;
  }
  utsname uts{};
  uname(&uts);
  bool all_ok = true;
  for (Config c : configs) {
    // Other work on the machine skews every figure here (two CPUs): record how busy it was.
    double load = -1;
    if (FILE* l = std::fopen("/proc/loadavg", "r")) {
      if (std::fscanf(l, "%lf", &load) != 1) load = -1;
      std::fclose(l);
    }
    const Figures f = RunConfig(c, cg, bytes, rtts);
    all_ok = all_ok && f.error.empty();
    printf("{\"bench\": \"steering\", \"label\": \"%s\", \"config\": \"%s\", \"kernel\": \"%s\", \"bytes\": %llu, "
           "\"rtts\": %d, \"loadavg_1m_before\": %.2f, \"gbit_per_s\": %.3f, \"cpu_s_per_gb\": %.3f, \"rtt_p50_us\": %.2f, \"rtt_p99_us\": %.2f, "
           "\"local_leg_tcp_bytes\": %llu, \"app_tcp_bytes\": %llu, \"app_spurious_eagain\": %llu, \"ok\": %s, "
           "\"error\": \"%s\"}\n",
           label.c_str(), Name(c), uts.release, static_cast<unsigned long long>(bytes), rtts, load, f.gbit_per_s,
           f.cpu_s_per_gb, f.rtt_p50_us, f.rtt_p99_us, static_cast<unsigned long long>(f.local_leg_tcp_bytes),
           static_cast<unsigned long long>(f.app_tcp_bytes), static_cast<unsigned long long>(f.app_spurious_eagain),
           f.error.empty() ? "true" : "false", JsonEscaped(f.error).c_str());
    fflush(stdout);
    if (!f.error.empty()) fprintf(stderr, "bench_steering: %s: %s\n", Name(c), f.error.c_str());
  }
  cleanup();
  return all_ok ? 0 : 1;
}
