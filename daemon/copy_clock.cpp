// The copy clock's arithmetic; see the header.
#include "copy_clock.hpp"

#include <algorithm>

namespace tensorshm::daemon {

using namespace std::chrono_literals;
using Micros = CopyClock::Micros;

namespace {

Micros micros(std::chrono::steady_clock::duration d) { return std::chrono::duration_cast<Micros>(d); }

/// The copy's time at kFastest: no copy of `bytes` ends sooner.
Micros floor_of(std::uint64_t bytes) {
  return std::max(Micros(10), Micros(static_cast<std::int64_t>(static_cast<double>(bytes) / CopyClock::kFastest)));
}

}  // namespace

Micros CopyClock::predict(std::uint64_t bytes) const noexcept {
  if (bytes_per_us_ <= 0) return Micros(0);
  return Micros(static_cast<std::int64_t>(static_cast<double>(bytes) / bytes_per_us_));
}

void CopyClock::observe(std::uint64_t bytes, TimePoint began, TimePoint ended, bool prompt) noexcept {
  if (bytes < kLearnBytes || ended <= began) return;
  const double us = std::chrono::duration<double, std::micro>(ended - began).count();
  const double seen = std::clamp(static_cast<double>(bytes) / us, kSlowest, kFastest);
  if (prompt) bytes_per_us_ = bytes_per_us_ <= 0 ? seen : 0.75 * bytes_per_us_ + 0.25 * seen;
  else if (bytes_per_us_ > 0 && seen > bytes_per_us_) bytes_per_us_ = std::min(kFastest, 1.25 * seen);
}

bool CopyClock::prompt(TimePoint began, TimePoint last_look, TimePoint ended) noexcept {
  if (last_look < began || last_look > ended) return false;
  return ended - last_look <= std::max<Clock::duration>(20us, (ended - began) / 20);
}

CopyClock::Plan CopyClock::plan(TimePoint now, TimePoint start, TimePoint end, std::uint64_t bytes,
                                TimePoint last_look) noexcept {
  const Micros predicted = micros(end - start);
  const Micros margin = std::min<Micros>(50us + predicted / 10, 500us);
  const TimePoint settle = end - margin;
  if (now < settle) {
    // Probes at start + floor * 2^k: the first one after the last look.
    const Micros floor = floor_of(bytes);
    Micros step = floor;
    while (last_look >= start + step && start + step < settle) step *= 2;
    const TimePoint probe = start + step;
    if (probe <= now && probe < settle) {
      // Due: query, then sleep until the following probe (or the settle time).
      while (start + step <= now) step *= 2;
      return {true, std::max(Micros(1), micros(std::min(start + step, settle) - now))};
    }
    return {false, std::max(Micros(1), micros(std::min(probe, settle) - now))};
  }
  const Micros late = micros(now - end);
  if (now < spin_end(start, end)) return {true, 0us};
  if (late >= 1s) return {true, 10ms};
  return {true, std::clamp<Micros>(micros(now - start) / 50, 10us, 1ms)};
}

CopyClock::TimePoint CopyClock::spin_end(TimePoint start, TimePoint end) noexcept {
  return end + std::min<Micros>(200us + micros(end - start) / 10, 1ms);
}

}  // namespace tensorshm::daemon
