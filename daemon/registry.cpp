// Names, versions, leases and open creates. See registry.hpp for the rules.
#include "registry.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "log.hpp"
#include "tensorshm/names.hpp"
#include "tensorshm/protocol.hpp"
#include "tensorshm/segment_layout.h"

namespace tensorshm::daemon {
namespace {

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

Error not_found(const std::string& name) {
  return Error{Errc::not_found, "no object named '" + printable_name(name) + "'"};
}

}  // namespace

Registry::~Registry() {
  // Segments are unlinked by the pool; nothing to hand back here.
}

bool Registry::may_read(const Caller& c, const Object& o) const {
  return ReaderClass{o.owner_uid, static_cast<std::uint8_t>(o.share), o.owner_gid}.readable_by(c.uid, c.gid);
}

bool Registry::counts_for(const Object& o, std::uint32_t uid) noexcept {
  return (uid == o.owner_uid && (!o.sealed || o.latest)) || leases_of(o, uid) > 0;
}

std::uint32_t Registry::leases_of(const Object& o, std::uint32_t uid) noexcept {
  for (const auto& [u, n] : o.leases_by)
    if (u == uid) return n;
  return 0;
}

void Registry::charge(std::uint32_t uid, const Object& o) {
  Usage& u = usage_[uid];
  u.bytes += o.extent.size;
  ++u.objects;
}

void Registry::uncharge(std::uint32_t uid, const Object& o) {
  auto it = usage_.find(uid);
  if (it == usage_.end()) return;
  it->second.bytes -= o.extent.size;
  if (--it->second.objects == 0) usage_.erase(it);
}

Registry::Usage Registry::usage(std::uint32_t uid) const {
  auto it = usage_.find(uid);
  return it == usage_.end() ? Usage{} : it->second;
}

Status Registry::within_limits(std::uint32_t uid, std::uint64_t bytes, const std::string& what) const {
  const Usage u = usage(uid);
  if (config_.max_objects_per_uid != 0 && u.objects >= config_.max_objects_per_uid)
    return Error{Errc::limit_exceeded, what + ": uid " + std::to_string(uid) + " holds " + std::to_string(u.objects) +
                                           " objects (its own, and others' it holds leases on), its limit "
                                           "(--max-objects-per-uid)"};
  if (config_.max_bytes_per_uid != 0 && u.bytes + bytes > config_.max_bytes_per_uid)
    return Error{Errc::limit_exceeded, what + ": uid " + std::to_string(uid) + " would hold " +
                                           std::to_string(u.bytes + bytes) +
                                           " bytes (its own objects, and others' it holds leases on), over its limit "
                                           "(--max-bytes-per-uid)"};
  return ok_status();
}

Status Registry::lease(const Caller& c, Object& o) {
  const bool counted = counts_for(o, c.uid);
  if (!counted)
    TSHM_TRY(within_limits(c.uid, o.extent.size, "get '" + printable_name(o.name) + "'"));
  auto it = std::find_if(o.leases_by.begin(), o.leases_by.end(), [&](const auto& e) { return e.first == c.uid; });
  if (it == o.leases_by.end()) o.leases_by.emplace_back(c.uid, 1);
  else ++it->second;
  ++o.leases;
  ++total_leases_;
  if (!counted) charge(c.uid, o);
  return ok_status();
}

Result<Object*> Registry::create(const Caller& c, CreateParams p) {
  TSHM_TRY(validate_name(p.name));
  if (static_cast<std::uint8_t>(p.share) > static_cast<std::uint8_t>(Share::everyone))
    return Error{Errc::invalid_argument, "create '" + printable_name(p.name) + "': share " +
                                             std::to_string(static_cast<unsigned>(p.share)) +
                                             " is not one of 0 (owner), 1 (group), 2 (everyone)"};
  auto nbytes = protocol::check_layout(p.dtype, p.shape, p.strides, config_.max_object_size);
  if (!nbytes) {
    Error e = std::move(nbytes).error();
    e.message = "create '" + printable_name(p.name) + "': " + e.message;
    return e;
  }
  if (auto it = latest_.find(p.name); it != latest_.end()) {
    const Object& cur = *objects_.at(it->second);
    if (cur.owner_uid != c.uid && c.uid != 0)
      return Error{Errc::permission_denied, "'" + printable_name(p.name) + "' belongs to uid " +
                                                std::to_string(cur.owner_uid) + "; only its owner may put to it"};
  }
  if (objects_.size() >= config_.max_objects)
    return Error{Errc::limit_exceeded, "create '" + printable_name(p.name) + "': the daemon holds " +
                                           std::to_string(objects_.size()) + " objects, its limit (--max-objects)"};
  const std::uint64_t page = pool_.page_size();
  const std::uint64_t extent_bytes = TSHM_HEADER_BYTES + (*nbytes + page - 1) / page * page;
  TSHM_TRY(within_limits(c.uid, extent_bytes, "create '" + printable_name(p.name) + "'"));
  ReaderClass cls{c.uid, static_cast<std::uint8_t>(p.share), p.share == Share::group ? c.gid : 0u};
  auto extent = pool_.allocate(extent_bytes, cls);
  if (!extent) {
    Error e = std::move(extent).error();
    e.message = "create '" + printable_name(p.name) + "': " + e.message;
    return e;
  }
  auto o = std::make_unique<Object>();
  o->id = next_id_++;
  o->name = std::move(p.name);
  o->dtype = p.dtype;
  o->shape = std::move(p.shape);
  o->strides = p.strides.empty() ? protocol::c_strides(o->shape) : std::move(p.strides);
  o->nbytes = *nbytes;
  o->extent = *extent;
  o->data_offset = extent->offset + TSHM_HEADER_BYTES;
  o->generation = next_generation_++;
  o->owner_uid = c.uid;
  o->owner_gid = c.gid;
  o->share = p.share;
  o->creator_session = c.session;
  o->created_unix_ns = now_ns();
  charge(c.uid, *o);
  write_header(*o);
  ++open_;
  Object* raw = o.get();
  objects_.emplace(raw->id, std::move(o));
  return raw;
}

void Registry::write_header(const Object& o) {
  auto* h = reinterpret_cast<TshmExtentHeader*>(pool_.address(o.extent));
  std::memset(h, 0, sizeof *h);
  h->magic = TSHM_EXTENT_MAGIC;
  h->major = TSHM_LAYOUT_MAJOR;
  h->minor = TSHM_LAYOUT_MINOR;
  h->state = o.sealed ? kTshmExtentSealed : kTshmExtentWriting;
  h->generation = o.generation;
  h->object_version = o.version;
  h->byte_offset = TSHM_HEADER_BYTES;
  h->nbytes = o.nbytes;
  h->extent_bytes = o.extent.size;
  h->dtype_code = o.dtype.code;
  h->dtype_bits = o.dtype.bits;
  h->dtype_lanes = o.dtype.lanes;
  h->ndim = static_cast<std::int32_t>(o.shape.size());
  for (std::size_t i = 0; i < o.shape.size(); ++i) {
    h->shape[i] = o.shape[i];
    h->strides[i] = o.strides[i];
  }
  h->owner_uid = o.owner_uid;
  h->name_len = static_cast<std::uint32_t>(o.name.size());
  std::memcpy(h->name, o.name.data(), o.name.size());
}

Result<Object*> Registry::seal(const Caller& c, std::uint64_t id) {
  Object* o = get(id);
  if (o == nullptr || o->sealed || o->creator_session != c.session)
    return Error{Errc::not_open, "seal: object " + std::to_string(id) +
                                     " is not an open create of this connection (already sealed, aborted, or "
                                     "someone else's)"};
  if (auto it = latest_.find(o->name); it != latest_.end()) {
    Object& old = *objects_.at(it->second);
    if (old.owner_uid != c.uid && c.uid != 0) {
      // Someone else took the name meanwhile: the create is discarded, as a
      // failed seal never leaves anything open.
      Error e{Errc::permission_denied, "seal '" + printable_name(o->name) + "': the name now belongs to uid " +
                                           std::to_string(old.owner_uid) + "; the object was discarded"};
      --open_;
      destroy(*o);
      return e;
    }
    old.latest = false;
    latest_.erase(it);
    if (!counts_for(old, old.owner_uid)) uncharge(old.owner_uid, old);
    maybe_free(old);
  }
  o->sealed = true;
  o->latest = true;
  o->creator_session = 0;
  o->version = next_version_++;
  --open_;
  write_header(*o);
  latest_.emplace(o->name, o->id);
  if (on_published) on_published(o->name);
  return o;
}

Status Registry::abort(const Caller& c, std::uint64_t id) {
  Object* o = get(id);
  if (o == nullptr || o->sealed || o->creator_session != c.session)
    return Error{Errc::not_open, "abort: object " + std::to_string(id) +
                                     " is not an open create of this connection"};
  --open_;
  destroy(*o);
  return ok_status();
}

Result<Object*> Registry::find(const Caller& c, const std::string& name, std::uint64_t newer_than) {
  auto it = latest_.find(name);
  if (it == latest_.end()) return not_found(name);
  Object* o = objects_.at(it->second).get();
  if (!may_read(c, *o))
    return Error{Errc::permission_denied, "'" + printable_name(name) + "' belongs to uid " +
                                              std::to_string(o->owner_uid) + " and is not shared with uid " +
                                              std::to_string(c.uid)};
  if (o->version <= newer_than)
    return Error{Errc::not_found, "'" + printable_name(name) + "' has no version newer than " +
                                      std::to_string(newer_than) + " (latest is " + std::to_string(o->version) +
                                      ")"};
  return o;
}

Status Registry::unlease(const Caller& c, std::uint64_t id) {
  Object* o = get(id);
  auto it = o == nullptr ? std::vector<std::pair<std::uint32_t, std::uint32_t>>::iterator{}
                         : std::find_if(o->leases_by.begin(), o->leases_by.end(),
                                        [&](const auto& e) { return e.first == c.uid; });
  if (o == nullptr || it == o->leases_by.end())
    return Error{Errc::not_open, "release: object " + std::to_string(id) + " is not leased by uid " +
                                     std::to_string(c.uid)};
  --o->leases;
  --total_leases_;
  if (--it->second == 0) {
    o->leases_by.erase(it);
    if (!counts_for(*o, c.uid)) uncharge(c.uid, *o);
  }
  maybe_free(*o);
  return ok_status();
}

Status Registry::remove(const Caller& c, const std::string& name) {
  TSHM_TRY(validate_name(name));
  auto it = latest_.find(name);
  if (it == latest_.end()) return not_found(name);
  Object& o = *objects_.at(it->second);
  if (o.owner_uid != c.uid && c.uid != 0)
    return Error{Errc::permission_denied, "'" + printable_name(name) + "' belongs to uid " +
                                              std::to_string(o.owner_uid) + "; only its owner may delete it"};
  o.latest = false;
  latest_.erase(it);
  if (!counts_for(o, o.owner_uid)) uncharge(o.owner_uid, o);
  maybe_free(o);
  return ok_status();
}

std::vector<const Object*> Registry::list(const Caller& c, const std::string& prefix, const std::string& start_after,
                                          std::uint32_t limit, bool* truncated) const {
  std::vector<const Object*> out;
  if (truncated) *truncated = false;
  auto it = start_after.empty() || start_after < prefix ? latest_.lower_bound(prefix) : latest_.upper_bound(start_after);
  for (; it != latest_.end() && it->first.starts_with(prefix); ++it) {
    const Object& o = *objects_.at(it->second);
    if (!may_read(c, o)) continue;
    if (limit != 0 && out.size() >= limit) {
      if (truncated) *truncated = true;
      break;
    }
    out.push_back(&o);
  }
  return out;
}

Object* Registry::get(std::uint64_t id) {
  auto it = objects_.find(id);
  return it == objects_.end() ? nullptr : it->second.get();
}

void Registry::maybe_free(Object& o) {
  if (o.sealed && !o.latest && o.leases == 0) destroy(o);
}

void Registry::destroy(Object& o) {
  auto* h = reinterpret_cast<TshmExtentHeader*>(pool_.address(o.extent));
  h->state = kTshmExtentFree;
  // A sealed version goes only once nothing counts it; an open one (aborted,
  // or discarded by a failed seal) still counts for its owner.
  if (!o.sealed) uncharge(o.owner_uid, o);
  pool_.free(o.extent);
  objects_.erase(o.id);  // o is gone from here on
  if (on_space_freed) on_space_freed();
}

}  // namespace tensorshm::daemon
