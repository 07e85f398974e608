// Logging to stderr with syslog priority prefixes ("<6>message") that
// journald understands; on a terminal they read as plain lines.
//   log::info("client ", pid, " connected");
#pragma once

#include <sstream>
#include <string>

#include "config.hpp"

namespace tensorshm::daemon::log {

void set_level(LogLevel level);
bool enabled(LogLevel level);
void write(LogLevel level, const std::string& message);

template <class... Args>
void emit(LogLevel level, Args&&... args) {
  if (!enabled(level)) return;
  std::ostringstream os;
  (os << ... << args);
  write(level, os.str());
}
template <class... Args> void debug(Args&&... a) { emit(LogLevel::debug, std::forward<Args>(a)...); }
template <class... Args> void info(Args&&... a) { emit(LogLevel::info, std::forward<Args>(a)...); }
template <class... Args> void notice(Args&&... a) { emit(LogLevel::notice, std::forward<Args>(a)...); }
template <class... Args> void warning(Args&&... a) { emit(LogLevel::warning, std::forward<Args>(a)...); }
template <class... Args> void error(Args&&... a) { emit(LogLevel::error, std::forward<Args>(a)...); }

}  // namespace tensorshm::daemon::log
