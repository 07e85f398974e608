// One daemon per control socket: an exclusive flock on "<socket>.lock", next
// to the socket, held for the daemon's life. The kernel drops it when the
// process dies, so a crashed daemon never blocks its successor. The lock lives
// in the socket's directory, which must belong to the daemon's user (or root)
// and be closed to other writers (or sticky, like /tmp): a lock in a
// directory anyone may write could be planted, linked elsewhere, or held by
// another user to keep the daemon from starting.
#pragma once

#include <cstdint>
#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

/// Makes the directory of `socket_path` when it is missing (0700, or 0755
/// when the socket is meant for other users: `socket_mode` grants its group or
/// others anything), or checks the existing one: a directory, not a symbolic
/// link, owned by this process's user or root, and not writable by others
/// unless sticky. The error says what is wrong and what to do.
Status prepare_socket_directory(const std::string& socket_path, std::uint32_t socket_mode);

class InstanceLock {
 public:
  /// Takes the lock at `path` (opened without following a symbolic link, a
  /// regular file of this process's user with one link, never another
  /// user's), or fails with a message naming the holder's pid or what is
  /// wrong with the file.
  static Result<InstanceLock> acquire(const std::string& path);
  InstanceLock(InstanceLock&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }
  InstanceLock& operator=(InstanceLock&&) = delete;
  ~InstanceLock();
  const std::string& path() const noexcept { return path_; }

 private:
  InstanceLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  static Result<InstanceLock> acquire_once(const std::string& path);
  std::string path_;
  int fd_ = -1;
};

}  // namespace tensorshm::daemon
