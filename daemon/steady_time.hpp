// The clock and units of the copy engine's timing arithmetic (CopyClock,
// PutCadence): one steady clock, times in microseconds.
#pragma once

#include <chrono>

namespace tensorshm::daemon {

struct SteadyTime {
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  using Micros = std::chrono::microseconds;
};

}  // namespace tensorshm::daemon
