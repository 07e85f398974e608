// The pool: pool segments reserved at start-up, carved into page-aligned
// extents, plus dedicated segments made on demand for objects too large for
// a pool segment. Hands out extents; knows nothing of names or leases.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "config.hpp"
#include "extent_allocator.hpp"
#include "segment.hpp"
#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

/// Who may map a segment. A pool segment holds only objects of one owner
/// and one sharing mode at a time, so that handing a reader its descriptor
/// never exposes an object the reader may not see, and only the owner ever
/// gets a writable descriptor. A segment that empties and is then given to
/// another class gets a fresh memory file first (Pool::allocate): every
/// descriptor and mapping handed out before, readers' and writers', refers to
/// the old file, which is emptied, so none of them reaches the new class's
/// objects.
struct ReaderClass {
  std::uint32_t owner_uid = 0;
  std::uint8_t share = 0;  // 0 owner only, 1 the group `gid`, 2 everyone
  std::uint32_t gid = 0;   // meaningful when share == 1
  friend bool operator==(const ReaderClass&, const ReaderClass&) = default;
  /// May a peer with these credentials read objects of this class?
  bool readable_by(std::uint32_t uid, std::uint32_t peer_gid) const noexcept {
    return uid == 0 || uid == owner_uid || share == 2 || (share == 1 && peer_gid == gid);
  }
  /// May it get a writable descriptor?
  bool writable_by(std::uint32_t uid) const noexcept { return uid == 0 || uid == owner_uid; }
};

/// May a peer map a segment whose objects are of class `cls` (empty: an
/// unused pool segment, which only root may map)? Read-only: whoever may read
/// the class; writable: its owner, or root.
inline bool may_map(const std::optional<ReaderClass>& cls, bool writable, std::uint32_t uid,
                    std::uint32_t gid) noexcept {
  if (!cls) return uid == 0;
  return writable ? cls->writable_by(uid) : cls->readable_by(uid, gid);
}

struct Extent {
  std::uint32_t segment_id = 0;
  std::uint64_t offset = 0;  // bytes from the segment start, page-aligned
  std::uint64_t size = 0;    // bytes, page multiple, header page included
};

class Pool {
 public:
  /// Checks that the host has the memory, then creates every pool segment
  /// (reserved and pre-touched). Start-up errors name the sizes
  /// and the fix. `interrupted` is asked between segments; when it says yes
  /// the segments made so far are removed and Errc::timeout comes back.
  static Result<std::unique_ptr<Pool>> create(const Config& config,
                                              const std::function<bool()>& interrupted = {});
  ~Pool();

  /// An extent of at least `bytes`, from a pool segment when it fits one,
  /// else a new dedicated segment. pool_exhausted when no room (the caller
  /// may free and retry). An empty pool segment that last served another
  /// class is replaced by a fresh one (a new id) before it serves this one.
  Result<Extent> allocate(std::uint64_t bytes, const ReaderClass& cls);
  void free(const Extent& e);

  Segment* segment(std::uint32_t id) const;
  /// The class of a segment's objects; empty for an unused pool segment.
  std::optional<ReaderClass> segment_class(std::uint32_t id) const;
  /// How many pool segments were replaced by fresh ones for a new class.
  std::uint64_t replaced_segments() const noexcept { return replaced_; }
  std::byte* address(const Extent& e) const;
  std::vector<const Segment*> pool_segments() const;
  std::uint64_t page_size() const noexcept { return page_; }
  /// Largest extent a pool segment can hold.
  std::uint64_t pool_extent_limit() const noexcept { return pool_extent_limit_; }

  std::uint64_t pool_bytes() const noexcept { return pool_bytes_; }
  std::uint64_t pool_used_bytes() const noexcept;
  std::uint64_t dedicated_bytes() const noexcept { return dedicated_bytes_; }
  std::size_t segment_count() const noexcept { return segments_.size(); }

  /// The copy engine gave up waiting for a DMA into [p, p + bytes): the
  /// extent holding it is never freed again (and its dedicated segment never
  /// unmapped) while this process lives, since the copy may still land there.
  void quarantine(const std::byte* p, std::uint64_t bytes);
  std::uint64_t quarantined_bytes() const noexcept;

  /// Hooks for the copy engine (pinning): run after a segment is created and
  /// before one is destroyed (dedicated segments come and go with objects).
  /// on_segment_removed returns false when the segment must not be unmapped
  /// (CUDA may still have it registered): it is then kept mapped until the
  /// pool is destroyed.
  std::function<void(const Segment&)> on_segment_added;
  std::function<bool(const Segment&)> on_segment_removed;

 private:
  explicit Pool(const Config& c) : config_(c) {}
  Result<Segment*> add_segment(std::uint64_t size, bool dedicated);
  /// Gives pool segment `id` (empty) a fresh memory file under a new id and
  /// retires the old file (its pages freed). Returns the new id.
  Result<std::uint32_t> replace_segment(std::uint32_t id);
  /// Unpins (hook), then destroys or keeps mapped a segment leaving the pool.
  void drop_segment(std::unique_ptr<Segment> seg, bool discard);

  Config config_;
  std::uint64_t page_ = 4096;
  std::uint32_t next_id_ = 1;
  std::uint64_t dedicated_bytes_ = 0;
  std::uint64_t pool_bytes_ = 0;         // capacity of the pool segments, fixed at start
  std::uint64_t pool_extent_limit_ = 0;  // the largest of them
  std::map<std::uint32_t, std::unique_ptr<Segment>> segments_;
  std::map<std::uint32_t, ExtentAllocator> allocators_;  // pool segments only
  std::map<std::uint32_t, ReaderClass> classes_;         // segments holding objects
  std::map<std::uint32_t, ReaderClass> last_class_;      // pool segments: the class their memory file served
  std::uint64_t replaced_ = 0;
  bool replacements_blocked_ = false;  // a replaced segment could not be unpinned: no more replacements
  std::vector<Extent> quarantined_;                        // ranges a DMA may still write: never freed
  std::vector<std::unique_ptr<Segment>> kept_mapped_;      // dedicated segments not safe to unmap
};

}  // namespace tensorshm::daemon
