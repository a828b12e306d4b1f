#include "meshtls/agent/duration.h"

#include <array>
#include <cstdint>
#include <limits>
#include <utility>

#include "meshtls/common/strings.h"

namespace meshtls::agent {
namespace {

constexpr int64_t kNanosecond = 1;
constexpr int64_t kMicrosecond = 1000 * kNanosecond;
constexpr int64_t kMillisecond = 1000 * kMicrosecond;
constexpr int64_t kSecond = 1000 * kMillisecond;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;

constexpr std::array<std::pair<std::string_view, int64_t>, 8> kUnits = {{
    {"ns", kNanosecond},
    {"us", kMicrosecond},
    {"\xC2\xB5s", kMicrosecond},  // U+00B5 micro sign
    {"\xCE\xBCs", kMicrosecond},  // U+03BC Greek mu
    {"ms", kMillisecond},
    {"s", kSecond},
    {"m", kMinute},
    {"h", kHour},
}};

absl::Status Bad(std::string_view text, std::string_view why) {
  return absl::InvalidArgumentError(
      StrCat("'", text, "' is not a duration: ", why,
             " (write e.g. 5s, 500ms, 1h30m; units ns, us, ms, s, m, h)"));
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

absl::StatusOr<std::chrono::nanoseconds> ParseDuration(std::string_view text) {
  std::string_view rest = text;
  bool negative = false;
  if (!rest.empty() && (rest.front() == '-' || rest.front() == '+')) {
    negative = rest.front() == '-';
    rest.remove_prefix(1);
  }
  if (rest == "0") return std::chrono::nanoseconds(0);
  if (rest.empty()) return Bad(text, "it is empty");
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t total = 0;
  while (!rest.empty()) {
    uint64_t whole = 0;
    bool whole_overflow = false;
    size_t digits = 0;
    while (!rest.empty() && IsDigit(rest.front())) {
      const uint64_t digit = static_cast<uint64_t>(rest.front() - '0');
      if (whole > (kMax - digit) / 10)
        whole_overflow = true;
      else
        whole = whole * 10 + digit;
      rest.remove_prefix(1);
      ++digits;
    }
    // Like Go, keep only the fraction digits that can matter; the rest cannot change a result in
    // nanoseconds by more than rounding.
    uint64_t fraction = 0;
    double scale = 1;
    if (!rest.empty() && rest.front() == '.') {
      rest.remove_prefix(1);
      while (!rest.empty() && IsDigit(rest.front())) {
        if (scale < 1e18) {
          fraction = fraction * 10 + static_cast<uint64_t>(rest.front() - '0');
          scale *= 10;
        }
        rest.remove_prefix(1);
        ++digits;
      }
    }
    if (digits == 0) return Bad(text, "expected a number");
    size_t unit_length = 0;
    while (unit_length < rest.size() && !IsDigit(rest[unit_length]) && rest[unit_length] != '.')
      ++unit_length;
    const std::string_view unit_name = rest.substr(0, unit_length);
    int64_t unit = 0;
    for (const auto& [name, value] : kUnits) {
      if (name == unit_name) unit = value;
    }
    if (unit == 0) {
      return unit_name.empty() ? Bad(text, "a number has no unit")
                               : Bad(text, StrCat("unknown unit '", unit_name, "'"));
    }
    rest.remove_prefix(unit_length);
    const uint64_t u = static_cast<uint64_t>(unit);
    if (whole_overflow || whole > kMax / u)
      return Bad(text, "it is too long (at most about 292 years)");
    uint64_t value = whole * u;
    if (fraction > 0)
      value +=
          static_cast<uint64_t>(static_cast<double>(fraction) * (static_cast<double>(u) / scale));
    if (value > kMax - total) return Bad(text, "it is too long (at most about 292 years)");
    total += value;
  }
  const int64_t signed_total = static_cast<int64_t>(total);
  return std::chrono::nanoseconds(negative ? -signed_total : signed_total);
}

std::string FormatDuration(std::chrono::nanoseconds duration) {
  int64_t ns = duration.count();
  if (ns == 0) return "0s";
  std::string out;
  uint64_t left;
  if (ns < 0) {
    out.push_back('-');  // not `out = "-"`: GCC 12 -Wrestrict false positive under ASan
    left = static_cast<uint64_t>(-(ns + 1)) + 1;  // INT64_MIN has no positive int64
  } else {
    left = static_cast<uint64_t>(ns);
  }
  constexpr std::array<std::pair<std::string_view, int64_t>, 6> kParts = {{{"h", kHour},
                                                                           {"m", kMinute},
                                                                           {"s", kSecond},
                                                                           {"ms", kMillisecond},
                                                                           {"us", kMicrosecond},
                                                                           {"ns", kNanosecond}}};
  for (const auto& [name, unit] : kParts) {
    const uint64_t u = static_cast<uint64_t>(unit);
    if (left >= u) {
      StrAppend(&out, left / u, name);
      left %= u;
    }
  }
  return out;
}

}  // namespace meshtls::agent
