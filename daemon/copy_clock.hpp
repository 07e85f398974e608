// When the copy engine looks again at a device-to-host copy in flight. The
// engine learns for each device how fast its copies go (from the copies it
// sees end), predicts when a new copy will end (behind the copies already
// queued on its stream), and plans its polls of the event recorded after the
// copy: asleep until a little before the predicted end, then querying without
// sleeping (the answer is then at most one query late, and the thread is
// already awake), then backing off if the copy runs well past its prediction
// (a copy that never ends costs one query per millisecond). Pure arithmetic
// on times, so that tests check the plan without a clock or a GPU.
#pragma once

#include <chrono>
#include <cstdint>

namespace tensorshm::daemon {

class CopyClock {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;

  /// How long a copy of `bytes` is expected to take: zero until a copy of at
  /// least kLearnBytes has been seen end.
  std::chrono::microseconds predict(std::uint64_t bytes) const noexcept;
  /// A copy of `bytes` that the GPU ran from `began` (its issue, or the end of
  /// the copy before it on the same stream, whichever is later) was seen done
  /// at `ended`; `at_first_look` when the first query already found it done,
  /// so that it may have ended well before. Small copies teach nothing (their
  /// time is latency).
  void observe(std::uint64_t bytes, TimePoint began, TimePoint ended, bool at_first_look) noexcept;
  /// Learned rate in bytes per microsecond (MB/s); 0 until learned.
  double rate() const noexcept { return bytes_per_us_; }

  /// What to do about a copy expected from `start` to `end` (end == start:
  /// nothing learned yet), at `now`.
  struct Plan {
    bool query;                    // query its event now
    std::chrono::microseconds delay;  // then (or, not querying, until) the next look
  };
  ///   - before end - margin: do not query; look again then (margin: 50 us +
  ///     10 % of the prediction, so that a copy a little faster than
  ///     predicted is seen at once);
  ///   - then query, and again at once (delay 0) until `spin` past the end
  ///     (200 us + 25 % of the prediction);
  ///   - then every 10 us until 2 ms late, 100 us until 50 ms late, then 1 ms.
  static Plan plan(TimePoint now, TimePoint start, TimePoint end) noexcept;

  static constexpr std::uint64_t kLearnBytes = 1u << 20;

 private:
  double bytes_per_us_ = 0;  // exponentially weighted, newest 1/4
};

}  // namespace tensorshm::daemon
