// One daemon per instance: an exclusive flock on "<shm-dir>/tensorshm.<instance>.lock",
// held for the daemon's life. The kernel drops it when the process dies, so a
// crashed daemon never blocks its successor, which then sweeps the segments
// the crashed one left.
#pragma once

#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

class InstanceLock {
 public:
  /// Takes the lock or fails with a message naming the holder's pid.
  static Result<InstanceLock> acquire(const std::string& path);
  InstanceLock(InstanceLock&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }
  InstanceLock& operator=(InstanceLock&&) = delete;
  ~InstanceLock();
  const std::string& path() const noexcept { return path_; }

 private:
  InstanceLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

}  // namespace tensorshm::daemon
