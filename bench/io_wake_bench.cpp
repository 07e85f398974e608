// The io thread's wake-up (daemon/io_awake.hpp): how long a handler posted
// from another thread (as the copy engine posts the end of a GPU copy) waits
// before it runs on the daemon's io thread, when that thread has been asleep
// in epoll_wait for a while, against when an IoAwake window was opened
// shortly before (as the engine opens one before a copy's predicted end).
// Both measured in the same run on the same machine.
// Usage: tshm_io_wake_bench [--quick]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "asio.hpp"
#include "io_awake.hpp"

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using tensorshm::daemon::IoAwake;

namespace {

struct Spread {
  double median, p90;
};

/// Post-to-run latency in microseconds, `n` times, each after `idle` with
/// nothing to do; with `lead` > 0 a window is opened that long before the post.
Spread measure(int n, std::chrono::microseconds idle, std::chrono::microseconds lead) {
  boost::asio::io_context io(1);  // as tensorshmd's
  IoAwake awake(io);
  auto guard = boost::asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  std::vector<double> us;
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_for(idle);
    if (lead.count() > 0) {
      awake.until(Clock::now() + lead + 2ms);  // open still if the sleep below oversleeps
      std::this_thread::sleep_for(lead);
    }
    std::atomic<bool> ran{false};
    Clock::time_point at{};
    const auto t0 = Clock::now();
    boost::asio::post(io, [&] {
      at = Clock::now();
      ran.store(true, std::memory_order_release);
    });
    while (!ran.load(std::memory_order_acquire)) {
    }
    us.push_back(std::chrono::duration<double, std::micro>(at - t0).count());
  }
  guard.reset();
  runner.join();
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 9 / 10]};
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int n = quick ? 100 : 1000;
  const auto idle = 2ms;
  const Spread asleep = measure(n, idle, 0us);
  const Spread window = measure(n, idle, 200us);
  std::printf("io thread: a handler posted from another thread after %lld ms idle, %d times\n",
              static_cast<long long>(idle.count()), n);
  std::printf("  %-44s median %7.1f us   p90 %7.1f us\n", "asleep in epoll_wait (cuda-io-spin = false)", asleep.median,
              asleep.p90);
  std::printf("  %-44s median %7.1f us   p90 %7.1f us\n", "in a window opened 200 us before", window.median,
              window.p90);
  std::printf("  wake-up saved: %.1f us per answer (median), asleep / window = %.1fx\n", asleep.median - window.median,
              window.median > 0 ? asleep.median / window.median : 0.0);
  return 0;
}
