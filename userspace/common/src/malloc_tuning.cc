#include "meshtls/common/malloc_tuning.h"

#include <sys/auxv.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

namespace meshtls {

MallocTuningDecision DecideMallocTuning(const char* glibc_tunables, bool secure_execution) {
  if (glibc_tunables != nullptr) {
    if (std::string_view(glibc_tunables) == kMeshtlsGlibcTunables) {
      return {false, StrCat("in effect: GLIBC_TUNABLES=", glibc_tunables)};
    }
    return {false, StrCat("left to the environment: GLIBC_TUNABLES=", glibc_tunables,
                          " was set before meshtls started (meshtls would set ",
                          kMeshtlsGlibcTunables, ")")};
  }
  if (secure_execution) {
    return {false,
            StrCat("not applied: a setuid/setcap execution, where glibc ignores GLIBC_TUNABLES (",
                   kMeshtlsGlibcTunables, " would make handshakes 3-9 % cheaper)")};
  }
  return {true, StrCat("re-executing with GLIBC_TUNABLES=", kMeshtlsGlibcTunables)};
}

MallocTuning TuneMallocOrReexec(char** argv) {
  const MallocTuningDecision decision =
      DecideMallocTuning(std::getenv("GLIBC_TUNABLES"), getauxval(AT_SECURE) != 0);
  if (!decision.reexec) return {decision.detail, false};
  const std::string tunables(kMeshtlsGlibcTunables);
  if (setenv("GLIBC_TUNABLES", tunables.c_str(), 1) != 0) {
    const int saved_errno = errno;
    return {StrCat("not applied: setenv(GLIBC_TUNABLES): ", std::strerror(saved_errno)), true};
  }
  execv("/proc/self/exe", argv);
  // Still here: running on with glibc's defaults, and GLIBC_TUNABLES must not claim otherwise.
  const int saved_errno = errno;
  unsetenv("GLIBC_TUNABLES");
  return {StrCat("not applied: re-executing /proc/self/exe failed: ", std::strerror(saved_errno),
                 " (running with glibc's default tcache)"),
          true};
}

void LogMallocTuning(const MallocTuning& tuning) {
  spdlog::log(tuning.failed ? spdlog::level::warn : spdlog::level::info, "glibc malloc tuning {}",
              tuning.detail);
}

}  // namespace meshtls
