#include "meshtls/common/status.h"

#include <cerrno>
#include <cstring>

#include "meshtls/common/strings.h"

namespace meshtls {

absl::Status ErrnoStatus(int saved_errno, std::string_view what) {
  std::string message = StrCat(what, ": ", std::strerror(saved_errno));
  switch (saved_errno) {
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
    case EADDRINUSE:
      return absl::AlreadyExistsError(message);
    case EINVAL:
      return absl::InvalidArgumentError(message);
    case ENOPROTOOPT:
    case EOPNOTSUPP:
    case ENOSYS:
      return absl::UnimplementedError(message);
    case EAGAIN:
    case ENOMEM:
    case ENOBUFS:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(message);
    case ETIMEDOUT:
      return absl::DeadlineExceededError(message);
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace meshtls
