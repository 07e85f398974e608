// Whether a GPU put's reply is still worth polling for. Polling for the last
// part of the wait saves the core's wake-up on an idle host, but on a host
// whose CPUs are all busy (data-loader workers on every core, compilers) a
// polling thread uses up its share and is descheduled for milliseconds, while
// a thread asleep in recv is woken ahead of the busy ones: on an H200 host
// with every core compiling, a 64 MiB put reached 59 % of a raw copy's speed
// polling and 72 % asleep (docs/gpu.md, run 9). So each poll is timed on the
// thread's CPU clock: a thread that got less than kMinShare of the wall time
// it polled for was crowded out, and the client sleeps for kBackOff before it
// polls again.
#pragma once

#include <chrono>
#include <optional>

namespace tensorshm::detail {

class PollBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  using Micros = std::chrono::microseconds;

  /// A poll shorter than this says too little to judge.
  static constexpr Micros kMinJudged{200};
  /// The share of the wall time a polling thread must get on its CPU.
  static constexpr double kMinShare = 0.75;
  /// How long the client then sleeps instead of polling.
  static constexpr Micros kBackOff{1000000};

  /// Whether to poll at `now`.
  bool may_poll(Clock::time_point now) const noexcept { return now >= quiet_until_; }
  /// A poll of `wall` during which the thread ran for `cpu`, ending at `now`.
  /// Returns true when it was crowded out (and the back-off starts).
  bool polled(Micros wall, Micros cpu, Clock::time_point now) noexcept;
  /// How many times polling backed off (tests, statistics).
  unsigned back_offs() const noexcept { return back_offs_; }

 private:
  Clock::time_point quiet_until_{};
  unsigned back_offs_ = 0;
};

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID); nullopt when the
/// clock cannot be read.
std::optional<std::chrono::microseconds> thread_cpu_time() noexcept;

}  // namespace tensorshm::detail
