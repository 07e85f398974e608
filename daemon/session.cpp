// One coroutine per connection: route each verified frame to a small named
// handler and reply (reading and writing the socket: session_io.cpp).
#include "session.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "copy_engine.hpp"
#include "log.hpp"
#include "server.hpp"
#include "tensorshm/names.hpp"

namespace tensorshm::daemon {
namespace {

using Reply = Session::Reply;

Reply error_reply(const Error& e) {
  Reply r;
  r.body.Set(protocol::make_error(e));
  return r;
}

template <class T>
Reply reply(T&& body) {
  Reply r;
  r.body.Set(std::forward<T>(body));
  return r;
}

std::string version_string() { return TENSORSHM_VERSION; }

/// Waits longer than this (about 31 years) wait as long as this: every
/// deadline stays representable.
constexpr std::int64_t kLongestWaitMs = std::int64_t{1} << 40;

/// The moment a wait of timeout_ms that starts now ends (a negative timeout
/// is no wait; any timeout, however large, gives a representable time).
std::chrono::steady_clock::time_point deadline_after(std::int64_t timeout_ms) {
  return std::chrono::steady_clock::now() +
         std::chrono::milliseconds(std::clamp<std::int64_t>(timeout_ms, 0, kLongestWaitMs));
}

}  // namespace

std::unique_ptr<wire::ObjectDescT> describe(const Object& o) {
  auto d = std::make_unique<wire::ObjectDescT>();
  d->object_id = o.id;
  d->name = o.name;
  d->version = o.version;
  d->dtype = std::make_unique<wire::DType>(protocol::to_wire(o.dtype));
  d->shape = o.shape;
  d->strides = o.strides;
  d->nbytes = o.nbytes;
  d->segment_id = o.extent.segment_id;
  d->extent_offset = o.extent.offset;
  d->data_offset = o.data_offset;
  d->generation = o.generation;
  d->owner_uid = o.owner_uid;
  d->share = static_cast<wire::Share>(o.share);
  d->sealed = o.sealed;
  d->created_unix_ns = o.created_unix_ns;
  d->leases = o.leases;
  return d;
}

Session::Session(Server& server, unix_socket socket, std::uint64_t id, io::PeerCred cred)
    : server_(server),
      socket_(std::move(socket)),
      caller_{id, cred.uid, cred.gid},
      cred_(cred),
      write_timer_(server.io()),
      hello_timer_(server.io()) {}

Session::~Session() = default;

awaitable<void> Session::run() {
  // Logged at info once the client has said Hello and so its name (on_hello).
  log::debug("connection accepted: session ", id(), " pid ", cred_.pid, " uid ", cred_.uid, " gid ", cred_.gid);
  arm_hello_timer();
  for (;;) {
    protocol::FrameHeader h;
    std::span<const std::byte> payload;
    if (!co_await read_frame(h, &payload)) break;
    if (h.version != protocol::kVersion) {
      log::warning("session ", id(), " (pid ", cred_.pid, ") speaks protocol version ", h.version,
                   "; this daemon speaks ", protocol::kVersion, ". Refusing it.");
      (void)co_await send(protocol::encode_version_mismatch(h.version, h.request_id), -1);
      break;
    }
    if (said_hello_ &&
        (h.type == static_cast<std::uint16_t>(wire::Body::Get) ||
         h.type == static_cast<std::uint16_t>(wire::Body::Release) ||
         h.type == static_cast<std::uint16_t>(wire::Body::PutBytes))) {
      auto view = protocol::verify(h, payload, scratch_);
      if (!view) {
        ++server_.counters().protocol_errors;
        log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid, "): ", view.error().message,
                     "; closing the connection");
        break;
      }
      if (!co_await serve_fast(h, **view)) break;
      continue;
    }
    auto msg = protocol::decode(h, payload);
    if (!msg) {
      ++server_.counters().protocol_errors;
      log::warning("session ", id(), " (pid ", cred_.pid, ", uid ", cred_.uid, "): ", msg.error().message,
                   "; closing the connection");
      break;
    }
    Reply r;
    if (!said_hello_ && (*msg)->body.type != wire::Body::Hello) {
      r = error_reply(Error{Errc::protocol_error, "the first message must be Hello"});
    } else {
      r = co_await dispatch(**msg);
    }
    const bool fatal = r.body.type == wire::Body::ErrorReply && !said_hello_;
    protocol::encode_into(wbuf_, fbb_, r.body, h.request_id);
    if (!co_await send(wbuf_, r.fd)) break;
    if (fatal || peer_gone_) break;
  }
  cleanup();
  co_return;
}

awaitable<Reply> Session::dispatch(protocol::Message& msg) {
  auto& b = msg.body;
  switch (b.type) {
    case wire::Body::Hello: co_return on_hello(*b.AsHello());
    case wire::Body::CreateObject: co_return co_await on_create(*b.AsCreateObject());
    case wire::Body::Seal: co_return on_seal(*b.AsSeal());
    case wire::Body::Abort: co_return on_abort(*b.AsAbort());
    case wire::Body::Delete: co_return on_delete(*b.AsDelete());
    case wire::Body::List: co_return on_list(*b.AsList());
    case wire::Body::Stat: co_return on_stat(*b.AsStat());
    case wire::Body::Stats: co_return on_stats();
    case wire::Body::MapSegment: co_return on_map_segment(*b.AsMapSegment());
    case wire::Body::CudaPut: co_return co_await on_cuda_put(*b.AsCudaPut());
    case wire::Body::CudaForget: co_return on_cuda_forget(*b.AsCudaForget());
    default:
      co_return error_reply(Error{Errc::protocol_error, std::string("unexpected request type ") +
                                                            protocol::type_name(static_cast<std::uint16_t>(b.type))});
  }
}

Reply Session::on_hello(const wire::HelloT& m) {
  said_hello_ = true;
  hello_timer_.cancel();
  // The pid and uid are the kernel's (SO_PEERCRED), the name the client's own;
  // a client in another PID namespace says a pid of its own as well.
  if (!m.client_name.empty()) client_name_ = printable_name(m.client_name);
  log::info("client '", client_name_, "' connected: pid ", cred_.pid, ", uid ", cred_.uid, ", gid ", cred_.gid,
            " (session ", id(),
            m.pid != cred_.pid ? ", pid " + std::to_string(m.pid) + " in its own PID namespace)" : std::string(")"));
  wire::HelloReplyT r;
  r.protocol_version = protocol::kVersion;
  r.daemon_version = version_string();
  r.instance = server_.config().instance;
  r.page_size = static_cast<std::uint32_t>(server_.pool().page_size());
  r.max_frame = protocol::kMaxPayload;
  r.cuda_devices = server_.cuda_devices();
  r.features = protocol::kFeatures;
  for (const Segment* s : server_.pool().pool_segments()) {
    auto si = std::make_unique<wire::SegmentInfoT>();
    si->id = s->id();
    si->name = s->name();
    si->size = s->size();
    si->dedicated = false;
    r.segments.push_back(std::move(si));
  }
  return reply(std::move(r));
}

template <class Ready, class Park>
awaitable<decltype(std::declval<Ready>()())> Session::wait_until(Ready ready, Park park, Errc retry_on,
                                                                 std::int64_t timeout_ms) {
  const auto deadline = deadline_after(timeout_ms);
  auto timer = std::make_shared<asio::steady_timer>(server_.io());
  wait_timer_ = timer;
  bool watching = false;
  const std::uint64_t generation = ++watch_generation_;
  struct StopWatching {
    unix_socket& socket;
    bool& watching;
    std::uint64_t& generation;
    ~StopWatching() {
      ++generation;  // a watch handler already queued does nothing
      error_code ec;
      if (watching && socket.is_open()) socket.cancel(ec);
    }
  } stop_watching{socket_, watching, watch_generation_};
  for (;;) {
    auto r = ready();
    if (r || r.error().code != retry_on || timeout_ms <= 0) co_return r;
    if (peer_gone_ || std::chrono::steady_clock::now() >= deadline) {
      if (peer_gone_) co_return r;
      Error e = std::move(r).error();
      e.code = Errc::timeout;
      e.message += "; gave up after waiting " + std::to_string(std::min(timeout_ms, kLongestWaitMs)) + " ms";
      co_return e;
    }
    if (!watching) {
      watch_peer(timer, generation);
      watching = true;
    }
    timer->expires_at(deadline);
    auto ticket = park(timer.get());
    error_code ec;
    co_await timer->async_wait(nothrow(ec));
  }
}

namespace {

/// What a CreateObject or CudaPut asks to create.
template <class Request>
CreateParams params_of(const Request& m) {
  CreateParams p;
  p.name = m.name;
  if (m.dtype) p.dtype = protocol::from_wire(*m.dtype);
  p.shape = m.shape;
  p.strides = m.strides;
  p.share = static_cast<Share>(m.share);
  return p;
}

}  // namespace

awaitable<Result<Object*>> Session::create_waiting(const CreateParams& p, std::int64_t timeout_ms) {
  auto& reg = server_.registry();
  co_return co_await wait_until([&] { return reg.create(caller_, p); },
                                [&](asio::steady_timer* t) { return server_.waiters().wait_for_space(t); },
                                Errc::pool_exhausted, timeout_ms);
}

awaitable<Reply> Session::on_create(wire::CreateObjectT& m) {
  auto r = co_await create_waiting(params_of(m), m.timeout_ms);
  if (!r) co_return error_reply(r.error());
  open_.insert((*r)->id);
  wire::CreateObjectReplyT out;
  out.object = describe(**r);
  Reply rep = reply(std::move(out));
  if (const Segment* seg = server_.pool().segment((*r)->extent.segment_id); seg && seg->dedicated())
    rep.fd = seg->rw_fd();
  co_return rep;
}

Reply Session::on_seal(const wire::SealT& m) {
  auto r = server_.registry().seal(caller_, m.object_id);
  if (!r) {
    if (server_.registry().get(m.object_id) == nullptr) open_.erase(m.object_id);
    return error_reply(r.error());
  }
  open_.erase(m.object_id);
  ++server_.counters().puts;
  wire::SealReplyT out;
  out.object = describe(**r);
  return reply(std::move(out));
}

awaitable<Reply> Session::on_put_bytes(const wire::PutBytes& m) {
  CreateParams p;
  if (m.name()) p.name = m.name()->str();
  if (m.dtype()) p.dtype = protocol::from_wire(*m.dtype());
  if (m.shape()) p.shape.assign(m.shape()->begin(), m.shape()->end());
  if (m.strides()) p.strides.assign(m.strides()->begin(), m.strides()->end());
  p.share = static_cast<Share>(m.share());
  const std::size_t size = m.data() ? m.data()->size() : 0;
  // Refused before any space is taken or waited for. The registry sizes the
  // object with the same check_layout, so a created object has exactly
  // `size` bytes; a layout that does not check out is left to create(),
  // which says what is wrong with it.
  if (auto span = protocol::check_layout(p.dtype, p.shape, p.strides, std::numeric_limits<std::uint64_t>::max() / 2);
      span && *span != size)
    co_return error_reply(Error{Errc::invalid_argument, "put '" + printable_name(p.name) + "': " +
                                                            std::to_string(size) + " bytes of data for an object of " +
                                                            std::to_string(*span) + " bytes (" + dtype_name(p.dtype) +
                                                            ", " + std::to_string(p.shape.size()) + " dimension(s))"});
  auto& reg = server_.registry();
  auto created = co_await create_waiting(p, m.timeout_ms());
  if (!created) co_return error_reply(created.error());
  Object* o = *created;
  // Nothing below waits, so the object cannot be left open; a failed seal
  // discards it (Registry::seal).
  if (size > 0)
    std::memcpy(server_.pool().segment(o->extent.segment_id)->base() + o->data_offset, m.data()->data(), size);
  auto sealed = reg.seal(caller_, o->id);
  if (!sealed) co_return error_reply(sealed.error());
  ++server_.counters().puts;
  wire::SealReplyT out;
  out.object = describe(**sealed);
  co_return reply(std::move(out));
}

Reply Session::on_abort(const wire::AbortT& m) {
  auto r = server_.registry().abort(caller_, m.object_id);
  if (!r) return error_reply(r.error());
  open_.erase(m.object_id);
  return reply(wire::OkT{});
}

awaitable<Result<Object*>> Session::lease_for_get(const std::string& name, std::uint64_t newer_than,
                                                  std::int64_t timeout_ms) {
  if (auto v = validate_name(name); !v) co_return v.error();
  auto& reg = server_.registry();
  auto r = co_await wait_until([&] { return reg.find(caller_, name, newer_than); },
                               [&](asio::steady_timer* t) { return server_.waiters().wait_for_name(name, t); },
                               Errc::not_found, timeout_ms);
  if (!r) co_return r;
  if (auto leased = reg.lease(caller_, **r); !leased) co_return std::move(leased).error();
  ++leases_[(*r)->id];
  ++server_.counters().gets;
  co_return r;
}

Status Session::release_lease(std::uint64_t object_id) {
  auto it = leases_.find(object_id);
  if (it == leases_.end())
    return Error{Errc::not_open, "release: this connection holds no lease on object " + std::to_string(object_id)};
  if (--it->second == 0) leases_.erase(it);
  return server_.registry().unlease(caller_, object_id);
}

awaitable<bool> Session::serve_fast(const protocol::FrameHeader& h, const wire::Message& msg) {
  if (const auto* rel = msg.body_as_Release()) {
    auto r = release_lease(rel->object_id());
    if (rel->no_reply()) {
      if (!r && ++release_warnings_ <= kReleaseWarnings)
        log::warning("session ", id(), " (pid ", cred_.pid, "): ", r.error().message,
                     release_warnings_ == kReleaseWarnings ? " (further release failures of this connection are "
                                                             "counted, not logged)"
                                                           : "");
      co_return true;
    }
    fbb_.Clear();
    if (r) {
      fbb_.Finish(wire::CreateMessage(fbb_, wire::Body::Ok, wire::CreateOk(fbb_).Union()));
      protocol::frame_into(wbuf_, fbb_, wire::Body::Ok, h.request_id);
    } else {
      protocol::encode_into(wbuf_, fbb_, [&] { wire::BodyUnion u; u.Set(protocol::make_error(r.error())); return u; }(),
                            h.request_id);
    }
    co_return co_await send(wbuf_, -1);
  }
  if (const auto* put = msg.body_as_PutBytes()) {
    Reply r = co_await on_put_bytes(*put);
    protocol::encode_into(wbuf_, fbb_, r.body, h.request_id);
    if (!co_await send(wbuf_, -1)) co_return false;
    co_return !peer_gone_;
  }
  const auto* get = msg.body_as_Get();
  std::string name = get->name() ? get->name()->str() : std::string();
  auto r = co_await lease_for_get(name, get->newer_than(), get->timeout_ms());
  int fd = -1;
  if (!r) {
    wire::BodyUnion u;
    u.Set(protocol::make_error(r.error()));
    protocol::encode_into(wbuf_, fbb_, u, h.request_id);
  } else {
    const Object& o = **r;
    fbb_.Clear();
    const wire::DType dt = protocol::to_wire(o.dtype);
    auto desc = wire::CreateObjectDesc(fbb_, o.id, fbb_.CreateString(o.name), o.version, &dt, fbb_.CreateVector(o.shape),
                                       fbb_.CreateVector(o.strides), o.nbytes, o.extent.segment_id, o.extent.offset,
                                       o.data_offset, o.generation, o.owner_uid, static_cast<wire::Share>(o.share),
                                       o.sealed, o.created_unix_ns, o.leases);
    fbb_.Finish(wire::CreateMessage(fbb_, wire::Body::GetReply, wire::CreateGetReply(fbb_, desc).Union()));
    protocol::frame_into(wbuf_, fbb_, wire::Body::GetReply, h.request_id);
    if (const Segment* seg = server_.pool().segment(o.extent.segment_id); seg && seg->dedicated()) fd = seg->ro_fd();
  }
  if (!co_await send(wbuf_, fd)) co_return false;
  co_return !peer_gone_;
}

Reply Session::on_delete(const wire::DeleteT& m) {
  auto r = server_.registry().remove(caller_, m.name);
  if (!r) return error_reply(r.error());
  return reply(wire::OkT{});
}

Reply Session::on_list(const wire::ListT& m) {
  if (m.prefix.size() > kMaxNameBytes)
    return error_reply(Error{Errc::invalid_name, "list: prefix longer than 255 bytes"});
  if (m.start_after.size() > kMaxNameBytes)
    return error_reply(Error{Errc::invalid_name, "list: start_after longer than 255 bytes"});
  const std::uint32_t limit = m.limit == 0 ? protocol::kMaxListLimit : std::min(m.limit, protocol::kMaxListLimit);
  wire::ListReplyT out;
  bool truncated = false;
  // One page of about kListPageBytes: 30 000 long names would not fit one frame.
  std::size_t bytes = 0;
  for (const Object* o : server_.registry().list(caller_, m.prefix, m.start_after, limit, &truncated)) {
    const std::size_t cost = protocol::kListEntryOverhead + o->name.size() + 16 * o->shape.size();
    if (!out.objects.empty() && bytes + cost > protocol::kListPageBytes) {
      out.more_after = out.objects.back()->name;
      truncated = false;  // the page is full, not the limit reached: the client asks for the next page
      break;
    }
    bytes += cost;
    out.objects.push_back(describe(*o));
  }
  out.truncated = truncated;
  return reply(std::move(out));
}

Reply Session::on_stat(const wire::StatT& m) {
  if (auto v = validate_name(m.name); !v) return error_reply(v.error());
  auto r = server_.registry().find(caller_, m.name, 0);
  if (!r) return error_reply(r.error());
  wire::StatReplyT out;
  out.object = describe(**r);
  return reply(std::move(out));
}

Reply Session::on_stats() {
  auto& pool = server_.pool();
  auto& reg = server_.registry();
  const auto& c = server_.counters();
  wire::StatsReplyT s;
  s.pool_bytes = pool.pool_bytes();
  s.pool_used_bytes = pool.pool_used_bytes();
  s.dedicated_bytes = pool.dedicated_bytes();
  s.segments = static_cast<std::uint32_t>(pool.segment_count());
  s.objects = reg.names();
  s.versions = reg.versions();
  s.open_creates = reg.open_creates();
  s.leases = reg.leases();
  s.clients = server_.clients();
  s.puts = c.puts;
  s.gets = c.gets;
  s.copies = c.copies;
  s.bytes_copied = c.bytes_copied;
  s.quarantined_bytes = pool.quarantined_bytes();
  s.cuda_devices = server_.cuda_devices();
  s.uptime_s = server_.uptime_s();
  return reply(std::move(s));
}

Reply Session::on_map_segment(const wire::MapSegmentT& m) {
  const Segment* s = server_.pool().segment(m.segment_id);
  if (s == nullptr)
    return error_reply(Error{Errc::not_found, "map: no segment " + std::to_string(m.segment_id)});
  // A segment holds objects of one reader class: hand it only to those who
  // may read all of them, and writable only to their owner.
  if (!may_map(server_.pool().segment_class(m.segment_id), m.writable, caller_.uid, caller_.gid))
    return error_reply(Error{Errc::permission_denied, "map: segment " + std::to_string(m.segment_id) +
                                                          " holds objects uid " + std::to_string(caller_.uid) +
                                                          " may not " + (m.writable ? "write" : "read")});
  wire::MapSegmentReplyT out;
  out.segment = std::make_unique<wire::SegmentInfoT>();
  out.segment->id = s->id();
  out.segment->name = s->name();
  out.segment->size = s->size();
  out.segment->dedicated = s->dedicated();
  out.writable = m.writable;
  Reply r = reply(std::move(out));
  // Readers only ever get a read-only descriptor: they cannot map it writable.
  r.fd = m.writable ? s->rw_fd() : s->ro_fd();
  return r;
}

awaitable<Reply> Session::on_cuda_put(wire::CudaPutT& m) {
  CopyEngine* engine = server_.engine();
  if (engine == nullptr || engine->device_count() == 0)
    co_return error_reply(Error{Errc::no_gpu, "put '" + printable_name(m.name) +
                                                  "' from GPU memory: this daemon has no GPU (it found no CUDA "
                                                  "driver or device at start and serves CPU-only)"});
  if (m.mem_handle.size() != 64 || m.event_handle.size() != 64 || (!m.device_uuid.empty() && m.device_uuid.size() != 16))
    co_return error_reply(Error{Errc::invalid_argument, "cuda put: handles must be 64 bytes, the device uuid 16"});
  auto& reg = server_.registry();
  auto created = co_await create_waiting(params_of(m), m.timeout_ms);
  if (!created) co_return error_reply(created.error());
  Object* o = *created;
  const std::uint64_t id = o->id;
  open_.insert(id);
  CopyEngine::Request req;
  req.session = caller_.session;
  req.device = m.device;
  std::copy(m.mem_handle.begin(), m.mem_handle.end(), req.mem_handle.begin());
  std::copy(m.event_handle.begin(), m.event_handle.end(), req.event_handle.begin());
  if (m.device_uuid.size() == 16) std::copy(m.device_uuid.begin(), m.device_uuid.end(), req.device_uuid.begin());
  req.alloc_offset = m.alloc_offset;
  req.dst = server_.pool().segment(o->extent.segment_id)->base() + o->data_offset;
  req.nbytes = o->nbytes;
  req.object_name = o->name;
  // The engine answers on this thread; the coroutine sleeps on a timer that
  // the completion cancels. The extent stays open until the copy is over,
  // even if the producer hangs up meanwhile (the DMA is writing into it).
  auto timer = std::make_shared<asio::steady_timer>(server_.io(), asio::steady_timer::time_point::max());
  auto result = std::make_shared<std::optional<Status>>();
  engine->submit(std::move(req), [timer, result](Status s) {
    *result = std::move(s);
    timer->cancel();
  });
  wait_timer_ = timer;  // close() wakes us when the daemon stops
  while (!result->has_value()) {
    if (server_.stopping()) {
      // The copy may still write into the extent: leave the object open (the
      // engine's bounded shutdown wait comes before the pool goes away).
      open_.erase(id);
      co_return error_reply(Error{Errc::system_error, "put '" + printable_name(m.name) +
                                                          "': tensorshmd is stopping; the copy was not confirmed"});
    }
    error_code ec;
    co_await timer->async_wait(nothrow(ec));
  }
  const Status& st = **result;
  if (!st) {
    (void)reg.abort(caller_, id);
    open_.erase(id);
    co_return error_reply(st.error());
  }
  ++server_.counters().copies;
  server_.counters().bytes_copied += o->nbytes;
  auto sealed = reg.seal(caller_, id);
  open_.erase(id);
  if (!sealed) co_return error_reply(sealed.error());
  ++server_.counters().puts;
  wire::CudaPutReplyT out;
  out.object = describe(**sealed);
  co_return reply(std::move(out));
}

Reply Session::on_cuda_forget(const wire::CudaForgetT& m) {
  if (m.mem_handle.size() != 64)
    return error_reply(Error{Errc::invalid_argument, "cuda forget: the handle must be 64 bytes"});
  if (CopyEngine* e = server_.engine()) {
    std::array<std::uint8_t, 64> h{};
    std::copy(m.mem_handle.begin(), m.mem_handle.end(), h.begin());
    e->forget_handle(caller_.session, h);
  }
  return reply(wire::OkT{});
}

void Session::cleanup() {
  auto& reg = server_.registry();
  std::size_t leases = 0;
  for (auto [id, count] : leases_)
    for (std::uint32_t i = 0; i < count; ++i) {
      (void)reg.unlease(caller_, id);
      ++leases;
    }
  leases_.clear();
  const std::size_t opened = open_.size();
  for (auto id : open_) (void)reg.abort(caller_, id);
  open_.clear();
  if (CopyEngine* e = server_.engine()) e->session_closed(caller_.session);
  log::info("client '", client_name_, "' disconnected: pid ", cred_.pid, ", uid ", cred_.uid, " (session ", id(),
            "; released ", leases, " lease(s), aborted ", opened, " open create(s))");
  if (release_warnings_ > kReleaseWarnings)
    log::warning("session ", id(), " (pid ", cred_.pid, "): ", release_warnings_ - kReleaseWarnings,
                 " more one-way releases of objects it held no lease on were not logged");
  close();
  server_.forget(id(), cred_.uid);
}

}  // namespace tensorshm::daemon
