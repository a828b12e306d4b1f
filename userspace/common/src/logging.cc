#include "meshtls/common/logging.h"

#include <string>

#include "meshtls/common/strings.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace meshtls {

absl::Status ConfigureLogging(std::string_view level) {
  const spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  // spdlog maps unknown names to "off"; only accept that when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(StrCat(
        "unknown log level '", level, "': use trace, debug, info, warn, error, critical or off"));
  }
  auto logger = spdlog::stderr_color_mt("meshtls");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

}  // namespace meshtls
