#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meshtls {

// A Status for a failed system call. Pass the errno saved right after the call: logging or any
// other call in between may overwrite it.
absl::Status ErrnoStatus(int saved_errno, std::string_view what);

}  // namespace meshtls

#define MESHTLS_CONCAT_INNER(a, b) a##b
#define MESHTLS_CONCAT(a, b) MESHTLS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    if (absl::Status _st = (expr); !_st.ok()) {     \
      return _st;                                   \
    }                                               \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(*tmp)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(MESHTLS_CONCAT(_statusor_, __LINE__), lhs, expr)
