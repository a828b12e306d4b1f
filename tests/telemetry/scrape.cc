#include "telemetry/scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

#include "meshtls/common/ip_address.h"
#include "meshtls/common/strings.h"
#include "meshtls/common/unique_fd.h"

namespace meshtls::telemetry::testing {
namespace {

std::optional<Sample> ParseLine(std::string_view line) {
  Sample sample;
  size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
  sample.name = std::string(line.substr(0, i));
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      size_t eq = line.find('=', i);
      if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return std::nullopt;
      std::string key(line.substr(i, eq - i));
      std::string value;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size()) {
          ++j;
          value += line[j] == 'n' ? '\n' : line[j];
        } else {
          value += line[j];
        }
      }
      if (j >= line.size()) return std::nullopt;
      sample.labels[key] = value;
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return std::nullopt;
    ++i;  // '}'
  }
  if (i >= line.size() || line[i] != ' ') return std::nullopt;
  std::string value(line.substr(i + 1));
  if (size_t space = value.find(' '); space != std::string::npos) value.resize(space);  // timestamp
  char* end = nullptr;
  sample.value = std::strtod(value.c_str(), &end);
  if (end == value.c_str()) return std::nullopt;
  return sample;
}

std::string ToLower(std::string_view s) { return meshtls::ToLower(s); }

std::string Dechunk(std::string_view body) {
  std::string out;
  while (!body.empty()) {
    size_t eol = body.find("\r\n");
    if (eol == std::string_view::npos) break;
    size_t size = std::strtoul(std::string(body.substr(0, eol)).c_str(), nullptr, 16);
    if (size == 0) break;
    out += body.substr(eol + 2, size);
    body.remove_prefix(std::min(body.size(), eol + 2 + size + 2));
  }
  return out;
}

}  // namespace

std::vector<Sample> ParseScrape(std::string_view text) {
  std::vector<Sample> samples;
  for (std::string_view line : Split(text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    std::optional<Sample> sample = ParseLine(line);
    if (!sample) {
      ADD_FAILURE() << "malformed exposition line: " << line;
      continue;
    }
    samples.push_back(std::move(*sample));
  }
  return samples;
}

std::vector<Sample> Find(const std::vector<Sample>& samples, std::string_view name,
                         const std::map<std::string, std::string>& match) {
  std::vector<Sample> found;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool all = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) all = false;
    }
    if (all) found.push_back(s);
  }
  return found;
}

std::optional<double> Value(const std::vector<Sample>& samples, std::string_view name,
                            const std::map<std::string, std::string>& match) {
  std::vector<Sample> found = Find(samples, name, match);
  if (found.empty()) return std::nullopt;
  EXPECT_EQ(found.size(), 1u) << "several series of " << name << " match";
  return found.front().value;
}

HttpResponse HttpRequest(uint16_t port, std::string_view path, std::string_view method,
                         std::string_view host) {
  HttpResponse response;
  absl::StatusOr<IpAddress> address = IpAddress::Parse(host);
  if (!address.ok()) {
    ADD_FAILURE() << "bad host " << host;
    return response;
  }
  UniqueFd fd(::socket(address->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) {
    ADD_FAILURE() << "socket: " << std::strerror(errno);
    return response;
  }
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_storage storage{};
  socklen_t length = address->ToSockaddr(port, &storage);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&storage), length) != 0) {
    ADD_FAILURE() << "connect to port " << port << ": " << std::strerror(errno);
    return response;
  }
  const bool v6 = host.find(':') != std::string_view::npos;
  std::string request = StrCat(method, " ", path, " HTTP/1.1\r\nHost: ", v6 ? "[" : "", host,
                               v6 ? "]" : "", ":", port,
                               "\r\nConnection: close\r\n\r\n");
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    ADD_FAILURE() << "send: " << std::strerror(errno);
    return response;
  }
  std::string raw;
  char buffer[16384];
  for (;;) {
    ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      ADD_FAILURE() << "recv (no EOF within 10 s?): " << std::strerror(errno);
      return response;
    }
    raw.append(buffer, static_cast<size_t>(n));
  }
  size_t header_end = raw.find("\r\n\r\n");
  if (raw.compare(0, 9, "HTTP/1.1 ") != 0 || header_end == std::string::npos) {
    ADD_FAILURE() << "not an HTTP response: " << raw;
    return response;
  }
  response.status = std::atoi(raw.c_str() + 9);
  std::string_view head = std::string_view(raw).substr(0, header_end);
  std::vector<std::string_view> lines = Split(head, '\n');
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    response.headers[ToLower(line.substr(0, colon))] = std::string(value);
  }
  response.body = raw.substr(header_end + 4);
  if (ToLower(response.headers["transfer-encoding"]) == "chunked") response.body = Dechunk(response.body);
  return response;
}

uint16_t FreePort(std::string_view host) {
  absl::StatusOr<IpAddress> address = IpAddress::Parse(host);
  if (!address.ok()) {
    ADD_FAILURE() << "bad host " << host;
    return 0;
  }
  UniqueFd fd(::socket(address->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage storage{};
  socklen_t length = address->ToSockaddr(0, &storage);
  if (!fd || ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&storage), length) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&storage), &length) != 0) {
    ADD_FAILURE() << "cannot find a free port: " << std::strerror(errno);
    return 0;
  }
  return storage.ss_family == AF_INET ? ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port)
                                      : ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

}  // namespace meshtls::telemetry::testing
