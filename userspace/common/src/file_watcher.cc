#include "meshtls/common/file_watcher.h"

#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <filesystem>

#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"

namespace meshtls {

absl::StatusOr<std::unique_ptr<FileWatcher>> FileWatcher::Create(EventLoop& loop,
                                                                 const std::vector<std::string>& paths,
                                                                 std::chrono::milliseconds debounce,
                                                                 std::function<void()> on_change) {
  UniqueFd inotify(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!inotify) return ErrnoStatus(errno, "inotify_init1");
  std::unique_ptr<FileWatcher> watcher(new FileWatcher(loop, std::move(inotify), debounce, std::move(on_change)));
  constexpr uint32_t kMask =
      IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MODIFY;
  for (const std::string& path : paths) {
    std::error_code error;
    bool is_directory = std::filesystem::is_directory(path, error);
    std::filesystem::path fs_path(path);
    std::filesystem::path parent = fs_path.has_parent_path() ? fs_path.parent_path() : std::filesystem::path(".");
    std::string directory = is_directory ? path : parent.string();
    Target target;
    target.file_name = is_directory ? "" : fs_path.filename().string();
    target.watch = inotify_add_watch(watcher->inotify_.get(), directory.c_str(), kMask);
    if (target.watch < 0) return ErrnoStatus(errno, StrCat("watching ", directory, " (for ", path, ")"));
    watcher->targets_.push_back(target);
  }
  FileWatcher* raw = watcher.get();
  RETURN_IF_ERROR(loop.Add(raw->inotify_.get(), EPOLLIN, [raw](uint32_t) { raw->OnReadable(); }));
  return watcher;
}

FileWatcher::FileWatcher(EventLoop& loop, UniqueFd inotify, std::chrono::milliseconds debounce,
                         std::function<void()> on_change)
    : loop_(loop), inotify_(std::move(inotify)), debounce_(debounce), on_change_(std::move(on_change)) {}

FileWatcher::~FileWatcher() {
  loop_.Remove(inotify_.get());
  if (pending_ != 0) loop_.CancelTimer(pending_);
}

void FileWatcher::OnReadable() {
  alignas(inotify_event) char buffer[8192];
  bool relevant = false;
  for (;;) {
    ssize_t n = read(inotify_.get(), buffer, sizeof(buffer));
    if (n <= 0) break;  // EAGAIN: drained
    for (char* p = buffer; p < buffer + n;) {
      auto* event = reinterpret_cast<inotify_event*>(p);
      std::string_view name(event->len > 0 ? event->name : "", event->len > 0 ? strnlen(event->name, event->len) : 0);
      for (const Target& target : targets_) {
        if (target.watch != event->wd) continue;
        // ConfigMap mounts swap a "..data" symlink: any change there concerns every file.
        if (target.file_name.empty() || name == target.file_name || name == "..data") relevant = true;
      }
      if (event->mask & IN_Q_OVERFLOW) relevant = true;
      p += sizeof(inotify_event) + event->len;
    }
  }
  if (!relevant) return;
  if (pending_ != 0) loop_.CancelTimer(pending_);
  pending_ = loop_.AddTimer(EventLoop::Clock::now() + debounce_, [this] {
    pending_ = 0;
    on_change_();
  });
}

}  // namespace meshtls
