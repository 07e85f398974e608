// The daemon's log lines: their form (journal prefix or time and level word),
// chosen once per process from $JOURNAL_STREAM and stderr, and one write(2)
// per line so that lines from threads never interleave.
#include "log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace tensorshm::daemon::log {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};

// Parses "<device>:<inode>" (decimal, as systemd writes it); false if malformed.
bool parse_stream(std::string_view s, unsigned long long* dev, unsigned long long* ino) {
  const auto colon = s.find(':');
  if (colon == std::string_view::npos) return false;
  const char* end = s.data() + colon;
  auto a = std::from_chars(s.data(), end, *dev);
  auto b = std::from_chars(end + 1, s.data() + s.size(), *ino);
  return a.ec == std::errc() && a.ptr == end && colon > 0 && b.ec == std::errc() && b.ptr == s.data() + s.size() &&
         colon + 1 < s.size();
}
}  // namespace

Sink detect_sink(const char* journal_stream, int fd) {
  unsigned long long dev = 0, ino = 0;
  if (journal_stream == nullptr || !parse_stream(journal_stream, &dev, &ino)) return Sink::terminal;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Sink::terminal;
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino
             ? Sink::journal
             : Sink::terminal;
}

std::string_view level_word(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::notice: return "notice";
    case LogLevel::warning: return "warning";
    case LogLevel::error: break;
  }
  return "error";
}

std::string format_line(LogLevel level, std::string_view message, Sink sink,
                        std::chrono::system_clock::time_point now) {
  std::string line;
  if (sink == Sink::journal) {
    line = "<" + std::to_string(static_cast<int>(level)) + ">";
  } else {
    using namespace std::chrono;
    const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count();
    const auto millis = static_cast<int>((ms % 1000 + 1000) % 1000);
    const auto secs = static_cast<std::time_t>((ms - millis) / 1000);
    std::tm utc{};
    char stamp[96];
    if (::gmtime_r(&secs, &utc) != nullptr)
      std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ ", utc.tm_year + 1900, utc.tm_mon + 1,
                    utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
    else  // a time beyond what struct tm holds: the milliseconds since the epoch, as they are
      std::snprintf(stamp, sizeof stamp, "@%lld ", static_cast<long long>(ms));
    line = stamp;
    const std::string_view word = level_word(level);
    line += word;
    line.append(word.size() < 8 ? 8 - word.size() : 1, ' ');  // messages start in one column
  }
  line += message;
  line += '\n';
  return line;
}

void set_level(LogLevel level) { g_level = static_cast<int>(level); }
bool enabled(LogLevel level) { return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed); }

void write(LogLevel level, const std::string& message) {
  static const Sink sink = detect_sink(std::getenv("JOURNAL_STREAM"), STDERR_FILENO);
  const std::string line = format_line(level, message, sink, std::chrono::system_clock::now());
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace tensorshm::daemon::log
