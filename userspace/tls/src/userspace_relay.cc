// userspace-tls datapath: OpenSSL encrypts and decrypts in this process.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "meshtls/common/strings.h"
#include "meshtls/common/openssl.h"
#include "meshtls/common/token_bucket.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/relay.h"

namespace meshtls::tls {
namespace {

// Buffers are taken when bytes arrive and given back as soon as they drain, so an idle connection
// holds no buffer (the memory target is per 1,000 idle connections). 64 KB moves four full TLS
// records per system call on the plaintext side. Each loop thread keeps a few spare buffers so
// that a busy connection does not call malloc per fill.
constexpr size_t kBufferSize = 64 * 1024;
constexpr size_t kSpareBuffersPerThread = 64;

struct BufferPool {
  std::vector<std::unique_ptr<uint8_t[]>> spare;
  std::unique_ptr<uint8_t[]> Take() {
    if (spare.empty()) return std::make_unique_for_overwrite<uint8_t[]>(kBufferSize);
    auto b = std::move(spare.back());
    spare.pop_back();
    return b;
  }
  void Give(std::unique_ptr<uint8_t[]> b) {
    if (b && spare.size() < kSpareBuffersPerThread) spare.push_back(std::move(b));
  }
};
thread_local BufferPool pool;

struct Buffer {
  std::unique_ptr<uint8_t[]> data;
  size_t begin = 0;
  size_t end = 0;
  bool empty() const { return begin == end; }
  size_t size() const { return end - begin; }
  size_t space() const { return data ? kBufferSize - end : kBufferSize; }
  uint8_t* write_ptr() {
    if (!data) data = pool.Take();
    return data.get() + end;
  }
  void Consume(size_t n) {
    begin += n;
    if (begin == end) Release();
  }
  void Release() {
    begin = end = 0;
    pool.Give(std::move(data));
  }
  ~Buffer() { Release(); }
};

class UserspaceRelay final : public Relay {
 public:
  UserspaceRelay(EventLoop& loop, UniqueFd plaintext, std::unique_ptr<TlsSession> tunnel,
                 CloseCallback on_close)
      : Relay(loop, std::move(plaintext), std::move(tunnel), Datapath::kUserspaceTls,
              std::move(on_close)) {}

 private:
  absl::Status Init(const RelayOptions& options) override {
    SSL* ssl = tunnel_->ssl();
    lifetime_ = options.key_lifetime;
    peer_follows_key_update_ = options.peer_follows_key_update;
    // ChaCha20-Poly1305 has no practical record limit (RFC 8446 §5.5 names only AES-GCM's).
    key_has_limit_ = KtlsCipherFromIana(tunnel_->cipher_iana_id()).value_or(KtlsCipher::kAes128Gcm) !=
                     KtlsCipher::kChacha20Poly1305;
    if (lifetime_.max_records_per_key == 0) return absl::InvalidArgumentError("max_records_per_key must be at least 1");
    peer_updates_.emplace(lifetime_.peer_key_updates_per_second, lifetime_.peer_key_update_burst);
    // Every record header and handshake message from here on passes through OnMessage: the
    // record counts per key, and the KeyUpdates either way.
    SSL_set_msg_callback(ssl, &UserspaceRelay::OnMessage);
    SSL_set_msg_callback_arg(ssl, this);
    // From here on OpenSSL may read ahead of the record it parses (one recv() for several
    // records instead of two per record), and frees its buffers while the connection is idle.
    SSL_set_read_ahead(ssl, 1);
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_default_read_buffer_len(ssl, kBufferSize);
    return absl::OkStatus();
  }

  void Pump() override {
    SSL* ssl = tunnel_->ssl();
    for (int round = 0; !closed_; ++round) {
      if (round == kPumpRounds) return ResumeLater();
      bool progress = false;
      if (!PumpUp(ssl, progress) || !PumpDown(ssl, progress)) return;
      if (!progress) break;
    }
    if (!closed_ && up_closed_ && down_closed_) Finish(FailureReason::kNone, "");
  }

  // OpenSSL's message callback (record headers, handshake messages), inside SSL_read/SSL_write:
  // it only counts and flags; the relay acts on the flags once OpenSSL has returned.
  static void OnMessage(int write_p, int /*version*/, int content_type, const void* buf, size_t len, SSL* /*ssl*/,
                        void* arg) {
    auto* self = static_cast<UserspaceRelay*>(arg);
    KeyUsage& usage = self->key_usage_;
    if (content_type == SSL3_RT_HEADER) {
      ++(write_p != 0 ? usage.tx_records : usage.rx_records);
      return;
    }
    if (content_type != SSL3_RT_HANDSHAKE || len < 1 || static_cast<const uint8_t*>(buf)[0] != SSL3_MT_KEY_UPDATE) return;
    // The KeyUpdate travels under the old key; the records after it use the new one.
    if (write_p != 0) {
      ++usage.tx_generation;
      usage.tx_records = 0;
      GlobalKeyUpdateCounters().sent++;
    } else {
      ++usage.rx_generation;
      usage.rx_records = 0;
      GlobalKeyUpdateCounters().received++;
      if (!self->peer_updates_->TryTake()) self->key_update_flood_ = true;
    }
  }

  // Replaces our sending key before it reaches its record limit, and asks the peer to replace
  // its own when the receiving key nears it (a peer that never updates would otherwise run one
  // key forever). OpenSSL sends the KeyUpdate with the next write.
  // Returns false once the relay has finished (a key at its limit that cannot be replaced).
  bool RenewKeysIfDue(SSL* ssl) {
    if (SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE) return true;  // one is already pending
    // Never between an SSL_write that wanted to write and its retry: OpenSSL would put the
    // KeyUpdate in the middle of the record it is still sending.
    if (write_retry_pending_) return true;
    const uint64_t limit = lifetime_.max_records_per_key;
    // Headroom for the records one SSL_write may produce (64 KiB: four) plus the KeyUpdate itself.
    const uint64_t due = limit > 8 ? limit - 8 : 0;
    if (!peer_follows_key_update_) {
      // A KeyUpdate would break this peer (a kTLS end that cannot install new keys): close
      // before the key is worn out rather than go past its limit.
      if (key_has_limit_ && key_usage_.tx_records >= due) {
        GlobalKeyUpdateCounters().key_limit_closes++;
        Finish(FailureReason::kKeyLimit,
               StrCat("the sending key protected ", key_usage_.tx_records, " records (limit ", limit,
                      ") and the peer cannot follow a KeyUpdate"));
        return false;
      }
      return true;
    }
    if (key_usage_.tx_records >= due) {
      SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED);
    } else if (key_usage_.rx_records >= limit && !rx_update_requested_) {
      // A peer that updates its own keys does so at limit - 8 (as above), so this only asks one
      // that does not (an older agent) to.
      SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED);
      rx_update_requested_ = true;
    }
    if (key_usage_.rx_records < limit) rx_update_requested_ = false;
    return true;
  }

  // After every SSL_read: a peer over its KeyUpdate budget is cut off.
  bool CheckKeyUpdateFlood() {
    if (!key_update_flood_) return true;
    FinishKeyUpdateFlood(lifetime_);
    return false;
  }

  // plaintext -> TLS. Returns false once the relay has finished.
  bool PumpUp(SSL* ssl, bool& progress) {
    if (!up_.empty()) {
      if (!tunnel_writable_) return true;
      if (!RenewKeysIfDue(ssl)) return false;
      ERR_clear_error();
      const int n = SSL_write(ssl, up_.data.get() + up_.begin, static_cast<int>(up_.size()));
      write_retry_pending_ = n <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_WANT_WRITE;
      if (n > 0) {
        up_.Consume(static_cast<size_t>(n));
        stats_.bytes_to_tunnel += static_cast<uint64_t>(n);
        progress = true;
        return true;
      }
      return HandleSslError(ssl, n);
    }
    if (!up_eof_) {
      if (!plaintext_readable_) return true;
      const ssize_t n = ::recv(plaintext_fd(), up_.write_ptr(), up_.space(), MSG_DONTWAIT);
      if (n > 0) {
        up_.end += static_cast<size_t>(n);
        progress = true;
        return true;
      }
      const int saved_errno = errno;
      up_.Release();
      if (n == 0) {
        up_eof_ = true;
        progress = true;
      } else if (saved_errno == EAGAIN) {
        plaintext_readable_ = false;
      } else if (saved_errno != EINTR) {
        return FailWithErrno(saved_errno, "plaintext read");
      }
      return true;
    }
    if (!up_closed_ && tunnel_writable_) {
      ERR_clear_error();
      const int rc = SSL_shutdown(ssl);  // sends close_notify; reading continues (TLS 1.3)
      if (rc < 0) return HandleSslError(ssl, rc);
      ::shutdown(tunnel_fd(), SHUT_WR);
      up_closed_ = true;
      progress = true;
    }
    return true;
  }

  // TLS -> plaintext. Returns false once the relay has finished.
  bool PumpDown(SSL* ssl, bool& progress) {
    // Decrypt as many records as fit before writing, so one send() carries several records.
    // With read-ahead OpenSSL may hold whole records the socket no longer reports.
    if (!down_eof_ && down_.space() >= 16 * 1024 && (tunnel_readable_ || SSL_has_pending(ssl))) {
      ERR_clear_error();
      const int n = SSL_read(ssl, down_.write_ptr(), static_cast<int>(down_.space()));
      if (!CheckKeyUpdateFlood()) return false;
      if (n > 0) {
        down_.end += static_cast<size_t>(n);
        progress = true;
        return true;
      }
      if (down_.empty()) down_.Release();
      if (SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN) {
        down_eof_ = true;  // close_notify: the peer finished sending
        progress = true;
        return true;
      }
      if (!HandleSslError(ssl, n)) return false;
    }
    if (!down_.empty()) {
      if (!plaintext_writable_) return true;
      const ssize_t n = ::send(plaintext_fd(), down_.data.get() + down_.begin, down_.size(),
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        down_.Consume(static_cast<size_t>(n));
        stats_.bytes_from_tunnel += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        plaintext_writable_ = false;
      } else if (n < 0 && errno != EINTR) {
        return FailWithErrno(errno, "plaintext write");
      }
      return true;
    }
    if (down_eof_ && !down_closed_) {
      ::shutdown(plaintext_fd(), SHUT_WR);
      down_closed_ = true;
      progress = true;
    }
    return true;
  }

  // Notes which readiness OpenSSL waits for, or finishes the relay on a real error.
  bool HandleSslError(SSL* ssl, int rc) {
    const int saved_errno = errno;
    const int error = SSL_get_error(ssl, rc);
    if (error == SSL_ERROR_WANT_WRITE) {
      tunnel_writable_ = false;
      return true;
    }
    if (error == SSL_ERROR_WANT_READ) {
      tunnel_readable_ = false;
      return true;
    }
    const unsigned long first = ERR_peek_error();
    std::string detail = DrainOpenSslErrors();
    if (error == SSL_ERROR_SYSCALL && first == 0) {
      if (saved_errno != 0) return FailWithErrno(saved_errno, "tunnel");
      Finish(FailureReason::kTruncated, "tunnel closed without close_notify");
      return false;
    }
    Finish(FailureFromOpenSslReason(ERR_GET_REASON(first)), detail);
    return false;
  }

  Buffer up_;    // plaintext read, not yet accepted by SSL_write
  Buffer down_;  // decrypted, not yet written to the plaintext socket
  KeyLifetimeOptions lifetime_;
  std::optional<TokenBucket> peer_updates_;  // the peer's KeyUpdate budget
  bool key_update_flood_ = false;
  bool rx_update_requested_ = false;
  bool write_retry_pending_ = false;  // the last SSL_write wanted to write: the next must retry it
  bool peer_follows_key_update_ = false;
  bool key_has_limit_ = true;
  bool up_eof_ = false;      // the plaintext side sent FIN
  bool up_closed_ = false;   // close_notify and FIN sent on the tunnel
  bool down_eof_ = false;    // close_notify received
  bool down_closed_ = false; // FIN sent on the plaintext side
};

}  // namespace

std::shared_ptr<Relay> MakeUserspaceRelay(EventLoop& loop, UniqueFd plaintext,
                                          std::unique_ptr<TlsSession> tunnel,
                                          Relay::CloseCallback on_close) {
  return std::make_shared<UserspaceRelay>(loop, std::move(plaintext), std::move(tunnel),
                                          std::move(on_close));
}

}  // namespace meshtls::tls
