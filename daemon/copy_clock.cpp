// The copy clock's arithmetic; see the header.
#include "copy_clock.hpp"

#include <algorithm>

namespace tensorshm::daemon {

using std::chrono::microseconds;

microseconds CopyClock::predict(std::uint64_t bytes) const noexcept {
  if (bytes_per_us_ <= 0) return microseconds(0);
  return microseconds(static_cast<std::int64_t>(static_cast<double>(bytes) / bytes_per_us_));
}

void CopyClock::observe(std::uint64_t bytes, TimePoint began, TimePoint ended, bool at_first_look) noexcept {
  if (bytes < kLearnBytes || ended <= began) return;
  const double us = std::chrono::duration<double, std::micro>(ended - began).count();
  const double seen = static_cast<double>(bytes) / us;
  if (bytes_per_us_ <= 0) bytes_per_us_ = seen;
  else if (at_first_look)
    // Done when first looked at: it ran at least this fast, maybe much
    // faster (the rate was learned while other copies shared the bus). A
    // weighted mean would creep up a few per cent per copy; step up instead.
    // Overshooting costs only an earlier first look, which then sees the
    // real end and pulls the rate back.
    bytes_per_us_ = std::max(bytes_per_us_, seen) * 1.25;
  else
    bytes_per_us_ = 0.75 * bytes_per_us_ + 0.25 * seen;
}

CopyClock::Plan CopyClock::plan(TimePoint now, TimePoint start, TimePoint end) noexcept {
  using namespace std::chrono_literals;
  const auto predicted = std::chrono::duration_cast<microseconds>(end - start);
  const auto margin = 50us + predicted / 10;
  if (now < end - margin)
    return {false, std::max(microseconds(1), std::chrono::duration_cast<microseconds>(end - margin - now))};
  const auto late = std::chrono::duration_cast<microseconds>(now - end);
  if (late < 200us + predicted / 4) return {true, 0us};
  if (late < 2ms) return {true, 10us};
  if (late < 50ms) return {true, 100us};
  return {true, 1000us};
}

}  // namespace tensorshm::daemon
