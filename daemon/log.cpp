#include "log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace tensorshm::daemon::log {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
}

void set_level(LogLevel level) { g_level = static_cast<int>(level); }
bool enabled(LogLevel level) { return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed); }

void write(LogLevel level, const std::string& message) {
  // One write(2) per line so that lines from threads never interleave.
  std::string line = "<" + std::to_string(static_cast<int>(level)) + ">" + message + "\n";
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace tensorshm::daemon::log
