// Names, versions, leases and open creates. See registry.hpp for the rules.
#include "registry.hpp"

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
  Usage& u = usage_[c.uid];
  if (config_.max_objects_per_uid != 0 && u.objects >= config_.max_objects_per_uid)
    return Error{Errc::limit_exceeded, "create '" + printable_name(p.name) + "': uid " + std::to_string(c.uid) +
                                           " holds " + std::to_string(u.objects) +
                                           " objects, its limit (--max-objects-per-uid)"};
  const std::uint64_t page = pool_.page_size();
  const std::uint64_t extent_bytes = TSHM_HEADER_BYTES + (*nbytes + page - 1) / page * page;
  if (config_.max_bytes_per_uid != 0 && u.bytes + extent_bytes > config_.max_bytes_per_uid)
    return Error{Errc::limit_exceeded, "create '" + printable_name(p.name) + "': uid " + std::to_string(c.uid) +
                                           " would hold " + std::to_string(u.bytes + extent_bytes) +
                                           " bytes, over its limit (--max-bytes-per-uid)"};
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
  u.bytes += extent_bytes;
  ++u.objects;
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

Status Registry::unlease(std::uint64_t id) {
  Object* o = get(id);
  if (o == nullptr || o->leases == 0)
    return Error{Errc::not_open, "release: object " + std::to_string(id) + " is not leased"};
  --o->leases;
  --total_leases_;
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
  maybe_free(o);
  return ok_status();
}

std::vector<const Object*> Registry::list(const Caller& c, const std::string& prefix, std::uint32_t limit,
                                          bool* truncated) const {
  std::vector<const Object*> out;
  if (truncated) *truncated = false;
  for (auto it = latest_.lower_bound(prefix); it != latest_.end() && it->first.starts_with(prefix); ++it) {
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
  Usage& u = usage_[o.owner_uid];
  u.bytes -= o.extent.size;
  --u.objects;
  if (u.objects == 0) usage_.erase(o.owner_uid);
  pool_.free(o.extent);
  objects_.erase(o.id);  // o is gone from here on
  if (on_space_freed) on_space_freed();
}

}  // namespace tensorshm::daemon
