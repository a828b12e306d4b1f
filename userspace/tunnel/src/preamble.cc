// Hand-written codec for the tunnel preamble and response (see preamble.h for why).
#include "meshtls/tunnel/preamble.h"

#include <fmt/format.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "meshtls/common/strings.h"

namespace meshtls::tunnel {
namespace {

uint8_t ByteAt(std::string_view bytes, size_t offset) {
  return static_cast<uint8_t>(bytes[offset]);
}

uint16_t ReadU16(std::string_view bytes, size_t offset) {
  return static_cast<uint16_t>((ByteAt(bytes, offset) << 8) | ByteAt(bytes, offset + 1));
}

void AppendU8(std::string* out, uint8_t value) { out->push_back(static_cast<char>(value)); }

void AppendU16(std::string* out, uint16_t value) {
  AppendU8(out, static_cast<uint8_t>(value >> 8));
  AppendU8(out, static_cast<uint8_t>(value & 0xff));
}

void AppendField(std::string* out, FieldType type, std::string_view value) {
  AppendU8(out, static_cast<uint8_t>(type));
  AppendU16(out, static_cast<uint16_t>(value.size()));
  out->append(value);
}

bool IsPrintable(std::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

bool IsHttpRequestStart(std::string_view magic) {
  static constexpr std::array<std::string_view, 10> kStarts = {
      "GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN", "TRAC", "PRI "};
  return std::find(kStarts.begin(), kStarts.end(), magic) != kStarts.end();
}

// The first four bytes of a stream tell most misrouted peers apart, so the log names what they
// look like instead of leaving an operator with a hex dump.
std::string DescribeBadMagic(std::string_view magic, bool expecting_request) {
  std::string out = "bad magic 0x";
  for (char c : magic) out += fmt::format("{:02x}", static_cast<uint8_t>(c));
  const std::string_view speaks = expecting_request
                                      ? "this port speaks the meshtls tunnel protocol"
                                      : "the peer does not speak the meshtls tunnel protocol";
  if (ByteAt(magic, 0) == 0x16 && ByteAt(magic, 1) == 0x03) {
    StrAppend(&out, " (a TLS handshake record: TLS inside the tunnel; ", speaks, ")");
  } else if (expecting_request && magic == kResponseMagic) {
    StrAppend(&out, " (\"MTLR\", a tunnel response: the peer is a server, not a client)");
  } else if (!expecting_request && magic == kPreambleMagic) {
    StrAppend(&out, " (\"MTLP\", a tunnel preamble: the peer is a client, not a server)");
  } else if (IsPrintable(magic)) {
    std::string_view guess;
    if (expecting_request && IsHttpRequestStart(magic)) guess = "an HTTP request? ";
    if (!expecting_request && magic == "HTTP") guess = "an HTTP response? ";
    if (magic == "SSH-") guess = "an SSH peer? ";
    StrAppend(&out, " (\"", magic, "\": ", guess, speaks, ")");
  }
  return out;
}

std::string UnsupportedVersion(uint8_t version) {
  return StrCat("unsupported version ", static_cast<int>(version), " (this agent speaks version ",
                static_cast<int>(kProtocolVersion), ")");
}

}  // namespace

absl::StatusOr<std::string> EncodePreamble(const Preamble& preamble) {
  if (preamble.destination_port == 0) {
    return absl::InvalidArgumentError("destination port is 0");
  }
  if (preamble.source_workload.size() > kMaxSourceWorkloadSize) {
    return absl::InvalidArgumentError(StrCat("source workload is ", preamble.source_workload.size(),
                                             " bytes, over the ", kMaxSourceWorkloadSize,
                                             "-byte bound"));
  }
  if (preamble.source_workload.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("source workload contains a NUL byte");
  }
  if (preamble.request_id.size() > kMaxRequestIdSize) {
    return absl::InvalidArgumentError(StrCat("request id is ", preamble.request_id.size(),
                                             " bytes, over the ", kMaxRequestIdSize,
                                             "-byte bound"));
  }
  std::string body;
  AppendU8(&body, preamble.destination.is_v4() ? 4 : 6);
  AppendU16(&body, preamble.destination_port);
  body.append(reinterpret_cast<const char*>(preamble.destination.bytes()),
              preamble.destination.size());
  if (!preamble.source_workload.empty()) {
    AppendField(&body, FieldType::kSourceWorkload, preamble.source_workload);
  }
  if (!preamble.request_id.empty()) {
    AppendField(&body, FieldType::kRequestId, preamble.request_id);
  }
  if (preamble.capabilities != 0) {
    AppendField(&body, FieldType::kCapabilities, std::string(1, static_cast<char>(preamble.capabilities)));
  }
  std::string out(kPreambleMagic);
  AppendU8(&out, kProtocolVersion);
  AppendU8(&out, 0);
  AppendU16(&out, static_cast<uint16_t>(body.size()));
  out += body;
  return out;
}

std::string_view ResponseStatusName(ResponseStatus status) {
  switch (status) {
    case ResponseStatus::kOk:
      return "ok";
    case ResponseStatus::kDenied:
      return "denied";
    case ResponseStatus::kError:
      return "error";
  }
  return "unknown";
}

std::string_view ReasonCodeName(ReasonCode reason) {
  switch (reason) {
    case ReasonCode::kNone:
      return "none";
    case ReasonCode::kPolicyDenied:
      return "policy_denied";
    case ReasonCode::kNoSuchWorkload:
      return "no_such_workload";
    case ReasonCode::kPortNotAllowed:
      return "port_not_allowed";
    case ReasonCode::kMalformedPreamble:
      return "malformed_preamble";
    case ReasonCode::kUnsupportedVersion:
      return "unsupported_version";
    case ReasonCode::kUpstreamConnectFailed:
      return "upstream_connect_failed";
    case ReasonCode::kOverloaded:
      return "overloaded";
    case ReasonCode::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string EncodeResponse(const Response& response) {
  size_t message_size = response.message.size();
  if (message_size > kMaxResponseMessageSize) {
    message_size = kMaxResponseMessageSize;
    // Byte `message_size` is the first one dropped; if it continues a UTF-8 sequence, that
    // character straddles the cut and goes too.
    while (message_size > 0 && (ByteAt(response.message, message_size) & 0xc0) == 0x80) {
      --message_size;
    }
  }
  std::string out(kResponseMagic);
  AppendU8(&out, kProtocolVersion);
  AppendU8(&out, static_cast<uint8_t>(response.status));
  AppendU16(&out, static_cast<uint16_t>(response.reason));
  AppendU8(&out, static_cast<uint8_t>(message_size));
  out.append(response.message, 0, message_size);
  return out;
}

// Both parsers copy bytes up to the next offset where something can be checked (end of the magic,
// the version, ..., end of the body), so a malformed stream is rejected at the same byte however
// it was split, and the bytes after the message are never taken.

size_t PreambleParser::Feed(const uint8_t* data, size_t size) {
  size_t used = 0;
  while (used < size && state_ == State::kNeedMore) {
    const size_t target = NeededSize();
    const size_t n = std::min(target - buffer_.size(), size - used);
    buffer_.append(reinterpret_cast<const char*>(data + used), n);
    used += n;
    if (buffer_.size() == target) Check();
  }
  return used;
}

size_t PreambleParser::NeededSize() const {
  if (buffer_.size() < 4) return 4;  // magic
  if (buffer_.size() < 5) return 5;  // version
  if (buffer_.size() < 6) return 6;  // flags
  if (buffer_.size() < kPreambleHeaderSize) return kPreambleHeaderSize;
  return kPreambleHeaderSize + body_size_;
}

void PreambleParser::Check() {
  switch (buffer_.size()) {
    case 4:
      if (buffer_ != kPreambleMagic) {
        Fail(ReasonCode::kMalformedPreamble, DescribeBadMagic(buffer_, true));
      }
      return;
    case 5:
      if (ByteAt(buffer_, 4) != kProtocolVersion) {
        Fail(ReasonCode::kUnsupportedVersion, UnsupportedVersion(ByteAt(buffer_, 4)));
      }
      return;
    case 6:
      if (ByteAt(buffer_, 5) != 0) {
        Fail(ReasonCode::kMalformedPreamble,
             fmt::format("flags {:#04x} are reserved and must be 0 in version {}",
                         ByteAt(buffer_, 5), kProtocolVersion));
      }
      return;
    case kPreambleHeaderSize:
      body_size_ = ReadU16(buffer_, 6);
      if (body_size_ > kMaxPreambleBodySize) {
        Fail(ReasonCode::kMalformedPreamble, StrCat("body length ", body_size_, " is over the ",
                                                    kMaxPreambleBodySize, "-byte bound"));
      } else if (body_size_ < kMinPreambleBodySize) {
        Fail(ReasonCode::kMalformedPreamble,
             StrCat("body length ", body_size_, " is shorter than the smallest destination (",
                    kMinPreambleBodySize, " bytes)"));
      }
      return;
    default:
      ParseBody();
  }
}

void PreambleParser::ParseBody() {
  std::string_view body(buffer_);
  body.remove_prefix(kPreambleHeaderSize);
  const uint8_t family = ByteAt(body, 0);
  if (family != 4 && family != 6) {
    return Fail(ReasonCode::kMalformedPreamble,
                StrCat("address family ", static_cast<int>(family), " is neither 4 nor 6"));
  }
  const size_t address_size = family == 4 ? 4 : 16;
  if (body.size() < 3 + address_size) {
    return Fail(ReasonCode::kMalformedPreamble,
                StrCat("body of ", body.size(), " bytes ends inside the IPv6 destination"));
  }
  preamble_.destination_port = ReadU16(body, 1);
  if (preamble_.destination_port == 0) {
    return Fail(ReasonCode::kMalformedPreamble, "destination port is 0");
  }
  if (family == 4) {
    in_addr v4{};
    std::memcpy(&v4, body.data() + 3, sizeof(v4));
    preamble_.destination = IpAddress(v4);
  } else {
    in6_addr v6{};
    std::memcpy(&v6, body.data() + 3, sizeof(v6));
    preamble_.destination = IpAddress(v6);
  }

  bool seen_source_workload = false;
  bool seen_request_id = false;
  bool seen_capabilities = false;
  size_t offset = 3 + address_size;
  while (offset < body.size()) {
    if (body.size() - offset < 3) {
      return Fail(ReasonCode::kMalformedPreamble,
                  StrCat("body length ", body.size(), " leaves ", body.size() - offset,
                         " bytes after the last field, too few for a field header"));
    }
    const uint8_t type = ByteAt(body, offset);
    const size_t length = ReadU16(body, offset + 1);
    offset += 3;
    if (length > body.size() - offset) {
      return Fail(ReasonCode::kMalformedPreamble,
                  fmt::format("field {:#04x} of {} bytes runs past the end of the body ({} bytes "
                              "left)",
                              type, length, body.size() - offset));
    }
    const std::string_view value = body.substr(offset, length);
    offset += length;
    switch (type) {
      case static_cast<uint8_t>(FieldType::kSourceWorkload):
        if (seen_source_workload) {
          return Fail(ReasonCode::kMalformedPreamble, "duplicate source workload field");
        }
        seen_source_workload = true;
        if (value.empty() || value.size() > kMaxSourceWorkloadSize) {
          return Fail(ReasonCode::kMalformedPreamble,
                      StrCat("source workload is ", value.size(), " bytes, not 1..",
                             kMaxSourceWorkloadSize));
        }
        // A NUL would truncate the name wherever it meets a C string (logs, BPF maps).
        if (value.find('\0') != std::string_view::npos) {
          return Fail(ReasonCode::kMalformedPreamble, "source workload contains a NUL byte");
        }
        preamble_.source_workload = std::string(value);
        break;
      case static_cast<uint8_t>(FieldType::kRequestId):
        if (seen_request_id) {
          return Fail(ReasonCode::kMalformedPreamble, "duplicate request id field");
        }
        seen_request_id = true;
        if (value.empty() || value.size() > kMaxRequestIdSize) {
          return Fail(ReasonCode::kMalformedPreamble,
                      StrCat("request id is ", value.size(), " bytes, not 1..", kMaxRequestIdSize));
        }
        preamble_.request_id = std::string(value);
        break;
      case static_cast<uint8_t>(FieldType::kCapabilities):
        if (seen_capabilities) return Fail(ReasonCode::kMalformedPreamble, "duplicate capabilities field");
        seen_capabilities = true;
        if (value.size() != 1) {
          return Fail(ReasonCode::kMalformedPreamble, StrCat("capabilities field is ", value.size(), " bytes, not 1"));
        }
        preamble_.capabilities = static_cast<uint8_t>(value[0]);
        break;
      default:
        if (type >= kFirstCriticalFieldType) {
          return Fail(ReasonCode::kMalformedPreamble,
                      fmt::format("unknown critical field {:#04x} (the client needs a feature "
                                  "this agent lacks)",
                                  type));
        }
        break;  // An optional field from a newer client.
    }
  }
  state_ = State::kDone;
  std::string().swap(buffer_);
}

void PreambleParser::Fail(ReasonCode reason, std::string message) {
  state_ = State::kError;
  error_reason_ = reason;
  error_ = std::move(message);
  preamble_ = Preamble();
  std::string().swap(buffer_);
}

size_t ResponseParser::Feed(const uint8_t* data, size_t size) {
  size_t used = 0;
  while (used < size && state_ == State::kNeedMore) {
    const size_t target = NeededSize();
    const size_t n = std::min(target - buffer_.size(), size - used);
    buffer_.append(reinterpret_cast<const char*>(data + used), n);
    used += n;
    if (buffer_.size() == target) Check();
  }
  return used;
}

size_t ResponseParser::NeededSize() const {
  if (buffer_.size() < 4) return 4;  // magic
  if (buffer_.size() < 5) return 5;  // version
  if (buffer_.size() < 6) return 6;  // status
  if (buffer_.size() < kResponseHeaderSize) return kResponseHeaderSize;
  return kResponseHeaderSize + message_size_;
}

void ResponseParser::Check() {
  // Not a switch: an empty message ends the response at the header, so both checks can be due.
  if (buffer_.size() == 4 && buffer_ != kResponseMagic) {
    return Fail(ReasonCode::kMalformedPreamble, DescribeBadMagic(buffer_, false));
  }
  if (buffer_.size() == 5 && ByteAt(buffer_, 4) != kProtocolVersion) {
    return Fail(ReasonCode::kUnsupportedVersion, UnsupportedVersion(ByteAt(buffer_, 4)));
  }
  if (buffer_.size() == 6 && ByteAt(buffer_, 5) > static_cast<uint8_t>(ResponseStatus::kError)) {
    return Fail(ReasonCode::kMalformedPreamble,
                StrCat("unknown response status ", static_cast<int>(ByteAt(buffer_, 5))));
  }
  if (buffer_.size() == kResponseHeaderSize) message_size_ = ByteAt(buffer_, 8);
  if (buffer_.size() == kResponseHeaderSize + message_size_) {
    response_.status = static_cast<ResponseStatus>(ByteAt(buffer_, 5));
    response_.reason = static_cast<ReasonCode>(ReadU16(buffer_, 6));
    response_.message = buffer_.substr(kResponseHeaderSize);
    state_ = State::kDone;
    std::string().swap(buffer_);
  }
}

void ResponseParser::Fail(ReasonCode reason, std::string message) {
  state_ = State::kError;
  error_reason_ = reason;
  error_ = std::move(message);
  response_ = Response();
  std::string().swap(buffer_);
}

}  // namespace meshtls::tunnel
