#include "tensorshm/io.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensorshm/sys_call.hpp"

namespace tensorshm::io {

Result<SendResult> send_with_fds(int sock, std::span<const std::byte> data, std::span<const int> fds,
                                 bool dont_wait) {
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    if (fds.size() > static_cast<std::size_t>(kMaxFdsPerMessage))
      return Error{Errc::internal, "send_with_fds: too many descriptors"};
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0));
    if (n >= 0) return SendResult{static_cast<std::size_t>(n), false};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return SendResult{0, true};
    return posix_error("sendmsg", "control socket", errno);
  }
}

Result<std::size_t> recv_with_fds(int sock, std::span<std::byte> data, std::vector<int>* fds) {
  iovec iov{data.data(), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  auto n = posix_call("recvmsg", "control socket", [&] { return ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); });
  if (!n) return std::move(n).error();
  bool unexpected = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (fds != nullptr) fds->push_back(fd); else { close_fd(fd); unexpected = true; }
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) return Error{Errc::protocol_error, "recvmsg: descriptor message truncated"};
  if (unexpected) return Error{Errc::protocol_error, "recvmsg: unexpected descriptors"};
  return static_cast<std::size_t>(*n);
}

Result<RecvResult> recv_taking_fds(int sock, std::span<std::byte> data, std::vector<int>* fds) {
  // Room for SCM_MAX_FD (253) descriptors, the most one sendmsg can attach.
  constexpr std::size_t kMaxFds = 253;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{data.data(), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RecvResult{0, true, false};
    return posix_error("recvmsg", "control socket", errno);
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(fd);
    }
  }
  return RecvResult{static_cast<std::size_t>(n), false, (msg.msg_flags & MSG_CTRUNC) != 0};
}

Result<PeerCred> peer_credentials(int sock) {
  ucred cred{};
  socklen_t len = sizeof cred;
  TSHM_TRY(posix_call("getsockopt(SO_PEERCRED)", "control socket",
                      [&] { return ::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len); }));
  return PeerCred{cred.pid, cred.uid, cred.gid};
}

void close_fd(int fd) noexcept {
  if (fd >= 0) (void)::close(fd);
}

}  // namespace tensorshm::io
