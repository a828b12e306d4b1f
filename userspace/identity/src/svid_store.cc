#include "meshtls/identity/svid_store.h"

#include <algorithm>

#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

namespace meshtls::identity {

SvidStore::SvidStore(CertificateProvider& provider, SvidStoreOptions options)
    : provider_(provider), options_(std::move(options)), random_(options_.seed) {}

SvidStore::Clock::time_point SvidStore::RotationTime(const Svid& svid, Clock::time_point issued) {
  // Measured from issuance, not from notBefore: notBefore is backdated for clock skew, which
  // would otherwise pull the renewal of a short-lived SVID to the moment it was issued.
  const auto lifetime = svid.not_after - std::max(issued, svid.not_before);
  std::uniform_real_distribution<double> jitter(0.0, options_.jitter);
  const double fraction = std::max(0.0, options_.rotate_at - jitter(random_));
  return std::max(issued, svid.not_before) + std::chrono::duration_cast<Clock::duration>(lifetime * fraction);
}

absl::Status SvidStore::Renew(Entry& entry) {
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<Svid> svid = provider_.Issue(entry.state.id, options_.issue);
  if (options_.metrics) {
    options_.metrics->SvidIssuanceDuration(std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - started));
  }
  const auto now = options_.now();
  if (!svid.ok()) {
    ++entry.state.failures;
    entry.state.last_error = std::string(svid.status().message());
    entry.backoff = entry.backoff.count() == 0 ? options_.retry_initial
                                                : std::min(entry.backoff * 2, options_.retry_max);
    entry.state.rotate_at = now + entry.backoff;
    if (options_.metrics) options_.metrics->SvidRenewal(false);
    spdlog::warn("svid issuance failed for {} ({} in a row; retry in {}s; {}): {}",
                 entry.state.id.ToString(), entry.state.failures, entry.backoff.count(),
                 entry.svid ? "keeping the current SVID" : "no SVID yet", entry.state.last_error);
    return svid.status();
  }
  auto fresh = std::make_shared<const Svid>(*std::move(svid));
  if (entry.svid) ++entry.state.rotations;
  entry.svid = fresh;
  entry.backoff = std::chrono::seconds(0);
  entry.state.failures = 0;
  entry.state.last_error.clear();
  entry.state.serial_hex = fresh->serial_hex;
  entry.state.not_before = fresh->not_before;
  entry.state.not_after = fresh->not_after;
  entry.state.rotate_at = RotationTime(*fresh, now);
  entry.state.renewal_due = entry.state.rotate_at;
  if (options_.metrics) {
    options_.metrics->SvidRenewal(true);
    options_.metrics->SvidExpiry(fresh->id.ToString(), fresh->not_after);
    options_.metrics->SvidRenewalDue(fresh->id.ToString(), entry.state.renewal_due);
  }
  spdlog::info("svid issued for {}: serial {} valid until {}s from now, renewal in {}s",
               fresh->id.ToString(), fresh->serial_hex,
               std::chrono::duration_cast<std::chrono::seconds>(fresh->not_after - now).count(),
               std::chrono::duration_cast<std::chrono::seconds>(entry.state.rotate_at - now).count());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Svid>> SvidStore::Current(const SpiffeId& id) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = entries_.try_emplace(id.ToString(), Entry{nullptr, SvidState{id, "", {}, {}, {}, {}, 0, 0, ""}, {}});
  Entry& entry = it->second;
  if (!entry.svid) {
    if (absl::Status st = Renew(entry); !st.ok()) return st;
  }
  return entry.svid;
}

SvidStore::Clock::time_point SvidStore::Tick() {
  std::lock_guard lock(mutex_);
  const auto now = options_.now();
  auto next = Clock::time_point::max();
  for (auto& [key, entry] : entries_) {
    if (entry.state.rotate_at <= now) (void)Renew(entry);
    next = std::min(next, entry.state.rotate_at);
  }
  return next;
}

absl::Status SvidStore::Rotate(const SpiffeId& id) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id.ToString());
  if (it == entries_.end()) return absl::NotFoundError(StrCat("no SVID is held for ", id.ToString()));
  return Renew(it->second);
}

std::vector<SvidState> SvidStore::States() const {
  std::lock_guard lock(mutex_);
  std::vector<SvidState> out;
  for (const auto& [key, entry] : entries_) out.push_back(entry.state);
  return out;
}

std::shared_ptr<const Svid> SvidStore::Peek(const SpiffeId& id) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id.ToString());
  return it == entries_.end() ? nullptr : it->second.svid;
}

void SvidStore::Forget(const SpiffeId& id) {
  std::lock_guard lock(mutex_);
  entries_.erase(id.ToString());
  if (options_.metrics) options_.metrics->ForgetSvid(id.ToString());
}

}  // namespace meshtls::identity
