#pragma once

// The tunnel preamble: what a client agent sends inside the TLS tunnel on port 15008 right after
// the handshake (the original destination plus a few fields), and the server agent's answer.
// docs/tunnel-protocol.md is the normative description; this is a summary.
//
// The codec is hand-written: the format is ours and small, and no serialization library produces
// it. Both parsers are incremental, because a TLS record can split the preamble anywhere or carry
// the preamble and the first application bytes together.
//
// Request (client -> server), all integers big-endian:
//   offset size
//   0      4     magic "MTLP" (4d 54 4c 50)
//   4      1     version, 1
//   5      1     flags, reserved: 0 in version 1
//   6      2     body length N, 7..4096
//   8      N     body:
//                  1   address family: 4 or 6
//                  2   destination port, nonzero
//                  4|16 destination address, network byte order
//                  then fields until the body ends, each:
//                  1   type (0x80..0xff are critical: a receiver that does not know one rejects
//                      the preamble; it skips unknown types below 0x80)
//                  2   value length L
//                  L   value
// Field types of version 1 (each at most once, never empty):
//   1  source workload, "namespace/name", 1..253 bytes, no NUL (otherwise opaque). A claim for
//      logs only: the peer's identity is its SVID.
//   2  request id, 1..64 opaque bytes, to correlate access logs across nodes.
//   3  capabilities, 1 byte of flags (kCapability*); unknown bits are ignored.
//
// Response (server -> client):
//   0      4     magic "MTLR" (4d 54 4c 52)
//   4      1     version, 1
//   5      1     status: 0 OK, 1 DENIED, 2 ERROR
//   6      2     reason code (ReasonCode); with status OK, the server's capability flags
//   8      1     message length M, 0..255
//   9      M     message: human readable, for logs
// Bytes after the preamble (or the response) are application data.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "meshtls/common/ip_address.h"

namespace meshtls::tunnel {

inline constexpr std::string_view kPreambleMagic = "MTLP";
inline constexpr std::string_view kResponseMagic = "MTLR";
inline constexpr uint8_t kProtocolVersion = 1;

inline constexpr size_t kPreambleHeaderSize = 8;
// Family, port and an IPv4 address: the smallest body.
inline constexpr size_t kMinPreambleBodySize = 7;
// Bounds what a server buffers per connection before it has decided anything.
inline constexpr size_t kMaxPreambleBodySize = 4096;
inline constexpr size_t kMaxPreambleSize = kPreambleHeaderSize + kMaxPreambleBodySize;
// The DNS-name bound. A namespace (up to 63 bytes) plus an object name (up to 253) can exceed it;
// the field only feeds logs, so such a client leaves it out.
inline constexpr size_t kMaxSourceWorkloadSize = 253;
inline constexpr size_t kMaxRequestIdSize = 64;

inline constexpr size_t kResponseHeaderSize = 9;
inline constexpr size_t kMaxResponseMessageSize = 255;
inline constexpr size_t kMaxResponseSize = kResponseHeaderSize + kMaxResponseMessageSize;

enum class FieldType : uint8_t {
  kSourceWorkload = 1,
  kRequestId = 2,
  kCapabilities = 3,
};

// Capability flags: in the preamble's capabilities field (the client's) and in the reason code of
// an OK response (the server's). Agents that predate them send neither, which reads as "none".
// This end can follow the peer's TLS 1.3 KeyUpdate; a peer without it must never get one.
inline constexpr uint8_t kCapabilityFollowsKeyUpdate = 0x01;
inline constexpr uint8_t kFirstCriticalFieldType = 0x80;

struct Preamble {
  IpAddress destination;
  uint16_t destination_port = 0;
  // Empty: the field is absent.
  std::string source_workload;
  std::string request_id;
  uint8_t capabilities = 0;  // kCapability* flags; 0: the field is absent

  friend bool operator==(const Preamble&, const Preamble&) = default;
};

// The bytes to send; InvalidArgument for a port of 0, a field over its bound, or a NUL in
// source_workload (whatever the parser would reject).
absl::StatusOr<std::string> EncodePreamble(const Preamble& preamble);

enum class ResponseStatus : uint8_t { kOk = 0, kDenied = 1, kError = 2 };

// Codes this version does not know are carried through as their number (a newer server may add
// some); the status alone decides what the client does.
enum class ReasonCode : uint16_t {
  kNone = 0,
  kPolicyDenied = 1,
  kNoSuchWorkload = 2,
  kPortNotAllowed = 3,
  kMalformedPreamble = 4,
  kUnsupportedVersion = 5,
  kUpstreamConnectFailed = 6,
  kOverloaded = 7,
  kInternal = 8,
};

// "ok", "denied", "error" ("unknown" otherwise).
std::string_view ResponseStatusName(ResponseStatus status);
// "none", "policy_denied", ..., "internal" ("unknown" otherwise): stable, for logs and metrics.
std::string_view ReasonCodeName(ReasonCode reason);

struct Response {
  ResponseStatus status = ResponseStatus::kOk;
  ReasonCode reason = ReasonCode::kNone;
  std::string message;

  friend bool operator==(const Response&, const Response&) = default;
};

// Never fails, so that a server can always answer: a message over 255 bytes is cut at the last
// UTF-8 character boundary that fits.
std::string EncodeResponse(const Response& response);

// Parses one preamble from a byte stream.
class PreambleParser {
 public:
  enum class State { kNeedMore, kDone, kError };

  // Takes bytes up to the end of the preamble (or up to the byte that showed it is malformed) and
  // returns how many it took; the rest of `data` is application data the caller keeps. Returns 0
  // once the state is kDone or kError.
  size_t Feed(const uint8_t* data, size_t size);
  size_t Feed(std::string_view data) {
    return Feed(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }

  State state() const { return state_; }
  // Valid in kDone.
  const Preamble& preamble() const { return preamble_; }
  // In kError: kUnsupportedVersion or kMalformedPreamble, for the DENIED/ERROR response.
  ReasonCode error_reason() const { return error_reason_; }
  // In kError: why, for the log, e.g. "bad magic 0x47455420 ("GET "): an HTTP request? ...".
  const std::string& error() const { return error_; }

 private:
  size_t NeededSize() const;
  void Check();
  void ParseBody();
  void Fail(ReasonCode reason, std::string message);

  State state_ = State::kNeedMore;
  std::string buffer_;
  size_t body_size_ = 0;
  Preamble preamble_;
  ReasonCode error_reason_ = ReasonCode::kNone;
  std::string error_;
};

// Parses the server's response from a byte stream; same contract as PreambleParser.
class ResponseParser {
 public:
  enum class State { kNeedMore, kDone, kError };

  size_t Feed(const uint8_t* data, size_t size);
  size_t Feed(std::string_view data) {
    return Feed(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }

  State state() const { return state_; }
  const Response& response() const { return response_; }
  ReasonCode error_reason() const { return error_reason_; }
  const std::string& error() const { return error_; }

 private:
  size_t NeededSize() const;
  void Check();
  void Fail(ReasonCode reason, std::string message);

  State state_ = State::kNeedMore;
  std::string buffer_;
  size_t message_size_ = 0;
  Response response_;
  ReasonCode error_reason_ = ReasonCode::kNone;
  std::string error_;
};

}  // namespace meshtls::tunnel
