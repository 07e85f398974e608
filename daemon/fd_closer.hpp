// Closing a descriptor that a client handed over can block: the last close of
// a TCP socket with SO_LINGER waits up to its linger time, and closing a Unix
// socket closes, in the closing thread, every descriptor still queued in it
// (which may be such a socket, or a Unix socket queuing more). A client could
// freeze the io thread that way (one descriptor sent with any frame stalled
// every other client for the linger time). So client connections, and every
// descriptor a client attached to a frame, are closed here, never on the io
// thread, and defused first: a socket loses SO_LINGER; a Unix socket is shut
// for reading and drained, the descriptors queued in it defused the same way
// (to kMaxDepth levels, at most kMaxDrained of them per close).
//
// A close that blocks anyway (deeper nesting, a FUSE file whose server never
// answers) holds one closer thread: more start on demand, up to kMaxThreads;
// one uid's descriptors take at most kPerUid of them at a time; and the uid
// counts as stuck (stuck()), so that the server refuses its new connections
// rather than let it hold descriptors for ever.
//
// Shared between threads: close() and stuck() are called from the io thread,
// the closer threads take the queue; all state is in State, guarded by its
// mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace tensorshm::daemon {

class FdCloser {
 public:
  static constexpr unsigned kMaxThreads = 8;
  /// Closes of one uid's descriptors that run at once (the rest wait).
  static constexpr unsigned kPerUid = 2;
  static constexpr int kMaxDepth = 4;
  static constexpr int kMaxDrained = 4096;

  /// Starts the first closer thread. If no thread can be started, descriptors
  /// are defused and closed where close() is called (a warning says so).
  FdCloser();
  /// Waits up to a second for the queue to drain, then leaves the rest to
  /// process exit (which closes sockets without lingering).
  ~FdCloser();
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

  /// Takes ownership of `fd`, which belongs to (came from) `uid`, and closes
  /// it soon on a closer thread, defused as described above.
  void close(int fd, std::uint32_t uid) noexcept;
  /// Descriptors queued and not yet taken by a closer thread.
  std::size_t pending() const noexcept;
  /// Closes of `uid`'s descriptors that have run for more than a second.
  std::uint32_t stuck(std::uint32_t uid) const noexcept;

  struct State;  // shared with the closer threads, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

/// Makes `fd` safe to close (see FdCloser): no linger; a Unix socket shut for
/// reading and drained of queued descriptors, each defused and closed, to
/// `depth` levels, taking at most `*budget` descriptors. Exposed for tests.
void defuse(int fd, int depth, int* budget) noexcept;

}  // namespace tensorshm::daemon
