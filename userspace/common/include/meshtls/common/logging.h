#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace meshtls {

// Application logs go to stderr with levels; call once at start-up.
// Accepts trace, debug, info, warn, error, critical, off.
absl::Status ConfigureLogging(std::string_view level);

}  // namespace meshtls
