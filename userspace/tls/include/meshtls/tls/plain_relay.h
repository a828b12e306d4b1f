#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/unique_fd.h"
#include "meshtls/tls/failure_reason.h"

namespace meshtls::tls {

struct PlainRelayOptions {
  size_t pipe_size = 1 << 20;
  // Read socket `a` with recv() instead of splice(): bytes that reach a socket through the
  // sockmap shortcut (sk_msg redirect) sit where only recvmsg() sees them.
  bool a_read_with_recv = false;
};

struct PlainRelayResult {
  FailureReason reason = FailureReason::kNone;
  std::string detail;
  uint64_t bytes_a_to_b = 0;
  uint64_t bytes_b_to_a = 0;
  std::chrono::microseconds duration{0};
};

// Moves bytes both ways between two plaintext sockets (PERMISSIVE pass-through, and the local
// leg benchmark), with the same rules as the TLS relays: backpressure, half-close in each
// direction, and a reset of both sockets on failure.
class PlainRelay : public std::enable_shared_from_this<PlainRelay> {
 public:
  using CloseCallback = std::function<void(const PlainRelayResult&)>;
  static absl::StatusOr<std::shared_ptr<PlainRelay>> Start(EventLoop& loop, UniqueFd a, UniqueFd b,
                                                            const PlainRelayOptions& options,
                                                            CloseCallback on_close);
  ~PlainRelay();
  PlainRelay(const PlainRelay&) = delete;
  PlainRelay& operator=(const PlainRelay&) = delete;

  void Abort(FailureReason reason, std::string detail);
  bool closed() const { return closed_; }
  // Bytes moved so far (read on the relay's loop thread).
  uint64_t bytes_a_to_b() const;
  uint64_t bytes_b_to_a() const;

  struct Direction;  // one way's state (plain_relay.cc)

  PlainRelay(EventLoop& loop, UniqueFd a, UniqueFd b, CloseCallback on_close);

 private:
  void OnEvent(bool is_a, uint32_t events);
  void Pump();
  bool PumpDirection(Direction& d, bool& progress);
  void Finish(FailureReason reason, std::string detail);

  EventLoop& loop_;
  UniqueFd a_;
  UniqueFd b_;
  std::unique_ptr<Direction> a_to_b_;
  std::unique_ptr<Direction> b_to_a_;
  bool a_readable_ = true, a_writable_ = true, b_readable_ = true, b_writable_ = true;
  static constexpr int kPumpRounds = 64;
  bool registered_ = false;
  bool resume_pending_ = false;
  bool closed_ = false;
  CloseCallback on_close_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace meshtls::tls
