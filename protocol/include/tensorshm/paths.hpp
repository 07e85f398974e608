// Where the daemon listens by default, and whom a client trusts to be its
// daemon; the daemon and every client agree on this through these functions.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace tensorshm {

/// The system service's socket (tensorshmd.socket).
inline constexpr const char* kSystemSocketPath = "/run/tensorshm/tensorshmd.sock";
/// The system service's user (sysusers.d/tensorshm.conf).
inline constexpr const char* kServiceUser = "tensorshm";

/// $TENSORSHM_SOCKET if set and non-empty; else
/// $XDG_RUNTIME_DIR/tensorshm/tensorshmd.sock; else
/// /run/tensorshm/tensorshmd.sock for root; else
/// /tmp/tensorshm-<uid>/tensorshmd.sock.
std::string default_socket_path();

/// Why the directory holding `socket_path` cannot be trusted to hold this
/// user's daemon (empty when it can): it must be a directory, not a symbolic
/// link, owned by `uid` or root, and not writable by anyone else. A user who
/// could make or write it could put their own daemon's socket there.
std::string untrusted_socket_directory(const std::string& socket_path, uid_t uid);

/// What a client connects to by default, and why a per-user socket was passed
/// over (`passed_over`, empty when none was).
struct ClientSocket {
  std::string path;
  std::string passed_over;
};
/// $TENSORSHM_SOCKET when set; else the per-user socket of
/// default_socket_path() when its directory can be trusted and it exists;
/// else the system service's socket when it exists; else the per-user path
/// (when trusted), so that the error names the socket the daemon would use.
ClientSocket default_client_socket();
/// default_client_socket().path.
std::string default_client_socket_path();

/// Whether a client of `client_uid` accepts a daemon running as `daemon_uid`:
/// root, the client's own uid, the service user, or `also` (a uid the client
/// was told to trust: Client::Options::daemon_uid, $TENSORSHM_DAEMON_UID).
bool trusted_daemon_uid(uid_t daemon_uid, uid_t client_uid, std::optional<std::uint32_t> also);
/// The uid of kServiceUser, if that user exists.
std::optional<uid_t> service_uid();

}  // namespace tensorshm
