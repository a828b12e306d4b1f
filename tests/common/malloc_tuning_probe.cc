// Run by malloc_tuning_test: reports each start (process ID and GLIBC_TUNABLES), then what
// TuneMallocOrReexec() decided, so the test sees whether the process executed itself again.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "meshtls/common/malloc_tuning.h"

int main(int, char** argv) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  std::printf("start pid=%d GLIBC_TUNABLES=%s\n", static_cast<int>(getpid()),
              tunables ? tunables : "(unset)");
  std::fflush(stdout);  // exec discards stdio buffers
  const meshtls::MallocTuning tuning = meshtls::TuneMallocOrReexec(argv);
  std::printf("result failed=%d detail=%s\n", tuning.failed ? 1 : 0, tuning.detail.c_str());
  return 0;
}
