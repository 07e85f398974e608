#include "poll_backoff.hpp"

#include <time.h>

namespace tensorshm::detail {

bool PollBackoff::polled(Micros wall, Micros cpu, Clock::time_point now) noexcept {
  if (wall < kMinJudged || static_cast<double>(cpu.count()) >= kMinShare * static_cast<double>(wall.count()))
    return false;
  quiet_until_ = now + kBackOff;
  ++back_offs_;
  return true;
}

std::optional<std::chrono::microseconds> thread_cpu_time() noexcept {
  timespec ts{};
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return std::nullopt;  // EINVAL only: not on Linux
  return std::chrono::microseconds{static_cast<long long>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000};
}

}  // namespace tensorshm::detail
