#pragma once

// A token bucket: `rate` tokens per second, at most `burst` saved up. Hand-written because none of
// the project's libraries (Abseil, gRPC's public API, spdlog) exports one, and it is a dozen lines.

#include <algorithm>
#include <chrono>
#include <mutex>

namespace meshtls {

class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  // The bucket starts full. `rate` <= 0 never refills (only the burst is ever allowed).
  TokenBucket(double rate_per_second, double burst)
      : rate_(rate_per_second), burst_(std::max(burst, 1.0)), tokens_(burst_), last_(Clock::now()) {}

  // Takes one token if there is one. Thread-safe.
  bool TryTake(Clock::time_point now = Clock::now()) {
    std::lock_guard lock(mutex_);
    if (now > last_) {
      tokens_ = std::min(burst_, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
      last_ = now;
    }
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

 private:
  const double rate_;
  const double burst_;
  std::mutex mutex_;
  double tokens_;  // guarded by mutex_
  Clock::time_point last_;  // guarded by mutex_
};

}  // namespace meshtls
