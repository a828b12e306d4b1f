#include "meshtls/identity/deny_list.h"

#include <cctype>
#include <fstream>
#include <sstream>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"

namespace meshtls::identity {

std::string NormalizeSerial(std::string_view hex) {
  std::string out;
  for (char c : hex) {
    if (c == ':') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  const size_t first = out.find_first_not_of('0');
  return first == std::string::npos ? "0" : out.substr(first);
}

absl::StatusOr<DenyList> DenyList::Parse(std::string_view text, std::string_view source) {
  DenyList list;
  int line_number = 0;
  for (std::string_view line : Split(text, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) line.remove_prefix(1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.remove_suffix(1);
    if (line.empty()) continue;
    auto error = [&](std::string_view why) {
      return absl::InvalidArgumentError(StrCat(source, ":", line_number, ": ", why));
    };
    if (line.substr(0, 7) == "serial ") {
      std::string_view hex = line.substr(7);
      while (!hex.empty() && hex.front() == ' ') hex.remove_prefix(1);
      if (hex.empty()) return error("'serial' needs a hex serial number");
      for (char c : hex) {
        if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':') {
          return error(StrCat("'", hex, "' is not a hex serial number"));
        }
      }
      list.serials_.insert(NormalizeSerial(hex));
      continue;
    }
    if (line.substr(0, 9) == "spiffe://") {
      absl::StatusOr<SpiffeId> id = SpiffeId::Parse(line);
      if (!id.ok()) return error(std::string(id.status().message()));
      list.ids_.insert(id->ToString());
      continue;
    }
    return error(StrCat("expected 'serial <hex>' or a spiffe:// ID, got '", line, "'"));
  }
  return list;
}

absl::StatusOr<DenyList> DenyList::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return ErrnoStatus(errno, StrCat("cannot read deny list ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

bool DenyList::Denies(const SpiffeId& id, std::string_view serial_hex) const {
  return ids_.contains(id.ToString()) || serials_.contains(NormalizeSerial(serial_hex));
}

}  // namespace meshtls::identity
