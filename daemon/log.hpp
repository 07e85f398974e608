// Logging to stderr, one line per message, in the form its reader wants:
//   under systemd's journal, with sd-daemon priority prefixes ("<6>message")
//   that journald turns into the entry's priority (it adds the time itself);
//   anywhere else (a terminal, a file), with a UTC time and a level word:
//   "2026-12-04T18:43:55.123Z info    message".
// The journal is recognised as systemd documents it: $JOURNAL_STREAM holds the
// device and inode of the stream it connected, and stderr is that stream.
//   log::info("client ", pid, " connected");
#pragma once

#include <chrono>
#include <sstream>
#include <string>
#include <string_view>

#include "config.hpp"

namespace tensorshm::daemon::log {

enum class Sink { journal, terminal };

/// Sink::journal when journal_stream ($JOURNAL_STREAM, "<device>:<inode>" in
/// decimal) names the file open on fd; Sink::terminal otherwise: unset,
/// malformed, or inherited by a process whose stderr was redirected elsewhere
/// (and when fstat(fd) fails: stderr is then closed and nothing is read anyway).
Sink detect_sink(const char* journal_stream, int fd);

/// The line written for one message (newline included).
std::string format_line(LogLevel level, std::string_view message, Sink sink, std::chrono::system_clock::time_point now);

/// "debug", "info", "notice", "warning" or "error".
std::string_view level_word(LogLevel level);

void set_level(LogLevel level);
bool enabled(LogLevel level);
/// Writes one line to stderr, in the form detect_sink() chose for stderr at the first call.
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
