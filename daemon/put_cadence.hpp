// When a producer's next GPU put is due, learned from the times its puts
// arrived. A producer that puts at a steady rate (camera frames, training
// batches) then finds the daemon's threads awake when its put arrives: the
// copy engine wakes its own thread and the io thread a little before the put
// is expected (daemon/io_awake.hpp) instead of each paying a wake-up from a
// deep idle state on the put's path (up to a few hundred microseconds on a GPU
// host, docs/gpu.md). Irregular producers get no window, and neither do
// producers that put several tensors per step (their intervals alternate).
// Pure arithmetic on times, so that tests check it without a clock.
#pragma once

#include <chrono>
#include <optional>

#include "steady_time.hpp"

namespace tensorshm::daemon {

class PutCadence : public SteadyTime {
 public:
  /// Intervals seen before any window is planned.
  static constexpr int kSettle = 4;
  /// Longer intervals get no window: a wake-up is then a small part of the
  /// time between puts, and the window's CPU is better spent elsewhere.
  static constexpr Micros kLongest{100'000};

  /// A put arrived at `t` (times must not go backwards; a put at the same
  /// time as the one before is ignored). An interval over 4 times the mean,
  /// or over kLongest, is a pause: learning starts again from this put.
  void arrived(TimePoint t) noexcept;

  struct Window {
    TimePoint from;   // wake up then
    TimePoint until;  // and stay awake until then, unless the put came
  };
  /// The window around the next expected put: the mean interval after the
  /// last put, give or take a lead of 200 us + 2 mean deviations (at most
  /// 1 ms and a quarter of the interval). Nothing while fewer than kSettle
  /// intervals were seen, while the mean deviation exceeds an eighth of the
  /// interval (the first interval counts as deviating by a quarter), or when
  /// the interval exceeds kLongest. The means move a quarter of the way to
  /// each new interval.
  std::optional<Window> next() const noexcept;

  /// The learned interval and its mean deviation, in microseconds (tests, logs).
  double interval_us() const noexcept { return interval_us_; }
  double deviation_us() const noexcept { return deviation_us_; }

 private:
  TimePoint last_{};
  double interval_us_ = 0;
  double deviation_us_ = 0;
  int seen_ = 0;  // intervals seen
};

}  // namespace tensorshm::daemon
