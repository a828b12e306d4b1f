#pragma once
// A test-only HTTPS server that plays the Kubernetes API server from recorded responses
// (testdata/kube/), step by step under the test's control. Hand-written because it must hold
// watch streams open, drop them mid-stream and refuse tokens on cue, which no packaged server
// does on command.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace meshtls::workload::testing {

inline std::string ReadTestData(const std::string& name) {
  std::ifstream in(std::string(MESHTLS_KUBE_TESTDATA) + "/" + name);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

class FakeApiServer {
 public:
  struct Request {
    std::string path;
    std::map<std::string, std::string> query;
    std::string authorization;
  };
  struct WatchAction {
    enum Kind { kLine, kEnd, kDrop, kRefuse } kind;
    std::string body;  // kLine: one JSON event; kRefuse: the Status body
    int status = 200;  // kRefuse
  };
  static WatchAction Line(std::string json) { return {WatchAction::kLine, std::move(json)}; }
  static WatchAction End() { return {WatchAction::kEnd, ""}; }
  static WatchAction Drop() { return {WatchAction::kDrop, ""}; }
  static WatchAction Refuse(int status, std::string body) { return {WatchAction::kRefuse, std::move(body), status}; }

  // Makes a throwaway self-signed certificate for 127.0.0.1 in `dir` (ca.crt is what clients
  // trust) and listens on an ephemeral port.
  static std::unique_ptr<FakeApiServer> Start(const std::string& dir) {
    // Writes to a client that went away must fail, not kill the test (the agent ignores SIGPIPE too).
    ::signal(SIGPIPE, SIG_IGN);
    const std::string command =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=kube-apiserver "
        "-addext subjectAltName=IP:127.0.0.1 -keyout " + dir + "/server.key -out " + dir + "/ca.crt 2>/dev/null";
    if (std::system(command.c_str()) != 0) return nullptr;
    auto server = std::unique_ptr<FakeApiServer>(new FakeApiServer());
    server->ctx_ = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_file(server->ctx_, (dir + "/ca.crt").c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(server->ctx_, (dir + "/server.key").c_str(), SSL_FILETYPE_PEM) != 1) {
      return nullptr;
    }
    server->listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (::bind(server->listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        ::listen(server->listener_, 64) != 0 ||
        ::getsockname(server->listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      return nullptr;
    }
    server->port_ = ntohs(address.sin_port);
    server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
    return server;
  }

  ~FakeApiServer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    }
    changed_.notify_all();
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    acceptor_.join();
    for (std::thread& t : handlers_) t.join();
    SSL_CTX_free(ctx_);
  }

  uint16_t port() const { return port_; }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }

  // The answer to lists of `route` ("pods-local", "pods-remote", "namespaces"): page i is sent
  // for continue=page-i.
  void SetList(const std::string& route, std::vector<std::string> pages, int status = 200) {
    std::lock_guard lock(mutex_);
    lists_[route] = {status, std::move(pages)};
  }
  void PushWatch(const std::string& route, std::vector<WatchAction> actions) {
    {
      std::lock_guard lock(mutex_);
      for (WatchAction& a : actions) watch_queue_[route].push_back(std::move(a));
    }
    changed_.notify_all();
  }
  // Requests without exactly this bearer token get 401 (empty: any token is fine).
  void RequireToken(std::string token) {
    std::lock_guard lock(mutex_);
    required_token_ = std::move(token);
  }
  // Waits until `route` has been asked for its n-th watch (1-based), and returns that request.
  std::optional<Request> WaitForWatch(const std::string& route, size_t n,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mutex_);
    if (!changed_.wait_for(lock, timeout, [&] { return watches_[route].size() >= n; })) return std::nullopt;
    return watches_[route][n - 1];
  }
  size_t ListCount(const std::string& route) {
    std::lock_guard lock(mutex_);
    return list_count_[route];
  }
  size_t Unauthorized() {
    std::lock_guard lock(mutex_);
    return unauthorized_;
  }

 private:
  FakeApiServer() = default;

  static std::string Decode(const std::string& text) {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '%' && i + 2 < text.size()) {
        out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        out += text[i] == '+' ? ' ' : text[i];
      }
    }
    return out;
  }

  static std::string RouteOf(const Request& r) {
    if (r.path == "/api/v1/namespaces") return "namespaces";
    auto selector = r.query.find("fieldSelector");
    if (r.path == "/api/v1/pods" && selector != r.query.end()) {
      return selector->second.find("!=") != std::string::npos ? "pods-remote" : "pods-local";
    }
    return "unknown";
  }

  void AcceptLoop() {
    for (;;) {
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      std::lock_guard lock(mutex_);
      if (stopping_) {
        ::close(fd);
        return;
      }
      open_.insert(fd);
      handlers_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  static bool Write(SSL* ssl, const std::string& data) {
    return data.empty() || SSL_write(ssl, data.data(), static_cast<int>(data.size())) > 0;
  }
  static std::string Chunk(const std::string& data) {
    std::ostringstream out;
    out << std::hex << data.size() << "\r\n" << data << "\r\n";
    return out.str();
  }
  static std::string Head(int status, const std::string& extra) {
    const char* reason = status == 200 ? "OK" : status == 401 ? "Unauthorized" : status == 410 ? "Gone" : "Error";
    return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: application/json\r\n" +
           "Connection: close\r\n" + extra + "\r\n";
  }
  static std::string Whole(int status, const std::string& body) {
    return Head(status, "Content-Length: " + std::to_string(body.size()) + "\r\n") + body;
  }

  void Serve(int fd) {
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    bool orderly = true;
    if (SSL_accept(ssl) == 1) orderly = Handle(ssl);
    if (orderly) SSL_shutdown(ssl);
    SSL_free(ssl);
    std::lock_guard lock(mutex_);
    open_.erase(fd);
    ::close(fd);
  }

  // False when the connection is to be dropped without a TLS close.
  bool Handle(SSL* ssl) {
    std::string head;
    char buffer[4096];
    while (head.find("\r\n\r\n") == std::string::npos) {
      const int n = SSL_read(ssl, buffer, sizeof(buffer));
      if (n <= 0) return false;
      head.append(buffer, static_cast<size_t>(n));
    }
    Request request;
    std::istringstream lines(head);
    std::string method, target, line;
    lines >> method >> target;
    std::getline(lines, line);
    while (std::getline(lines, line) && line != "\r") {
      if (line.rfind("Authorization: ", 0) == 0) request.authorization = line.substr(15, line.size() - 16);
    }
    const size_t question = target.find('?');
    request.path = target.substr(0, question);
    if (question != std::string::npos) {
      std::istringstream params(target.substr(question + 1));
      for (std::string pair; std::getline(params, pair, '&');) {
        const size_t eq = pair.find('=');
        request.query[Decode(pair.substr(0, eq))] = eq == std::string::npos ? "" : Decode(pair.substr(eq + 1));
      }
    }
    const std::string route = RouteOf(request);
    const bool watch = request.query.count("watch") != 0;
    std::unique_lock lock(mutex_);
    if (!required_token_.empty() && request.authorization != "Bearer " + required_token_) {
      unauthorized_++;
      if (watch) watches_[route].push_back(request);
      changed_.notify_all();
      lock.unlock();
      return Write(ssl, Whole(401, R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})"));
    }
    if (!watch) {
      list_count_[route]++;
      auto list = lists_.find(route);
      if (list == lists_.end()) {
        lock.unlock();
        return Write(ssl, Whole(404, R"({"kind":"Status","code":404})"));
      }
      const auto [status, pages] = list->second;
      size_t page = 0;
      if (auto token = request.query.find("continue"); token != request.query.end()) {
        page = std::stoul(token->second.substr(5));
      }
      lock.unlock();
      return Write(ssl, Whole(status, page < pages.size() ? pages[page] : "{}"));
    }
    watches_[route].push_back(request);
    changed_.notify_all();
    bool started = false;
    for (;;) {
      changed_.wait(lock, [&] { return stopping_ || !watch_queue_[route].empty(); });
      if (stopping_) return false;
      WatchAction action = std::move(watch_queue_[route].front());
      watch_queue_[route].pop_front();
      lock.unlock();
      if (action.kind == WatchAction::kRefuse && !started) return Write(ssl, Whole(action.status, action.body));
      if (!started) {
        if (!Write(ssl, Head(200, "Transfer-Encoding: chunked\r\n"))) return false;
        started = true;
      }
      switch (action.kind) {
        case WatchAction::kLine:
          if (!Write(ssl, Chunk(action.body + "\n"))) return false;
          break;
        case WatchAction::kEnd:
        case WatchAction::kRefuse:
          return Write(ssl, "0\r\n\r\n");
        case WatchAction::kDrop:
          return false;
      }
      lock.lock();
    }
  }

  SSL_CTX* ctx_ = nullptr;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> handlers_;

  std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  std::set<int> open_;
  std::map<std::string, std::pair<int, std::vector<std::string>>> lists_;
  std::map<std::string, std::deque<WatchAction>> watch_queue_;
  std::map<std::string, std::vector<Request>> watches_;
  std::map<std::string, size_t> list_count_;
  std::string required_token_;
  size_t unauthorized_ = 0;
};

}  // namespace meshtls::workload::testing
