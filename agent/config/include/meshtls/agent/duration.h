#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace meshtls::agent {

// Go's time.ParseDuration syntax, which Kubernetes users already write: an optional sign, then one
// or more decimal numbers (fractions allowed) each with a unit of ns, us (µs), ms, s, m or h, e.g.
// "5s", "1.5h", "1h30m", "500ms". A bare "0" is zero; any other number needs a unit.
absl::StatusOr<std::chrono::nanoseconds> ParseDuration(std::string_view text);

// The shortest form ParseDuration reads back exactly: "24h", "1h30m", "1s500ms", "0s".
std::string FormatDuration(std::chrono::nanoseconds duration);

}  // namespace meshtls::agent
