// Keeps the io thread awake for a while: until a time another thread names,
// the io thread polls its io_context instead of sleeping in epoll_wait, so a
// handler posted in that window runs without a thread wake-up (tens to a few
// hundred microseconds from a deep CPU idle state; measured on an H200 host,
// docs/gpu.md). The copy engine opens a window shortly before a GPU copy is
// predicted to end, so that the answer to the put, posted when the engine
// sees the end, finds the io thread running.
//
// How: a handler that posts itself again while the window is open. With a
// handler always queued, Asio's scheduler runs its reactor without blocking
// (epoll_wait with a zero timeout) and the io_context's other handlers, timers
// and sockets go on being served in between. The io thread then spends a CPU
// core for the window's length; outside windows nothing changes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "asio.hpp"

namespace tensorshm::daemon {

class IoAwake {
 public:
  using Clock = std::chrono::steady_clock;

  explicit IoAwake(boost::asio::io_context& io);

  /// Any thread: keep the io thread polling until `until`. A later call may
  /// extend the window, never shorten it. Wakes the io thread now if it is
  /// asleep (that wake-up is then paid ahead of time, off the answer's path).
  /// The io_context must outlive every caller.
  void until(Clock::time_point until);

  /// Rounds the io thread made polling (tests).
  std::uint64_t rounds() const noexcept { return state_->rounds.load(std::memory_order_relaxed); }
  /// Windows asked for (calls of until() that reached past the open window).
  std::uint64_t windows() const noexcept { return state_->windows.load(std::memory_order_relaxed); }
  /// When the latest window was asked for (tests: windows are counted by when
  /// they opened, however late the test thread looks).
  Clock::time_point last_window_asked() const noexcept {
    return Clock::time_point(Clock::duration(state_->last_asked.load(std::memory_order_relaxed)));
  }

 private:
  // Shared with the queued handler, which may outlive this object (it then
  // goes on until the window ends, or is destroyed with the io_context).
  struct State {
    std::atomic<Clock::rep> until{0};  // time_since_epoch().count() of the window's end
    std::atomic<bool> running{false};  // a round is queued or running
    std::atomic<std::uint64_t> rounds{0};
    std::atomic<std::uint64_t> windows{0};
    std::atomic<Clock::rep> last_asked{0};
  };
  static void round(boost::asio::io_context& io, const std::shared_ptr<State>& state);

  boost::asio::io_context& io_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace tensorshm::daemon
