#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/identity/certificate_authority.h"
#include "meshtls/telemetry/metrics.h"

namespace meshtls::identity {

struct SvidStoreOptions {
  IssueOptions issue;
  // Rotate when this fraction of the lifetime has passed, minus up to `jitter` of the lifetime,
  // so that thousands of SVIDs issued together do not all renew in the same second.
  double rotate_at = 0.5;
  double jitter = 0.1;
  std::chrono::seconds retry_initial{1};
  std::chrono::seconds retry_max{60};
  std::function<std::chrono::system_clock::time_point()> now = [] {
    return std::chrono::system_clock::now();
  };
  uint64_t seed = std::random_device{}();
  // Renewal results and expiry times go here when set.
  std::shared_ptr<telemetry::Metrics> metrics;
};

// What the status API and metrics show for one identity.
struct SvidState {
  SpiffeId id;
  std::string serial_hex;
  std::chrono::system_clock::time_point not_before;
  std::chrono::system_clock::time_point not_after;
  std::chrono::system_clock::time_point rotate_at;  // or the next retry after a failure
  // When the current SVID was due to be renewed (rotate_at as planned at issuance, whatever the
  // retries since): a renewal that is overdue past this means rotation is failing.
  std::chrono::system_clock::time_point renewal_due;
  uint64_t rotations = 0;
  uint64_t failures = 0;  // consecutive failed issuances
  std::string last_error;
};

// One current SVID per identity in use. New handshakes take Current(); a connection keeps the
// shared_ptr it took, so rotation never touches established connections. Thread-safe.
class SvidStore {
 public:
  using Clock = std::chrono::system_clock;

  SvidStore(CertificateProvider& provider, SvidStoreOptions options);

  // The current SVID, issued on first use.
  absl::StatusOr<std::shared_ptr<const Svid>> Current(const SpiffeId& id);
  // Renews every SVID whose time has come. A failed issuance keeps the valid SVID, is recorded
  // in SvidState and is retried with exponential backoff. Returns when the next action is due.
  Clock::time_point Tick();
  // Renews now (the RotateCertificates RPC), for one identity or all of them.
  absl::Status Rotate(const SpiffeId& id);
  std::vector<SvidState> States() const;
  // The current SVID if one is held, without issuing one (for inspection).
  std::shared_ptr<const Svid> Peek(const SpiffeId& id) const;
  // Stops keeping an identity (its last workload left).
  void Forget(const SpiffeId& id);

 private:
  struct Entry {
    std::shared_ptr<const Svid> svid;
    SvidState state;
    std::chrono::seconds backoff{0};
  };
  absl::Status Renew(Entry& entry);  // mutex_ held
  Clock::time_point RotationTime(const Svid& svid, Clock::time_point issued);

  CertificateProvider& provider_;
  SvidStoreOptions options_;
  mutable std::mutex mutex_;
  std::map<std::string, Entry> entries_;  // keyed by SPIFFE ID
  std::mt19937_64 random_;
};

}  // namespace meshtls::identity
