// A producer's put cadence; see the header.
#include "put_cadence.hpp"

#include <algorithm>
#include <cmath>

namespace tensorshm::daemon {

using namespace std::chrono_literals;

void PutCadence::arrived(TimePoint t) noexcept {
  if (last_ != TimePoint{} && t > last_) {
    const double sample = std::chrono::duration<double, std::micro>(t - last_).count();
    if (seen_ > 0 && (sample > 4 * interval_us_ || sample > static_cast<double>(kLongest.count()))) {
      seen_ = 0;  // a pause: learn the rate afresh from the next put on
    } else {
      if (seen_ == 0) {
        interval_us_ = sample;
        deviation_us_ = sample / 4;  // unknown: irregular until the next intervals agree
      } else {
        deviation_us_ = 0.75 * deviation_us_ + 0.25 * std::abs(sample - interval_us_);
        interval_us_ = 0.75 * interval_us_ + 0.25 * sample;
      }
      if (seen_ < kSettle) ++seen_;
    }
  }
  if (t > last_) last_ = t;
}

std::optional<PutCadence::Window> PutCadence::next() const noexcept {
  if (seen_ < kSettle || interval_us_ > static_cast<double>(kLongest.count()) || deviation_us_ > interval_us_ / 8)
    return std::nullopt;
  const double lead_us = std::min({200.0 + 2 * deviation_us_, 1000.0, interval_us_ / 4});
  const auto interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(interval_us_));
  const auto lead = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(lead_us));
  return Window{last_ + interval - lead, last_ + interval + lead};
}

}  // namespace tensorshm::daemon
