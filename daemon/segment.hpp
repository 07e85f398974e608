// One shared-memory segment: an anonymous memory file (memfd) that no other
// process can name, open, replace or delete. It is sealed against resizing
// (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), so that no holder of a writable
// descriptor can truncate it under the daemon's feet (a SIGBUS on the
// daemon's next write), and its mode is 0600, so that a reader of another uid
// cannot reopen its read-only descriptor writable through /proc/self/fd. The
// memory is reserved with fallocate (a host out of memory is an error now,
// never a fault later), mapped and pre-touched by the daemon. Clients receive
// a read-only or read-write descriptor over the control socket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

class Segment {
 public:
  struct Params {
    std::string name;         // label of the memory file (memfd name), for /proc and logs only
    std::uint32_t id = 0;
    std::uint64_t size = 0;   // bytes, multiple of the page size
    bool dedicated = false;
    std::string instance;
    unsigned pretouch_threads = 1;
  };
  /// Creates, seals, reserves, maps and pre-touches the segment and writes
  /// its header. Not enough memory becomes Errc::pool_exhausted naming the
  /// sizes and the fix.
  static Result<std::unique_ptr<Segment>> create(const Params& p);
  /// Unmaps and closes. Whoever else holds the file keeps its memory alive.
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  /// Frees every page of the file now, whoever still maps it: their mappings
  /// then read zeros, and what they write lands in pages of their own that
  /// no one else can reach through this file any more, since the daemon
  /// stops using it. Called on a segment the daemon retires.
  void discard() noexcept;

  std::uint32_t id() const noexcept { return p_.id; }
  const std::string& name() const noexcept { return p_.name; }
  std::uint64_t size() const noexcept { return p_.size; }
  bool dedicated() const noexcept { return p_.dedicated; }
  std::byte* base() const noexcept { return base_; }
  int rw_fd() const noexcept { return rw_fd_; }
  int ro_fd() const noexcept { return ro_fd_; }

 private:
  explicit Segment(Params p) : p_(std::move(p)) {}
  Params p_;
  std::byte* base_ = nullptr;
  int rw_fd_ = -1;
  int ro_fd_ = -1;
};

/// Bytes of memory the daemon may still fill: MemAvailable, and the room left
/// under its memory cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes)
/// when it has one. Empty when neither can be read.
std::optional<std::uint64_t> memory_available();

/// Writes to every page of [p, p+n) from `threads` threads so that all pages
/// exist and are mapped before the first client needs them.
void pretouch(std::byte* p, std::size_t n, unsigned threads);

}  // namespace tensorshm::daemon
