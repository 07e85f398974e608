// libFuzzer target for what a client can write in shared memory. The owner of
// objects maps their segment writable (a pool segment of its class, or a
// dedicated segment): it can write anything anywhere in it, headers included,
// and punch holes in it. The daemon must never act on those bytes, and a
// reader must never be hurt by them.
//
// The input is a script run twice, on two pools and registries alike: once as
// written, once with its writes and holes left out. Each step either drives
// the registry as the daemon does (create, seal, abort, get = find + lease,
// release, delete; as uid 1000 or 1001, owner-only or shared) or writes the
// script's bytes at an offset of a segment, or punches a hole there.
//
// Oracles, besides ASan and UBSan:
//   * the daemon decides nothing from segment contents: after every step both
//     runs hold the same objects (id, name, version, extent, sealed, leases),
//     the same per-uid usage, the same segments and the same bytes in use;
//   * what the daemon writes into a segment (the extent header at create and
//     seal) is whole afterwards, whatever was written there before;
//   * a reader's check of a segment header (protocol::check_segment_header)
//     never crashes, and passes wherever no one wrote over the header;
//   * when the script ends and every lease, open create and name is given
//     back, both pools are empty.
//
// Segments are memory files: nothing is left behind however a run ends.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
#include "tensorshm/protocol.hpp"
#include "tensorshm/segment_layout.h"

namespace {

using namespace tensorshm;
using namespace tensorshm::daemon;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "tshm_fuzz_shared: invariant broken: %s\n", what.c_str());
  std::abort();
}
#define FUZZ_CHECK(cond, what) \
  do {                         \
    if (!(cond)) finding(what); \
  } while (0)

struct Run {
  Config config;
  std::unique_ptr<Pool> pool;
  std::unique_ptr<Registry> reg;
  std::set<std::uint32_t> scribbled_headers;  // segments whose header page someone wrote over (any input)
};

std::unique_ptr<Pool> make_pool(Config& c, const char* tag) {
  c.instance = std::string("fuzzshared-") + tag + "-" + std::to_string(::getpid());
  c.pool_size = 1u << 20;  // four pool segments of 256 KiB
  c.segment_size = 256u << 10;
  c.max_object_size = 1u << 20;  // dedicated segments up to 1 MiB
  c.max_objects = 32;
  c.max_objects_per_uid = 12;
  c.pretouch_threads = 1;
  auto pool = Pool::create(c);
  if (!pool) finding("cannot create the fuzzing pool: " + pool.error().message);
  return std::move(pool).value();
}

// Two runs live for the whole fuzzing session; each input gets fresh registries.
std::array<Run, 2>* g_runs = nullptr;

const Caller kCallers[] = {{1, 1000, 1000}, {2, 1001, 1000}};

// What the harness remembers of one run (the same in both, or a finding).
struct Book {
  std::vector<std::uint64_t> ids;                          // every object ever created
  std::vector<std::pair<int, std::uint64_t>> open;         // (caller, id) not sealed or aborted
  std::vector<std::pair<int, std::uint64_t>> leases;       // (caller, id), one entry per lease
};

std::string name_of(unsigned n) { return "n/" + std::to_string(n % 6); }

// One registry step. Returns what happened, for the comparison of the runs.
std::string step(Run& r, Book& b, std::uint8_t op, std::uint8_t a, std::uint16_t v) {
  const int who = a & 1;
  const Caller& c = kCallers[who];
  switch (op % 6) {
    case 0: {  // create
      CreateParams p;
      p.name = name_of(a >> 1);
      p.dtype = dtypes::kUInt8;
      p.shape = {static_cast<std::int64_t>(v) * 16};  // up to 1 MiB: pool or dedicated segments
      p.share = static_cast<Share>((a >> 4) % 3);
      auto o = r.reg->create(c, std::move(p));
      if (!o) return "create:" + std::string(errc_name(o.error().code));
      b.ids.push_back((*o)->id);
      b.open.emplace_back(who, (*o)->id);
      const auto* h = reinterpret_cast<const TshmExtentHeader*>(r.pool->address((*o)->extent));
      FUZZ_CHECK(h->magic == TSHM_EXTENT_MAGIC && h->generation == (*o)->generation && h->state == kTshmExtentWriting,
                 "the extent header the daemon wrote at create is not whole");
      return "create:" + std::to_string((*o)->id);
    }
    case 1: {  // seal
      if (b.open.empty()) return "-";
      const auto [owner, id] = b.open[v % b.open.size()];
      b.open.erase(b.open.begin() + static_cast<std::ptrdiff_t>(v % b.open.size()));
      auto s = r.reg->seal(kCallers[owner], id);
      if (!s) return "seal:" + std::string(errc_name(s.error().code));
      const auto* h = reinterpret_cast<const TshmExtentHeader*>(r.pool->address((*s)->extent));
      FUZZ_CHECK(h->magic == TSHM_EXTENT_MAGIC && h->state == kTshmExtentSealed && h->object_version == (*s)->version,
                 "the extent header the daemon wrote at seal is not whole");
      return "seal:" + std::to_string((*s)->version);
    }
    case 2: {  // abort
      if (b.open.empty()) return "-";
      const auto [owner, id] = b.open[v % b.open.size()];
      b.open.erase(b.open.begin() + static_cast<std::ptrdiff_t>(v % b.open.size()));
      return "abort:" + std::string(r.reg->abort(kCallers[owner], id) ? "ok" : "err");
    }
    case 3: {  // get: find + lease
      auto o = r.reg->find(c, name_of(a >> 1), 0);
      if (!o) return "get:" + std::string(errc_name(o.error().code));
      auto l = r.reg->lease(c, **o);
      if (!l) return "get:" + std::string(errc_name(l.error().code));
      b.leases.emplace_back(who, (*o)->id);
      return "get:" + std::to_string((*o)->id);
    }
    case 4: {  // release
      if (b.leases.empty()) return "-";
      const auto [holder, id] = b.leases[v % b.leases.size()];
      b.leases.erase(b.leases.begin() + static_cast<std::ptrdiff_t>(v % b.leases.size()));
      FUZZ_CHECK(r.reg->unlease(kCallers[holder], id).has_value(), "a held lease was unknown to the registry");
      return "release";
    }
    default:  // delete
      return "delete:" + std::string(r.reg->remove(c, name_of(a >> 1)) ? "ok" : "err");
  }
}

// A client's write into a segment of the run (what the owner of its objects
// can do): the pool segments and the dedicated segments of live objects.
void scribble(Run& r, const Book& b, std::uint16_t where, std::span<const std::uint8_t> bytes, bool punch) {
  std::vector<std::uint32_t> ids;
  for (const Segment* s : r.pool->pool_segments()) ids.push_back(s->id());
  for (std::uint64_t id : b.ids)
    if (const Object* o = r.reg->get(id); o != nullptr && r.pool->segment(o->extent.segment_id)->dedicated())
      ids.push_back(o->extent.segment_id);
  Segment* seg = r.pool->segment(ids[where % ids.size()]);
  const std::uint64_t page = r.pool->page_size();
  const std::uint64_t offset = (static_cast<std::uint64_t>(where >> 6) * 97) % seg->size();
  if (punch) {
    const std::uint64_t from = offset / page * page;
    const std::uint64_t len = std::min<std::uint64_t>(page * (1 + bytes.size() % 4), seg->size() - from);
    FUZZ_CHECK(::fallocate(seg->rw_fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(from),
                           static_cast<off_t>(len)) == 0,
               "a writer could not punch a hole in its segment");
    if (from < sizeof(TshmSegmentHeader)) r.scribbled_headers.insert(seg->id());
    return;
  }
  const std::size_t n = std::min<std::uint64_t>(bytes.size(), seg->size() - offset);
  std::memcpy(seg->base() + offset, bytes.data(), n);
  if (n > 0 && offset < sizeof(TshmSegmentHeader)) r.scribbled_headers.insert(seg->id());
}

// The daemon's view of a run, to compare the two.
std::string view(Run& r, const Book& b) {
  std::string out;
  for (std::uint64_t id : b.ids)
    if (const Object* o = r.reg->get(id))
      out += std::to_string(id) + ":" + o->name + "@" + std::to_string(o->version) + "/" +
             std::to_string(o->extent.segment_id) + "+" + std::to_string(o->extent.offset) + "#" +
             std::to_string(o->extent.size) + (o->sealed ? "s" : "o") + std::to_string(o->leases) + ";";
  for (const Caller& c : kCallers) {
    const auto u = r.reg->usage(c.uid);
    out += "u" + std::to_string(c.uid) + "=" + std::to_string(u.objects) + "/" + std::to_string(u.bytes) + ";";
  }
  out += "pool=" + std::to_string(r.pool->pool_used_bytes()) + "/" + std::to_string(r.pool->dedicated_bytes()) +
         "/" + std::to_string(r.pool->segment_count()) + ";";
  for (const Segment* s : r.pool->pool_segments()) out += "p" + std::to_string(s->id()) + ";";
  return out;
}

void check_headers(Run& r) {
  for (const Segment* s : r.pool->pool_segments()) {
    const auto ok = protocol::check_segment_header(std::span(s->base(), s->size()), s->name());
    if (!r.scribbled_headers.contains(s->id()))
      FUZZ_CHECK(ok.has_value(), "segment " + std::to_string(s->id()) +
                                     ": a header no one wrote over fails a reader's check: " +
                                     (ok ? std::string() : ok.error().message));
  }
}

void finish(Run& r, Book& b) {
  for (const auto& [holder, id] : b.leases)
    FUZZ_CHECK(r.reg->unlease(kCallers[holder], id).has_value(), "a held lease could not be given back");
  for (const auto& [owner, id] : b.open) (void)r.reg->abort(kCallers[owner], id);
  const Caller root{9, 0, 0};
  bool truncated = false;
  std::vector<std::string> names;
  for (const Object* o : r.reg->list(root, "", "", 0, &truncated)) names.push_back(o->name);
  for (const auto& n : names) FUZZ_CHECK(r.reg->remove(root, n).has_value(), "root could not delete " + n);
  FUZZ_CHECK(r.reg->versions() == 0 && r.reg->open_creates() == 0 && r.reg->leases() == 0,
             "the registry holds objects after everything was given back");
  FUZZ_CHECK(r.pool->pool_used_bytes() == 0 && r.pool->dedicated_bytes() == 0, "pool bytes leaked");
  for (const Caller& c : kCallers) FUZZ_CHECK(r.reg->usage(c.uid).objects == 0, "a uid's usage leaked");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (g_runs == nullptr) {
    log::set_level(LogLevel::error);
    g_runs = new std::array<Run, 2>;
    (*g_runs)[0].pool = make_pool((*g_runs)[0].config, "a");
    (*g_runs)[1].pool = make_pool((*g_runs)[1].config, "b");
  }
  auto& [written, clean] = *g_runs;
  // The pools, and what was written into them, outlive each input.
  for (Run* r : {&written, &clean}) r->reg = std::make_unique<Registry>(*r->pool, r->config);
  Book bw, bc;
  std::size_t off = 0;
  while (size - off >= 4) {
    const std::uint8_t op = data[off], a = data[off + 1];
    const std::uint16_t v = static_cast<std::uint16_t>(data[off + 2] | (data[off + 3] << 8));
    off += 4;
    if (op % 8 >= 6) {  // a client writes (6) or punches (7): the written run only
      const std::size_t n = std::min<std::size_t>(a, size - off);
      scribble(written, bw, v, std::span(data + off, n), op % 8 == 7);
      off += n;
      check_headers(written);
      continue;
    }
    const std::string got = step(written, bw, op, a, v);
    const std::string expected = step(clean, bc, op, a, v);
    FUZZ_CHECK(got == expected, "a step went another way after a client wrote into a segment: " + got + " vs " +
                                    expected);
    FUZZ_CHECK(view(written, bw) == view(clean, bc), "the daemon's state depends on what clients wrote");
    check_headers(written);
  }
  finish(written, bw);
  finish(clean, bc);
  written.reg.reset();
  clean.reg.reset();
  return 0;
}
