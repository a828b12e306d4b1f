#include <cstdarg>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>

#include "meshtls/datapath/bpf_skeleton.h"

namespace meshtls::datapath {
namespace {

// libbpf's print callback is process-wide; loads are rare, so one at a time is fine.
std::mutex log_mutex;
std::string* current_log = nullptr;

int Capture(enum libbpf_print_level level, const char* format, va_list args) {
  if (current_log == nullptr || level == LIBBPF_DEBUG) return 0;
  char buf[4096];
  const int n = std::vsnprintf(buf, sizeof(buf), format, args);
  if (n > 0) current_log->append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1));
  return n;
}

}  // namespace

std::string CaptureLibbpfLog(const std::function<int()>& fn, int* result) {
  std::lock_guard lock(log_mutex);
  std::string log;
  current_log = &log;
  libbpf_print_fn_t previous = libbpf_set_print(&Capture);
  *result = fn();
  libbpf_set_print(previous);
  current_log = nullptr;
  if (log.empty() && *result != 0) log = "error " + std::to_string(*result);
  return log;
}

}  // namespace meshtls::datapath
