// ktls-splice datapath: the kernel encrypts and decrypts (kTLS on the tunnel socket) and splice()
// moves pages socket -> pipe -> socket, so payload bytes never enter this process.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/common/token_bucket.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/relay.h"

namespace meshtls::tls {
namespace {

constexpr unsigned kSpliceFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;

struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
  size_t capacity = 0;
  size_t fill = 0;  // bytes in the pipe; splice() does not say which side was blocked
};

absl::StatusOr<Pipe> MakePipe(size_t wanted) {
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  Pipe pipe;
  pipe.read_end.reset(fds[0]);
  pipe.write_end.reset(fds[1]);
  int size = ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(wanted));
  if (size < 0) size = ::fcntl(fds[1], F_GETPIPE_SZ);  // over fs.pipe-max-size: keep the default
  if (size <= 0) return ErrnoStatus(errno, "F_GETPIPE_SZ");
  pipe.capacity = static_cast<size_t>(size);
  return pipe;
}

std::string_view AlertName(uint8_t description) {
  switch (description) {
    case 0: return "close_notify";
    case 10: return "unexpected_message";
    case 20: return "bad_record_mac";
    case 22: return "record_overflow";
    case 40: return "handshake_failure";
    case 42: return "bad_certificate";
    case 43: return "unsupported_certificate";
    case 44: return "certificate_revoked";
    case 45: return "certificate_expired";
    case 48: return "unknown_ca";
    case 50: return "decode_error";
    case 51: return "decrypt_error";
    case 80: return "internal_error";
    case 90: return "user_canceled";
    default: return "other";
  }
}

class SpliceRelay final : public Relay {
 public:
  SpliceRelay(EventLoop& loop, UniqueFd plaintext, std::unique_ptr<TlsSession> tunnel,
              CloseCallback on_close)
      : Relay(loop, std::move(plaintext), std::move(tunnel), Datapath::kKtlsSplice,
              std::move(on_close)) {}
  ~SpliceRelay() override {
    Wipe(tx_secret_);
    Wipe(rx_secret_);
  }

 private:
  absl::Status Init(const RelayOptions& options) override {
    lifetime_ = options.key_lifetime;
    if (lifetime_.max_records_per_key == 0) return absl::InvalidArgumentError("max_records_per_key must be at least 1");
    ASSIGN_OR_RETURN(cipher_, KtlsCipherFromIana(tunnel_->cipher_iana_id()));
    // ChaCha20-Poly1305 has no practical record limit (RFC 8446 §5.5 names only AES-GCM's).
    key_has_limit_ = cipher_ != KtlsCipher::kChacha20Poly1305;
    peer_follows_key_update_ = options.peer_follows_key_update;
    peer_updates_.emplace(lifetime_.peer_key_updates_per_second, lifetime_.peer_key_update_burst);
    // The pipe can hold this many records, which one splice() may send at once.
    records_per_splice_ = options.pipe_size / (16 * 1024) + 2;
    ASSIGN_OR_RETURN(up_, MakePipe(options.pipe_size));
    if (options.plaintext_read_with_recv) up_copy_.resize(256 * 1024);
    ASSIGN_OR_RETURN(down_, MakePipe(options.pipe_size));
    // The agent may have switched already, to exchange the tunnel preamble through the kernel.
    if (tunnel_->ssl() != nullptr) RETURN_IF_ERROR(SwitchToKtls(*tunnel_));
    // The traffic secrets stay only where the kernel can install the next ones; otherwise they
    // are wiped here (TrafficSecrets' destructor).
    TrafficSecrets secrets = tunnel_->TakeTrafficSecrets();
    rekey_ = options.ktls_rekey && !secrets.client.empty() && !secrets.server.empty();
    if (rekey_) {
      const bool client = tunnel_->role() == Role::kClient;
      tx_secret_ = std::move(client ? secrets.client : secrets.server);
      rx_secret_ = std::move(client ? secrets.server : secrets.client);
    }
    return absl::OkStatus();
  }

  void Pump() override {
    for (int round = 0; !closed_; ++round) {
      if (round == kPumpRounds) return ResumeLater();
      bool progress = false;
      if (!PumpUp(progress) || !PumpDown(progress)) return;
      if (!progress) break;
    }
    if (!closed_ && up_closed_ && down_closed_) Finish(FailureReason::kNone, "");
  }

  // plaintext -> buffer -> kTLS socket, for local legs on the sockmap shortcut.
  bool PumpUpCopy(bool& progress) {
    if (!up_eof_ && up_copy_fill_ == 0 && plaintext_readable_) {
      const ssize_t n = ::recv(plaintext_fd(), up_copy_.data(), up_copy_.size(), MSG_DONTWAIT);
      if (n > 0) {
        up_copy_fill_ = static_cast<size_t>(n);
        up_copy_offset_ = 0;
        progress = true;
      } else if (n == 0) {
        up_eof_ = true;
        progress = true;
      } else if (errno == EAGAIN) {
        plaintext_readable_ = false;
      } else if (errno != EINTR) {
        return FailWithErrno(errno, "plaintext read");
      }
    }
    if (!tunnel_writable_) return true;
    if (up_copy_fill_ > 0 || tx_update_pending_) {
      if (SendGate gate = BeforeSend(); gate != SendGate::kGo) return gate == SendGate::kWait;
      if (up_copy_fill_ == 0) return true;
      const ssize_t n = ::send(tunnel_fd(), up_copy_.data() + up_copy_offset_, up_copy_fill_,
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        up_copy_fill_ -= static_cast<size_t>(n);
        up_copy_offset_ += static_cast<size_t>(n);
        stats_.bytes_to_tunnel += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        tunnel_writable_ = false;
      } else if (n < 0 && errno != EINTR) {
        return FailWithErrno(errno, "tunnel write");
      }
      return true;
    }
    return up_eof_ ? CloseUp(progress) : true;
  }

  KeyUsage key_usage() const override {
    KeyUsage usage = key_usage_;
    if (auto sent = KtlsRecordSequence(tunnel_fd(), cipher_, true); sent.ok()) usage.tx_records = *sent;
    if (auto received = KtlsRecordSequence(tunnel_fd(), cipher_, false); received.ok()) usage.rx_records = *received;
    return usage;
  }

  enum class SendGate { kGo, kWait, kFinished };

  // Before every send into the tunnel. A sending key near its record limit is replaced by a
  // KeyUpdate where this kernel and the peer can follow one; otherwise an AES-GCM connection
  // ends with key_limit instead of going past the limit. Each send adds at most
  // records_per_splice_ records, so the kernel's exact count (its record sequence) is asked for
  // only as the limit comes near.
  SendGate BeforeSend() {
    // A key without a limit that cannot be replaced anyway (ChaCha20-Poly1305 where no KeyUpdate
    // can be sent) needs no counting.
    const bool watch_key = key_has_limit_ || (rekey_ && peer_follows_key_update_);
    if (!tx_update_pending_ && watch_key && TxKeyDue()) {
      if (rekey_ && peer_follows_key_update_) {
        tx_update_pending_ = true;
      } else if (key_has_limit_) {
        GlobalKeyUpdateCounters().key_limit_closes++;
        Finish(FailureReason::kKeyLimit,
               StrCat("the sending key protected about ", tx_records_bound_, " records (limit ",
                      lifetime_.max_records_per_key, ") and ",
                      rekey_ ? "the peer cannot follow a KeyUpdate" : "this kernel's kTLS cannot replace a key"));
        return SendGate::kFinished;
      }
    }
    return tx_update_pending_ ? SendKeyUpdate() : SendGate::kGo;
  }

  bool TxKeyDue() {
    const uint64_t limit = lifetime_.max_records_per_key;
    if (tx_records_bound_ + 2 * records_per_splice_ + 8 < limit) {
      tx_records_bound_ += records_per_splice_;
      return false;
    }
    absl::StatusOr<uint64_t> sent = KtlsRecordSequence(tunnel_fd(), cipher_, true);
    if (!sent.ok()) return true;  // unknown near the limit: treat as due
    tx_records_bound_ = *sent;
    if (*sent + records_per_splice_ + 8 < limit) {
      tx_records_bound_ += records_per_splice_;
      return false;
    }
    return true;
  }

  // The KeyUpdate goes out under the old key, then the next sending key is installed: the kernel
  // has no record of ours in between, since sends run on this thread only.
  SendGate SendKeyUpdate() {
    const bool request = tx_update_request_;
    const ssize_t n = KtlsSendKeyUpdate(tunnel_fd(), request);
    if (n < 0) {
      if (errno == EAGAIN) tunnel_writable_ = false;
      if (errno == EAGAIN || errno == EINTR) return SendGate::kWait;
      FailWithErrno(errno, "tunnel KeyUpdate");
      return SendGate::kFinished;
    }
    if (n != 5) {
      Finish(FailureReason::kInternal, StrCat("the kernel took ", n, " of 5 KeyUpdate bytes"));
      return SendGate::kFinished;
    }
    if (absl::Status st = AdvanceKey(true); !st.ok()) {
      Finish(FailureReason::kInternal, StrCat("installing the next sending key: ", st.message()));
      return SendGate::kFinished;
    }
    tx_update_pending_ = false;
    tx_update_request_ = false;
    tx_records_bound_ = 0;
    ++key_usage_.tx_generation;
    GlobalKeyUpdateCounters().sent++;
    return SendGate::kGo;
  }

  absl::Status AdvanceKey(bool tx) { return AdvanceKtlsKey(tunnel_fd(), tx, cipher_, tx ? tx_secret_ : rx_secret_); }

  // A peer that never replaces its key would run one key forever: past the limit it is asked to
  // (update_requested), once per key. Checked every few reads, which is cheap and close enough
  // for a request.
  void CheckReceiveKey() {
    if (!rekey_ || rx_update_requested_ || ++reads_since_rx_check_ < 8) return;
    reads_since_rx_check_ = 0;
    absl::StatusOr<uint64_t> received = KtlsRecordSequence(tunnel_fd(), cipher_, false);
    if (received.ok() && *received >= lifetime_.max_records_per_key) {
      rx_update_requested_ = true;
      tx_update_pending_ = true;
      tx_update_request_ = true;
    }
  }

  // The peer's KeyUpdate, read as a handshake record. Returns false once the relay has finished.
  bool FollowKeyUpdate(std::span<const uint8_t> record) {
    absl::StatusOr<bool> request = ParseKeyUpdate(record);
    if (!request.ok()) {
      Finish(FailureReason::kUnexpectedMessage, std::string(request.status().message()));
      return false;
    }
    if (!rekey_) {
      Finish(FailureReason::kPeerKeyUpdateUnsupported,
             "peer sent a KeyUpdate; this kernel's kTLS cannot install new keys");
      return false;
    }
    GlobalKeyUpdateCounters().received++;
    if (!peer_updates_->TryTake()) {
      FinishKeyUpdateFlood(lifetime_);
      return false;
    }
    // Until the next key is in, the kernel refuses reads (EKEYEXPIRED); nothing else runs between.
    if (absl::Status st = AdvanceKey(false); !st.ok()) {
      Finish(FailureReason::kInternal, StrCat("installing the next receiving key: ", st.message()));
      return false;
    }
    ++key_usage_.rx_generation;
    rx_update_requested_ = false;
    reads_since_rx_check_ = 0;
    // RFC 8446 §4.6.3: answer update_requested with our own KeyUpdate (not requesting) before
    // the next application data; one pending update of ours answers it as well.
    if (*request) tx_update_pending_ = true;
    return true;
  }

  bool CloseUp(bool& progress) {
    if (up_closed_) return true;
    if (KtlsSendCloseNotify(tunnel_fd()) < 0) {
      if (errno == EAGAIN) {
        tunnel_writable_ = false;
        return true;
      }
      return FailWithErrno(errno, "tunnel close_notify");
    }
    ::shutdown(tunnel_fd(), SHUT_WR);
    up_closed_ = true;
    progress = true;
    return true;
  }

  // plaintext -> pipe -> kTLS socket (the kernel encrypts).
  bool PumpUp(bool& progress) {
    if (!up_copy_.empty()) return PumpUpCopy(progress);
    if (!up_eof_ && up_.fill < up_.capacity && plaintext_readable_) {
      // The pipe has room, so EAGAIN means the socket is empty.
      const ssize_t n = ::splice(plaintext_fd(), nullptr, up_.write_end.get(), nullptr,
                                 up_.capacity - up_.fill, kSpliceFlags);
      if (n > 0) {
        up_.fill += static_cast<size_t>(n);
        progress = true;
      } else if (n == 0) {
        up_eof_ = true;
        progress = true;
      } else if (errno == EAGAIN) {
        plaintext_readable_ = false;
      } else if (errno != EINTR) {
        return FailWithErrno(errno, "plaintext read");
      }
    }
    if (!tunnel_writable_) return true;
    if (up_.fill > 0 || tx_update_pending_) {
      if (SendGate gate = BeforeSend(); gate != SendGate::kGo) return gate == SendGate::kWait;
      if (up_.fill == 0) return up_eof_ ? CloseUp(progress) : true;
      const ssize_t n =
          ::splice(up_.read_end.get(), nullptr, tunnel_fd(), nullptr, up_.fill, kSpliceFlags);
      if (n > 0) {
        up_.fill -= static_cast<size_t>(n);
        stats_.bytes_to_tunnel += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        tunnel_writable_ = false;
      } else if (n < 0 && errno != EINTR) {
        return FailWithErrno(errno, "tunnel write");
      }
    } else if (up_eof_) {
      return CloseUp(progress);
    }
    return true;
  }

  // kTLS socket (the kernel decrypts) -> pipe -> plaintext.
  bool PumpDown(bool& progress) {
    if (!stray_.empty()) {
      if (!plaintext_writable_) return true;
      const ssize_t n = ::send(plaintext_fd(), stray_.data(), stray_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        stray_.erase(stray_.begin(), stray_.begin() + n);
        stats_.bytes_from_tunnel += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        plaintext_writable_ = false;
      } else if (n < 0 && errno != EINTR) {
        return FailWithErrno(errno, "plaintext write");
      }
      return true;
    }
    if (!down_eof_ && down_.fill < down_.capacity && tunnel_readable_) {
      const ssize_t n = ::splice(tunnel_fd(), nullptr, down_.write_end.get(), nullptr,
                                 down_.capacity - down_.fill, kSpliceFlags);
      if (n > 0) {
        down_.fill += static_cast<size_t>(n);
        progress = true;
        CheckReceiveKey();
      } else if (n == 0) {
        Finish(FailureReason::kTruncated, "tunnel closed without close_notify");
        return false;
      } else if (errno == EINVAL) {
        // The next record is not application data (an alert or a handshake message): splice()
        // cannot carry it, recvmsg() reports its type.
        if (!ReadControlRecord(progress)) return false;
      } else if (errno == EBADMSG) {
        Finish(FailureReason::kDecryptError, "a tunnel record failed authentication");
        return false;
      } else if (errno == EMSGSIZE) {
        Finish(FailureReason::kOversizedRecord, "a tunnel record is larger than TLS allows");
        return false;
      } else if (errno == EAGAIN) {
        tunnel_readable_ = false;
      } else if (errno != EINTR) {
        return FailWithErrno(errno, "tunnel read");
      }
    }
    if (down_.fill > 0) {
      if (!plaintext_writable_) return true;
      const ssize_t n =
          ::splice(down_.read_end.get(), nullptr, plaintext_fd(), nullptr, down_.fill, kSpliceFlags);
      if (n > 0) {
        down_.fill -= static_cast<size_t>(n);
        stats_.bytes_from_tunnel += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno == EAGAIN) {
        plaintext_writable_ = false;
      } else if (n < 0 && errno != EINTR) {
        return FailWithErrno(errno, "plaintext write");
      }
    } else if (down_eof_ && !down_closed_) {
      ::shutdown(plaintext_fd(), SHUT_WR);
      down_closed_ = true;
      progress = true;
    }
    return true;
  }

  bool ReadControlRecord(bool& progress) {
    uint8_t buffer[16 * 1024 + 256];
    uint8_t type = 0;
    const ssize_t n = KtlsReceive(tunnel_fd(), buffer, sizeof(buffer), &type);
    if (n < 0) {
      if (errno == EAGAIN) tunnel_readable_ = false;
      if (errno == EAGAIN || errno == EINTR) return true;
      if (errno == EBADMSG) {
        Finish(FailureReason::kDecryptError, "a tunnel record failed authentication");
        return false;
      }
      if (errno == EMSGSIZE) {
        Finish(FailureReason::kOversizedRecord, "a tunnel record is larger than TLS allows");
        return false;
      }
      return FailWithErrno(errno, "tunnel recvmsg");
    }
    if (n == 0) {
      Finish(FailureReason::kTruncated, "tunnel closed without close_notify");
      return false;
    }
    progress = true;
    switch (type) {
      case kRecordApplicationData:
        stray_.assign(buffer, buffer + n);  // delivered before anything else is read
        return true;
      case kRecordAlert:
        if (n >= 2 && buffer[1] == 0) {
          down_eof_ = true;  // close_notify
          return true;
        }
        Finish(FailureReason::kPeerAlert,
               StrCat("peer sent alert ", AlertName(n >= 2 ? buffer[1] : 255)));
        return false;
      case kRecordHandshake:
        return FollowKeyUpdate(std::span<const uint8_t>(buffer, static_cast<size_t>(n)));
      default:
        Finish(FailureReason::kUnexpectedMessage, StrCat("unexpected record type ", type));
        return false;
    }
  }

  KeyLifetimeOptions lifetime_;
  KtlsCipher cipher_ = KtlsCipher::kAes128Gcm;
  bool key_has_limit_ = true;
  bool rekey_ = false;  // this kernel replaces keys, and the secrets below are kept
  bool peer_follows_key_update_ = false;
  std::vector<uint8_t> tx_secret_;  // current application traffic secrets (rekey_ only)
  std::vector<uint8_t> rx_secret_;
  bool tx_update_pending_ = false;  // a KeyUpdate of ours goes out before the next data
  bool tx_update_request_ = false;  // ... asking the peer to update too
  bool rx_update_requested_ = false;
  int reads_since_rx_check_ = 0;
  std::optional<TokenBucket> peer_updates_;  // the peer's KeyUpdate budget
  uint64_t records_per_splice_ = 66;
  uint64_t tx_records_bound_ = 0;  // at least the records sent so far under the key
  Pipe up_;
  Pipe down_;
  std::vector<uint8_t> up_copy_;  // recv() mode only
  size_t up_copy_fill_ = 0;
  size_t up_copy_offset_ = 0;
  std::vector<uint8_t> stray_;  // application data that arrived through recvmsg()
  bool up_eof_ = false;
  bool up_closed_ = false;
  bool down_eof_ = false;
  bool down_closed_ = false;
};

}  // namespace

std::shared_ptr<Relay> MakeSpliceRelay(EventLoop& loop, UniqueFd plaintext,
                                       std::unique_ptr<TlsSession> tunnel,
                                       Relay::CloseCallback on_close) {
  return std::make_shared<SpliceRelay>(loop, std::move(plaintext), std::move(tunnel),
                                       std::move(on_close));
}

}  // namespace meshtls::tls
