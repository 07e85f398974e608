// systemd integration through libsystemd's sd-daemon calls. The watchdog has
// its own timer on the event loop, a quarter of WatchdogSec= apart whatever
// --housekeeping-ms says, so that a loop stalled for longer than the interval
// is what gets the service restarted and nothing else. STATUS= lines ride on
// the housekeeping timer and are sent when their text changes, at most every
// kStatusEvery, so that `systemctl status` shows pool use, objects and clients.
#include "service_manager.hpp"

#include <cstdio>

#include "log.hpp"
#include "server.hpp"

#ifdef TENSORSHM_HAVE_SYSTEMD
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#endif

namespace tensorshm::daemon {
namespace {

constexpr auto kStatusEvery = std::chrono::seconds(2);

std::string human_bytes(std::uint64_t b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    ++i;
  }
  char text[32];
  if (i == 0)
    std::snprintf(text, sizeof text, "%llu B", static_cast<unsigned long long>(b));
  else
    std::snprintf(text, sizeof text, "%.1f %s", v, unit[i]);
  return text;
}

std::string counted(std::uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

}  // namespace

ServiceManager::ServiceManager() {
#ifdef TENSORSHM_HAVE_SYSTEMD
  const int n = sd_listen_fds(/*unset_environment=*/1);
  if (n < 0) log::warning("sd_listen_fds: error ", -n, "; binding the configured socket instead");
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
    if (sd_is_socket_unix(fd, SOCK_STREAM, /*listening=*/1, nullptr, 0) > 0) {
      inherited_fd_ = fd;
      break;
    }
  }
  if (n > 0 && inherited_fd_ < 0)
    log::warning("the service manager passed ", n,
                 " descriptor(s) but none is a listening Unix stream socket; "
                 "binding the configured socket instead");
  else if (n > 1)
    log::warning("the service manager passed ", n, " descriptors; serving descriptor ", inherited_fd_);
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(/*unset_environment=*/1, &usec) > 0) watchdog_ = std::chrono::microseconds(usec);
#endif
}

void ServiceManager::notify(const std::string& state) {
#ifdef TENSORSHM_HAVE_SYSTEMD
  const int r = sd_notify(/*unset_environment=*/0, state.c_str());
  if (r < 0) log::warning("sd_notify(", state, "): error ", -r);
#else
  (void)state;
#endif
}

std::string ServiceManager::describe(Server& server) {
  Pool& pool = server.pool();
  const std::uint64_t total = pool.pool_bytes();
  const std::uint64_t used = pool.pool_used_bytes();
  const unsigned percent = total == 0 ? 0u : static_cast<unsigned>(used * 100 / total);
  std::string s = "serving " + counted(server.clients(), "client", "clients") + ": " +
                  counted(server.registry().names(), "object", "objects") + ", " + human_bytes(used) + " of " +
                  human_bytes(total) + " pool used (" + std::to_string(percent) + "%), " +
                  human_bytes(pool.dedicated_bytes()) + " in dedicated segments";
  if (const int gpus = server.cuda_devices(); gpus > 0) s += ", " + counted(gpus, "GPU", "GPUs");
  if (const std::string trouble = server.gpu_trouble(); !trouble.empty()) s += " (" + trouble + ")";
  return s;
}

void ServiceManager::attach(Server& server) {
  server_ = &server;
  server.on_stop([this] { stopping(); });
  server.add_housekeeping([this] { update_status(); });
  if (watchdog_.count() != 0) {
    log::info("watchdog: WatchdogSec ", watchdog_.count() / 1000, " ms, pinging every ",
              watchdog_period().count() / 1000, " ms");
    watchdog_timer_.emplace(server.io());
    arm_watchdog();
  }
}

void ServiceManager::arm_watchdog() {
  watchdog_timer_->expires_after(watchdog_period());
  watchdog_timer_->async_wait([this](error_code ec) {
    if (ec || stopping_) return;
    // Sent from the event loop: a loop that stalls stops the pings.
    notify("WATCHDOG=1");
    arm_watchdog();
  });
}

void ServiceManager::update_status() {
  if (server_ == nullptr || stopping_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_status_at_ < kStatusEvery) return;
  std::string text = describe(*server_);
  if (text == last_status_) return;
  status(text);
  last_status_ = std::move(text);
  last_status_at_ = now;
}

void ServiceManager::ready() {
  std::string text = server_ != nullptr ? describe(*server_) : std::string("serving");
  notify("READY=1\nSTATUS=" + text);
  last_status_ = std::move(text);
  last_status_at_ = std::chrono::steady_clock::now();
}

void ServiceManager::status(const std::string& text) { notify("STATUS=" + text); }

void ServiceManager::stopping() {
  if (stopping_) return;
  stopping_ = true;
  if (watchdog_timer_) watchdog_timer_->cancel();
  notify("STOPPING=1\nSTATUS=stopping: closing connections and removing segments");
}

}  // namespace tensorshm::daemon
