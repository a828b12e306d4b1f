#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/tls/session.h"

namespace meshtls::proxy {

// After the handshake the tunnel's bytes go through kTLS (the session's OpenSSL state is gone)
// or through OpenSSL. These read and write application data either way; -1 with errno EAGAIN
// means "wait for the socket".
ssize_t TunnelWrite(tls::TlsSession& session, const void* data, size_t size);
ssize_t TunnelRead(tls::TlsSession& session, void* data, size_t size);

// Sends `out` whole, then reads exactly one message whose length `total_length` tells from the
// bytes read so far (it returns 0 while it needs `header` bytes first). Reading exactly the
// message leaves everything after it (the first application bytes) where the relay finds them.
class TunnelExchange : public std::enable_shared_from_this<TunnelExchange> {
 public:
  using LengthFn = std::function<size_t(const std::string& received)>;
  using Done = std::function<void(absl::Status status, std::string received)>;

  // `header == 0`: nothing to read, done once `out` is sent. `done` runs on the loop thread,
  // after the exchange stopped watching the socket.
  static void Start(EventLoop& loop, tls::TlsSession& session, std::string out, size_t header,
                    LengthFn total_length, std::chrono::steady_clock::time_point deadline, Done done);

  TunnelExchange(EventLoop& loop, tls::TlsSession& session, std::string out, size_t header,
                 LengthFn total_length, Done done);

 private:
  void Step();
  void Complete(absl::Status status);

  EventLoop& loop_;
  tls::TlsSession& session_;
  std::string out_;
  size_t sent_ = 0;
  size_t header_;
  LengthFn total_length_;
  std::string received_;
  Done done_;
  EventLoop::TimerId timer_ = 0;
  bool watching_ = false;
  bool finished_ = false;
};

// Message lengths for TunnelExchange (see docs/tunnel-protocol.md).
size_t PreambleLength(const std::string& received);
size_t ResponseLength(const std::string& received);
inline constexpr size_t kPreambleHeader = 8;
inline constexpr size_t kResponseHeader = 9;

}  // namespace meshtls::proxy
