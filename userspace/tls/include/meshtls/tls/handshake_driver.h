#pragma once

#include <functional>
#include <memory>

#include "meshtls/common/event_loop.h"
#include "meshtls/tls/session.h"

namespace meshtls::tls {

// Drives a TlsSession's handshake on an event loop: waits for exactly the readiness OpenSSL asks
// for and fails the session at its deadline. `done` runs on the loop thread once, with the
// session either handshake_done() or carrying a failure_reason(); failures are logged with the
// reason. The session's socket must not be watched by anyone else until then.
void DriveHandshake(EventLoop& loop, std::unique_ptr<TlsSession> session,
                    std::function<void(std::unique_ptr<TlsSession>)> done);

}  // namespace meshtls::tls
