#pragma once

#include <string>
#include <string_view>

namespace meshtls {

// glibc's malloc, tuned for OpenSSL 3.0's handshakes.
//
// A full mutual TLS 1.3 handshake in OpenSSL 3.0 makes about 2,400 malloc() calls (both ends,
// counted with a uprobe), in bursts of the same size (big numbers, ASN.1 objects, contexts fetched
// per call). glibc keeps 7 freed blocks per size in its per-thread cache (tcache) and sends the
// rest through its arena bins. With 128 per size, a handshake in `make bench-tls` takes 3-9 % less
// CPU on this project's hosts (interleaved runs; about what tcmalloc, jemalloc or mimalloc gave,
// without tcmalloc's loss of relay throughput); relay throughput does not change
// (tests/bench/README.md).
// The worst case it adds is 128 blocks of each small size per thread, a few MB for the agent's few
// threads, and only if the process ever had that many free at once.
//
// glibc reads its tunables only when a program starts (there is no mallopt() for the tcache), so
// the agent sets GLIBC_TUNABLES and executes itself again, first thing in main(): the same binary
// (/proc/self/exe), arguments and process ID. A GLIBC_TUNABLES already in the environment is the
// operator's choice and is left alone (GLIBC_TUNABLES=glibc.malloc.tcache_count=7 restores glibc's
// default), as are setuid/setcap executions, where glibc ignores it.
inline constexpr std::string_view kMeshtlsGlibcTunables = "glibc.malloc.tcache_count=128";

struct MallocTuningDecision {
  bool reexec = false;
  std::string detail;  // for the log line: what is in effect, and why
};

// What to do, given the environment's GLIBC_TUNABLES (nullptr when unset) and whether this is a
// secure (setuid/setcap) execution. No side effects.
MallocTuningDecision DecideMallocTuning(const char* glibc_tunables, bool secure_execution);

struct MallocTuning {
  std::string detail;
  bool failed = false;  // the re-execution failed: running with glibc's defaults, worth a warning
};

// Call first thing in main(), before any thread exists: it may not return (the process continues
// as the re-executed binary, which calls it again and gets "in effect").
MallocTuning TuneMallocOrReexec(char** argv);

// One log line for it, once logging is configured: a warning if the re-execution failed.
void LogMallocTuning(const MallocTuning& tuning);

}  // namespace meshtls
