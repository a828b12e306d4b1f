#include "meshtls/tls/handshake_driver.h"

#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

namespace meshtls::tls {
namespace {

class Driver : public std::enable_shared_from_this<Driver> {
 public:
  Driver(EventLoop& loop, std::unique_ptr<TlsSession> session,
         std::function<void(std::unique_ptr<TlsSession>)> done)
      : loop_(loop), session_(std::move(session)), done_(std::move(done)) {}

  void Start() {
    const int fd = session_->fd();
    std::weak_ptr<Driver> weak = weak_from_this();
    // The watch and the timer hold the only strong references; Complete() drops both.
    auto self = shared_from_this();
    absl::Status st = loop_.Add(fd, EPOLLIN, [self](uint32_t) { self->Step(); });
    if (!st.ok()) {
      spdlog::error("handshake: cannot watch fd {}: {}", fd, st.message());
      session_->Abort(FailureReason::kInternal, std::string(st.message()));
      Complete();
      return;
    }
    watching_ = true;
    timer_ = loop_.AddTimer(session_->deadline(), [weak] {
      if (auto d = weak.lock()) d->OnDeadline();
    });
    Step();
  }

 private:
  void Step() {
    if (!session_) return;
    switch (session_->Advance()) {
      case HandshakeProgress::kWantRead:
        (void)loop_.Modify(session_->fd(), EPOLLIN);
        return;
      case HandshakeProgress::kWantWrite:
        (void)loop_.Modify(session_->fd(), EPOLLOUT);
        return;
      case HandshakeProgress::kDone:
      case HandshakeProgress::kFailed:
        Complete();
        return;
    }
  }

  void OnDeadline() {
    timer_ = 0;
    if (session_ && session_->CheckDeadline(TlsSession::Clock::now())) Complete();
  }

  void Complete() {
    auto keep_alive = shared_from_this();
    if (timer_ != 0) loop_.CancelTimer(timer_);
    timer_ = 0;
    if (watching_) loop_.Remove(session_->fd());
    watching_ = false;
    if (!session_->handshake_done()) {
      spdlog::info("handshake failed: reason={} role={} detail=\"{}\"",
                   FailureReasonName(session_->failure_reason()),
                   session_->role() == Role::kClient ? "client" : "server",
                   session_->failure_detail());
    }
    auto done = std::move(done_);
    done(std::move(session_));
  }

  EventLoop& loop_;
  std::unique_ptr<TlsSession> session_;
  std::function<void(std::unique_ptr<TlsSession>)> done_;
  EventLoop::TimerId timer_ = 0;
  bool watching_ = false;
};

}  // namespace

void DriveHandshake(EventLoop& loop, std::unique_ptr<TlsSession> session,
                    std::function<void(std::unique_ptr<TlsSession>)> done) {
  std::make_shared<Driver>(loop, std::move(session), std::move(done))->Start();
}

}  // namespace meshtls::tls
