#pragma once

// Reading Prometheus text exposition back in tests, so that assertions are about what a scraper
// sees rather than about prometheus-cpp internals.

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshtls::telemetry::testing {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Every sample line of `text` (comments skipped). Fails the current test on a malformed line.
std::vector<Sample> ParseScrape(std::string_view text);

// Samples named `name` whose labels include all of `match`.
std::vector<Sample> Find(const std::vector<Sample>& samples, std::string_view name,
                         const std::map<std::string, std::string>& match = {});
// The value of the one sample named `name` matching `match`; nullopt if none, fails if several.
std::optional<double> Value(const std::vector<Sample>& samples, std::string_view name,
                            const std::map<std::string, std::string>& match = {});

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
};
// A GET (or another method) over a plain socket to 127.0.0.1:port (or `host`), HTTP/1.1 with
// Connection: close, read to EOF. Fails the test on socket errors.
HttpResponse HttpRequest(uint16_t port, std::string_view path, std::string_view method = "GET",
                         std::string_view host = "127.0.0.1");

// A TCP port on `host` that nothing listens on right now (bound to 0, then released).
uint16_t FreePort(std::string_view host = "127.0.0.1");

}  // namespace meshtls::telemetry::testing
