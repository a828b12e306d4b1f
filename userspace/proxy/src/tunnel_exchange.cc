#include "meshtls/proxy/tunnel_exchange.h"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "meshtls/common/strings.h"
#include "meshtls/tls/ktls.h"

namespace meshtls::proxy {

ssize_t TunnelWrite(tls::TlsSession& session, const void* data, size_t size) {
  if (session.ssl() == nullptr) return ::send(session.fd(), data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
  const int n = SSL_write(session.ssl(), data, static_cast<int>(size));
  if (n > 0) return n;
  const int error = SSL_get_error(session.ssl(), n);
  errno = error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
  return -1;
}

ssize_t TunnelRead(tls::TlsSession& session, void* data, size_t size) {
  if (session.ssl() == nullptr) {
    uint8_t type = 0;
    const ssize_t n = tls::KtlsReceive(session.fd(), data, size, &type);
    if (n > 0 && type != tls::kRecordApplicationData) {
      errno = EPROTO;  // an alert or a post-handshake message where the preamble belongs
      return -1;
    }
    return n;
  }
  const int n = SSL_read(session.ssl(), data, static_cast<int>(size));
  if (n > 0) return n;
  const int error = SSL_get_error(session.ssl(), n);
  if (error == SSL_ERROR_ZERO_RETURN) return 0;
  errno = error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
  return -1;
}

size_t PreambleLength(const std::string& received) {
  if (received.size() < kPreambleHeader) return 0;
  const auto* b = reinterpret_cast<const uint8_t*>(received.data());
  return kPreambleHeader + ((static_cast<size_t>(b[6]) << 8) | b[7]);
}

size_t ResponseLength(const std::string& received) {
  if (received.size() < kResponseHeader) return 0;
  return kResponseHeader + static_cast<uint8_t>(received[8]);
}

void TunnelExchange::Start(EventLoop& loop, tls::TlsSession& session, std::string out, size_t header,
                           LengthFn total_length, std::chrono::steady_clock::time_point deadline, Done done) {
  auto exchange = std::make_shared<TunnelExchange>(loop, session, std::move(out), header,
                                                   std::move(total_length), std::move(done));
  std::weak_ptr<TunnelExchange> weak = exchange;
  exchange->timer_ = loop.AddTimer(deadline, [weak] {
    if (auto self = weak.lock()) {
      self->timer_ = 0;
      self->Complete(absl::DeadlineExceededError("the tunnel preamble exchange timed out"));
    }
  });
  // The watch holds the exchange alive until it completes.
  absl::Status added = loop.Add(session.fd(), EPOLLIN | EPOLLOUT, [exchange](uint32_t) { exchange->Step(); });
  if (!added.ok()) {
    exchange->Complete(added);
    return;
  }
  exchange->watching_ = true;
  exchange->Step();
}

TunnelExchange::TunnelExchange(EventLoop& loop, tls::TlsSession& session, std::string out, size_t header,
                               LengthFn total_length, Done done)
    : loop_(loop),
      session_(session),
      out_(std::move(out)),
      header_(header),
      total_length_(std::move(total_length)),
      done_(std::move(done)) {}

void TunnelExchange::Step() {
  if (finished_) return;
  while (sent_ < out_.size()) {
    const ssize_t n = TunnelWrite(session_, out_.data() + sent_, out_.size() - sent_);
    if (n > 0) {
      sent_ += static_cast<size_t>(n);
      continue;
    }
    if (errno == EAGAIN) return;
    return Complete(absl::UnavailableError(StrCat("tunnel write failed: ", std::strerror(errno))));
  }
  if (header_ == 0) return Complete(absl::OkStatus());
  // Reading now: stop asking for writability, which a level-triggered loop would report forever.
  if (watching_) (void)loop_.Modify(session_.fd(), EPOLLIN);
  for (;;) {
    size_t want = total_length_(received_);
    if (want == 0) want = header_;
    if (received_.size() >= want) return Complete(absl::OkStatus());
    char buffer[512];
    const size_t chunk = std::min(sizeof(buffer), want - received_.size());
    const ssize_t n = TunnelRead(session_, buffer, chunk);
    if (n > 0) {
      received_.append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return Complete(absl::UnavailableError("the peer closed the tunnel before its message"));
    if (errno == EAGAIN) return;
    return Complete(absl::UnavailableError(StrCat("tunnel read failed: ", std::strerror(errno))));
  }
}

void TunnelExchange::Complete(absl::Status status) {
  if (finished_) return;
  finished_ = true;
  auto keep_alive = shared_from_this();
  if (timer_ != 0) loop_.CancelTimer(timer_);
  if (watching_) loop_.Remove(session_.fd());
  watching_ = false;
  if (auto done = std::move(done_)) done(std::move(status), std::move(received_));
}

}  // namespace meshtls::proxy
