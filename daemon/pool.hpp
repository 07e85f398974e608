// The pool: pool segments reserved at start-up, carved into page-aligned
// extents, plus dedicated segments made on demand for objects too large for
// a pool segment. Hands out extents; knows nothing of names or leases.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "config.hpp"
#include "extent_allocator.hpp"
#include "segment.hpp"
#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

struct Extent {
  std::uint32_t segment_id = 0;
  std::uint64_t offset = 0;  // bytes from the segment start, page-aligned
  std::uint64_t size = 0;    // bytes, page multiple, header page included
};

class Pool {
 public:
  /// Checks that the shared-memory filesystem has room, then creates every
  /// pool segment (reserved and pre-touched). Start-up errors name the sizes
  /// and the fix.
  static Result<std::unique_ptr<Pool>> create(const Config& config);
  ~Pool();

  /// An extent of at least `bytes`, from a pool segment when it fits one,
  /// else a new dedicated segment. pool_exhausted when no room (the caller
  /// may free and retry).
  Result<Extent> allocate(std::uint64_t bytes);
  void free(const Extent& e);

  Segment* segment(std::uint32_t id) const;
  std::byte* address(const Extent& e) const;
  std::vector<const Segment*> pool_segments() const;
  std::uint64_t page_size() const noexcept { return page_; }
  /// Largest extent a pool segment can hold.
  std::uint64_t pool_extent_limit() const noexcept;

  std::uint64_t pool_bytes() const noexcept;
  std::uint64_t pool_used_bytes() const noexcept;
  std::uint64_t dedicated_bytes() const noexcept { return dedicated_bytes_; }
  std::size_t segment_count() const noexcept { return segments_.size(); }

  /// Hooks for the copy engine (pinning): run after a segment is created and
  /// before one is destroyed (dedicated segments come and go with objects).
  std::function<void(const Segment&)> on_segment_added;
  std::function<void(const Segment&)> on_segment_removed;

 private:
  explicit Pool(const Config& c) : config_(c) {}
  Result<Segment*> add_segment(std::uint64_t size, bool dedicated);

  Config config_;
  std::uint64_t page_ = 4096;
  std::uint32_t next_id_ = 1;
  std::uint64_t dedicated_bytes_ = 0;
  std::map<std::uint32_t, std::unique_ptr<Segment>> segments_;
  std::map<std::uint32_t, ExtentAllocator> allocators_;  // pool segments only
};

}  // namespace tensorshm::daemon
