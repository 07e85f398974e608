// Socket helpers both sides use: sendmsg/recvmsg with SCM_RIGHTS descriptors
// (Asio has no wrapper for them), and the peer's credentials.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <span>
#include <vector>

#include "tensorshm/error.hpp"

namespace tensorshm::io {

/// Sends bytes from `data` with `fds` attached as SCM_RIGHTS (fds may be
/// empty). Returns the bytes sent, which can be fewer than data.size(); on a
/// non-blocking socket EAGAIN comes back as Errc::system_error with that errno
/// in the message and `would_block` set. MSG_NOSIGNAL: a closed peer is EPIPE,
/// never SIGPIPE.
struct SendResult {
  std::size_t sent = 0;
  bool would_block = false;
};
/// `dont_wait`: never block, even on a blocking socket (MSG_DONTWAIT).
Result<SendResult> send_with_fds(int sock, std::span<const std::byte> data, std::span<const int> fds,
                                 bool dont_wait = false);

/// Receives up to data.size() bytes; descriptors that arrive are appended to
/// *fds (close-on-exec). Returns 0 at end of stream. Descriptors beyond
/// kMaxFdsPerMessage, or a truncated control message, are closed and reported.
inline constexpr int kMaxFdsPerMessage = 4;
Result<std::size_t> recv_with_fds(int sock, std::span<std::byte> data, std::vector<int>* fds);

/// The daemon's read: never blocks (MSG_DONTWAIT), and takes every descriptor
/// that came with the bytes, however many (up to the kernel's SCM_MAX_FD per
/// message), into *fds, so that none is closed by the kernel inside this call
/// (closing a received socket can block for its SO_LINGER time; the caller
/// decides where that happens). `would_block`: nothing to read yet.
struct RecvResult {
  std::size_t got = 0;       // bytes; 0 with !would_block: end of stream
  bool would_block = false;
  bool truncated = false;    // MSG_CTRUNC: descriptors beyond the buffer were dropped by the kernel
};
Result<RecvResult> recv_taking_fds(int sock, std::span<std::byte> data, std::vector<int>* fds);

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};
/// SO_PEERCRED of a connected Unix socket.
Result<PeerCred> peer_credentials(int sock);

/// Closes a descriptor, ignoring EINTR (Linux closes it anyway).
void close_fd(int fd) noexcept;

}  // namespace tensorshm::io
