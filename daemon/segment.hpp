// One named shared-memory segment (Boost.Interprocess shared_memory_object):
// created exclusively with mode 0600, reserved with posix_fallocate so that a
// full /dev/shm is an error now and never a SIGBUS later, mapped and
// pre-touched by the daemon, and unlinked when destroyed. Clients never open
// it by name: they receive a read-only or read-write descriptor over the
// control socket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

class Segment {
 public:
  struct Params {
    std::string name;         // shm name without the leading '/'
    std::uint32_t id = 0;
    std::uint64_t size = 0;   // bytes, multiple of the page size
    bool dedicated = false;
    std::string instance;
    unsigned pretouch_threads = 1;
  };
  /// Creates, reserves, maps and pre-touches the segment and writes its
  /// header. ENOSPC from posix_fallocate becomes Errc::pool_exhausted naming
  /// the sizes and the fix.
  static Result<std::unique_ptr<Segment>> create(const Params& p);
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

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

/// Unlinks every shared-memory object in `shm_dir` whose name starts with
/// `prefix` (left by a crashed daemon of this instance). Returns how many.
Result<unsigned> sweep_stale_segments(const std::string& shm_dir, const std::string& prefix,
                                      const std::string& keep);

/// Writes to every page of [p, p+n) from `threads` threads so that all pages
/// exist and are mapped before the first client needs them.
void pretouch(std::byte* p, std::size_t n, unsigned threads);

}  // namespace tensorshm::daemon
