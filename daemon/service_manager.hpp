// The daemon's side of systemd: READY=1 once the pool is reserved (and
// pinned) and the socket listens, STATUS= lines while it serves, WATCHDOG=1
// from a timer on the event loop (so a stalled loop stops the pings and
// systemd restarts the service), STOPPING=1 on shutdown, and the listening
// socket passed by socket activation. Without systemd (no NOTIFY_SOCKET, no
// LISTEN_FDS, no WATCHDOG_USEC, or a build without libsystemd) every call does
// nothing and the daemon runs as a plain foreground process.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "asio.hpp"

namespace tensorshm::daemon {

class Server;

class ServiceManager {
 public:
  /// Reads LISTEN_FDS/LISTEN_PID and WATCHDOG_USEC/WATCHDOG_PID and unsets
  /// them, so that nothing the daemon might start inherits them.
  ServiceManager();

  /// The listening Unix stream socket systemd passed (LISTEN_FDS), or -1.
  int inherited_socket() const noexcept { return inherited_fd_; }
  /// The watchdog interval systemd asked for (WatchdogSec=), or zero.
  std::chrono::microseconds watchdog_interval() const noexcept { return watchdog_; }
  /// How often WATCHDOG=1 is sent: a quarter of the interval (at least 1 ms),
  /// so that two pings can be late before systemd gives up on the daemon.
  /// Zero without a watchdog.
  std::chrono::microseconds watchdog_period() const noexcept {
    if (watchdog_.count() == 0) return watchdog_;
    return std::max(watchdog_ / 4, std::chrono::microseconds(1000));
  }

  /// Starts the watchdog timer on the server's event loop, adds the periodic
  /// STATUS= line to its housekeeping and sends STOPPING=1 when it stops.
  /// Call once, before server.start(); the ServiceManager must outlive
  /// io.run().
  void attach(Server& server);
  /// READY=1 with the first STATUS= line. Call once the pool is reserved and
  /// the socket listens.
  void ready();
  /// A free-form STATUS= line (start-up progress).
  void status(const std::string& text);
  /// STOPPING=1. Sent once; later calls do nothing.
  void stopping();

  /// The STATUS= text for the server's current state, e.g. "serving 2 clients:
  /// 5 objects, 12.0 MiB of 1.0 GiB pool used (1%), 0 B in dedicated segments".
  static std::string describe(Server& server);

 private:
  void notify(const std::string& state);
  void arm_watchdog();
  void update_status();

  int inherited_fd_ = -1;
  std::chrono::microseconds watchdog_{0};
  Server* server_ = nullptr;
  std::optional<asio::steady_timer> watchdog_timer_;
  std::string last_status_;
  std::chrono::steady_clock::time_point last_status_at_{};
  bool stopping_ = false;
};

}  // namespace tensorshm::daemon
