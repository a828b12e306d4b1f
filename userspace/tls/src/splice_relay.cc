// ktls-splice datapath: the kernel encrypts and decrypts (kTLS on the tunnel socket) and splice()
// moves pages socket -> pipe -> socket, so payload bytes never enter this process.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "meshtls/common/strings.h"
#include "meshtls/common/status.h"
#include "meshtls/tls/ktls.h"
#include "meshtls/tls/relay.h"

namespace meshtls::tls {
namespace {

constexpr unsigned kSpliceFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;
constexpr uint8_t kKeyUpdateMessage = 24;  // HandshakeType key_update (RFC 8446 §4)

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

 private:
  absl::Status Init(const RelayOptions& options) override {
    lifetime_ = options.key_lifetime;
    ASSIGN_OR_RETURN(cipher_, KtlsCipherFromIana(tunnel_->cipher_iana_id()));
    // A kTLS socket cannot send a KeyUpdate here, so an AES-GCM key ends with the connection at
    // its limit. The pipe can hold this many records, which one splice() may send at once.
    key_has_limit_ = cipher_ != KtlsCipher::kChacha20Poly1305;
    records_per_splice_ = options.pipe_size / (16 * 1024) + 2;
    ASSIGN_OR_RETURN(up_, MakePipe(options.pipe_size));
    if (options.plaintext_read_with_recv) up_copy_.resize(256 * 1024);
    ASSIGN_OR_RETURN(down_, MakePipe(options.pipe_size));
    // The agent may have switched already, to exchange the tunnel preamble through the kernel.
    if (tunnel_->ssl() == nullptr) return absl::OkStatus();
    return SwitchToKtls(*tunnel_);
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
    if (up_copy_fill_ > 0) {
      if (!CheckKeyLimit()) return false;
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

  // Before a send that could take an AES-GCM key past its limit, the connection ends with
  // key_limit instead. Each send adds at most records_per_splice_ records, so the kernel's exact
  // count (its record sequence) is asked for only as the limit comes near.
  bool CheckKeyLimit() {
    if (!key_has_limit_) return true;
    const uint64_t limit = lifetime_.max_records_per_key;
    if (tx_records_bound_ + 2 * records_per_splice_ + 8 < limit) {
      tx_records_bound_ += records_per_splice_;
      return true;
    }
    absl::StatusOr<uint64_t> sent = KtlsRecordSequence(tunnel_fd(), cipher_, true);
    if (sent.ok() && *sent + records_per_splice_ + 8 < limit) {
      tx_records_bound_ = *sent + records_per_splice_;
      return true;
    }
    GlobalKeyUpdateCounters().key_limit_closes++;
    Finish(FailureReason::kKeyLimit,
           sent.ok() ? StrCat("the sending key protected ", *sent, " records (limit ", limit,
                              "); this kernel's kTLS cannot replace a key")
                     : StrCat("the record count is unknown (", sent.status().message(), ") near the limit ", limit));
    return false;
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
    if (up_.fill > 0) {
      if (!CheckKeyLimit()) return false;
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
        if (buffer[0] == kKeyUpdateMessage) {
          Finish(FailureReason::kPeerKeyUpdateUnsupported,
                 "peer sent a KeyUpdate; this datapath cannot install new keys");
          return false;
        }
        Finish(FailureReason::kUnexpectedMessage,
               StrCat("unexpected post-handshake message type ", buffer[0]));
        return false;
      default:
        Finish(FailureReason::kUnexpectedMessage, StrCat("unexpected record type ", type));
        return false;
    }
  }

  KeyLifetimeOptions lifetime_;
  KtlsCipher cipher_ = KtlsCipher::kAes128Gcm;
  bool key_has_limit_ = true;
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
