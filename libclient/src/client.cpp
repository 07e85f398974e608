// Client, Object and Buffer: the public C++ API over Connection.
#include "tensorshm/client.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "connection.hpp"
#include "parallel_copy.hpp"
#include "strided_copy.hpp"

namespace tensorshm {
namespace {

[[noreturn]] void raise(const Error& e) { throw Exception(e); }

template <class T>
T unwrap(Result<T>&& r) {
  if (!r) raise(r.error());
  return std::move(r).value();
}

const ObjectInfo kNoInfo{};

/// The daemon checks every layout it accepts (protocol::check_layout); a
/// client checks again what it is told before it builds a view over memory,
/// so that no description, whoever produced it, can make it read outside the
/// object or hand numpy or torch a shape they cannot hold.
void check_described(const ObjectInfo& i, const char* what) {
  auto span = protocol::check_layout(i.dtype, i.shape, i.strides, i.nbytes);
  if (span && i.strides.size() == i.shape.size()) return;
  raise(Error{Errc::protocol_error, std::string(what) + " '" + i.name + "': the daemon described a layout this client "
                                        "refuses (" + (span ? std::string("strides missing") : span.error().message) +
                                        ")"});
}

/// Writes `src` into `dst`, laid out with `dst_strides` (elements; empty: C
/// order), with up to `threads` threads (parallel_copy.hpp): one memcpy of
/// `nbytes` when `src` is dense (`src_dense`: C or Fortran order) in that same
/// layout, else element by element.
void copy_in(void* dst, std::span<const std::int64_t> dst_strides, const HostView& src, bool src_dense,
             std::uint64_t nbytes, unsigned threads) {
  const auto in_c = [&](std::span<const std::int64_t> s) { return s.empty() || detail::is_c_contiguous(src.shape, s); };
  const bool same = src.strides.empty() || dst_strides.empty() ? in_c(src.strides) && in_c(dst_strides)
                                                               : std::ranges::equal(src.strides, dst_strides);
  if (src_dense && same) {
    detail::copy_bytes(dst, src.data, nbytes, threads);
    return;
  }
  const std::vector<std::int64_t> c_order = protocol::c_strides(src.shape);
  const auto or_c = [&](std::span<const std::int64_t> s) { return s.empty() ? std::span(c_order) : s; };
  detail::strided_copy_parallel(dst, or_c(dst_strides), src.data, or_c(src.strides), src.shape,
                                static_cast<std::int64_t>(dtype_itemsize(src.dtype)), threads);
}

}  // namespace

// ---- Object -----------------------------------------------------------------

Object::~Object() = default;

const ObjectInfo& Object::info() const noexcept { return lease_ ? lease_->info : kNoInfo; }

void Object::release() {
  lease_.reset();
  data_ = nullptr;
}

std::shared_ptr<const void> Object::keep_alive() const noexcept { return lease_; }

// ---- Buffer -----------------------------------------------------------------

Buffer::Buffer() = default;
// Out of line: OpenCreate is complete only here (a defaulted move constructor
// in the header would not compile where Buffers are moved, as into a vector).
Buffer::Buffer(Buffer&&) noexcept = default;

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    abort();
    open_ = std::move(o.open_);
    data_ = o.data_;
    o.data_ = nullptr;
  }
  return *this;
}

Buffer::~Buffer() { abort(); }

const ObjectInfo& Buffer::info() const noexcept { return open_ ? open_->info : kNoInfo; }

ObjectInfo Buffer::seal() {
  if (!open_) raise(Error{Errc::not_open, "seal: this buffer was already sealed or aborted"});
  auto& conn = *open_->conn;
  auto lk = conn.lock();
  if (conn.epoch() != open_->epoch)
    raise(Error{Errc::daemon_unreachable, "seal of '" + open_->info.name +
                                              "': the connection to tensorshmd was lost after create; the "
                                              "object is gone, create it again"});
  wire::SealT req;
  req.object_id = open_->info.object_id;
  auto reply = conn.call_locked(std::move(req));
  lk.unlock();
  if (!reply) {
    // A failed seal leaves nothing open on the daemon's side (or the
    // connection died, which aborted it): drop our side too.
    open_.reset();
    data_ = nullptr;
    raise(reply.error());
  }
  ObjectInfo info = detail::to_info(*(*reply)->body.AsSealReply()->object);
  open_.reset();
  data_ = nullptr;
  return info;
}

std::shared_ptr<const void> Buffer::keep_alive() const noexcept {
  if (!open_) return nullptr;
  return open_->map;
}

void Buffer::abort() noexcept {
  if (!open_) return;
  open_->conn->abort(open_->info.object_id, open_->epoch);
  open_.reset();
  data_ = nullptr;
}

std::string_view share_name(Share share) noexcept {
  switch (share) {
    case Share::group: return "group";
    case Share::everyone: return "everyone";
    case Share::owner: break;
  }
  return "owner";
}

// ---- Client -----------------------------------------------------------------

Client::Client(std::shared_ptr<detail::Connection> conn) : conn_(std::move(conn)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

Client Client::connect() { return connect(Options{}); }

Client Client::connect(Options options) { return Client(unwrap(detail::Connection::open(std::move(options)))); }

const DaemonInfo& Client::daemon_info() const { return conn_->info(); }

Buffer Client::create(std::string_view name, DType dtype, std::span<const std::int64_t> shape,
                      const CreateOptions& options) {
  wire::CreateObjectT req;
  req.name = std::string(name);
  req.dtype = std::make_unique<wire::DType>(protocol::to_wire(dtype));
  req.shape.assign(shape.begin(), shape.end());
  req.strides = options.strides;
  req.timeout_ms = options.timeout.count();
  req.share = static_cast<wire::Share>(options.share);
  auto open = std::make_unique<detail::OpenCreate>();
  open->conn = conn_;
  {
    auto lk = conn_->lock();
    wire::BodyUnion u;
    u.Set(std::move(req));
    std::vector<int> fds;
    auto result = conn_->call_locked(u, &fds);
    if (!result) {
      for (int fd : fds) ::close(fd);
      raise(result.error());
    }
    const auto& desc = *(*result)->body.AsCreateObjectReply()->object;
    open->info = detail::to_info(desc);
    if (auto bad = protocol::check_layout(open->info.dtype, open->info.shape, open->info.strides, open->info.nbytes);
        !bad || open->info.strides.size() != open->info.shape.size()) {
      for (int fd : fds) ::close(fd);
      const std::uint64_t epoch = conn_->epoch();
      lk.unlock();
      conn_->abort(open->info.object_id, epoch);
      check_described(open->info, "create");
    }
    open->epoch = conn_->epoch();
    if (fds.size() > 1) {
      for (std::size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
      fds.resize(1);
    }
    auto map = conn_->mapping_locked(desc.segment_id, /*writable=*/true, fds.empty() ? -1 : fds[0]);
    if (!map) {
      lk.unlock();
      conn_->abort(open->info.object_id, open->epoch);
      raise(map.error());
    }
    open->map = std::move(*map);
    if (desc.data_offset + desc.nbytes > open->map->size) {
      lk.unlock();
      conn_->abort(open->info.object_id, open->epoch);
      raise(Error{Errc::protocol_error, "create reply points outside its segment"});
    }
    Buffer b;
    b.data_ = static_cast<std::byte*>(open->map->addr) + desc.data_offset;
    b.open_ = std::move(open);
    return b;
  }
}

ObjectInfo Client::put(std::string_view name, const HostView& src, const CreateOptions& options) {
  if (!src.strides.empty() && src.strides.size() != src.shape.size())
    raise(Error{Errc::invalid_argument, "put '" + std::string(name) + "': the source has " +
                                            std::to_string(src.strides.size()) + " strides for " +
                                            std::to_string(src.shape.size()) + " dimensions"});
  CreateOptions opts = options;
  const bool src_c = src.strides.empty() || detail::is_c_contiguous(src.shape, src.strides);
  const bool src_f = !src_c && detail::is_f_contiguous(src.shape, src.strides);
  if (opts.strides.empty() && src_f) opts.strides = src.strides;
  auto dense = protocol::check_layout(src.dtype, src.shape, {}, protocol::kMaxPutBytes);
  auto lk = conn_->lock();
  bool one_trip = dense && options.strides.empty();
  if (one_trip) {
    if (auto s = conn_->ensure_connected_locked(); !s) raise(s.error());  // info() is then this daemon's
    one_trip = (conn_->info().features & protocol::kFeaturePutBytes) != 0;
  }
  if (one_trip) {
    // Small: the bytes travel in the request, in the object's layout,
    // written once, straight into the request.
    const auto build = [&](flatbuffers::FlatBufferBuilder& fbb) {
      std::uint8_t* bytes = nullptr;
      const auto data = fbb.CreateUninitializedVector(*dense, &bytes);
      copy_in(bytes, opts.strides, src, src_c || src_f, *dense, 1);  // at most kMaxPutBytes
      const auto name_offset = fbb.CreateString(name.data(), name.size());
      const auto shape = fbb.CreateVector(src.shape);
      const auto strides = fbb.CreateVector(opts.strides);
      const wire::DType dtype = protocol::to_wire(src.dtype);
      const auto body = wire::CreatePutBytes(fbb, name_offset, &dtype, shape, strides, options.timeout.count(),
                                             static_cast<wire::Share>(options.share), data);
      fbb.Finish(wire::CreateMessage(fbb, wire::Body::PutBytes, body.Union()));
    };
    auto reply = unwrap(conn_->call_built_locked(wire::Body::PutBytes, build));
    const auto* sealed = reply->body_as_SealReply();
    if (sealed == nullptr || sealed->object() == nullptr)
      raise(Error{Errc::protocol_error, "put answered with something else"});
    return detail::to_info(*sealed->object());
  }
  lk.unlock();
  Buffer b = create(name, src.dtype, src.shape, opts);
  copy_in(b.data(), b.info().strides, src, src_c || src_f, b.nbytes(), conn_->copy_threads());
  return b.seal();
}

Object Client::get(std::string_view name, const GetOptions& options) {
  wire::GetT req;
  req.name = std::string(name);
  req.newer_than = options.newer_than;
  req.timeout_ms = options.timeout.count();
  auto lease = std::make_shared<detail::Lease>();
  auto lk = conn_->lock();
  wire::BodyUnion u;
  u.Set(std::move(req));
  std::vector<int> fds;
  auto result = conn_->call_view_locked(u, &fds);
  if (!result || (*result)->body_as_GetReply() == nullptr || (*result)->body_as_GetReply()->object() == nullptr) {
    for (int fd : fds) ::close(fd);
    raise(result ? Error{Errc::protocol_error, "get answered with something else"} : result.error());
  }
  const auto& desc = *(*result)->body_as_GetReply()->object();
  lease->info = detail::to_info(desc);
  lease->epoch = conn_->epoch();
  lease->conn = conn_;  // from here on, destroying the lease releases it
  if (auto bad = protocol::check_layout(lease->info.dtype, lease->info.shape, lease->info.strides, lease->info.nbytes);
      !bad || lease->info.strides.size() != lease->info.shape.size()) {
    for (int fd : fds) ::close(fd);
    lk.unlock();
    check_described(lease->info, "get");
  }
  if (fds.size() > 1) {
    for (int fd : fds) ::close(fd);
    raise(Error{Errc::protocol_error, "get reply carried more than one descriptor"});
  }
  // desc points into the reply buffer: read what is needed before the next request.
  const std::uint32_t segment_id = desc.segment_id();
  const std::uint64_t data_offset = desc.data_offset(), nbytes = desc.nbytes();
  auto map = conn_->mapping_locked(segment_id, /*writable=*/false, fds.empty() ? -1 : fds[0]);
  lk.unlock();
  if (!map) raise(map.error());
  if (data_offset + nbytes > (*map)->size) raise(Error{Errc::protocol_error, "get reply points outside its segment"});
  lease->map = std::move(*map);
  Object o;
  o.data_ = static_cast<const std::byte*>(lease->map->addr) + data_offset;
  o.lease_ = std::move(lease);
  return o;
}

std::vector<ObjectInfo> Client::list(std::string_view prefix, std::uint32_t limit) {
  // Page by page (a reply holds about protocol::kListPageBytes), each page a
  // round trip of its own so that other threads' calls go in between.
  std::vector<ObjectInfo> out;
  std::string after;
  for (;;) {
    wire::ListT req;
    req.prefix = std::string(prefix);
    req.limit = limit == 0 ? 0 : limit - static_cast<std::uint32_t>(out.size());
    req.start_after = after;
    auto lk = conn_->lock();
    auto reply = unwrap(conn_->call_locked(std::move(req)));
    lk.unlock();
    const auto* page = reply->body.AsListReply();
    if (page == nullptr) raise(Error{Errc::protocol_error, "list answered with something else"});
    for (const auto& d : page->objects)
      if (d) out.push_back(detail::to_info(*d));
    if (page->more_after.empty() || page->more_after <= after || (limit != 0 && out.size() >= limit)) break;
    after = page->more_after;
  }
  return out;
}

ObjectInfo Client::stat(std::string_view name) {
  wire::StatT req;
  req.name = std::string(name);
  auto lk = conn_->lock();
  auto reply = unwrap(conn_->call_locked(std::move(req)));
  return detail::to_info(*reply->body.AsStatReply()->object);
}

void Client::remove(std::string_view name) {
  wire::DeleteT req;
  req.name = std::string(name);
  auto lk = conn_->lock();
  (void)unwrap(conn_->call_locked(std::move(req)));
}

Stats Client::stats() {
  auto lk = conn_->lock();
  auto reply = unwrap(conn_->call_locked(wire::StatsT{}));
  const auto& r = *reply->body.AsStatsReply();
  Stats s;
  s.pool_bytes = r.pool_bytes;
  s.pool_used_bytes = r.pool_used_bytes;
  s.dedicated_bytes = r.dedicated_bytes;
  s.segments = r.segments;
  s.objects = r.objects;
  s.versions = r.versions;
  s.open_creates = r.open_creates;
  s.leases = r.leases;
  s.clients = r.clients;
  s.puts = r.puts;
  s.gets = r.gets;
  s.copies = r.copies;
  s.bytes_copied = r.bytes_copied;
  s.quarantined_bytes = r.quarantined_bytes;
  s.cuda_devices = r.cuda_devices;
  s.uptime_s = r.uptime_s;
  return s;
}

std::chrono::nanoseconds Client::ping() {
  auto t0 = std::chrono::steady_clock::now();
  auto lk = conn_->lock();
  (void)unwrap(conn_->call_locked(wire::StatsT{}));
  return std::chrono::steady_clock::now() - t0;
}

}  // namespace tensorshm
