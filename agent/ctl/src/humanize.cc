#include "meshtls/ctl/humanize.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>

#include "meshtls/common/strings.h"

namespace meshtls::ctl {
namespace {

// Display width in terminal columns: counts UTF-8 code points, so an identity with a non-ASCII
// character does not shift the columns after it.
size_t Width(std::string_view s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

void Pad(std::string* out, size_t n) { out->append(n, ' '); }

}  // namespace

std::string HumanDuration(std::chrono::seconds d) {
  int64_t s = d.count();
  if (s < 0) return StrCat("-", HumanDuration(std::chrono::seconds(-s)));
  constexpr int64_t kMinute = 60, kHour = 3600, kDay = 86400, kYear = 365 * kDay;
  // Two units at most, as kubectl does: the second one stops mattering at that scale.
  auto two = [](int64_t big, const char* big_unit, int64_t small, const char* small_unit) {
    return small == 0 ? StrCat(big, big_unit) : StrCat(big, big_unit, small, small_unit);
  };
  if (s < kMinute) return StrCat(s, "s");
  if (s < kHour) return two(s / kMinute, "m", s % kMinute, "s");
  if (s < kDay) return two(s / kHour, "h", (s % kHour) / kMinute, "m");
  if (s < 2 * kYear) {
    // Below a week the hours still matter (a 24 h SVID); beyond, days are enough.
    if (s < 7 * kDay) return two(s / kDay, "d", (s % kDay) / kHour, "h");
    return StrCat(s / kDay, "d");
  }
  return two(s / kYear, "y", (s % kYear) / kDay, "d");
}

std::string HumanDuration(const google::protobuf::Duration& d) {
  return HumanDuration(std::chrono::seconds(d.seconds()));
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return StrCat(bytes, " B");
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  // Rounding can carry into the next unit (1023.96 KiB prints as "1024 KiB" otherwise).
  while (value >= 1023.95 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return value < 99.95 ? fmt::format("{:.1f} {}", value, kUnits[unit])
                       : fmt::format("{:.0f} {}", value, kUnits[unit]);
}

std::string Rfc3339(const google::protobuf::Timestamp& t, bool millis) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  const std::time_t tt = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  if (millis) return fmt::format("{}.{:03d}Z", buf, t.nanos() / 1000000);
  return StrCat(buf, "Z");
}

std::string Rfc3339(std::chrono::system_clock::time_point t) { return Rfc3339(ToTimestamp(t)); }

std::chrono::system_clock::time_point ToTimePoint(const google::protobuf::Timestamp& t) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::seconds(t.seconds()) + std::chrono::nanoseconds(t.nanos())));
}

google::protobuf::Timestamp ToTimestamp(std::chrono::system_clock::time_point t) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  google::protobuf::Timestamp out;
  int64_t seconds = ns / 1000000000;
  int64_t nanos = ns % 1000000000;
  if (nanos < 0) {
    nanos += 1000000000;
    --seconds;
  }
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(nanos));
  return out;
}

Table::Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  for (auto& cell : cells) {
    if (cell.empty()) cell.push_back('-');  // not = "-": GCC 12 -Wrestrict false positive
  }
  rows_.push_back(std::move(cells));
}

std::string Table::Render(std::string_view indent) const {
  std::vector<size_t> widths(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) {
    widths[c] = Width(headers_[c]);
    for (const auto& row : rows_) widths[c] = std::max(widths[c], Width(row[c]));
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    out.append(indent);
    for (size_t c = 0; c < cells.size(); ++c) {
      out.append(cells[c]);
      if (c + 1 < cells.size()) Pad(&out, widths[c] - Width(cells[c]) + 3);
    }
    out.push_back('\n');
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

void KeyValues::Add(std::string key, std::string value) {
  items_.emplace_back(std::move(key), value.empty() ? "-" : std::move(value));
}

std::string KeyValues::Render(std::string_view indent) const {
  size_t width = 0;
  for (const auto& [key, value] : items_) width = std::max(width, Width(key) + 1);
  std::string out;
  for (const auto& [key, value] : items_) {
    StrAppend(&out, indent, key, ":");
    Pad(&out, width - Width(key) - 1 + 2);
    StrAppend(&out, value, "\n");
  }
  return out;
}

}  // namespace meshtls::ctl
