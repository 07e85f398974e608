// The daemon's log line forms (daemon/log.hpp): which one $JOURNAL_STREAM and
// stderr choose, and what each line looks like, at a fixed time.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "log.hpp"

using namespace tensorshm::daemon;

namespace {

// 2026-12-04T18:43:55.123Z
const std::chrono::system_clock::time_point kTime{std::chrono::milliseconds(1796409835123)};

std::string dev_ino(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

struct TempFile {
  int fd = -1;
  TempFile() {
    char tmpl[] = "/tmp/tshm-log-XXXXXX";
    fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    REQUIRE(::unlink(tmpl) == 0);
  }
  ~TempFile() { ::close(fd); }
};

}  // namespace

TEST_CASE("off_the_journal_a_line_carries_the_utc_time_to_the_millisecond_and_a_level_word") {
  CHECK(log::format_line(LogLevel::info, "listening", log::Sink::terminal, kTime) ==
        "2026-12-04T18:43:55.123Z info    listening\n");
  CHECK(log::format_line(LogLevel::warning, "w", log::Sink::terminal, kTime) == "2026-12-04T18:43:55.123Z warning w\n");
  CHECK(log::format_line(LogLevel::error, "e", log::Sink::terminal, kTime) == "2026-12-04T18:43:55.123Z error   e\n");
  CHECK(log::format_line(LogLevel::notice, "n", log::Sink::terminal, kTime + std::chrono::milliseconds(877)) ==
        "2026-12-04T18:43:56.000Z notice  n\n");
  CHECK(log::format_line(LogLevel::debug, "d", log::Sink::terminal, std::chrono::system_clock::time_point{}) ==
        "1970-01-01T00:00:00.000Z debug   d\n");
}

TEST_CASE("in_the_journal_a_line_carries_only_the_sd_daemon_priority_prefix") {
  CHECK(log::format_line(LogLevel::info, "listening", log::Sink::journal, kTime) == "<6>listening\n");
  CHECK(log::format_line(LogLevel::notice, "ready", log::Sink::journal, kTime) == "<5>ready\n");
  CHECK(log::format_line(LogLevel::error, "x", log::Sink::journal, kTime) == "<3>x\n");
  CHECK(log::format_line(LogLevel::debug, "x", log::Sink::journal, kTime) == "<7>x\n");
}

TEST_CASE("the_journal_is_chosen_only_when_journal_stream_names_the_file_open_on_stderr") {
  TempFile stderr_file, other;
  const std::string mine = dev_ino(stderr_file.fd);
  CHECK(log::detect_sink(mine.c_str(), stderr_file.fd) == log::Sink::journal);
  // Inherited by a process whose stderr went elsewhere: not the journal.
  CHECK(log::detect_sink(dev_ino(other.fd).c_str(), stderr_file.fd) == log::Sink::terminal);
  CHECK(log::detect_sink(nullptr, stderr_file.fd) == log::Sink::terminal);
  for (const char* bad : {"", ":", "12", "12:", ":34", "a:b", "12:34x", "12 :34", "-1:5"})
    CHECK_MESSAGE(log::detect_sink(bad, stderr_file.fd) == log::Sink::terminal, bad);
  CHECK(log::detect_sink(mine.c_str(), -1) == log::Sink::terminal);  // fstat fails
}
