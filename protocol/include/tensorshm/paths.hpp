// Where the daemon listens by default; the daemon and every client agree on
// this through this one function.
#pragma once

#include <string>

namespace tensorshm {

/// $TENSORSHM_SOCKET if set and non-empty; else
/// $XDG_RUNTIME_DIR/tensorshm/tensorshmd.sock; else
/// /run/tensorshm/tensorshmd.sock for root; else
/// /tmp/tensorshm-<uid>/tensorshmd.sock.
std::string default_socket_path();

/// What clients connect to by default: default_socket_path(), except that a
/// non-root user whose per-user socket does not exist falls back to the system
/// service's /run/tensorshm/tensorshmd.sock when that exists.
std::string default_client_socket_path();

}  // namespace tensorshm
