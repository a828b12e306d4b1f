// libFuzzer target for the tunnel preamble and response parsers: the first input byte chooses how
// the rest is cut into pieces (a TLS record can split the stream anywhere), and the rest is fed to
// both parsers. Besides sanitizer reports, a broken invariant is a finding: a parser takes more
// than it was given or than its message allows, the pieces change the outcome, or what it accepted
// does not survive a re-encode.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "meshtls/tunnel/preamble.h"

namespace {

using meshtls::tunnel::PreambleParser;
using meshtls::tunnel::ReasonCode;
using meshtls::tunnel::ResponseParser;

void Require(bool condition, const char* what) {
  if (!condition) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

// Piece sizes from the seed byte: its low three bits pick the largest piece (1 byte .. 8 KiB), the
// rest seed a small PRNG.
std::vector<size_t> PieceSizes(uint8_t seed, size_t total) {
  static constexpr size_t kLargest[8] = {1, 2, 3, 7, 16, 64, 512, 8192};
  const size_t largest = kLargest[seed & 7];
  uint32_t state = 0x9e3779b9u ^ (static_cast<uint32_t>(seed >> 3) * 0x01000193u);
  std::vector<size_t> sizes;
  for (size_t fed = 0; fed < total;) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    const size_t piece = std::min<size_t>(1 + state % largest, total - fed);
    sizes.push_back(piece);
    fed += piece;
  }
  return sizes;
}

template <typename Parser>
struct Result {
  Parser parser;
  size_t consumed = 0;
};

template <typename Parser>
Result<Parser> FeedInPieces(std::string_view input, const std::vector<size_t>& sizes,
                            size_t max_message) {
  Result<Parser> result;
  size_t offset = 0;
  for (size_t piece : sizes) {
    const size_t used =
        result.parser.Feed(reinterpret_cast<const uint8_t*>(input.data() + offset), piece);
    Require(used <= piece, "took more than it was given");
    result.consumed += used;
    Require(result.consumed <= max_message, "took more than a message can be");
    if (result.parser.state() == Parser::State::kNeedMore) {
      Require(used == piece, "left bytes while still needing more");
    } else {
      Require(result.parser.Feed(input.substr(offset + used)) == 0, "took bytes after finishing");
      break;
    }
    offset += piece;
  }
  if (result.parser.state() == Parser::State::kError) {
    Require(!result.parser.error().empty(), "an error without a message");
    Require(result.parser.error_reason() == ReasonCode::kMalformedPreamble ||
                result.parser.error_reason() == ReasonCode::kUnsupportedVersion,
            "an error with an unexpected reason");
  }
  return result;
}

template <typename Parser>
void RequireSameOutcome(const Result<Parser>& a, const Result<Parser>& b) {
  Require(a.parser.state() == b.parser.state(), "pieces changed the state");
  Require(a.consumed == b.consumed, "pieces changed how much was taken");
  Require(a.parser.error() == b.parser.error(), "pieces changed the error");
  Require(a.parser.error_reason() == b.parser.error_reason(), "pieces changed the reason");
}

void CheckPreamble(std::string_view input, const std::vector<size_t>& sizes) {
  const auto pieces = FeedInPieces<PreambleParser>(input, sizes, meshtls::tunnel::kMaxPreambleSize);
  const auto whole =
      FeedInPieces<PreambleParser>(input, {input.size()}, meshtls::tunnel::kMaxPreambleSize);
  RequireSameOutcome(pieces, whole);
  if (pieces.parser.state() != PreambleParser::State::kDone) return;
  Require(pieces.parser.preamble() == whole.parser.preamble(), "pieces changed the preamble");

  auto encoded = meshtls::tunnel::EncodePreamble(pieces.parser.preamble());
  Require(encoded.ok(), "an accepted preamble does not encode");
  // Only unknown fields are dropped on the way.
  Require(encoded->size() <= pieces.consumed, "the re-encoding grew");
  PreambleParser again;
  Require(again.Feed(*encoded) == encoded->size(), "the re-encoding was not all taken");
  Require(again.state() == PreambleParser::State::kDone, "the re-encoding does not parse");
  Require(again.preamble() == pieces.parser.preamble(), "the re-encoding parses differently");
}

void CheckResponse(std::string_view input, const std::vector<size_t>& sizes) {
  const auto pieces = FeedInPieces<ResponseParser>(input, sizes, meshtls::tunnel::kMaxResponseSize);
  const auto whole =
      FeedInPieces<ResponseParser>(input, {input.size()}, meshtls::tunnel::kMaxResponseSize);
  RequireSameOutcome(pieces, whole);
  if (pieces.parser.state() != ResponseParser::State::kDone) return;
  Require(pieces.parser.response() == whole.parser.response(), "pieces changed the response");
  // Every byte of a response is determined by its fields, so the encoding must be the input.
  Require(
      meshtls::tunnel::EncodeResponse(pieces.parser.response()) == input.substr(0, pieces.consumed),
      "the re-encoding differs from the input");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<size_t> sizes = PieceSizes(data[0], input.size());
  CheckPreamble(input, sizes);
  CheckResponse(input, sizes);
  return 0;
}
