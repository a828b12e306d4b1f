#include "meshtls/tls/plain_relay.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"

namespace meshtls::tls {

struct PlainRelay::Direction {
  int from = -1;
  int to = -1;
  bool* from_readable = nullptr;
  bool* to_writable = nullptr;
  bool use_recv = false;
  UniqueFd pipe_read, pipe_write;
  size_t capacity = 0;
  size_t fill = 0;              // bytes in the pipe, or in `buffer` from `offset`
  std::vector<uint8_t> buffer;  // recv() mode only
  size_t offset = 0;
  bool eof = false;
  bool closed = false;  // FIN forwarded
  uint64_t bytes = 0;
};

namespace {
constexpr unsigned kSpliceFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;
constexpr size_t kRecvBuffer = 256 * 1024;

absl::Status SetNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return ErrnoStatus(errno, "fcntl(O_NONBLOCK)");
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::shared_ptr<PlainRelay>> PlainRelay::Start(EventLoop& loop, UniqueFd a, UniqueFd b,
                                                               const PlainRelayOptions& options,
                                                               CloseCallback on_close) {
  if (!a || !b) return absl::InvalidArgumentError("a plain relay needs two sockets");
  RETURN_IF_ERROR(SetNonBlocking(a.get()));
  RETURN_IF_ERROR(SetNonBlocking(b.get()));
  auto relay = std::make_shared<PlainRelay>(loop, std::move(a), std::move(b), std::move(on_close));
  auto setup = [&](Direction& d, int from, int to, bool* readable, bool* writable, bool use_recv) -> absl::Status {
    d.from = from;
    d.to = to;
    d.from_readable = readable;
    d.to_writable = writable;
    d.use_recv = use_recv;
    if (use_recv) {
      d.buffer.resize(kRecvBuffer);
      d.capacity = kRecvBuffer;
      return absl::OkStatus();
    }
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
    d.pipe_read.reset(fds[0]);
    d.pipe_write.reset(fds[1]);
    int size = ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(options.pipe_size));
    if (size < 0) size = ::fcntl(fds[1], F_GETPIPE_SZ);
    if (size <= 0) return ErrnoStatus(errno, "F_GETPIPE_SZ");
    d.capacity = static_cast<size_t>(size);
    return absl::OkStatus();
  };
  PlainRelay& r = *relay;
  RETURN_IF_ERROR(setup(*r.a_to_b_, r.a_.get(), r.b_.get(), &r.a_readable_, &r.b_writable_, options.a_read_with_recv));
  RETURN_IF_ERROR(setup(*r.b_to_a_, r.b_.get(), r.a_.get(), &r.b_readable_, &r.a_writable_, false));
  constexpr uint32_t kEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  RETURN_IF_ERROR(loop.Add(r.a_.get(), kEvents, [relay](uint32_t events) { relay->OnEvent(true, events); }));
  if (absl::Status st = loop.Add(r.b_.get(), kEvents, [relay](uint32_t events) { relay->OnEvent(false, events); });
      !st.ok()) {
    loop.Remove(r.a_.get());
    return st;
  }
  r.registered_ = true;
  r.Pump();
  return relay;
}

PlainRelay::PlainRelay(EventLoop& loop, UniqueFd a, UniqueFd b, CloseCallback on_close)
    : loop_(loop),
      a_(std::move(a)),
      b_(std::move(b)),
      a_to_b_(std::make_unique<Direction>()),
      b_to_a_(std::make_unique<Direction>()),
      on_close_(std::move(on_close)),
      started_(std::chrono::steady_clock::now()) {}

PlainRelay::~PlainRelay() {
  if (registered_) {
    loop_.Remove(a_.get());
    loop_.Remove(b_.get());
  }
}

void PlainRelay::OnEvent(bool is_a, uint32_t events) {
  if (closed_) return;
  const bool problem = events & (EPOLLERR | EPOLLHUP);
  if (events & (EPOLLIN | EPOLLRDHUP) || problem) (is_a ? a_readable_ : b_readable_) = true;
  if (events & EPOLLOUT || problem) (is_a ? a_writable_ : b_writable_) = true;
  Pump();
}

void PlainRelay::Pump() {
  for (int round = 0; !closed_; ++round) {
    if (round == kPumpRounds) {
      // Let the loop serve everything else before this relay continues (fairness).
      if (!resume_pending_) {
        resume_pending_ = true;
        loop_.Post([self = shared_from_this()] {
          self->resume_pending_ = false;
          if (!self->closed_) self->Pump();
        });
      }
      return;
    }
    bool progress = false;
    if (!PumpDirection(*a_to_b_, progress) || !PumpDirection(*b_to_a_, progress)) return;
    if (!progress) break;
  }
  if (!closed_ && a_to_b_->closed && b_to_a_->closed) Finish(FailureReason::kNone, "");
}

bool PlainRelay::PumpDirection(Direction& d, bool& progress) {
  auto fail = [&](int saved_errno, std::string_view what) {
    Finish(saved_errno == ECONNRESET || saved_errno == EPIPE ? FailureReason::kPeerReset : FailureReason::kIoError,
           StrCat(what, ": ", std::strerror(saved_errno)));
    return false;
  };
  // recv() mode refills the buffer only once it is drained, so a read never gets a zero length
  // (which would look like EOF).
  const bool room = d.use_recv ? d.fill == 0 : d.fill < d.capacity;
  if (!d.eof && room && *d.from_readable) {
    ssize_t n = d.use_recv ? ::recv(d.from, d.buffer.data(), d.capacity, 0)
                           : ::splice(d.from, nullptr, d.pipe_write.get(), nullptr, d.capacity - d.fill, kSpliceFlags);
    if (n > 0) {
      d.fill += static_cast<size_t>(n);
      d.offset = 0;
      progress = true;
    } else if (n == 0) {
      d.eof = true;
      progress = true;
    } else if (errno == EAGAIN) {
      *d.from_readable = false;
    } else if (errno != EINTR) {
      return fail(errno, "read");
    }
  }
  if (d.fill > 0) {
    if (!*d.to_writable) return true;
    ssize_t n = d.use_recv ? ::send(d.to, d.buffer.data() + d.offset, d.fill, MSG_DONTWAIT | MSG_NOSIGNAL)
                           : ::splice(d.pipe_read.get(), nullptr, d.to, nullptr, d.fill, kSpliceFlags);
    if (n > 0) {
      d.fill -= static_cast<size_t>(n);
      d.bytes += static_cast<uint64_t>(n);
      d.offset = d.fill == 0 ? 0 : d.offset + static_cast<size_t>(n);
      progress = true;
    } else if (n < 0 && errno == EAGAIN) {
      *d.to_writable = false;
    } else if (n < 0 && errno != EINTR) {
      return fail(errno, "write");
    }
  } else if (d.eof && !d.closed) {
    ::shutdown(d.to, SHUT_WR);
    d.closed = true;
    progress = true;
  }
  return true;
}

void PlainRelay::Abort(FailureReason reason, std::string detail) { Finish(reason, std::move(detail)); }

uint64_t PlainRelay::bytes_a_to_b() const { return a_to_b_->bytes; }
uint64_t PlainRelay::bytes_b_to_a() const { return b_to_a_->bytes; }

void PlainRelay::Finish(FailureReason reason, std::string detail) {
  if (closed_) return;
  closed_ = true;
  auto keep_alive = shared_from_this();
  if (registered_) {
    loop_.Remove(a_.get());
    loop_.Remove(b_.get());
    registered_ = false;
  }
  if (reason != FailureReason::kNone) {
    const linger abort_on_close{1, 0};
    ::setsockopt(a_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
    ::setsockopt(b_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  }
  a_.reset();
  b_.reset();
  PlainRelayResult result;
  result.reason = reason;
  result.detail = std::move(detail);
  result.bytes_a_to_b = a_to_b_->bytes;
  result.bytes_b_to_a = b_to_a_->bytes;
  result.duration =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started_);
  if (auto on_close = std::move(on_close_)) on_close(result);
}

}  // namespace meshtls::tls
