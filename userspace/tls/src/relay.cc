#include "meshtls/tls/relay.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/tls/connection_registry.h"
#include "meshtls/tls/ktls.h"
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

KeyUpdateCounters& GlobalKeyUpdateCounters() {
  static KeyUpdateCounters counters;
  return counters;
}

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

absl::StatusOr<Datapath> ChooseDatapath(std::string_view requested) {
  const KtlsSupport ktls = ProbeKtls();
  if (requested == "auto") {
    if (ktls.available) {
      spdlog::info("datapath ktls-splice: {}", ktls.detail);
      return Datapath::kKtlsSplice;
    }
    spdlog::warn("datapath userspace-tls (OpenSSL encrypts in this process): {}", ktls.detail);
    return Datapath::kUserspaceTls;
  }
  ASSIGN_OR_RETURN(Datapath datapath, ParseDatapath(requested));
  if (datapath == Datapath::kKtlsSplice && !ktls.available) {
    return absl::FailedPreconditionError(StrCat("datapath ktls-splice was requested, but ", ktls.detail));
  }
  spdlog::info("datapath {} (forced)", requested);
  return datapath;
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
  RETURN_IF_ERROR(relay->Register());
  if (options.registry != nullptr) {
    relay->registry_ = options.registry;
    options.registry->Add(relay);
  }
  // Bytes may already be waiting (a client's first flight): move them now.
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
  if (registry_ != nullptr) registry_->Remove(this);  // destroyed without Finish (loop teardown)
  if (registered_) {
    loop_.Remove(plaintext_.get());
    if (tunnel_->fd() >= 0) loop_.Remove(tunnel_->fd());
  }
}

absl::Status Relay::Register() {
  constexpr uint32_t kEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  // The watches hold strong references: a running relay lives as long as the loop may call it.
  auto self = shared_from_this();
  RETURN_IF_ERROR(loop_.Add(plaintext_.get(), kEvents,
                            [self](uint32_t events) { self->OnEvent(true, events); }));
  if (absl::Status st = loop_.Add(tunnel_->fd(), kEvents,
                                  [self](uint32_t events) { self->OnEvent(false, events); });
      !st.ok()) {
    loop_.Remove(plaintext_.get());
    return st;
  }
  registered_ = true;
  return absl::OkStatus();
}

void Relay::OnEvent(bool plaintext, uint32_t events) {
  if (closed_) return;
  // Errors and hang-ups make both directions worth trying: the next operation reports them.
  const bool problem = events & (EPOLLERR | EPOLLHUP);
  if (events & (EPOLLIN | EPOLLRDHUP) || problem) (plaintext ? plaintext_readable_ : tunnel_readable_) = true;
  if (events & EPOLLOUT || problem) (plaintext ? plaintext_writable_ : tunnel_writable_) = true;
  Pump();
}

void Relay::Abort(FailureReason reason, std::string detail) { Finish(reason, std::move(detail)); }

void Relay::ResumeLater() {
  if (resume_pending_) return;
  resume_pending_ = true;
  loop_.Post([self = shared_from_this()] {
    self->resume_pending_ = false;
    if (!self->closed_) self->Pump();
  });
}

void Relay::AbortFromAnyThread(FailureReason reason, std::string detail) {
  loop_.Post([self = shared_from_this(), reason, detail = std::move(detail)]() mutable {
    self->Abort(reason, std::move(detail));
  });
}

void Relay::FinishKeyUpdateFlood(const KeyLifetimeOptions& lifetime) {
  GlobalKeyUpdateCounters().floods++;
  Finish(FailureReason::kKeyUpdateFlood,
         StrCat("peer sent KeyUpdates faster than ", lifetime.peer_key_updates_per_second, "/s (burst ",
                lifetime.peer_key_update_burst, "), after ", key_usage_.rx_generation, " key update(s)"));
}

bool Relay::FailWithErrno(int saved_errno, std::string_view what) {
  Finish(saved_errno == ECONNRESET || saved_errno == EPIPE ? FailureReason::kPeerReset
                                                           : FailureReason::kIoError,
         StrCat(what, ": ", std::strerror(saved_errno)));
  return false;
}

void Relay::Finish(FailureReason reason, std::string detail) {
  if (closed_) return;
  closed_ = true;
  auto keep_alive = shared_from_this();  // the watches may hold the last references
  const KeyUsage final_key_usage = key_usage();  // while the socket is still open
  if (registered_) {
    loop_.Remove(plaintext_.get());
    loop_.Remove(tunnel_->fd());
    registered_ = false;
  }
  const bool failed = reason != FailureReason::kNone;
  if (failed && plaintext_) {
    const linger abort_on_close{1, 0};
    ::setsockopt(plaintext_.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
  }
  plaintext_.reset();
  tunnel_->CloseSocket(failed);
  if (registry_ != nullptr) registry_->Remove(this);
  registry_ = nullptr;
  RelayResult result;
  result.reason = reason;
  result.detail = std::move(detail);
  result.stats = stats_;
  result.key_usage = final_key_usage;
  result.duration =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started_);
  if (failed) {
    spdlog::debug("relay closed: reason={} detail=\"{}\"", FailureReasonName(reason), result.detail);
  }
  if (auto on_close = std::move(on_close_)) on_close(result);
}

}  // namespace meshtls::tls
