#include "instance_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <string>

#include "tensorshm/io.hpp"
#include "tensorshm/sys_call.hpp"

namespace tensorshm::daemon {

Result<InstanceLock> InstanceLock::acquire(const std::string& path) {
  auto fd = posix_call("open", path, [&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600); });
  if (!fd) return std::move(fd).error();
  if (::flock(*fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    (void)!::pread(*fd, buf, sizeof buf - 1, 0);
    io::close_fd(*fd);
    if (err == EWOULDBLOCK)
      return Error{Errc::system_error, "another tensorshmd (pid " + std::string(buf[0] ? buf : "?") +
                                           ") runs this instance (lock " + path +
                                           "); stop it or start with another --instance"};
    return posix_error("flock", path, err);
  }
  std::string pid = std::to_string(::getpid());
  (void)!::ftruncate(*fd, 0);
  (void)!::pwrite(*fd, pid.data(), pid.size(), 0);
  return InstanceLock(path, *fd);
}

InstanceLock::~InstanceLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  io::close_fd(fd_);
}

}  // namespace tensorshm::daemon
