#include "meshtls/tls/relay.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

namespace meshtls::tls {

// Factories of the two datapaths (userspace_relay.cc, splice_relay.cc).
std::shared_ptr<Relay> MakeUserspaceRelay(EventLoop& loop, UniqueFd plaintext,
                                          std::unique_ptr<TlsSession> tunnel,
                                          Relay::CloseCallback on_close);
std::shared_ptr<Relay> MakeSpliceRelay(EventLoop& loop, UniqueFd plaintext,
                                       std::unique_ptr<TlsSession> tunnel,
                                       Relay::CloseCallback on_close);

std::string_view DatapathName(Datapath datapath) {
  switch (datapath) {
    case Datapath::kKtlsSplice: return "ktls-splice";
    case Datapath::kUserspaceTls: return "userspace-tls";
  }
  return "unknown";
}

absl::StatusOr<Datapath> ParseDatapath(std::string_view name) {
  if (name == "ktls-splice") return Datapath::kKtlsSplice;
  if (name == "userspace-tls") return Datapath::kUserspaceTls;
  return absl::InvalidArgumentError(
      StrCat("unknown datapath '", name, "': use ktls-splice or userspace-tls"));
}

absl::StatusOr<std::shared_ptr<Relay>> Relay::Start(EventLoop& loop, UniqueFd plaintext,
                                                    std::unique_ptr<TlsSession> tunnel,
                                                    Datapath datapath, const RelayOptions& options,
                                                    CloseCallback on_close) {
  if (!plaintext) return absl::InvalidArgumentError("relay needs a plaintext socket");
  if (!tunnel || !tunnel->handshake_done()) {
    return absl::FailedPreconditionError("relay needs a tunnel whose handshake is done");
  }
  // splice() honours only the socket's own O_NONBLOCK (SPLICE_F_NONBLOCK covers the pipe).
  const int flags = ::fcntl(plaintext.get(), F_GETFL);
  if (flags < 0 || ::fcntl(plaintext.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoStatus(errno, "fcntl(O_NONBLOCK) on the plaintext socket");
  }
  std::shared_ptr<Relay> relay =
      datapath == Datapath::kKtlsSplice
          ? MakeSpliceRelay(loop, std::move(plaintext), std::move(tunnel), std::move(on_close))
          : MakeUserspaceRelay(loop, std::move(plaintext), std::move(tunnel), std::move(on_close));
  RETURN_IF_ERROR(relay->Init(options));
  // Bytes may already be waiting (a client's first flight): move them now. Pump() registers
  // the interest it needs; the loop's watches then keep the relay alive.
  relay->Pump();
  return relay;
}

Relay::Relay(EventLoop& loop, UniqueFd plaintext, std::unique_ptr<TlsSession> tunnel,
             Datapath datapath, CloseCallback on_close)
    : loop_(loop),
      plaintext_(std::move(plaintext)),
      tunnel_(std::move(tunnel)),
      datapath_(datapath),
      on_close_(std::move(on_close)),
      started_(std::chrono::steady_clock::now()) {}

Relay::~Relay() {
  if (plaintext_events_ != 0) loop_.Remove(plaintext_.get());
  if (tunnel_events_ != 0 && tunnel_->fd() >= 0) loop_.Remove(tunnel_->fd());
}

absl::Status Relay::ApplyInterest(int fd, uint32_t wanted, uint32_t& current) {
  if (wanted == current) return absl::OkStatus();
  if (wanted == 0) {
    loop_.Remove(fd);
  } else if (current == 0) {
    // A strong reference in the watch keeps the relay alive while the loop may call it.
    RETURN_IF_ERROR(loop_.Add(fd, wanted, [self = shared_from_this()](uint32_t events) {
      self->OnEvent(events);
    }));
  } else {
    RETURN_IF_ERROR(loop_.Modify(fd, wanted));
  }
  current = wanted;
  return absl::OkStatus();
}

void Relay::SetInterest(bool plaintext_in, bool plaintext_out, bool tunnel_in, bool tunnel_out) {
  if (closed_) return;
  const uint32_t p = (plaintext_in ? EPOLLIN : 0u) | (plaintext_out ? EPOLLOUT : 0u);
  const uint32_t t = (tunnel_in ? EPOLLIN : 0u) | (tunnel_out ? EPOLLOUT : 0u);
  absl::Status st = ApplyInterest(plaintext_.get(), p, plaintext_events_);
  if (st.ok()) st = ApplyInterest(tunnel_->fd(), t, tunnel_events_);
  if (!st.ok()) {
    Finish(FailureReason::kInternal, std::string(st.message()));
    return;
  }
  if (p == 0 && t == 0) {
    // Nothing to wait for and not finished would hang the connection forever.
    Finish(FailureReason::kInternal, "relay stalled with no readiness to wait for");
  }
}

void Relay::OnEvent(uint32_t /*events*/) {
  if (!closed_) Pump();
}

void Relay::Abort(FailureReason reason, std::string detail) { Finish(reason, std::move(detail)); }

void Relay::Finish(FailureReason reason, std::string detail) {
  if (closed_) return;
  closed_ = true;
  auto keep_alive = shared_from_this();  // the watches may hold the last references
  if (plaintext_events_ != 0) loop_.Remove(plaintext_.get());
  if (tunnel_events_ != 0) loop_.Remove(tunnel_->fd());
  plaintext_events_ = tunnel_events_ = 0;
  const bool failed = reason != FailureReason::kNone;
  if (failed && plaintext_) {
    const linger abort_on_close{1, 0};
    ::setsockopt(plaintext_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  }
  plaintext_.reset();
  tunnel_->CloseSocket(failed);
  RelayResult result;
  result.reason = reason;
  result.detail = std::move(detail);
  result.stats = stats_;
  result.duration =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started_);
  if (failed) {
    spdlog::debug("relay closed: reason={} detail=\"{}\"", FailureReasonName(reason), result.detail);
  }
  if (auto on_close = std::move(on_close_)) on_close(result);
}

}  // namespace meshtls::tls
