// Identity churn figures: SVID issuance rate (key generation included) and the memory each cached
// SVID costs, as SVIDs and as the TLS contexts the agent builds from them. One JSON object out.
//   bench_identity [--count N] [--out FILE]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "meshtls/identity/certificate_authority.h"
#include "meshtls/identity/svid_store.h"
#include "meshtls/tls/context.h"
#include "spdlog/spdlog.h"

namespace {

long RssKiB() {
  std::ifstream in("/proc/self/statm");
  long size = 0, resident = 0;
  in >> size >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace meshtls;
  using Clock = std::chrono::steady_clock;
  spdlog::set_level(spdlog::level::warn);
  int count = 2000;
  std::string out;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--count") count = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--out") out = argv[i + 1];
  }
  char tmpl[] = "/tmp/meshtls-bench-identity-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  auto ca = identity::CertificateAuthority::Init(dir + "/ca", "cluster.local");
  if (!ca.ok()) {
    fprintf(stderr, "bench_identity: %s\n", std::string(ca.status().message()).c_str());
    return 1;
  }
  auto id = [](int i) {
    return *SpiffeId::ForWorkload("cluster.local", "bench", "sa-" + std::to_string(i));
  };

  // Issuance through the SvidStore, as the agent does it for a new workload.
  identity::SvidStore store(**ca, identity::SvidStoreOptions{});
  const long rss0 = RssKiB();
  const auto t0 = Clock::now();
  for (int i = 0; i < count; ++i) {
    if (!store.Current(id(i)).ok()) return 1;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const long rss1 = RssKiB();

  // A TLS context per identity (certificate, key and trust store parsed into OpenSSL objects).
  std::vector<std::shared_ptr<const tls::TlsContext>> contexts;
  const int context_count = std::min(count, 1000);
  for (int i = 0; i < context_count; ++i) {
    auto svid = *store.Current(id(i));
    tls::TlsContextOptions options;
    options.certificate_chain_pem = svid->chain_pem;
    options.private_key_pem = svid->private_key_pem;
    options.trust_bundle_pem = (*ca)->TrustBundlePem();
    options.trust_domain = "cluster.local";
    contexts.push_back(*tls::TlsContext::Create(options));
  }
  const long rss2 = RssKiB();
  char json[512];
  snprintf(json, sizeof(json),
           "{\"svids\": %d, \"svids_per_second_one_core\": %.1f, \"issue_ms_each\": %.3f, "
           "\"rss_kib_per_cached_svid\": %.2f, \"rss_kib_per_tls_context\": %.2f}",
           count, count / seconds, seconds * 1000 / count,
           static_cast<double>(rss1 - rss0) / count,
           static_cast<double>(rss2 - rss1) / context_count);
  printf("%s\n", json);
  if (!out.empty()) std::ofstream(out) << json << "\n";
  std::filesystem::remove_all(dir);
  return 0;
}
