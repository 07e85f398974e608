// libFuzzer target for everything a peer can put on the control socket.
//
// The input is a byte stream read the way a daemon session reads its socket:
// frames one after another, each through protocol::decode_header and
// protocol::decode. Decoded requests then go through the daemon's own
// validation (validate_name, check_layout) and its registry over a small real
// pool, as one of three connections chosen by the frame's request id (uid 1000,
// uid 1001 in the same group, and root), so that ownership, sharing, limits and
// leases are exercised too. Decoded replies go through what a client checks.
// The harness does not insist on Hello first: that rule is one `if` in the
// session, and skipping it lets the fuzzer reach the handlers sooner.
//
// Oracles, besides ASan and UBSan:
//   * every decoded message re-encodes to a frame that decodes again and
//     re-encodes to the same bytes;
//   * an object's data lies inside its extent, its extent inside its segment;
//   * whoever may get or list an object may also map its segment (the pool's
//     reader class of the segment admits the caller);
//   * when the input ends, the connections' leases and open creates are given
//     back as Session::cleanup does and every name is deleted: then the
//     registry holds nothing and the pool has no byte in use.
//
// Seeds: TSHM_FUZZ_WRITE_SEEDS=<dir> ./tshm_fuzz_frames writes the seed corpus
// (valid frames of every message type and a few conversations) and exits.
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "config.hpp"
#include "log.hpp"
#include "pool.hpp"
#include "registry.hpp"
#include "segment.hpp"
#include "tensorshm/names.hpp"
#include "tensorshm/protocol.hpp"
#include "tensorshm/segment_layout.h"
#include "../common/sample_desc.hpp"

namespace {

using namespace tensorshm;
using namespace tensorshm::daemon;
namespace proto = tensorshm::protocol;

// A finding: print why and abort, so libFuzzer saves the input.
[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "tshm_fuzz_frames: invariant broken: %s\n", what.c_str());
  std::abort();
}
#define FUZZ_CHECK(cond, what) \
  do {                         \
    if (!(cond)) finding(what); \
  } while (0)

// ---- the daemon side: one small pool for the whole run ----------------------

// Its segments are memory files: nothing is left behind however the run
// ends (crash, timeout, -runs).
struct World {
  Config config;
  std::unique_ptr<Pool> pool;
};

World* g_world = nullptr;

World* make_world() {
  auto* w = new World;
  Config& c = w->config;
  c.instance = "fuzz-" + std::to_string(::getpid());
  c.pool_size = 1u << 20;        // four pool segments of 256 KiB
  c.segment_size = 256u << 10;
  c.max_object_size = 240u << 10;  // below a pool segment: no dedicated segments
  c.max_objects = 64;
  c.max_objects_per_uid = 48;
  c.max_bytes_per_uid = 768u << 10;
  c.pretouch_threads = 1;
  log::set_level(LogLevel::error);
  auto pool = Pool::create(c);
  if (!pool) finding("cannot create the fuzzing pool: " + pool.error().message);
  w->pool = std::move(*pool);
  return w;
}

// One connection as Session keeps it.
struct Peer {
  Caller caller;
  std::map<std::uint64_t, std::uint32_t> leases;  // object id -> count
  std::set<std::uint64_t> open;                    // created, not sealed or aborted
  bool closed = false;
};

void check_placement(const Pool& pool, const Object& o) {
  const Segment* seg = pool.segment(o.extent.segment_id);
  FUZZ_CHECK(seg != nullptr, "object " + std::to_string(o.id) + " names a segment that does not exist");
  FUZZ_CHECK(o.extent.offset % pool.page_size() == 0 && o.extent.size % pool.page_size() == 0,
             "extent not page-aligned");
  FUZZ_CHECK(o.extent.offset + o.extent.size <= seg->size(), "extent runs past its segment");
  FUZZ_CHECK(o.data_offset >= o.extent.offset + TSHM_HEADER_BYTES, "data overlaps the extent header");
  FUZZ_CHECK(o.data_offset + o.nbytes <= o.extent.offset + o.extent.size, "data runs past its extent");
}

void check_mappable_by(const Pool& pool, const Object& o, const Caller& c) {
  auto cls = pool.segment_class(o.extent.segment_id);
  FUZZ_CHECK(cls.has_value(), "a live object's segment has no reader class");
  FUZZ_CHECK(cls->readable_by(c.uid, c.gid),
             "uid " + std::to_string(c.uid) + " may read object '" + o.name + "' but not map its segment");
}

void release_all(Registry& reg, Peer& p) {
  for (auto [id, count] : p.leases)
    for (std::uint32_t i = 0; i < count; ++i)
      FUZZ_CHECK(reg.unlease(p.caller, id).has_value(), "a held lease was not leased");
  p.leases.clear();
  for (auto id : p.open) FUZZ_CHECK(reg.abort(p.caller, id).has_value(), "an open create could not be aborted");
  p.open.clear();
  p.closed = true;
}

CreateParams params_of(const std::string& name, const std::unique_ptr<wire::DType>& dtype,
                       const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides,
                       wire::Share share) {
  CreateParams p;
  p.name = name;
  if (dtype) p.dtype = proto::from_wire(*dtype);
  p.shape = shape;
  p.strides = strides;
  p.share = static_cast<Share>(share);
  return p;
}

// What the daemon's handlers do with a request, minus the socket.
void serve(World& w, Registry& reg, Peer& p, proto::Message& msg) {
  const Caller& c = p.caller;
  auto& b = msg.body;
  switch (b.type) {
    case wire::Body::Hello:
      (void)printable_name(b.AsHello()->client_name);
      break;
    case wire::Body::CreateObject: {
      auto& m = *b.AsCreateObject();
      auto r = reg.create(c, params_of(m.name, m.dtype, m.shape, m.strides, m.share));
      if (!r) break;
      check_placement(*w.pool, **r);
      check_mappable_by(*w.pool, **r, c);
      p.open.insert((*r)->id);
      break;
    }
    case wire::Body::CudaPut: {  // validated like a create; the copy needs a GPU
      auto& m = *b.AsCudaPut();
      if (m.mem_handle.size() != 64 || m.event_handle.size() != 64) break;
      auto r = reg.create(c, params_of(m.name, m.dtype, m.shape, m.strides, m.share));
      if (!r) break;
      check_placement(*w.pool, **r);
      FUZZ_CHECK(reg.abort(c, (*r)->id).has_value(), "abort of a fresh create failed");
      break;
    }
    case wire::Body::Seal: {
      const auto id = b.AsSeal()->object_id;
      auto r = reg.seal(c, id);
      if (!r) {
        // A seal refused because another uid took the name discards the
        // create; the session then forgets it (Session::on_seal).
        if (p.open.count(id) != 0 && reg.get(id) == nullptr) p.open.erase(id);
        break;
      }
      FUZZ_CHECK(p.open.erase(id) == 1, "sealed an object this connection had not opened");
      FUZZ_CHECK((*r)->sealed && (*r)->latest && (*r)->version > 0, "a sealed object is not the latest");
      break;
    }
    case wire::Body::Abort: {
      const auto id = b.AsAbort()->object_id;
      if (reg.abort(c, id)) FUZZ_CHECK(p.open.erase(id) == 1, "aborted an object this connection had not opened");
      break;
    }
    case wire::Body::Get: {
      auto& m = *b.AsGet();
      if (!validate_name(m.name)) break;
      auto r = reg.find(c, m.name, m.newer_than);
      if (!r) break;
      FUZZ_CHECK((*r)->sealed && (*r)->version > m.newer_than, "get returned an unsealed or too old version");
      check_mappable_by(*w.pool, **r, c);
      if (!reg.lease(c, **r)) break;  // over the uid's limits: refused, nothing held
      ++p.leases[(*r)->id];
      break;
    }
    case wire::Body::Release: {
      const auto id = b.AsRelease()->object_id;
      auto it = p.leases.find(id);
      if (it == p.leases.end()) break;  // the session refuses it before the registry sees it
      if (--it->second == 0) p.leases.erase(it);
      FUZZ_CHECK(reg.unlease(c, id).has_value(), "a lease the connection held was unknown to the registry");
      break;
    }
    case wire::Body::Delete:
      (void)reg.remove(c, b.AsDelete()->name);
      break;
    case wire::Body::List: {
      auto& m = *b.AsList();
      if (m.prefix.size() > kMaxNameBytes || m.start_after.size() > kMaxNameBytes) break;
      const std::uint32_t limit = m.limit == 0 ? proto::kMaxListLimit : std::min(m.limit, proto::kMaxListLimit);
      bool truncated = false;
      std::string previous = m.start_after;
      for (const Object* o : reg.list(c, m.prefix, m.start_after, limit, &truncated)) {
        check_mappable_by(*w.pool, *o, c);
        FUZZ_CHECK(o->name > previous || (previous.empty() && o->name.empty()), "list went backwards or repeated a name");
        previous = o->name;
      }
      break;
    }
    case wire::Body::Stat:
      (void)reg.find(c, b.AsStat()->name, 0);
      break;
    case wire::Body::MapSegment: {
      const auto id = b.AsMapSegment()->segment_id;
      if (w.pool->segment(id) != nullptr) (void)w.pool->segment_class(id);
      break;
    }
    default:
      break;  // replies are the client's business: see check_reply
  }
}

// What a client checks in a reply before it uses it.
void check_desc(const wire::ObjectDescT* d) {
  if (d == nullptr) return;
  (void)printable_name(d->name);
  if (d->dtype) (void)proto::check_layout(proto::from_wire(*d->dtype), d->shape, d->strides, ~0ull);
}

void check_reply(const proto::Message& msg) {
  const auto& b = msg.body;
  if (const auto* r = b.AsHelloReply())
    for (const auto& s : r->segments) FUZZ_CHECK(s != nullptr, "null segment in a verified HelloReply");
  if (const auto* r = b.AsCreateObjectReply()) check_desc(r->object.get());
  if (const auto* r = b.AsSealReply()) check_desc(r->object.get());
  if (const auto* r = b.AsGetReply()) check_desc(r->object.get());
  if (const auto* r = b.AsStatReply()) check_desc(r->object.get());
  if (const auto* r = b.AsCudaPutReply()) check_desc(r->object.get());
  if (const auto* r = b.AsListReply())
    for (const auto& o : r->objects) check_desc(o.get());
  if (const auto* r = b.AsErrorReply()) (void)errc_name(static_cast<Errc>(r->code));
}

// Decoding is the inverse of encoding on whatever decode accepted.
void check_reencodes(const proto::Message& msg, std::uint32_t request_id) {
  const auto frame = proto::encode(msg.body, request_id);
  auto h = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(frame.data(), proto::kHeaderSize));
  FUZZ_CHECK(h.has_value(), "a re-encoded frame has a bad header");
  auto again = proto::decode(*h, std::span(frame).subspan(proto::kHeaderSize));
  FUZZ_CHECK(again.has_value(), "a re-encoded frame does not decode: " + (again ? "" : again.error().message));
  FUZZ_CHECK(proto::encode((*again)->body, request_id) == frame, "re-encoding is not stable");
}

void run_one(World& w, std::span<const std::byte> in) {
  Registry reg(*w.pool, w.config);
  std::array<Peer, 3> peers;
  peers[0].caller = Caller{1, 1000, 1000};
  peers[1].caller = Caller{2, 1001, 1000};
  peers[2].caller = Caller{3, 0, 0};

  std::size_t off = 0;
  while (in.size() - off >= proto::kHeaderSize) {
    auto h = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(in.data() + off, proto::kHeaderSize));
    if (!h) break;  // the session closes the connection: nothing more is read
    if (h->length > in.size() - off - proto::kHeaderSize) break;  // the peer left mid-frame
    const auto payload = in.subspan(off + proto::kHeaderSize, h->length);
    off += proto::kHeaderSize + h->length;
    Peer& p = peers[h->request_id % peers.size()];
    if (p.closed) continue;
    if (h->version != proto::kVersion) {
      const auto refusal = proto::encode_version_mismatch(h->version, h->request_id);
      FUZZ_CHECK(refusal.size() > proto::kHeaderSize, "empty version-mismatch frame");
      release_all(reg, p);
      continue;
    }
    auto msg = proto::decode(*h, payload);
    if (!msg) {
      FUZZ_CHECK(msg.error().code == Errc::protocol_error, "decode failed with a code other than protocol_error");
      release_all(reg, p);  // a malformed frame ends the connection
      continue;
    }
    FUZZ_CHECK(static_cast<std::uint16_t>((*msg)->body.type) == h->type, "decoded body type differs from the header");
    (void)proto::type_name(h->type);
    check_reencodes(**msg, h->request_id);
    check_reply(**msg);
    serve(w, reg, p, **msg);
  }

  // Every connection ends: its leases and open creates go (Session::cleanup).
  for (Peer& p : peers)
    if (!p.closed) release_all(reg, p);
  // Then every name is deleted; nothing may remain.
  const Caller root{4, 0, 0};
  bool truncated = false;
  std::vector<std::string> names;
  for (const Object* o : reg.list(root, "", "", 0, &truncated)) names.push_back(o->name);
  for (const auto& n : names) FUZZ_CHECK(reg.remove(root, n).has_value(), "root could not delete '" + n + "'");
  FUZZ_CHECK(reg.versions() == 0 && reg.open_creates() == 0 && reg.leases() == 0 && reg.names() == 0,
             "the registry still holds objects after every connection ended and every name was deleted");
  FUZZ_CHECK(w.pool->pool_used_bytes() == 0, "pool bytes leaked: " + std::to_string(w.pool->pool_used_bytes()));
  FUZZ_CHECK(w.pool->dedicated_bytes() == 0, "dedicated segments leaked");
  for (const Segment* s : w.pool->pool_segments())
    FUZZ_CHECK(!w.pool->segment_class(s->id()).has_value(), "an empty pool segment kept its reader class");
  FUZZ_CHECK(w.pool->pool_segments().size() == 4, "the pool lost or gained segments");
}

// ---- seeds ---------------------------------------------------------------------

using tshm_test::sample_desc;

wire::CreateObjectT sample_create(const std::string& name, wire::Share share = wire::Share::Owner) {
  wire::CreateObjectT m;
  m.name = name;
  m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kUInt8));
  m.shape = {16, 16};
  m.share = share;
  return m;
}

template <class T>
std::vector<std::byte> frame(T&& body, std::uint32_t request_id) {
  return proto::encode(std::forward<T>(body), request_id);
}

// A reply whose one field is an ObjectDesc.
template <class Reply>
std::vector<std::byte> reply_with_desc() {
  Reply m;
  m.object = sample_desc();
  return frame(std::move(m), 3);
}

void append(std::vector<std::byte>& out, const std::vector<std::byte>& f) { out.insert(out.end(), f.begin(), f.end()); }

int write_seeds(const std::string& dir) {
  ::mkdir(dir.c_str(), 0755);
  int written = 0;
  auto save = [&](const std::string& name, const std::vector<std::byte>& bytes) {
    std::ofstream f(dir + "/" + name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    ++written;
  };
  // Request ids: id % 3 picks the connection (0: uid 1000, 1: uid 1001, 2: root).
  {
    wire::HelloT m;
    m.protocol_version = proto::kVersion;
    m.client_name = "seed";
    m.pid = 42;
    save("req-hello", frame(std::move(m), 3));
  }
  {
    wire::HelloReplyT m;
    m.protocol_version = proto::kVersion;
    m.daemon_version = "0.1.0";
    m.instance = "default";
    m.page_size = 4096;
    m.max_frame = proto::kMaxPayload;
    m.features = proto::kFeatures;
    auto s = std::make_unique<wire::SegmentInfoT>();
    s->id = 1;
    s->name = "tensorshm.default.p1";
    s->size = 256u << 20;
    m.segments.push_back(std::move(s));
    save("rep-hello", frame(std::move(m), 3));
  }
  save("req-create", frame(sample_create("camera/0"), 3));
  {
    wire::PutBytesT m;
    m.name = "small/0";
    m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kFloat32));
    m.shape = {2, 2};
    m.data.assign(16, 0x3f);
    save("req-put-bytes", frame(std::move(m), 3));
  }
  {
    auto m = sample_create("strided");
    m.strides = {1, 16};
    m.timeout_ms = 10;
    save("req-create-strided", frame(std::move(m), 3));
  }
  {
    // A 0-d tensor: its empty shape need not be 8-aligned by the builder.
    auto m = sample_create("scalar");
    m.shape.clear();
    save("req-create-0d", frame(std::move(m), 3));
    wire::GetReplyT r;
    r.object = sample_desc();
    r.object->shape.clear();
    r.object->strides.clear();
    save("rep-get-0d", frame(std::move(r), 3));
  }
  save("rep-create", reply_with_desc<wire::CreateObjectReplyT>());
  save("req-seal", frame(wire::SealT{.object_id = 1}, 3));
  save("rep-seal", reply_with_desc<wire::SealReplyT>());
  save("req-abort", frame(wire::AbortT{.object_id = 1}, 3));
  {
    wire::GetT m;
    m.name = "camera/0";
    m.newer_than = 2;
    m.timeout_ms = 100;
    save("req-get", frame(std::move(m), 3));
  }
  save("rep-get", reply_with_desc<wire::GetReplyT>());
  save("req-release", frame(wire::ReleaseT{.object_id = 1}, 3));
  {
    wire::DeleteT m;
    m.name = "camera/0";
    save("req-delete", frame(std::move(m), 3));
  }
  {
    wire::ListT m;
    m.prefix = "camera/";
    m.limit = 10;
    save("req-list", frame(std::move(m), 3));
  }
  {
    wire::ListReplyT m;
    m.objects.push_back(sample_desc());
    m.objects.push_back(sample_desc());
    m.truncated = true;
    save("rep-list", frame(std::move(m), 3));
  }
  {
    wire::StatT m;
    m.name = "camera/0";
    save("req-stat", frame(std::move(m), 3));
  }
  save("rep-stat", reply_with_desc<wire::StatReplyT>());
  save("req-stats", frame(wire::StatsT{}, 3));
  {
    wire::StatsReplyT m;
    m.pool_bytes = 1u << 30;
    m.pool_used_bytes = 4096;
    m.objects = 1;
    m.versions = 1;
    m.clients = 2;
    m.uptime_s = 1.5;
    save("rep-stats", frame(std::move(m), 3));
  }
  save("req-map-segment", frame(wire::MapSegmentT{.segment_id = 1, .writable = false}, 3));
  {
    wire::MapSegmentReplyT m;
    m.segment = std::make_unique<wire::SegmentInfoT>();
    m.segment->id = 1;
    m.segment->name = "tensorshm.default.p1";
    m.segment->size = 1u << 20;
    save("rep-map-segment", frame(std::move(m), 3));
  }
  {
    wire::CudaPutT m;
    m.name = "gpu/0";
    m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kFloat16));
    m.shape = {8, 8};
    m.device_uuid.assign(16, 0xab);
    m.mem_handle.assign(64, 0x11);
    m.event_handle.assign(64, 0x22);
    m.alloc_offset = 256;
    save("req-cuda-put", frame(std::move(m), 3));
  }
  save("rep-cuda-put", reply_with_desc<wire::CudaPutReplyT>());
  {
    wire::CudaForgetT m;
    m.mem_handle.assign(64, 0x11);
    save("req-cuda-forget", frame(std::move(m), 3));
  }
  save("rep-ok", frame(wire::OkT{}, 3));
  {
    wire::ErrorReplyT m;
    m.code = static_cast<std::uint16_t>(Errc::pool_exhausted);
    m.message = "pool exhausted";
    save("rep-error", frame(std::move(m), 3));
  }
  save("rep-version-mismatch", proto::encode_version_mismatch(2, 3));
  {
    // A Hello from a peer of version 2.
    auto f = frame(wire::HelloT{}, 3);
    f[4] = std::byte{2};
    save("req-hello-version-2", f);
  }
  {
    // One owner's whole round: create, seal, get, release, list, stat, delete.
    std::vector<std::byte> s;
    append(s, frame(sample_create("a/b"), 0));
    append(s, frame(wire::SealT{.object_id = 1}, 3));
    wire::GetT g;
    g.name = "a/b";
    append(s, frame(std::move(g), 6));
    append(s, frame(wire::ReleaseT{.object_id = 1, .no_reply = true}, 9));
    wire::ListT l;
    l.prefix = "a/";
    append(s, frame(std::move(l), 12));
    wire::StatT st;
    st.name = "a/b";
    append(s, frame(std::move(st), 15));
    wire::DeleteT d;
    d.name = "a/b";
    append(s, frame(std::move(d), 18));
    save("seq-put-get-delete", s);
  }
  {
    // Two users: 1000 shares with its group, 1001 reads it, fails to delete it,
    // holds a lease across a newer put; root lists; a create is left open.
    std::vector<std::byte> s;
    append(s, frame(sample_create("shared/x", wire::Share::Group), 0));
    append(s, frame(wire::SealT{.object_id = 1}, 3));
    wire::GetT g;
    g.name = "shared/x";
    append(s, frame(std::move(g), 1));
    wire::DeleteT d;
    d.name = "shared/x";
    append(s, frame(wire::DeleteT(d), 4));
    append(s, frame(sample_create("shared/x", wire::Share::Group), 6));
    append(s, frame(wire::SealT{.object_id = 2}, 9));
    append(s, frame(sample_create("private/y"), 12));
    append(s, frame(wire::MapSegmentT{.segment_id = 1, .writable = true}, 7));
    wire::ListT l;
    append(s, frame(std::move(l), 2));
    append(s, frame(std::move(d), 5));
    save("seq-two-users", s);
  }
  {
    // A conversation that stops half-way through a frame.
    std::vector<std::byte> s;
    append(s, frame(sample_create("cut"), 0));
    auto tail = frame(wire::SealT{.object_id = 1}, 3);
    s.insert(s.end(), tail.begin(), tail.begin() + static_cast<std::ptrdiff_t>(tail.size() / 2));
    save("seq-cut-mid-frame", s);
  }
  std::printf("wrote %d seeds to %s\n", written, dir.c_str());
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("TSHM_FUZZ_WRITE_SEEDS")) std::exit(write_seeds(dir));
  g_world = make_world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_one(*g_world, std::span(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
