// Pool segments and dedicated segments; extent allocation across them.
#include "pool.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "log.hpp"
#include "tensorshm/segment_layout.h"
#include "tensorshm/sys_call.hpp"

namespace tensorshm::daemon {

Result<std::unique_ptr<Pool>> Pool::create(const Config& config, const std::function<bool()>& interrupted) {
  std::unique_ptr<Pool> pool(new Pool(config));
  pool->page_ = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t total = (config.pool_size + pool->page_ - 1) / pool->page_ * pool->page_;
  if (const auto room = memory_available(); room && total > *room)
    return Error{Errc::pool_exhausted,
                 "the pool needs " + std::to_string(total) + " bytes of memory but only " + std::to_string(*room) +
                     " bytes are available to tensorshmd (MemAvailable, and its memory cgroup's limit). Free "
                     "memory, raise the service's memory limit (MemoryMax=), or start with a smaller --pool-size"};
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t left = total; left > 0;) {
    if (interrupted && interrupted())  // the partial pool's destructor unlinks what was made
      return Error{Errc::timeout, "reserving the pool was interrupted after " +
                                      std::to_string(pool->segments_.size()) + " segment(s)"};
    const std::uint64_t size = std::min(left, config.segment_size);
    auto seg = pool->add_segment(size, /*dedicated=*/false);
    if (!seg) return std::move(seg).error();
    left -= size;
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  log::info("pool: ", pool->segments_.size(), " segment(s), ", total, " bytes reserved and pre-touched in ", ms,
            " ms");
  return pool;
}

Pool::~Pool() {
  // Not discarded: clients keep reading the objects they hold after the
  // daemon is gone (their mappings keep the memory files alive).
  for (auto& [id, s] : segments_)
    if (on_segment_removed) on_segment_removed(*s);
}

Result<Segment*> Pool::add_segment(std::uint64_t size, bool dedicated) {
  const std::uint32_t id = next_id_++;
  Segment::Params p;
  p.name = segment_prefix(config_) + (dedicated ? "d" : "p") + std::to_string(id);
  p.id = id;
  p.size = size;
  p.dedicated = dedicated;
  p.instance = config_.instance;
  p.pretouch_threads = config_.pretouch_threads;
  auto seg = Segment::create(p);
  if (!seg) return std::move(seg).error();
  Segment* raw = seg->get();
  segments_.emplace(id, std::move(*seg));
  if (on_segment_added) on_segment_added(*raw);
  if (!dedicated) {
    auto& a = allocators_.emplace(id, ExtentAllocator(TSHM_HEADER_BYTES, size - TSHM_HEADER_BYTES, page_)).first->second;
    pool_bytes_ += a.capacity();
    pool_extent_limit_ = std::max(pool_extent_limit_, a.capacity());
  } else {
    dedicated_bytes_ += size;
  }
  return raw;
}

Result<std::uint32_t> Pool::replace_segment(std::uint32_t id) {
  const auto prefix = [](std::string why) {
    return "a pool segment that served another owner or sharing mode needs a fresh memory file before it serves "
           "this one: " + why;
  };
  if (replacements_blocked_)
    return Error{Errc::pool_exhausted,
                 prefix("the copy engine could not unpin a segment earlier (see the log), so no more are replaced; "
                        "restart tensorshmd")};
  auto old = segments_.find(id);
  Segment& seg = *old->second;
  // The old file's memory goes first (it holds no object), so that the fresh
  // one needs no more memory than the pool already has.
  const bool unpinned = !on_segment_removed || on_segment_removed(seg);
  if (unpinned) seg.discard();
  auto fresh = add_segment(seg.size(), /*dedicated=*/false);
  if (!fresh) {
    // The old segment serves its last class on (its pages come back zeroed).
    if (unpinned && on_segment_added) on_segment_added(seg);
    Error e = std::move(fresh).error();
    e.message = prefix(e.message);
    return e;
  }
  const std::uint32_t new_id = (*fresh)->id();
  // add_segment counted a new pool segment: the old one's capacity goes.
  auto a = allocators_.find(id);
  pool_bytes_ -= a->second.capacity();
  allocators_.erase(a);
  last_class_.erase(id);
  classes_.erase(id);
  std::unique_ptr<Segment> gone = std::move(old->second);
  segments_.erase(old);
  if (!unpinned) {
    // CUDA may still have it registered: mapped until the pool goes. Each
    // further replacement would keep a segment's memory this way: none then.
    log::warning("pool: segment ", gone->name(), " could not be unpinned in time and stays mapped until tensorshmd "
                 "stops; segments are no longer replaced for new owners (their puts fail until a restart)");
    kept_mapped_.push_back(std::move(gone));
    replacements_blocked_ = true;
  }
  ++replaced_;
  return new_id;
}

void Pool::drop_segment(std::unique_ptr<Segment> seg, bool discard) {
  const bool unmappable = !on_segment_removed || on_segment_removed(*seg);
  if (!unmappable) {  // CUDA may still have it registered: unmapped with the pool
    kept_mapped_.push_back(std::move(seg));
    return;
  }
  if (discard) seg->discard();
}

Result<Extent> Pool::allocate(std::uint64_t bytes, const ReaderClass& cls) {
  bytes = (bytes + page_ - 1) / page_ * page_;
  if (bytes <= pool_extent_limit()) {
    // Among the segments of this class, and the unused ones, the one whose
    // largest hole fits best (keeps big holes whole). Rank first: a segment
    // of the class, then an unused one that last served this class or none,
    // then an unused one that needs a fresh file (replace_segment).
    ExtentAllocator* best = nullptr;
    std::uint32_t best_id = 0;
    int best_rank = 3;
    bool best_owned = false;
    for (auto& [id, a] : allocators_) {
      auto c = classes_.find(id);
      const bool owned = c != classes_.end();
      if (owned && !(c->second == cls)) continue;
      const auto lf = a.largest_free();
      if (lf < bytes) continue;
      const auto last = last_class_.find(id);
      const int rank = owned ? 0 : (last == last_class_.end() || last->second == cls) ? 1 : 2;
      if (best == nullptr || rank < best_rank || (rank == best_rank && lf < best->largest_free())) {
        best = &a;
        best_id = id;
        best_rank = rank;
        best_owned = owned;
      }
    }
    if (best != nullptr && !best_owned) {
      // An empty segment changes hands. Whoever was handed its memory file
      // before may still map it, writable (its owner) or not (its readers):
      // the new class gets a fresh file, so that none of them can read what
      // the new class stores or write into it.
      if (auto last = last_class_.find(best_id); last != last_class_.end() && !(last->second == cls)) {
        auto fresh = replace_segment(best_id);
        if (!fresh) return std::move(fresh).error();
        best_id = *fresh;
        best = &allocators_.at(best_id);
      }
      last_class_[best_id] = cls;
    }
    if (best != nullptr)
      if (auto off = best->allocate(bytes)) {
        classes_[best_id] = cls;
        return Extent{best_id, *off, bytes};
      }
    return Error{Errc::pool_exhausted,
                 "pool exhausted: no free extent of " + std::to_string(bytes) + " bytes (" +
                     std::to_string(pool_used_bytes()) + " of " + std::to_string(pool_bytes()) +
                     " bytes in use; a pool segment holds objects of one owner and sharing mode at a time). "
                     "Release or delete objects, wait (timeout), or enlarge --pool-size"};
  }
  if (bytes > config_.max_object_size + TSHM_HEADER_BYTES)
    return Error{Errc::invalid_argument, "object of " + std::to_string(bytes) +
                                             " bytes exceeds --max-object-size (" +
                                             std::to_string(config_.max_object_size) + ")"};
  auto seg = add_segment(bytes + TSHM_HEADER_BYTES, /*dedicated=*/true);
  if (!seg) return std::move(seg).error();
  classes_[(*seg)->id()] = cls;
  return Extent{(*seg)->id(), TSHM_HEADER_BYTES, bytes};
}

std::optional<ReaderClass> Pool::segment_class(std::uint32_t id) const {
  auto it = classes_.find(id);
  if (it == classes_.end()) return std::nullopt;
  return it->second;
}

void Pool::quarantine(const std::byte* p, std::uint64_t bytes) {
  for (const auto& [id, s] : segments_)
    if (p >= s->base() && p < s->base() + s->size()) {
      const auto off = static_cast<std::uint64_t>(p - s->base());
      quarantined_.push_back(Extent{id, off, std::min(bytes, s->size() - off)});
      log::warning("pool: quarantined ", bytes, " bytes of segment ", s->name(), " at offset ", off,
                   " (a GPU copy into it may still land); they are not reused until tensorshmd restarts");
      return;
    }
}

std::uint64_t Pool::quarantined_bytes() const noexcept {
  std::uint64_t n = 0;
  for (const auto& q : quarantined_) n += q.size;
  return n;
}

void Pool::free(const Extent& e) {
  for (const auto& q : quarantined_)
    if (q.segment_id == e.segment_id && q.offset < e.offset + e.size && e.offset < q.offset + q.size)
      return;  // a DMA may still land in it: never handed out again
  if (auto a = allocators_.find(e.segment_id); a != allocators_.end()) {
    a->second.free(e.offset, e.size);
    if (a->second.free_bytes() == a->second.capacity()) classes_.erase(e.segment_id);  // empty: any class may use it
    return;
  }
  classes_.erase(e.segment_id);
  if (auto s = segments_.find(e.segment_id); s != segments_.end()) {
    dedicated_bytes_ -= s->second->size();
    std::unique_ptr<Segment> gone = std::move(s->second);
    segments_.erase(s);
    // Its one object is gone and holds no lease: its memory goes now, even
    // if its owner kept a descriptor.
    drop_segment(std::move(gone), /*discard=*/true);
  }
}

Segment* Pool::segment(std::uint32_t id) const {
  auto it = segments_.find(id);
  return it == segments_.end() ? nullptr : it->second.get();
}

std::byte* Pool::address(const Extent& e) const { return segment(e.segment_id)->base() + e.offset; }

std::vector<const Segment*> Pool::pool_segments() const {
  std::vector<const Segment*> out;
  for (const auto& [id, s] : segments_)
    if (!s->dedicated()) out.push_back(s.get());
  return out;
}


std::uint64_t Pool::pool_used_bytes() const noexcept {
  std::uint64_t b = 0;
  for (const auto& [id, a] : allocators_) b += a.capacity() - a.free_bytes();
  return b;
}

}  // namespace tensorshm::daemon
