// The main() of every gtest binary: OpenSSL is set up as the agent sets it up (built-in EC keys,
// openssl_setup.h) before any test loads a key. MESHTLS_BUILTIN_EC=off runs a suite the other way
// (ctest runs the TLS and identity suites both ways).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "meshtls/common/openssl_setup.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  const char* env = std::getenv("MESHTLS_BUILTIN_EC");
  absl::StatusOr<meshtls::BuiltinEcKeys> mode = meshtls::ParseBuiltinEcKeys(env ? env : "auto");
  if (!mode.ok()) {
    std::fprintf(stderr, "MESHTLS_BUILTIN_EC: %s\n", std::string(mode.status().message()).c_str());
    return 2;
  }
  const meshtls::OpenSslSetup& setup = meshtls::ConfigureOpenSsl(*mode);
  std::fprintf(stderr, "OpenSSL built-in EC keys: %s\n", setup.detail.c_str());
  return RUN_ALL_TESTS();
}
