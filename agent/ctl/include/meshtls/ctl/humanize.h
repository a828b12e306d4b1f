#pragma once

// Text helpers for meshtlsctl's human output. Everything is a pure function of its arguments
// (no clock reads), so the output can be golden-tested.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/duration.pb.h>
#include <google/protobuf/timestamp.pb.h>

namespace meshtls::ctl {

// kubectl-style: "42s", "5m12s", "23h59m", "3d4h", "2y45d". Negative durations get a "-".
std::string HumanDuration(std::chrono::seconds d);
std::string HumanDuration(const google::protobuf::Duration& d);

// "512 B", "1.2 MiB", "310 KiB" (binary units, one decimal below 100).
std::string HumanBytes(uint64_t bytes);

// RFC 3339 in UTC: "2024-05-01T12:00:00Z", with ".123" milliseconds if asked. An unset
// timestamp (the epoch) is "-".
std::string Rfc3339(const google::protobuf::Timestamp& t, bool millis = false);
std::string Rfc3339(std::chrono::system_clock::time_point t);

std::chrono::system_clock::time_point ToTimePoint(const google::protobuf::Timestamp& t);
google::protobuf::Timestamp ToTimestamp(std::chrono::system_clock::time_point t);

// An aligned text table as kubectl prints it: upper-case headers, columns three spaces apart,
// no trailing blanks, empty cells shown as "-".
class Table {
 public:
  explicit Table(std::vector<std::string> headers);
  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }
  std::string Render(std::string_view indent = "") const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

// "Label:   value" lines with the values aligned, for describe-style output.
class KeyValues {
 public:
  void Add(std::string key, std::string value);
  std::string Render(std::string_view indent = "") const;

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

}  // namespace meshtls::ctl
