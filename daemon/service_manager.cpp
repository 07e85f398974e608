#include "service_manager.hpp"

#include <chrono>

#include "copy_engine.hpp"
#include "log.hpp"
#include "server.hpp"

#ifdef TENSORSHM_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace tensorshm::daemon {

ServiceManager::ServiceManager() {
#ifdef TENSORSHM_HAVE_SYSTEMD
  const int n = sd_listen_fds(1);
  if (n == 1) {
    if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) > 0)
      inherited_fd_ = SD_LISTEN_FDS_START;
    else
      log::warning("the passed descriptor is not a listening Unix stream socket; ignoring it");
  } else if (n > 1) {
    log::warning("systemd passed ", n, " sockets; using the first");
    inherited_fd_ = SD_LISTEN_FDS_START;
  } else if (n < 0) {
    log::warning("sd_listen_fds: error ", -n);
  }
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(1, &usec) > 0) watchdog_usec_ = usec;
#endif
}

void ServiceManager::notify(const std::string& state) {
#ifdef TENSORSHM_HAVE_SYSTEMD
  const int r = sd_notify(0, state.c_str());
  if (r < 0) log::warning("sd_notify(", state, "): error ", -r);
#else
  (void)state;
#endif
}

void ServiceManager::attach(Server& server) {
  if (watchdog_usec_ != 0) {
    log::info("watchdog enabled: pinging every ", watchdog_usec_ / 2000, " ms at most");
  }
  server.on_stop([this] { stopping(); });
  auto last_ping = std::make_shared<std::chrono::steady_clock::time_point>();
  auto last_status = std::make_shared<std::chrono::steady_clock::time_point>();
  server.add_housekeeping([this, &server, last_ping, last_status] {
    const auto now = std::chrono::steady_clock::now();
    if (watchdog_usec_ != 0 && now - *last_ping >= std::chrono::microseconds(watchdog_usec_ / 2)) {
      // Sent from the event loop: a stalled loop stops the pings and systemd restarts us.
      notify("WATCHDOG=1");
      *last_ping = now;
    }
    if (now - *last_status >= std::chrono::seconds(5)) {
      notify("STATUS=pool " + std::to_string(server.pool().pool_used_bytes()) + "/" +
             std::to_string(server.pool().pool_bytes()) + " bytes used, " +
             std::to_string(server.registry().names()) + " objects, " + std::to_string(server.clients()) +
             " clients");
      *last_status = now;
    }
  });
}

void ServiceManager::ready() {
  notify("READY=1\nSTATUS=serving; pool ready");
}

void ServiceManager::status(const std::string& text) { notify("STATUS=" + text); }

void ServiceManager::stopping() { notify("STOPPING=1\nSTATUS=stopping"); }

}  // namespace tensorshm::daemon
