// How a session reads and writes its socket: frames read with recvmsg (any
// descriptor a client attaches ends the connection and goes to the closer
// threads), a read buffer that grows only with what arrives, at most 4 KiB
// before Hello, replies sent without blocking (a peer that does not read
// them is dropped after write-timeout-ms), the watch on a waiting request's
// peer, the Hello deadline, and closing (on the closer threads). The
// requests themselves are handled in session.cpp.
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "log.hpp"
#include "server.hpp"
#include "session.hpp"

namespace tensorshm::daemon {

void Session::close() {
  if (socket_.is_open()) {
    // The socket is closed on the closer thread: descriptors still queued in
    // it are closed with it, and one of them may linger (fd_closer.hpp).
    // release() cancels this session's pending operations first.
    error_code ec;
    const int fd = socket_.release(ec);
    if (ec) socket_.close(ec);
    else server_.closer().close(fd, cred_.uid);
  }
  // Wake a request waiting for a version or for space: it ends at once.
  peer_gone_ = true;
  hello_timer_.cancel();
  if (auto t = wait_timer_.lock()) t->cancel();
}

void Session::arm_hello_timer() {
  hello_timer_.expires_after(std::chrono::milliseconds(server_.config().hello_timeout_ms));
  std::weak_ptr<Session> weak = weak_from_this();
  hello_timer_.async_wait([weak](error_code ec) {
    if (ec) return;
    auto self = weak.lock();
    if (!self || self->said_hello_) return;
    log::warning("session ", self->id(), " (pid ", self->cred_.pid, ", uid ", self->cred_.uid,
                 ") did not say Hello within ", self->server_.config().hello_timeout_ms,
                 " ms (hello-timeout-ms); closing it");
    self->close();
  });
}

bool Session::refuse_descriptors(const char* when) {
  if (fds_.empty()) return true;
  for (int fd : fds_) server_.closer().close(fd, cred_.uid);
  ++server_.counters().protocol_errors;
  log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid, ") sent ", fds_.size(),
               " descriptor(s) ", when, "; the protocol never asks a client for one. Closing the connection");
  fds_.clear();
  return false;
}

awaitable<std::size_t> Session::read_some(std::byte* p, std::size_t n) {
  for (;;) {
    if (!socket_.is_open()) co_return 0;
    auto r = io::recv_taking_fds(socket_.native_handle(), std::span(p, n), &fds_);
    if (!refuse_descriptors("with a frame")) co_return 0;
    if (!r) {
      log::debug("session ", id(), ": ", r.error().message);
      co_return 0;
    }
    if (r->truncated) {
      ++server_.counters().protocol_errors;
      log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid,
                   ") sent a control message the daemon could not take whole; closing the connection");
      co_return 0;
    }
    if (!r->would_block) co_return r->got;
    error_code ec;
    co_await socket_.async_wait(unix_socket::wait_read, nothrow(ec));
    if (ec) co_return 0;
  }
}

awaitable<bool> Session::fill(std::size_t n) {
  while (rend_ - rbegin_ < n) {
    if (rend_ == rbuf_.size()) {
      // No room after the buffered bytes: move the unread ones to the front,
      // and grow only when the buffer is full of them.
      if (rbegin_ > 0) {
        std::memmove(rbuf_.data(), rbuf_.data() + rbegin_, rend_ - rbegin_);
        rend_ -= rbegin_;
        rbegin_ = 0;
      }
      if (rend_ == rbuf_.size()) rbuf_.resize(std::min(n, std::max(kReadBuffer, 2 * rbuf_.size())));
    }
    const std::size_t got = co_await read_some(rbuf_.data() + rend_, rbuf_.size() - rend_);
    if (got == 0) {
      if (rend_ != rbegin_)
        log::warning("session ", id(), " (pid ", cred_.pid, "): connection ended mid-frame");
      co_return false;
    }
    rend_ += got;
  }
  co_return true;
}

awaitable<bool> Session::read_frame(protocol::FrameHeader& h, std::span<const std::byte>* payload) {
  if (rbegin_ == rend_) {
    rbegin_ = rend_ = 0;
    // Give memory back after an unusually large frame (the previous payload
    // is no longer in use).
    if (rbuf_.size() > kReadBuffer) {
      rbuf_.resize(kReadBuffer);
      rbuf_.shrink_to_fit();
    }
  }
  if (!co_await fill(protocol::kHeaderSize)) co_return false;
  auto hr = protocol::decode_header(
      std::span<const std::byte, protocol::kHeaderSize>(rbuf_.data() + rbegin_, protocol::kHeaderSize));
  if (!hr) {
    ++server_.counters().protocol_errors;
    log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid, "): ", hr.error().message,
                 "; closing the connection");
    co_return false;
  }
  h = *hr;
  if (!said_hello_ && h.length > kMaxPayloadBeforeHello) {
    ++server_.counters().protocol_errors;
    log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid, ") announced a frame of ", h.length,
                 " bytes before saying Hello (the limit is ", kMaxPayloadBeforeHello, "); closing the connection");
    co_return false;
  }
  if (!co_await fill(protocol::kHeaderSize + h.length)) co_return false;
  *payload = std::span<const std::byte>(rbuf_.data() + rbegin_ + protocol::kHeaderSize, h.length);
  rbegin_ += protocol::kHeaderSize + h.length;
  co_return true;
}

awaitable<bool> Session::send(const std::vector<std::byte>& frame, int fd) {
  std::size_t off = 0;
  bool timer_armed = false;
  bool ok = true;
  while (off < frame.size()) {
    std::span<const int> fds;
    if (fd >= 0 && off == 0) fds = std::span<const int>(&fd, 1);
    auto r = io::send_with_fds(socket_.native_handle(), std::span(frame).subspan(off), fds);
    if (!r) {
      log::debug("session ", id(), ": ", r.error().message);
      ok = false;
      break;
    }
    if (!r->would_block) {
      off += r->sent;
      continue;
    }
    // The peer's receive buffer is full. A peer that does not read its
    // replies is dropped after write_timeout_ms: per-connection output stays
    // bounded by one reply. (The timer is armed only here, off the fast path.)
    if (!timer_armed) {
      timer_armed = true;
      write_timer_.expires_after(std::chrono::milliseconds(server_.config().write_timeout_ms));
      std::weak_ptr<Session> weak = weak_from_this();
      write_timer_.async_wait([weak](error_code ec) {
        if (ec) return;
        if (auto self = weak.lock()) {
          log::warning("session ", self->id(), " (pid ", self->cred_.pid, ") did not read its reply within ",
                       self->server_.config().write_timeout_ms, " ms; dropping it");
          self->close();
        }
      });
    }
    error_code ec;
    co_await socket_.async_wait(unix_socket::wait_write, nothrow(ec));
    if (ec || !socket_.is_open()) {
      ok = false;
      break;
    }
  }
  if (timer_armed) write_timer_.cancel();
  co_return ok;
}

void Session::watch_peer(const std::shared_ptr<asio::steady_timer>& timer, std::uint64_t generation) {
  std::weak_ptr<Session> weak = weak_from_this();
  std::weak_ptr<asio::steady_timer> wt = timer;
  socket_.async_wait(unix_socket::wait_read, [weak, wt, generation](error_code ec) {
    if (ec) return;
    auto self = weak.lock();
    if (!self || self->watch_generation_ != generation || !self->socket_.is_open()) return;
    const auto gone = [&] {
      self->peer_gone_ = true;
      if (auto t = wt.lock()) t->cancel();
    };
    // The bytes the peer sends meanwhile are the start of its next request:
    // keep them after the ones buffered (the waiting request's payload is not
    // moved). When they do not fit, stop watching: the wait then ends at its
    // deadline (or when the daemon stops), as any wait of a connection would.
    if (self->rend_ == self->rbuf_.size()) {
      log::debug("session ", self->id(), ": its read buffer is full while its request waits; no longer watching");
      return;
    }
    auto r = io::recv_taking_fds(self->socket_.native_handle(),
                                 std::span(self->rbuf_.data() + self->rend_, self->rbuf_.size() - self->rend_),
                                 &self->fds_);
    if (!self->refuse_descriptors("while its request waited")) return gone();
    if (!r || r->truncated) return gone();
    if (!r->would_block && r->got == 0) return gone();  // hung up
    self->rend_ += r->got;
    self->watch_peer(wt.lock(), generation);
  });
}

}  // namespace tensorshm::daemon
