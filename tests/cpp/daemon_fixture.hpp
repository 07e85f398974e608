// What the integration tests need around the real tensorshmd: child
// processes with piped stdio (the daemon, tshm_test_peer), a daemon started
// on a temporary socket with a unique instance and stopped with SIGTERM, and a
// raw socket for sending frames no well-behaved client would send.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tensorshm/client.hpp"
#include "tensorshm/protocol.hpp"
#include "test_data.hpp"

namespace tshm_test {

using namespace std::chrono_literals;

/// Upper bound for anything the tests wait on: reached only when something
/// hangs, never part of what is asserted.
inline constexpr auto kPatience = 20s;

/// Reads lines from a descriptor it owns (a pipe), waiting at most kPatience.
class LineReader {
 public:
  explicit LineReader(int fd = -1) : fd_(fd) {}
  LineReader(LineReader&& o) noexcept { *this = std::move(o); }
  LineReader& operator=(LineReader&& o) noexcept;
  ~LineReader();
  /// Next line without the newline; empty optional at end of stream or
  /// after kPatience.
  std::optional<std::string> next();

 private:
  int fd_ = -1;
  std::string buffer_;
};

/// A child process with its stdin and stdout on pipes.
class Process {
 public:
  struct Spec {
    std::vector<std::string> argv;
    std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing) ours
    std::string output_file;                               // stdout+stderr there; empty: stdout piped
  };
  static Process spawn(const Spec& spec);

  Process() = default;
  Process(Process&& o) noexcept { *this = std::move(o); }
  Process& operator=(Process&& o) noexcept;
  ~Process();

  pid_t pid() const noexcept { return pid_; }
  /// Next line of stdout (see LineReader::next).
  std::optional<std::string> read_line() { return out_.next(); }
  /// Closes the child's stdin (peers treat that as "go on").
  void close_stdin();
  void signal(int sig) const;
  /// Waits for the exit (SIGKILL after kPatience) and returns the wait status.
  int wait();
  /// True while the child has not exited (reaps it when it has).
  bool running();

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  LineReader out_;
  std::optional<int> status_;
};

/// Exit code of a wait status, or 128 + signal.
int exit_code(int status);

/// The real tensorshmd on a temporary socket, with a unique instance and a
/// 64 MiB pool; stopped (and checked to exit 0 and leave nothing in /dev/shm)
/// when destroyed.
class Daemon {
 public:
  struct Options {
    std::vector<std::string> extra_args;
    std::string instance;  // empty: a fresh unique name
    bool wait_ready = true;
  };
  Daemon() : Daemon(Options{}) {}
  explicit Daemon(Options options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& socket_path() const noexcept { return socket_; }
  const std::string& instance() const noexcept { return instance_; }
  const std::string& dir() const noexcept { return dir_; }
  pid_t pid() const noexcept { return process_.pid(); }

  tensorshm::Client connect(const std::string& client_name = "integration-test") const;
  /// SIGTERM, wait, and the exit code; CHECKs that no file of the instance is
  /// left in /dev/shm.
  int stop();
  bool running() { return process_.running(); }
  /// Files of this instance in /dev/shm ("tensorshm.<instance>.*").
  std::vector<std::string> shm_files() const;
  /// Everything the daemon logged so far.
  std::string log() const;

  /// Starts tshm_test_peer with TENSORSHM_SOCKET pointing at this daemon.
  Process peer(std::vector<std::string> args) const;
  /// Runs a peer to its end; returns its exit code and its output lines.
  std::pair<int, std::vector<std::string>> run_peer(std::vector<std::string> args) const;

  /// Polls stats until `done` holds (the daemon handles disconnections
  /// asynchronously); returns the last stats seen.
  tensorshm::Stats stats_when(const std::function<bool(const tensorshm::Stats&)>& done) const;

  /// Starts another tensorshmd process with these arguments (for start-up
  /// failures) and returns its exit code.
  static int run_to_exit(std::vector<std::string> args, std::string* output);

 private:
  Options options_;
  std::string dir_;
  std::string socket_;
  std::string instance_;
  Process process_;
  bool stopped_ = false;
};

/// A fresh instance name, unique across processes running in parallel.
std::string unique_instance();
/// The whole content of a file ("" when it cannot be read).
std::string read_file(const std::string& path);

/// Value of "key=..." in a peer's output line ("got version=3 ..." -> "3").
std::string field(const std::string& line, const std::string& key);

/// A bare Unix socket to the daemon, for frames no client library sends.
class RawSocket {
 public:
  explicit RawSocket(const std::string& path);
  ~RawSocket();
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  void send_bytes(const std::vector<std::byte>& bytes);
  void send(const tensorshm::wire::BodyUnion& body, std::uint32_t request_id = 1);
  template <class T>
  void send(T body, std::uint32_t request_id = 1) {
    tensorshm::wire::BodyUnion u;
    u.Set(std::move(body));
    send(u, request_id);
  }
  /// Says hello and checks the reply.
  void hello();
  /// Reads one frame: its header and payload, or nothing at end of stream.
  std::optional<std::pair<tensorshm::protocol::FrameHeader, std::vector<std::byte>>> read_frame();
  /// Reads and decodes one reply; fails the test at end of stream.
  std::unique_ptr<tensorshm::protocol::Message> reply();
  /// True when the daemon closed the connection (reads end of stream before
  /// kPatience).
  bool closed_by_peer();
  void shutdown_write();
  void close();

 private:
  bool read_exact(void* p, std::size_t n);
  int fd_ = -1;
};

}  // namespace tshm_test
