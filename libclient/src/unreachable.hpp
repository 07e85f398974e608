// What a client says when it cannot connect to tensorshmd: the cause, told
// from connect(2)'s errno and a look at the socket path, and the fix.
#pragma once

#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::detail {

/// The Errc::daemon_unreachable Error for a connect(2) to `path` that failed
/// with errno `err`; `connect_error` is posix_error's text for it. The message
/// names the path and says, by cause:
///   ENOENT        no socket there: is the daemon running, how to start it, TENSORSHM_SOCKET;
///   ECONNREFUSED  a socket file (or another file) no daemon listens on: the daemon stopped or
///                 died; how to start it again;
///   EACCES        the socket's (or a directory's) owner, group and mode, this process's
///                 user and groups, and the fix: join the group, or have the operator let one in.
/// Other errnos get the connect error and the general advice.
Error unreachable_error(const std::string& path, int err, const std::string& connect_error);

}  // namespace tensorshm::detail
