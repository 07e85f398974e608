// The server: owns the listening socket, the sessions and the housekeeping
// timer, all on one io_context thread. (Signals belong to the process: main
// installs them before the pool is reserved and calls stop().) Sessions reach the pool,
// the registry, the waiters and the copy engine through it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "asio.hpp"
#include "config.hpp"
#include "fd_closer.hpp"
#include "pool.hpp"
#include "registry.hpp"
#include "tensorshm/io.hpp"
#include "waiters.hpp"

namespace tensorshm::daemon {

class Session;
class CopyEngine;

struct Counters {
  std::uint64_t puts = 0;
  std::uint64_t gets = 0;
  std::uint64_t copies = 0;
  std::uint64_t bytes_copied = 0;
  std::uint64_t connections_total = 0;
  std::uint64_t protocol_errors = 0;
  std::uint64_t refused = 0;  // connections answered with limit_exceeded and closed at once
};

class Server {
 public:
  Server(asio::io_context& io, const Config& config, Pool& pool, Registry& registry, CopyEngine* engine);
  ~Server();

  /// Binds the socket at config.socket_path (refusing when another daemon
  /// answers there, replacing a stale socket file), or adopts `inherited_fd`
  /// (socket activation) when >= 0.
  Status listen(int inherited_fd = -1);
  /// Starts accepting and the housekeeping timer.
  void start();
  /// Stops accepting, closes every session and lets io.run() return.
  void stop();
  /// Why the server stopped by itself (cuda-lost = exit), for the exit
  /// status; empty when it was asked to stop or still serves.
  const std::string& failure() const noexcept { return failure_; }

  /// Registered callbacks run by the housekeeping timer (watchdog, status).
  void add_housekeeping(std::function<void()> fn) { housekeeping_.push_back(std::move(fn)); }
  /// Called once, after stop() begins.
  void on_stop(std::function<void()> fn) { on_stop_.push_back(std::move(fn)); }

  asio::io_context& io() noexcept { return io_; }
  const Config& config() const noexcept { return config_; }
  Pool& pool() noexcept { return pool_; }
  Registry& registry() noexcept { return registry_; }
  Waiters& waiters() noexcept { return waiters_; }
  CopyEngine* engine() noexcept { return engine_; }
  Counters& counters() noexcept { return counters_; }
  /// Where client sockets and descriptors clients sent are closed.
  FdCloser& closer() noexcept { return closer_; }
  std::size_t clients() const noexcept { return sessions_.size(); }
  double uptime_s() const;
  /// True once stop() began.
  bool stopping() const noexcept { return stopping_; }
  int cuda_devices() const noexcept;
  /// Why GPU puts cannot work now (the copy engine's trouble()); empty when they can.
  std::string gpu_trouble() const;

  /// Sessions call this when they end.
  void forget(std::uint64_t session_id, std::uint32_t uid);

 private:
  awaitable<void> accept_loop();
  void arm_housekeeping();
  /// Answers a connection over a limit with one error frame (request id 0,
  /// sent without waiting) and closes it: it holds no session and no slot.
  void refuse(unix_socket sock, const io::PeerCred& cred, const Error& why);

  FdCloser closer_;  // first: destroyed after every session that hands it sockets
  asio::io_context& io_;
  const Config& config_;
  Pool& pool_;
  Registry& registry_;
  CopyEngine* engine_;
  Waiters waiters_;
  Counters counters_;
  std::optional<unix_acceptor> acceptor_;
  asio::steady_timer housekeeping_timer_;
  std::vector<std::function<void()>> housekeeping_;
  std::vector<std::function<void()>> on_stop_;
  std::map<std::uint64_t, std::weak_ptr<Session>> sessions_;
  std::map<std::uint32_t, std::uint32_t> per_uid_;
  std::uint64_t next_session_ = 1;
  std::chrono::steady_clock::time_point refused_logged_at_{};
  std::uint64_t refused_unlogged_ = 0;
  bool stopping_ = false;
  std::string failure_;
  bool bound_here_ = false;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace tensorshm::daemon
