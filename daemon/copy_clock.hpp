// When the copy engine looks again at a device-to-host copy in flight. The
// engine learns for each device how fast its copies go (from the copies it
// sees end), predicts when a new copy will end, and plans its queries of the
// event recorded after the copy: a few probes while the copy cannot have
// ended yet unless the rate was learned too slow (so a wrong rate costs at
// most twice the copy's time, never the put's timeout), asleep otherwise
// until a little before the predicted end, then querying without sleeping
// for a short while (the answer is then one query late at most, and the
// thread is already awake), then at intervals that grow with the copy's age
// (a copy that never ends costs a query every 10 ms). Pure arithmetic on
// times, so that tests check it without a clock or a GPU.
#pragma once

#include <chrono>
#include <cstdint>

#include "steady_time.hpp"

namespace tensorshm::daemon {

class CopyClock : public SteadyTime {
 public:
  // Learned rates are kept within these, in bytes per microsecond (MB/s).
  static constexpr double kSlowest = 100;        // 100 MB/s
  static constexpr double kFastest = 1'000'000;  // 1 TB/s, beyond any link today
  static constexpr std::uint64_t kLearnBytes = 1u << 20;  // smaller copies are latency, not rate

  /// How long a copy of `bytes` is expected to take: zero until learned.
  Micros predict(std::uint64_t bytes) const noexcept;
  /// A copy of `bytes` that the GPU started at `began` was seen done at
  /// `ended`. `prompt`: a query had found it not yet done just before (see
  /// prompt()), so `ended` is its end; otherwise it ended at or before
  /// `ended`, and the sample only bounds the rate from below. A prompt sample
  /// moves the rate a quarter of the way; a bound raises a rate below it
  /// (to 1.25 times the bound: the copy was faster still), never lowers one,
  /// and never sets the first one. Callers pass only copies whose start they
  /// know (the stream was idle, or the copy before was seen ending promptly).
  void observe(std::uint64_t bytes, TimePoint began, TimePoint ended, bool prompt) noexcept;
  /// Learned rate in bytes per microsecond; 0 until learned.
  double rate() const noexcept { return bytes_per_us_; }

  /// Whether a copy from `began`, found not done at `last_look` and done at
  /// `ended`, was seen ending promptly: within 20 us or 5 % of its time.
  static bool prompt(TimePoint began, TimePoint last_look, TimePoint ended) noexcept;

  /// What to do about a copy of `bytes` expected from `start` to `end`
  /// (end == start: nothing learned yet) at `now`, last queried at
  /// `last_look` (TimePoint{}: never).
  struct Plan {
    bool query;    // query its event now
    Micros delay;  // then (or, not querying, until) the next look
  };
  ///   - before end - margin (margin: 50 us + 10 % of the prediction, at most
  ///     500 us): query only at the probes start + floor * 2^k (floor: the
  ///     copy's time at kFastest, at least 10 us), sleep in between;
  ///   - from there until spin past the end (200 us + 10 % of the
  ///     prediction, at most 1 ms): query and go again at once;
  ///   - then every 2 % of the copy's age (10 us to 1 ms), and every 10 ms
  ///     once it is more than a second late.
  static Plan plan(TimePoint now, TimePoint start, TimePoint end, std::uint64_t bytes, TimePoint last_look) noexcept;
  /// When plan() stops querying without sleeping: the end plus 200 us + 10 %
  /// of the prediction, at most 1 ms.
  static TimePoint spin_end(TimePoint start, TimePoint end) noexcept;

 private:
  double bytes_per_us_ = 0;
};

}  // namespace tensorshm::daemon
