#pragma once

// A connected loopback TCP pair (both ends blocking), for the kTLS probe and self-test.

#include "absl/status/status.h"
#include "meshtls/common/unique_fd.h"

namespace meshtls::tls::internal {

absl::Status LoopbackPair(UniqueFd& client, UniqueFd& server);

}  // namespace meshtls::tls::internal
