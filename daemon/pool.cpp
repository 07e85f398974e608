// Pool segments and dedicated segments; extent allocation across them.
#include "pool.hpp"

#include <sys/statvfs.h>
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
  struct statvfs vfs{};
  TSHM_TRY(posix_call("statvfs", config.shm_dir, [&] { return ::statvfs(config.shm_dir.c_str(), &vfs); }));
  const std::uint64_t room = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (total > room)
    return Error{Errc::pool_exhausted,
                 "the pool needs " + std::to_string(total) + " bytes but " + config.shm_dir + " has only " +
                     std::to_string(room) +
                     " bytes free. Enlarge it (docker run --shm-size=..., or mount -o remount,size=... " +
                     config.shm_dir + ") or start with a smaller --pool-size"};
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

Result<Extent> Pool::allocate(std::uint64_t bytes, const ReaderClass& cls) {
  bytes = (bytes + page_ - 1) / page_ * page_;
  if (bytes <= pool_extent_limit()) {
    // Among the segments of this class, and the unused ones, the one whose
    // largest hole fits best (keeps big holes whole); a segment of the class
    // wins a tie against an unused one.
    ExtentAllocator* best = nullptr;
    std::uint32_t best_id = 0;
    bool best_owned = false;
    for (auto& [id, a] : allocators_) {
      auto c = classes_.find(id);
      const bool owned = c != classes_.end();
      if (owned && !(c->second == cls)) continue;
      if (!owned && !exposable(id, cls)) continue;
      const auto lf = a.largest_free();
      if (lf < bytes) continue;
      if (best == nullptr || (owned && !best_owned) ||
          (owned == best_owned && lf < best->largest_free())) {
        best = &a;
        best_id = id;
        best_owned = owned;
      }
    }
    if (best != nullptr)
      if (auto off = best->allocate(bytes)) {
        if (!best_owned) {
          // An empty segment changes hands: whatever the previous class left
          // in it must not reach the new class's readers, who map all of it.
          auto last = last_class_.find(best_id);
          if (last != last_class_.end() && !(last->second == cls)) {
            Segment* seg = segments_.at(best_id).get();
            std::memset(seg->base() + TSHM_HEADER_BYTES, 0, seg->size() - TSHM_HEADER_BYTES);
          }
          last_class_[best_id] = cls;
        }
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

void Pool::note_exposed(std::uint32_t id, std::uint32_t uid, std::uint32_t gid) {
  if (uid != 0 && allocators_.count(id)) exposed_[id].emplace(uid, gid);
}

bool Pool::exposable(std::uint32_t id, const ReaderClass& cls) const {
  auto it = exposed_.find(id);
  if (it == exposed_.end()) return true;
  for (const auto& [uid, gid] : it->second)
    if (!cls.readable_by(uid, gid)) return false;
  return true;
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
    const bool unmappable = !on_segment_removed || on_segment_removed(*s->second);
    dedicated_bytes_ -= s->second->size();
    if (!unmappable) kept_mapped_.push_back(std::move(s->second));  // unmapped with the pool
    segments_.erase(s);  // unmaps and unlinks
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
