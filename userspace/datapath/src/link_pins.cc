#include "link_pins.h"

#include <bpf/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"
#include "spdlog/spdlog.h"

namespace meshtls::datapath {

absl::Status MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return absl::InternalError(StrCat("create ", path, ": ", ec.message()));
  return absl::OkStatus();
}

LinkPins::~LinkPins() {
  for (Entry& entry : links_) {
    // An unpinned link detaches when its last fd closes; a pinned one stays attached.
    if (!leave_attached_ && !entry.pin.empty()) bpf_link__unpin(entry.link);
    bpf_link__destroy(entry.link);
  }
}

absl::Status LinkPins::AttachOrAdopt(bpf_program* program, const std::string& pin_name,
                                     const std::function<bpf_link*()>& attach, const std::string& what) {
  const std::string pin = pin_dir_.empty() ? std::string() : StrCat(pin_dir_, "/links/", pin_name);
  if (!pin.empty()) {
    claimed_.insert(pin_name);
    if (::access(pin.c_str(), F_OK) == 0) {
      bpf_link* link = bpf_link__open(pin.c_str());
      if (link != nullptr && bpf_link__update_program(link, program) == 0) {
        spdlog::info("adopted pinned BPF link {} ({})", pin, what);
        links_.push_back({link, pin, what, bpf_program__name(program)});
        return absl::OkStatus();
      }
      const int saved_errno = errno;
      spdlog::warn("pinned BPF link {} cannot be adopted ({}); replacing it", pin, std::strerror(saved_errno));
      if (link != nullptr) {
        bpf_link__unpin(link);
        bpf_link__destroy(link);
      } else {
        ::unlink(pin.c_str());
      }
    }
  }
  bpf_link* link = attach();
  if (link == nullptr) return ErrnoStatus(errno, StrCat("attach ", bpf_program__name(program), " to ", what));
  links_.push_back({link, std::string(), what, bpf_program__name(program)});
  if (!pin.empty()) {
    if (bpf_link__pin(link, pin.c_str()) != 0) return ErrnoStatus(errno, StrCat("pin ", pin));
    links_.back().pin = pin;
  }
  return absl::OkStatus();
}

std::vector<AttachedLink> LinkPins::Describe() const {
  std::vector<AttachedLink> out;
  for (const Entry& entry : links_) {
    AttachedLink link;
    link.attach_point = entry.what;
    link.pin_path = entry.pin;
    link.program_name = entry.program;
    bpf_link_info info{};
    uint32_t length = sizeof(info);
    if (bpf_obj_get_info_by_fd(bpf_link__fd(entry.link), &info, &length) == 0) {
      link.link_id = info.id;
      link.program_id = info.prog_id;
    }
    out.push_back(std::move(link));
  }
  return out;
}

int LinkPins::PruneUnclaimed(const std::vector<std::string>& program_names) {
  if (pin_dir_.empty()) return 0;
  int pruned = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(pin_dir_ + "/links", ec)) {
    const std::string name = entry.path().filename().string();
    if (claimed_.count(name) != 0) continue;
    bool ours = false;
    for (const std::string& program : program_names) {
      if (name.size() > program.size() && name.compare(name.size() - program.size(), program.size(), program) == 0) {
        ours = true;
      }
    }
    if (!ours) continue;
    // Removing the last reference to a pinned link detaches it.
    if (::unlink(entry.path().c_str()) == 0) {
      spdlog::info("removed stale BPF link {}", entry.path().string());
      ++pruned;
    }
  }
  return pruned;
}

}  // namespace meshtls::datapath
