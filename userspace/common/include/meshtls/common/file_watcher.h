#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "meshtls/common/event_loop.h"
#include "meshtls/common/unique_fd.h"

namespace meshtls {

// Calls `on_change` on the loop thread after any of `paths` (files or directories) changed,
// once per burst of changes (`debounce` after the last one). A file is watched through its
// directory, so editors and tools that replace files by rename (kubectl, ConfigMap symlink
// swaps, `mv`) are seen as well as in-place writes. inotify, so no polling.
class FileWatcher {
 public:
  static absl::StatusOr<std::unique_ptr<FileWatcher>> Create(
      EventLoop& loop, const std::vector<std::string>& paths, std::chrono::milliseconds debounce,
      std::function<void()> on_change);
  ~FileWatcher();
  FileWatcher(const FileWatcher&) = delete;
  FileWatcher& operator=(const FileWatcher&) = delete;

 private:
  struct Target {
    int watch = -1;
    std::string file_name;  // empty: anything in the directory
  };
  FileWatcher(EventLoop& loop, UniqueFd inotify, std::chrono::milliseconds debounce,
              std::function<void()> on_change);
  void OnReadable();

  EventLoop& loop_;
  UniqueFd inotify_;
  std::chrono::milliseconds debounce_;
  std::function<void()> on_change_;
  std::vector<Target> targets_;
  EventLoop::TimerId pending_ = 0;
};

}  // namespace meshtls
