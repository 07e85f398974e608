// The daemon's side of systemd: READY=1 once the pool is reserved (and
// pinned) and the socket listens, STATUS= lines, WATCHDOG=1 from the event
// loop's housekeeping timer, STOPPING=1 on shutdown, and the listening socket
// passed by socket activation. Without systemd (no NOTIFY_SOCKET, no
// LISTEN_FDS, or a build without libsystemd) every call does nothing.
#pragma once

#include <cstdint>
#include <string>

namespace tensorshm::daemon {

class Server;

class ServiceManager {
 public:
  ServiceManager();
  /// The socket systemd passed (LISTEN_FDS), or -1.
  int inherited_socket() const noexcept { return inherited_fd_; }
  /// Registers the watchdog ping and periodic STATUS with the server's housekeeping.
  void attach(Server& server);
  void ready();
  void status(const std::string& text);
  void stopping();

 private:
  void notify(const std::string& state);
  int inherited_fd_ = -1;
  std::uint64_t watchdog_usec_ = 0;
};

}  // namespace tensorshm::daemon
