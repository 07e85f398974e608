#include "connection.hpp"

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "fork_generation.hpp"
#include "tensorshm/io.hpp"
#include "tensorshm/paths.hpp"
#include "tensorshm/segment_layout.h"
#include "tensorshm/sys_call.hpp"
#include "unreachable.hpp"

namespace tensorshm::detail {

Mapping::~Mapping() {
  if (addr != nullptr) ::munmap(addr, size);
}

ObjectInfo to_info(const wire::ObjectDescT& d) {
  ObjectInfo i;
  i.name = d.name;
  i.version = d.version;
  if (d.dtype) i.dtype = protocol::from_wire(*d.dtype);
  i.shape = d.shape;
  i.strides = d.strides;
  i.nbytes = d.nbytes;
  i.object_id = d.object_id;
  i.owner_uid = d.owner_uid;
  i.share = static_cast<Share>(d.share);
  i.sealed = d.sealed;
  i.created_unix_ns = d.created_unix_ns;
  i.leases = d.leases;
  i.segment_id = d.segment_id;
  return i;
}

ObjectInfo to_info(const wire::ObjectDesc& d) {
  ObjectInfo i;
  if (d.name()) i.name.assign(d.name()->data(), d.name()->size());
  i.version = d.version();
  if (d.dtype()) i.dtype = protocol::from_wire(*d.dtype());
  if (d.shape()) i.shape.assign(d.shape()->begin(), d.shape()->end());
  if (d.strides()) i.strides.assign(d.strides()->begin(), d.strides()->end());
  i.nbytes = d.nbytes();
  i.object_id = d.object_id();
  i.owner_uid = d.owner_uid();
  i.share = static_cast<Share>(d.share());
  i.sealed = d.sealed();
  i.created_unix_ns = d.created_unix_ns();
  i.leases = d.leases();
  i.segment_id = d.segment_id();
  return i;
}

Result<std::shared_ptr<Connection>> Connection::open(Client::Options options) {
  if (options.socket_path.empty()) {
    auto choice = default_client_socket();
    if (choice.path.empty())
      return Error{Errc::permission_denied,
                   "no socket of tensorshmd this client can trust: " + choice.passed_over +
                       ", so another user could listen there. Have that directory removed (by its owner or root; "
                       "a tensorshmd started by you makes it again, mode 0700), or set XDG_RUNTIME_DIR or "
                       "TENSORSHM_SOCKET to a place of your own"};
    options.socket_path = std::move(choice.path);
  }
  std::shared_ptr<Connection> c(new Connection(std::move(options)));
  auto lk = c->lock();
  TSHM_TRY(c->connect_locked());
  return c;
}

Connection::~Connection() { disconnect_locked(); }

void Connection::disconnect_locked() noexcept {
  io::close_fd(fd_);
  fd_ = -1;
}

Status Connection::connect_locked() {
  disconnect_locked();
  const std::string& path = options_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return Error{Errc::invalid_argument, "socket path '" + path + "' is longer than " +
                                             std::to_string(sizeof addr.sun_path - 1) + " bytes"};
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto fd = posix_call("socket", path, [] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); });
  if (!fd) return std::move(fd).error();
  fd_ = *fd;
  auto rc = posix_call("connect", path,
                       [&] { return ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr); });
  if (!rc) {
    disconnect_locked();
    broken_ = true;
    return unreachable_error(path, rc.error().sys_errno, rc.error().message);
  }
  if (auto trusted = check_peer_locked(); !trusted) {
    disconnect_locked();
    broken_ = true;
    return trusted.error();
  }
  pid_ = ::getpid();
  fork_gen_ = fork_generation();
  broken_ = false;
  ++epoch_;
  pool_maps_.clear();
  dedicated_maps_.clear();

  wire::HelloT hello;
  hello.protocol_version = protocol::kVersion;
  // Shown in the daemon's log only; a frame before Hello holds at most 4 KiB.
  hello.client_name = options_.client_name.substr(0, 256);
  hello.pid = static_cast<std::int32_t>(pid_);
  wire::BodyUnion u;
  u.Set(std::move(hello));
  const std::uint32_t id = next_request_++;
  protocol::encode_into(wbuf_, fbb_, u, id);
  if (auto s = send_frame_locked(wbuf_); !s) {
    // A daemon that refuses the connection (over a limit) answers at once
    // and closes, possibly before Hello arrives: read what it said.
    auto said = recv_frame_locked(id, nullptr);
    if (said && (*said)->body_as_ErrorReply() != nullptr) {
      const auto* e = (*said)->body_as_ErrorReply();
      Error why{static_cast<Errc>(e->code()), e->message() ? e->message()->str() : std::string("(no message)")};
      disconnect_locked();
      broken_ = true;
      return why;
    }
    return lost(s.error());
  }
  auto view = recv_frame_locked(id, nullptr);
  if (!view) {
    auto reply = std::move(view);
    if (reply.error().code == Errc::version_mismatch) {
      disconnect_locked();
      broken_ = true;
      return reply.error();
    }
    return lost(reply.error());
  }
  std::unique_ptr<protocol::Message> reply((*view)->UnPack());
  if (const auto* e = reply->body.AsErrorReply()) {
    disconnect_locked();
    broken_ = true;
    return Error{static_cast<Errc>(e->code), e->message};
  }
  const auto* hr = reply->body.AsHelloReply();
  if (hr == nullptr) return lost(Error{Errc::protocol_error, "daemon answered Hello with something else"});
  info_ = DaemonInfo{};
  info_.socket_path = path;
  info_.daemon_version = hr->daemon_version;
  info_.instance = hr->instance;
  info_.protocol_version = hr->protocol_version;
  info_.page_size = hr->page_size;
  info_.cuda_devices = hr->cuda_devices;
  info_.features = hr->features;
  for (const auto& s : hr->segments)
    if (s) info_.segments.push_back(SegmentInfo{s->id, s->name, s->size, s->dedicated});
  return ok_status();
}

Status Connection::check_peer_locked() {
  auto cred = io::peer_credentials(fd_);
  if (!cred) return std::move(cred).error();
  const uid_t me = ::geteuid();
  if (trusted_daemon_uid(cred->uid, me, options_.daemon_uid)) return ok_status();
  return Error{Errc::permission_denied,
               "the process listening on '" + options_.socket_path + "' (pid " + std::to_string(cred->pid) +
                   ") runs as uid " + std::to_string(cred->uid) +
                   ", which this client does not trust with its data: a tensorshmd must run as root, as the "
                   "service user '" + std::string(kServiceUser) + "' or as this process's uid " + std::to_string(me) +
                   ". If that daemon is one you trust, set TENSORSHM_DAEMON_UID=" + std::to_string(cred->uid)};
}

Error Connection::lost(const Error& why) {
  disconnect_locked();
  broken_ = true;
  if (why.code == Errc::daemon_unreachable) return why;
  // A peer that breaks the protocol is reported as such; anything else is a lost daemon.
  const Errc code = why.code == Errc::protocol_error || why.code == Errc::version_mismatch ? why.code
                                                                                          : Errc::daemon_unreachable;
  return Error{code, "connection to tensorshmd at '" + options_.socket_path + "' lost: " + why.message +
                         "; the next call reconnects"};
}

Status Connection::ensure_connected_locked() {
  if (fd_ >= 0 && !broken_ && fork_gen_ == fork_generation()) return ok_status();
  return connect_locked();
}

Status Connection::send_frame_locked(const std::vector<std::byte>& frame, std::size_t* sent) {
  std::size_t off = 0;
  while (off < frame.size()) {
    auto r = io::send_with_fds(fd_, std::span(frame).subspan(off), {});
    if (sent != nullptr) *sent = off;
    if (!r) return std::move(r).error();
    off += r->sent;
  }
  if (sent != nullptr) *sent = off;
  return ok_status();
}

Result<const wire::Message*> Connection::recv_frame_locked(std::uint32_t request_id, std::vector<int>* fds) {
  if (rbuf_.size() < 65536) rbuf_.resize(65536);
  std::size_t have = 0;
  auto fill = [&](std::size_t want) -> Status {
    if (rbuf_.size() < want) rbuf_.resize(want);
    while (have < want) {
      auto n = io::recv_with_fds(fd_, std::span(rbuf_).subspan(have), fds);
      if (!n) return std::move(n).error();
      if (*n == 0) return Error{Errc::daemon_unreachable, "tensorshmd closed the connection"};
      have += *n;
    }
    return ok_status();
  };
  TSHM_TRY(fill(protocol::kHeaderSize));
  auto h = protocol::decode_header(std::span<const std::byte, protocol::kHeaderSize>(rbuf_.data(), protocol::kHeaderSize));
  if (!h) return std::move(h).error();
  TSHM_TRY(fill(protocol::kHeaderSize + h->length));
  auto payload = std::span<const std::byte>(rbuf_).subspan(protocol::kHeaderSize, h->length);
  if (h->type == protocol::kVersionMismatchType) {
    return Error{Errc::version_mismatch,
                 "tensorshmd at '" + options_.socket_path + "' refused this client: " +
                     std::string(reinterpret_cast<const char*>(payload.data()), payload.size())};
  }
  // Request id 0 is the daemon's word on the connection itself: an error
  // (a limit) after which it closes.
  if (h->request_id != request_id && !(h->request_id == 0 && h->type == static_cast<std::uint16_t>(wire::Body::ErrorReply)))
    return Error{Errc::protocol_error, "reply to request " + std::to_string(h->request_id) + " while waiting for " +
                                           std::to_string(request_id)};
  return protocol::verify(*h, payload, scratch_);
}

Result<const wire::Message*> Connection::call_view_locked(const wire::BodyUnion& body, std::vector<int>* fds) {
  return call_framed_locked(body.type, [&](std::uint32_t id) { protocol::encode_into(wbuf_, fbb_, body, id); }, fds);
}

Result<const wire::Message*> Connection::call_built_locked(
    wire::Body type, FunctionRef<void(flatbuffers::FlatBufferBuilder&)> build, std::vector<int>* fds) {
  return call_framed_locked(
      type,
      [&](std::uint32_t id) {
        fbb_.Clear();
        build(fbb_);
        protocol::frame_into(wbuf_, fbb_, type, id);
      },
      fds);
}

Result<const wire::Message*> Connection::call_framed_locked(wire::Body type, FunctionRef<void(std::uint32_t)> frame,
                                                            std::vector<int>* fds) {
  TSHM_TRY(ensure_connected_locked());
  std::uint32_t id = 0;
  for (bool retried = false;; retried = true) {
    id = next_request_++;
    frame(id);
    std::size_t sent = 0;
    auto s = send_frame_locked(wbuf_, &sent);
    if (s) break;
    // The daemon closed this connection while it was idle (it stopped or was
    // restarted) and never saw this request: it goes, once, to a new
    // connection, unless it names something of the old one (an open create,
    // a lease, a segment id), which means nothing to another daemon.
    const bool peer_gone = s.error().sys_errno == EPIPE || s.error().sys_errno == ECONNRESET;
    const bool stateless = type != wire::Body::Seal && type != wire::Body::Abort && type != wire::Body::Release &&
                           type != wire::Body::MapSegment;
    if (retried || sent != 0 || !peer_gone || !stateless) return lost(s.error());
    disconnect_locked();
    broken_ = true;
    TSHM_TRY(connect_locked());
  }
  if (const auto in = std::exchange(reply_in_, std::chrono::microseconds{0}); in.count() > 0 && spin_wait_)
    await_reply_locked(std::chrono::steady_clock::now() + in);
  auto reply = recv_frame_locked(id, fds);
  // Transport failures end the connection; the daemon's error replies do not.
  if (!reply) return lost(reply.error());
  if (const auto* e = (*reply)->body_as_ErrorReply())
    return Error{static_cast<Errc>(e->code()), e->message() ? e->message()->str() : std::string("(no message)")};
  return reply;
}

void Connection::await_reply_locked(std::chrono::steady_clock::time_point expected) noexcept {
  using namespace std::chrono;
  using namespace std::chrono_literals;
  // Sleep until a quarter of the wait (at most 2 ms) before the reply is
  // due, then poll. A thread asleep in recv when the reply lands pays the
  // core's wake-up from a deep idle state: measured on an H200 host as ~250 us
  // per put from 64 MiB up (docs/gpu.md). Unless the last polls were crowded
  // out by other work (PollBackoff): then it sleeps in recv.
  const auto now = steady_clock::now();
  const auto wait = duration_cast<microseconds>(expected - now);
  if (wait.count() <= 0) return;
  const auto lead = std::min<microseconds>(wait / 4, 2ms);
  pollfd p{fd_, POLLIN, 0};
  if (wait - lead > 0us) {
    const auto sleep = wait - lead;
    const timespec ts{static_cast<time_t>(sleep.count() / 1000000), static_cast<long>(sleep.count() % 1000000) * 1000};
    const int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r != 0) return;  // readable, hung up, or an error (EINTR included): recv takes it from here
  }
  const auto t0 = steady_clock::now();
  if (!backoff_.may_poll(t0)) return;  // crowded host: recv sleeps (poll_backoff.hpp)
  const auto give_up = expected + std::max<microseconds>(300us, wait / 4);
  const auto cpu0 = thread_cpu_time();
  while (steady_clock::now() < give_up) {
    if (::poll(&p, 1, 0) != 0) break;  // as above
  }
  const auto t1 = steady_clock::now();
  if (const auto cpu1 = thread_cpu_time(); cpu0 && cpu1)
    backoff_.polled(duration_cast<microseconds>(t1 - t0), *cpu1 - *cpu0, t1);
}

Result<std::unique_ptr<protocol::Message>> Connection::call_locked(const wire::BodyUnion& body,
                                                                   std::vector<int>* fds) {
  auto view = call_view_locked(body, fds);
  if (!view) return std::move(view).error();
  return std::unique_ptr<protocol::Message>((*view)->UnPack());
}

Result<std::shared_ptr<Mapping>> Connection::mapping_locked(std::uint32_t segment_id, bool writable, int fd) {
  std::vector<int> fds;
  if (fd >= 0) fds.push_back(fd);
  struct Closer {
    std::vector<int>& f;
    ~Closer() { for (int d : f) io::close_fd(d); }
  } closer{fds};
  const auto key = std::make_pair(segment_id, writable);
  if (auto it = pool_maps_.find(key); it != pool_maps_.end()) return it->second;
  if (auto it = dedicated_maps_.find(key); it != dedicated_maps_.end())
    if (auto m = it->second.lock()) return m;

  wire::SegmentInfoT seg;
  if (fd >= 0) {
    // A dedicated segment whose descriptor came with the reply.
    struct stat st{};
    if (::fstat(fd, &st) != 0) return posix_error("fstat", "segment " + std::to_string(segment_id), errno);
    seg.id = segment_id;
    seg.name = "segment " + std::to_string(segment_id);
    seg.size = static_cast<std::uint64_t>(st.st_size);
    seg.dedicated = true;
  } else {
    wire::MapSegmentT req;
    req.segment_id = segment_id;
    req.writable = writable;
    wire::BodyUnion u;
    u.Set(std::move(req));
    auto reply = call_locked(u, &fds);
    if (!reply) return std::move(reply).error();
    const auto* r = (*reply)->body.AsMapSegmentReply();
    if (r == nullptr || !r->segment || fds.size() != 1)
      return lost(Error{Errc::protocol_error, "MapSegment reply without exactly one descriptor"});
    seg = *r->segment;
  }
  auto m = std::make_shared<Mapping>();
  m->size = seg.size;
  m->writable = writable;
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  // Pool segments are mapped once and kept: populate the page tables now so
  // that no later access faults. Dedicated segments come and go with one
  // object: map them lazily.
  const int flags = MAP_SHARED | (seg.dedicated ? 0 : MAP_POPULATE);
  void* p = ::mmap(nullptr, seg.size, prot, flags, fds[0], 0);
  if (p == MAP_FAILED) return posix_error("mmap", seg.name, errno);
  m->addr = p;
  TSHM_TRY(protocol::check_segment_header(std::span(static_cast<const std::byte*>(p), seg.size), seg.name));
  if (seg.dedicated) {
    dedicated_maps_[key] = m;
  } else {
    pool_maps_[key] = m;
    trim_pool_maps_locked();
  }
  return m;
}

void Connection::trim_pool_maps_locked() {
  // A pool segment that empties and is given to another owner or sharing mode
  // gets a fresh memory file under a new id: the old id's mapping only shows
  // what it held before. Keep at most two mappings (read-only and writable)
  // per pool segment of the daemon, dropping those nothing uses, oldest ids
  // (replaced first) first.
  const std::size_t keep = 2 * std::max<std::size_t>(info_.segments.size(), 1);
  for (auto it = pool_maps_.begin(); it != pool_maps_.end() && pool_maps_.size() > keep;)
    it = it->second.use_count() == 1 ? pool_maps_.erase(it) : std::next(it);
  for (auto it = dedicated_maps_.begin(); it != dedicated_maps_.end();)  // expired weak references
    it = it->second.expired() ? dedicated_maps_.erase(it) : std::next(it);
}

void Connection::release(std::uint64_t object_id, std::uint64_t epoch) noexcept {
  try {
    auto lk = lock();
    if (epoch != epoch_ || broken_ || fd_ < 0 || fork_gen_ != fork_generation()) return;
    // One-way: the daemon sends no reply, so dropping an object costs one
    // send, not a round trip. Requests stay ordered on the stream.
    wire::ReleaseT r;
    r.object_id = object_id;
    r.no_reply = true;
    wire::BodyUnion u;
    u.Set(std::move(r));
    protocol::encode_into(wbuf_, fbb_, u, next_request_++);
    if (auto s = send_frame_locked(wbuf_); !s) (void)lost(s.error());
  } catch (...) {
  }
}

void Connection::abort(std::uint64_t object_id, std::uint64_t epoch) noexcept {
  try {
    auto lk = lock();
    if (epoch != epoch_ || broken_ || fd_ < 0 || fork_gen_ != fork_generation()) return;
    wire::AbortT r;
    r.object_id = object_id;
    (void)call_locked(std::move(r));
  } catch (...) {
  }
}

}  // namespace tensorshm::detail
