// The socket's directory and the lock beside the socket: see instance_lock.hpp.
#include "instance_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "tensorshm/io.hpp"
#include "tensorshm/sys_call.hpp"

namespace tensorshm::daemon {
namespace {

std::string octal(unsigned mode) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", mode & 07777);
  return b;
}

}  // namespace

Status prepare_socket_directory(const std::string& socket_path, std::uint32_t socket_mode) {
  const std::filesystem::path dir = std::filesystem::path(socket_path).parent_path();
  if (dir.empty()) return ok_status();  // a relative name in the working directory: the operator's choice
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return posix_error("lstat", dir.string(), errno);
    std::error_code ec;
    std::filesystem::create_directories(dir.parent_path(), ec);
    if (ec) return Error{Errc::system_error, "mkdir('" + dir.parent_path().string() + "'): " + ec.message()};
    // A directory made for our socket: private unless the socket is shared.
    const mode_t mode = (socket_mode & 0077) ? 0755 : 0700;
    if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST) return posix_error("mkdir", dir.string(), errno);
    if (::lstat(dir.c_str(), &st) != 0) return posix_error("lstat", dir.string(), errno);
  }
  const auto why = [&](const std::string& what) {
    return Error{Errc::permission_denied,
                 "the socket's directory '" + dir.string() + "' " + what +
                     ": another user could replace the socket or its lock. Have it removed (by its owner or root; "
                     "tensorshmd makes it again), or choose a --socket in a directory that only this user (uid " +
                     std::to_string(::geteuid()) + ") or root can write"};
  };
  if (S_ISLNK(st.st_mode)) return why("is a symbolic link");
  if (!S_ISDIR(st.st_mode)) return why("is not a directory");
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return why("belongs to uid " + std::to_string(st.st_uid));
  if ((st.st_mode & 0022) != 0 && (st.st_mode & S_ISVTX) == 0)
    return why("is writable by others (mode " + octal(st.st_mode) + ") and not sticky");
  return ok_status();
}

Result<InstanceLock> InstanceLock::acquire(const std::string& path) {
  // A daemon that stops unlinks its lock: one that opened the file just
  // before may then lock a file no longer at `path` while a third makes a new
  // one. So after locking, the path must still name the locked file; else try
  // again.
  for (int attempt = 0;; ++attempt) {
    auto lock = acquire_once(path);
    if (!lock || attempt == 8) return lock;
    struct stat held{}, named{};
    if (::fstat(lock->fd_, &held) == 0 && ::lstat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
      return lock;
    io::close_fd(lock->fd_);  // not ours: a file no longer at the path
    lock->fd_ = -1;
  }
}

Result<InstanceLock> InstanceLock::acquire_once(const std::string& path) {
  auto fd = posix_call("open(O_NOFOLLOW)", path, [&] {
    return ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  });
  if (!fd) {
    if (fd.error().sys_errno == ELOOP)
      return Error{Errc::permission_denied, "the lock '" + path +
                                                "' is a symbolic link, which tensorshmd never follows; remove it"};
    return std::move(fd).error();
  }
  struct stat st{};
  if (::fstat(*fd, &st) != 0) {
    const int err = errno;
    io::close_fd(*fd);
    return posix_error("fstat", path, err);
  }
  if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || st.st_nlink != 1) {
    io::close_fd(*fd);
    return Error{Errc::permission_denied,
                 "the lock '" + path + "' was not made by this daemon's user (uid " + std::to_string(::geteuid()) +
                     "): it " +
                     (!S_ISREG(st.st_mode)         ? std::string("is not a regular file")
                      : st.st_uid != ::geteuid() ? "belongs to uid " + std::to_string(st.st_uid)
                                                 : "has " + std::to_string(st.st_nlink) + " links") +
                     ". Remove it, or keep the socket in a directory only this user can write"};
  }
  if (::flock(*fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    (void)!::pread(*fd, buf, sizeof buf - 1, 0);
    io::close_fd(*fd);
    if (err == EWOULDBLOCK)
      return Error{Errc::system_error, "another tensorshmd (pid " + std::string(buf[0] ? buf : "?") +
                                           ") serves this socket (lock " + path +
                                           "); stop it or start with another --socket"};
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
