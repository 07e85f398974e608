// Closing a descriptor that a client handed over can block: the last close of
// a TCP socket with SO_LINGER waits up to its linger time, and closing a Unix
// socket closes, in the closing thread, every descriptor still queued in it.
// A client could freeze the io thread that way (issue: one descriptor sent
// with any frame stalled every other client for the linger time). So client
// connections, and every descriptor a client attached to a frame, are closed
// here, on a thread of their own, never on the io thread.
//
// Shared between threads: close() is called from the io thread, the closer
// thread drains the queue; the queue is guarded by State::mu.
#pragma once

#include <cstddef>
#include <memory>

namespace tensorshm::daemon {

class FdCloser {
 public:
  /// Starts the closer thread. If the thread cannot be started, descriptors
  /// are closed where close() is called (and a warning says so).
  FdCloser();
  /// Waits up to a second for the queue to drain, then leaves the rest to
  /// process exit (which closes sockets without lingering).
  ~FdCloser();
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

  /// Takes ownership of `fd` and closes it soon on the closer thread. A socket
  /// loses its SO_LINGER setting first, so that its own close cannot block.
  void close(int fd) noexcept;
  /// Descriptors queued and not yet closed (for stats and tests).
  std::size_t pending() const noexcept;

  struct State;  // shared with the closer thread, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

}  // namespace tensorshm::daemon
