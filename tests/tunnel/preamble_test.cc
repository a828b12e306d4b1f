#include "meshtls/tunnel/preamble.h"

#include <cstdint>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"

namespace meshtls::tunnel {
namespace {

IpAddress Ip(const char* text) { return *IpAddress::Parse(text); }

std::string Bytes(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

std::string U16(size_t value) {
  return Bytes({static_cast<int>(value >> 8), static_cast<int>(value & 0xff)});
}

std::string Field(int type, const std::string& value) {
  return Bytes({type}) + U16(value.size()) + value;
}

// A request with a valid header around `body`.
std::string Request(const std::string& body) {
  return "MTLP" + Bytes({1, 0}) + U16(body.size()) + body;
}

// 10.0.0.1:8080
std::string V4Destination() { return Bytes({4, 0x1f, 0x90, 10, 0, 0, 1}); }

std::string Encode(const Preamble& preamble) {
  auto encoded = EncodePreamble(preamble);
  EXPECT_TRUE(encoded.ok()) << encoded.status();
  return encoded.ok() ? *encoded : std::string();
}

// What a parser ends with, comparable across ways of feeding it.
struct Outcome {
  int state = 0;
  size_t consumed = 0;
  Preamble preamble;
  Response response;
  ReasonCode reason = ReasonCode::kNone;
  std::string error;
  bool operator==(const Outcome&) const = default;
};

void PrintTo(const Outcome& outcome, std::ostream* os) {
  *os << "{state " << outcome.state << ", consumed " << outcome.consumed << ", destination "
      << outcome.preamble.destination.ToString() << ":" << outcome.preamble.destination_port
      << ", reason " << ReasonCodeName(outcome.reason) << ", error \"" << outcome.error << "\"}";
}

// Feeds `input` in pieces ending at `cuts`, stopping a piece short where the parser stops.
template <typename Parser>
Outcome FeedInPieces(const std::string& input, const std::vector<size_t>& cuts) {
  Parser parser;
  Outcome out;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(input.size());
  for (size_t end : ends) {
    const size_t used = parser.Feed(std::string_view(input).substr(start, end - start));
    EXPECT_LE(used, end - start);
    out.consumed += used;
    if (parser.state() != Parser::State::kNeedMore) {
      EXPECT_EQ(parser.Feed(std::string_view(input).substr(start + used)), 0u);
      break;
    }
    EXPECT_EQ(used, end - start);
    start = end;
  }
  out.state = static_cast<int>(parser.state());
  if constexpr (std::is_same_v<Parser, PreambleParser>) {
    if (parser.state() == Parser::State::kDone) out.preamble = parser.preamble();
  } else {
    if (parser.state() == Parser::State::kDone) out.response = parser.response();
  }
  out.reason = parser.error_reason();
  out.error = parser.error();
  return out;
}

PreambleParser ParseAll(const std::string& input, size_t* consumed = nullptr) {
  PreambleParser parser;
  const size_t used = parser.Feed(input);
  if (consumed != nullptr) *consumed = used;
  return parser;
}

// Expects `input` to be rejected with `reason` and an error mentioning `message_part`.
void ExpectRejected(const std::string& input, ReasonCode reason, const std::string& message_part) {
  PreambleParser parser = ParseAll(input);
  ASSERT_EQ(parser.state(), PreambleParser::State::kError) << message_part;
  EXPECT_EQ(parser.error_reason(), reason) << parser.error();
  EXPECT_NE(parser.error().find(message_part), std::string::npos) << parser.error();
  EXPECT_EQ(parser.Feed("more"), 0u);
}

TEST(PreambleTest, EncodesTheDocumentedBytes) {
  Preamble preamble{Ip("10.0.0.1"), 8080, "default/client", "r1"};
  EXPECT_EQ(Encode(preamble), "MTLP" + Bytes({1, 0, 0, 29}) + V4Destination() +
                                  Field(1, "default/client") + Field(2, "r1"));
  preamble = {Ip("fd00::1"), 443, "", ""};
  EXPECT_EQ(Encode(preamble), "MTLP" + Bytes({1, 0, 0, 19, 6, 1, 0xbb, 0xfd, 0, 0, 0, 0,
                                              0, 0, 0, 0,  0, 0, 0,    0,    0, 0, 1}));
}

TEST(PreambleTest, RoundTrips) {
  const std::vector<Preamble> cases = {
      {Ip("10.0.0.1"), 8080, "", ""},
      {Ip("10.0.0.1"), 8080, "default/client", "req-42"},
      {Ip("192.168.1.255"), 65535, "ns/name", ""},
      {Ip("fd00::1"), 443, "", ""},
      {Ip("2001:db8::abcd"), 1, "", std::string("\0\xff\x01", 3)},
      {Ip("::ffff:10.0.0.1"), 80, "kube-system/coredns", "id"},
  };
  for (const Preamble& preamble : cases) {
    const std::string encoded = Encode(preamble);
    size_t consumed = 0;
    PreambleParser parser = ParseAll(encoded, &consumed);
    ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
    EXPECT_EQ(consumed, encoded.size());
    EXPECT_EQ(parser.preamble(), preamble) << preamble.destination.ToString();
    EXPECT_EQ(parser.preamble().destination.is_v4(), preamble.destination.is_v4());
  }
}

TEST(PreambleTest, EverySplitGivesTheSameResult) {
  const std::string app = "GET / HTTP/1.1\r\n";
  const std::vector<std::string> inputs = {
      Encode({Ip("10.0.0.1"), 8080, "default/client", "req-42"}) + app,
      Encode({Ip("fd00::1"), 443, "", ""}),
      Request(V4Destination() + Field(0x7f, "x") + Field(1, "a/b")) + app,
      Request(V4Destination() + Field(0x81, "x")) + app,  // an error
      Request(Bytes({5}) + V4Destination().substr(1)),    // an error in the body
      "GET / HTTP/1.1\r\n",                               // an error in the magic
      "MTLP" + Bytes({2, 0, 0, 7}),                       // an error in the version
  };
  for (const std::string& input : inputs) {
    const Outcome whole = FeedInPieces<PreambleParser>(input, {});
    for (size_t cut = 0; cut <= input.size(); ++cut) {
      EXPECT_EQ(FeedInPieces<PreambleParser>(input, {cut}), whole) << "cut at " << cut;
    }
    std::vector<size_t> every_byte;
    for (size_t i = 1; i < input.size(); ++i) every_byte.push_back(i);
    EXPECT_EQ(FeedInPieces<PreambleParser>(input, every_byte), whole);
  }
}

TEST(PreambleTest, LeavesApplicationBytes) {
  const std::string preamble = Encode({Ip("10.0.0.1"), 8080, "default/client", ""});
  const std::string input = preamble + "hello";
  size_t consumed = 0;
  PreambleParser parser = ParseAll(input, &consumed);
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(consumed, preamble.size());
  EXPECT_EQ(input.substr(consumed), "hello");
  EXPECT_EQ(parser.Feed("world"), 0u);
  EXPECT_EQ(parser.preamble().source_workload, "default/client");
}

TEST(PreambleTest, NeedsMoreUntilTheLastByte) {
  const std::string encoded = Encode({Ip("fd00::1"), 443, "a/b", ""});
  PreambleParser parser;
  EXPECT_EQ(parser.Feed(encoded.substr(0, encoded.size() - 1)), encoded.size() - 1);
  EXPECT_EQ(parser.state(), PreambleParser::State::kNeedMore);
  EXPECT_EQ(parser.Feed(""), 0u);
  EXPECT_EQ(parser.Feed(encoded.substr(encoded.size() - 1)), 1u);
  EXPECT_EQ(parser.state(), PreambleParser::State::kDone);
}

TEST(PreambleTest, DescribesWhatABadMagicLooksLike) {
  ExpectRejected("GET / HTTP/1.1\r\n", ReasonCode::kMalformedPreamble,
                 "bad magic 0x47455420 (\"GET \": an HTTP request? this port speaks the meshtls "
                 "tunnel protocol)");
  ExpectRejected("PRI * HTTP/2.0", ReasonCode::kMalformedPreamble, "an HTTP request?");
  ExpectRejected(Bytes({0x16, 0x03, 0x01, 0x02, 0x00}), ReasonCode::kMalformedPreamble,
                 "bad magic 0x16030102 (a TLS handshake record");
  ExpectRejected(EncodeResponse({}), ReasonCode::kMalformedPreamble, "the peer is a server");
  ExpectRejected("abcd", ReasonCode::kMalformedPreamble, "bad magic 0x61626364 (\"abcd\": this");
  ExpectRejected(Bytes({0, 1, 2, 3}), ReasonCode::kMalformedPreamble, "bad magic 0x00010203");
  // Rejected as soon as four bytes are in, without waiting for a header.
  PreambleParser parser;
  EXPECT_EQ(parser.Feed("MTLX"), 4u);
  EXPECT_EQ(parser.state(), PreambleParser::State::kError);
}

TEST(PreambleTest, RejectsOtherVersions) {
  ExpectRejected("MTLP" + Bytes({2}), ReasonCode::kUnsupportedVersion,
                 "unsupported version 2 (this agent speaks version 1)");
  ExpectRejected("MTLP" + Bytes({0}), ReasonCode::kUnsupportedVersion, "unsupported version 0");
}

TEST(PreambleTest, RejectsMalformedHeaders) {
  ExpectRejected("MTLP" + Bytes({1, 0x01}), ReasonCode::kMalformedPreamble,
                 "flags 0x01 are reserved");
  ExpectRejected("MTLP" + Bytes({1, 0x80, 0, 7}) + V4Destination(), ReasonCode::kMalformedPreamble,
                 "flags 0x80");
  ExpectRejected("MTLP" + Bytes({1, 0}) + U16(4097), ReasonCode::kMalformedPreamble,
                 "body length 4097 is over the 4096-byte bound");
  ExpectRejected("MTLP" + Bytes({1, 0}) + U16(0xffff), ReasonCode::kMalformedPreamble,
                 "body length 65535");
  ExpectRejected("MTLP" + Bytes({1, 0}) + U16(6), ReasonCode::kMalformedPreamble,
                 "body length 6 is shorter than the smallest destination");
  ExpectRejected("MTLP" + Bytes({1, 0}) + U16(0), ReasonCode::kMalformedPreamble, "body length 0");
}

TEST(PreambleTest, RejectsBadDestinations) {
  ExpectRejected(Request(Bytes({5, 0, 80, 10, 0, 0, 1})), ReasonCode::kMalformedPreamble,
                 "address family 5 is neither 4 nor 6");
  ExpectRejected(Request(Bytes({0, 0, 80, 10, 0, 0, 1})), ReasonCode::kMalformedPreamble,
                 "address family 0");
  ExpectRejected(Request(Bytes({4, 0, 0, 10, 0, 0, 1})), ReasonCode::kMalformedPreamble,
                 "destination port is 0");
  ExpectRejected(Request(Bytes({6, 0, 80, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})),
                 ReasonCode::kMalformedPreamble,
                 "body of 16 bytes ends inside the IPv6 destination");
}

TEST(PreambleTest, RejectsBodiesThatDoNotMatchTheirFields) {
  ExpectRejected(Request(V4Destination() + Bytes({1, 0})), ReasonCode::kMalformedPreamble,
                 "leaves 2 bytes after the last field");
  ExpectRejected(Request(V4Destination() + Bytes({0x7f})), ReasonCode::kMalformedPreamble,
                 "leaves 1 bytes after the last field");
  ExpectRejected(Request(V4Destination() + Field(1, "a/b") + Bytes({0})),
                 ReasonCode::kMalformedPreamble, "leaves 1 bytes");
  ExpectRejected(Request(V4Destination() + Bytes({1, 0, 4}) + "a/b"),
                 ReasonCode::kMalformedPreamble,
                 "field 0x01 of 4 bytes runs past the end of the body (3 bytes left)");
  ExpectRejected(Request(V4Destination() + Bytes({0x7f, 0xff, 0xff})),
                 ReasonCode::kMalformedPreamble, "field 0x7f of 65535 bytes runs past");
}

TEST(PreambleTest, RejectsBadKnownFields) {
  ExpectRejected(Request(V4Destination() + Field(1, std::string("a/b\0c", 5))),
                 ReasonCode::kMalformedPreamble, "source workload contains a NUL byte");
  ExpectRejected(Request(V4Destination() + Field(1, "")), ReasonCode::kMalformedPreamble,
                 "source workload is 0 bytes, not 1..253");
  ExpectRejected(Request(V4Destination() + Field(2, "")), ReasonCode::kMalformedPreamble,
                 "request id is 0 bytes, not 1..64");
  ExpectRejected(Request(V4Destination() + Field(1, "a/b") + Field(2, "r") + Field(1, "a/b")),
                 ReasonCode::kMalformedPreamble, "duplicate source workload field");
  ExpectRejected(Request(V4Destination() + Field(2, "r") + Field(2, "s")),
                 ReasonCode::kMalformedPreamble, "duplicate request id field");
  ExpectRejected(Request(V4Destination() + Field(3, "")), ReasonCode::kMalformedPreamble,
                 "capabilities field is 0 bytes, not 1");
  ExpectRejected(Request(V4Destination() + Field(3, "\x01\x02")), ReasonCode::kMalformedPreamble,
                 "capabilities field is 2 bytes, not 1");
  ExpectRejected(Request(V4Destination() + Field(3, "\x01") + Field(3, "\x01")), ReasonCode::kMalformedPreamble,
                 "duplicate capabilities field");
}

// The KeyUpdate capability travels as field 3; unknown flag bits are kept, not rejected, so that a
// later version can add some.
TEST(PreambleTest, CarriesCapabilities) {
  Preamble preamble{Ip("10.0.0.1"), 8080, "", ""};
  preamble.capabilities = kCapabilityFollowsKeyUpdate;
  EXPECT_EQ(Encode(preamble), "MTLP" + Bytes({1, 0, 0, 11}) + V4Destination() + Field(3, "\x01"));
  PreambleParser parser = ParseAll(Request(V4Destination() + Field(3, "\x81")));
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(parser.preamble().capabilities, 0x81);
  // An older client sends no field: no capability.
  parser = ParseAll(Request(V4Destination()));
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone);
  EXPECT_EQ(parser.preamble().capabilities, 0);
}

TEST(PreambleTest, SkipsUnknownOptionalFieldsAndRejectsUnknownCriticalOnes) {
  const std::string body = V4Destination() + Field(0, "") + Field(4, "x") + Field(2, "r") +
                           Field(0x7f, std::string(100, 'z')) + Field(4, "repeat") +
                           Field(1, "a/b");
  PreambleParser parser = ParseAll(Request(body));
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(parser.preamble(), (Preamble{Ip("10.0.0.1"), 8080, "a/b", "r"}));

  ExpectRejected(Request(V4Destination() + Field(1, "a/b") + Field(0x80, "")),
                 ReasonCode::kMalformedPreamble,
                 "unknown critical field 0x80 (the client needs a feature this agent lacks)");
  ExpectRejected(Request(V4Destination() + Field(0xff, "x")), ReasonCode::kMalformedPreamble,
                 "unknown critical field 0xff");
}

TEST(PreambleTest, AcceptsMaximumSizesAndRejectsOneMore) {
  const std::string workload(kMaxSourceWorkloadSize, 'w');
  const std::string request_id(kMaxRequestIdSize, 'r');
  const Preamble largest{Ip("fd00::1"), 443, workload, request_id};
  PreambleParser parser = ParseAll(Encode(largest));
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(parser.preamble(), largest);

  ExpectRejected(Request(V4Destination() + Field(1, workload + "w")),
                 ReasonCode::kMalformedPreamble, "source workload is 254 bytes, not 1..253");
  ExpectRejected(Request(V4Destination() + Field(2, request_id + "r")),
                 ReasonCode::kMalformedPreamble, "request id is 65 bytes, not 1..64");

  // Padding with an optional field up to the body bound.
  const std::string fields = Field(1, workload) + Field(2, request_id);
  const std::string prefix = V4Destination() + fields;
  const std::string padded =
      prefix + Field(0x10, std::string(kMaxPreambleBodySize - prefix.size() - 3, 'p'));
  ASSERT_EQ(padded.size(), kMaxPreambleBodySize);
  size_t consumed = 0;
  parser = ParseAll(Request(padded) + "app", &consumed);
  ASSERT_EQ(parser.state(), PreambleParser::State::kDone) << parser.error();
  EXPECT_EQ(consumed, kMaxPreambleSize);
  EXPECT_EQ(parser.preamble().request_id, request_id);
  ExpectRejected(Request(padded + "p"), ReasonCode::kMalformedPreamble, "body length 4097");
}

TEST(PreambleTest, EncoderRejectsWhatTheParserWould) {
  const auto expect_invalid = [](const Preamble& preamble, const std::string& part) {
    auto encoded = EncodePreamble(preamble);
    ASSERT_FALSE(encoded.ok()) << part;
    EXPECT_EQ(encoded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(encoded.status().message()).find(part), std::string::npos)
        << encoded.status();
  };
  expect_invalid({Ip("10.0.0.1"), 0, "", ""}, "destination port is 0");
  expect_invalid({Ip("10.0.0.1"), 80, std::string(254, 'w'), ""}, "254 bytes, over the 253");
  expect_invalid({Ip("10.0.0.1"), 80, std::string("a\0b", 3), ""}, "NUL");
  expect_invalid({Ip("10.0.0.1"), 80, "", std::string(65, 'r')}, "65 bytes, over the 64");
}

TEST(ResponseTest, RoundTripsAndLeavesApplicationBytes) {
  const std::vector<Response> cases = {
      {ResponseStatus::kOk, ReasonCode::kNone, ""},
      {ResponseStatus::kDenied, ReasonCode::kPolicyDenied, "no rule allows default/a -> b:80"},
      {ResponseStatus::kError, ReasonCode::kUpstreamConnectFailed, "connection refused"},
      {ResponseStatus::kError, ReasonCode::kInternal, std::string(255, 'm')},
      {ResponseStatus::kDenied, static_cast<ReasonCode>(0xbeef), "from a newer server"},
  };
  for (const Response& response : cases) {
    const std::string encoded = EncodeResponse(response);
    EXPECT_EQ(encoded.size(), kResponseHeaderSize + response.message.size());
    const std::string input = encoded + "app";
    const Outcome whole = FeedInPieces<ResponseParser>(input, {});
    EXPECT_EQ(whole.state, static_cast<int>(ResponseParser::State::kDone)) << whole.error;
    EXPECT_EQ(whole.consumed, encoded.size());
    EXPECT_EQ(whole.response, response);
    for (size_t cut = 0; cut <= input.size(); ++cut) {
      EXPECT_EQ(FeedInPieces<ResponseParser>(input, {cut}), whole) << "cut at " << cut;
    }
    std::vector<size_t> every_byte;
    for (size_t i = 1; i < input.size(); ++i) every_byte.push_back(i);
    EXPECT_EQ(FeedInPieces<ResponseParser>(input, every_byte), whole);
  }
  EXPECT_EQ(EncodeResponse({ResponseStatus::kDenied, ReasonCode::kPortNotAllowed, "no"}),
            "MTLR" + Bytes({1, 1, 0, 3, 2}) + "no");
}

TEST(ResponseTest, TruncatesLongMessagesAtACharacterBoundary) {
  std::string encoded =
      EncodeResponse({ResponseStatus::kError, ReasonCode::kInternal, std::string(300, 'x')});
  EXPECT_EQ(encoded.size(), kMaxResponseSize);
  // "é" is two bytes; at offsets 254..255 it would straddle the cut.
  const std::string message = std::string(254, 'x') + "\xc3\xa9" + "tail";
  encoded = EncodeResponse({ResponseStatus::kError, ReasonCode::kInternal, message});
  ResponseParser parser;
  EXPECT_EQ(parser.Feed(encoded), encoded.size());
  ASSERT_EQ(parser.state(), ResponseParser::State::kDone) << parser.error();
  EXPECT_EQ(parser.response().message, std::string(254, 'x'));
}

TEST(ResponseTest, RejectsMalformedResponses) {
  const auto expect_rejected = [](const std::string& input, ReasonCode reason,
                                  const std::string& part) {
    ResponseParser parser;
    parser.Feed(input);
    ASSERT_EQ(parser.state(), ResponseParser::State::kError) << part;
    EXPECT_EQ(parser.error_reason(), reason);
    EXPECT_NE(parser.error().find(part), std::string::npos) << parser.error();
    EXPECT_EQ(parser.Feed("x"), 0u);
  };
  expect_rejected("HTTP/1.1 400 Bad Request", ReasonCode::kMalformedPreamble,
                  "bad magic 0x48545450 (\"HTTP\": an HTTP response? the peer does not speak");
  expect_rejected(Encode({Ip("10.0.0.1"), 80, "", ""}), ReasonCode::kMalformedPreamble,
                  "the peer is a client");
  expect_rejected(Bytes({0x16, 0x03, 0x03, 0x00}), ReasonCode::kMalformedPreamble,
                  "a TLS handshake record");
  expect_rejected("MTLR" + Bytes({2}), ReasonCode::kUnsupportedVersion, "unsupported version 2");
  expect_rejected("MTLR" + Bytes({1, 3}), ReasonCode::kMalformedPreamble,
                  "unknown response status 3");
}

TEST(ResponseTest, NeedsTheWholeMessage) {
  const std::string encoded = EncodeResponse({ResponseStatus::kOk, ReasonCode::kNone, "hi"});
  ResponseParser parser;
  EXPECT_EQ(parser.Feed(encoded.substr(0, kResponseHeaderSize + 1)), kResponseHeaderSize + 1);
  EXPECT_EQ(parser.state(), ResponseParser::State::kNeedMore);
  EXPECT_EQ(parser.Feed(encoded.substr(kResponseHeaderSize + 1) + "rest"), 1u);
  EXPECT_EQ(parser.state(), ResponseParser::State::kDone);
}

TEST(ResponseTest, NamesStatusesAndReasons) {
  EXPECT_EQ(ResponseStatusName(ResponseStatus::kDenied), "denied");
  EXPECT_EQ(ResponseStatusName(static_cast<ResponseStatus>(9)), "unknown");
  const std::vector<std::string_view> names = {"none",
                                               "policy_denied",
                                               "no_such_workload",
                                               "port_not_allowed",
                                               "malformed_preamble",
                                               "unsupported_version",
                                               "upstream_connect_failed",
                                               "overloaded",
                                               "internal"};
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(ReasonCodeName(static_cast<ReasonCode>(i)), names[i]);
  }
  EXPECT_EQ(ReasonCodeName(static_cast<ReasonCode>(9)), "unknown");
}

}  // namespace
}  // namespace meshtls::tunnel
