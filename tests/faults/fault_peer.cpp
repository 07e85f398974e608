// tshm_fault_peer: the client process of the fault and security tests. The
// tests (pytest, tests/faults and tests/security) start it, drive it, kill it
// with SIGKILL at chosen moments and run it under other uids. It talks to the
// daemon at $TENSORSHM_SOCKET through the public C++ client, and through a raw
// socket for requests the client never sends on its own (MapSegment of a
// chosen segment, writable or not).
//
//   tshm_fault_peer                   reads commands from stdin, one reply line each:
//                                     "ok key=value ..." or "err CODE message"
//   tshm_fault_peer soak [options]    random put/get/create/abort/delete/wait with
//                                     content checks until --seconds or --ops run out;
//                                     prints "MISMATCH ..." at once for any bad byte and
//                                     "done key=value ..." at the end
//   tshm_fault_peer frame KIND [ARG]  prints one encoded request frame as hex (hello,
//                                     stats, get NAME [TIMEOUT_MS], list PREFIX, release ID
//                                     one-way) for raw-socket tests
//
// Commands (stdin):
//   put NAME BYTES SEED [SHARE [TIMEOUT_MS]]     create (waiting up to TIMEOUT_MS for
//                                                pool space), fill with the pattern of SEED, seal
//   create NAME BYTES SEED [SHARE [TIMEOUT_MS]]  the same, left open: then `seal` or `abort`
//   get NAME [NEWER TIMEOUT_MS]   prints "waiting" first; the lease is dropped after the check
//   hold NAME                     get and keep the lease (and the checksum seen)
//   check                         re-reads every held object: "ok held=N mismatches=M"
//   release                       drops every held lease
//   mprotect                      tries to make the last held object's page writable
//   delete NAME | stat NAME | list PREFIX | stats
//   map SEGMENT WRITABLE          raw MapSegment; keeps a read-only mapping for `scan`, and a
//                                 writable one and the descriptor when it was granted writable
//   scan SEED                     looks for the marker of SEED (the first 64 bytes a put
//                                 or create of that seed writes) in the kept mappings
//   scribble SEED                 writes the marker of SEED over every kept writable mapping
//                                 (past the segment header): "ok mappings=N"
//   truncate                      ftruncate(0) of every kept writable descriptor:
//                                 "ok truncate=allowed|refused(ERRNO)"
//   punch                         a hole punched in the first MiB of each: "ok punch=..."
//   rawget NAME                   Get on the raw connection, keeping the descriptor that comes
//                                 with it (dedicated segments): "ok fd_mode=ro|rw|none ..."
//   fill PREFIX COUNT             puts COUNT empty objects named PREFIX + a number padded to
//                                 255 bytes
//   rawcreate NAME BYTES [SHARE]  CreateObject on the raw connection, keeping the descriptor of
//                                 a dedicated segment (writable) as `map` keeps one; `rawseal`
//                                 seals it
//   layout NAME DTYPE SHAPE STRIDES  create + seal of an object of that layout (dtype: uint8,
//                                 float32, ...; shape and strides comma lists, "-" for none)
//   reopen                        tries to reopen the last kept descriptor read-write through
//                                 /proc/self/fd: "ok reopen=allowed|refused(ERRNO)"
//   open-shm PATH                 tries to open a /dev/shm file for reading and writing
//   connections N                 opens N more connections and keeps them
//   drop-connections | quit
// SHARE is owner, group, everyone or a raw number.
//
// A reply names the segment an object lies in (segment=ID), so that tests can
// try to map it from elsewhere.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "connection.hpp"  // libclient internals: MapSegment of any segment
#include "tensorshm/client.hpp"
#include "tensorshm/io.hpp"
#include "tensorshm/names.hpp"
#include "tensorshm/protocol.hpp"
#include "fault_peer.hpp"
#include "test_data.hpp"

using namespace tensorshm;
namespace proto = tensorshm::protocol;

void say(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

std::string err_line(const Exception& e) {
  std::string msg = e.what();
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  return "err " + std::string(errc_name(e.code())) + " " + msg;
}

namespace {

// owner, group, everyone, or a number put on the wire as it is (to try values
// the schema does not define).
Share parse_share(const std::string& s) {
  if (s == "group") return Share::group;
  if (s == "everyone") return Share::everyone;
  if (!s.empty() && std::isdigit(static_cast<unsigned char>(s[0]))) return static_cast<Share>(std::stoi(s));
  return Share::owner;
}

// The first 64 bytes of every object a put or create writes: unique to its
// seed (the pattern alone repeats with a period of 256 bytes), so that `scan`
// finds exactly that object's bytes.
std::array<std::byte, 64> marker(std::uint64_t seed) {
  std::array<std::byte, 64> m;
  std::uint64_t x = seed;
  for (std::size_t i = 0; i < m.size(); i += 8) {
    x += 0x9e3779b97f4a7c15ull;  // splitmix64
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(m.data() + i, &z, 8);
  }
  return m;
}

struct KeptMapping {
  const std::byte* addr = nullptr;
  std::size_t size = 0;
};

// ---- interactive mode ----------------------------------------------------------

struct Held {
  Object object;
  std::uint64_t checksum = 0;
};

class Interactive {
 public:
  Interactive() : client_(Client::connect(Client::Options{"", "tshm_fault_peer"})) {}

  void run() {
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream in(line);
      std::vector<std::string> a;
      for (std::string w; in >> w;) a.push_back(w);
      if (a.empty()) continue;
      if (a[0] == "quit") break;
      try {
        say(dispatch(a));
      } catch (const Exception& e) {
        say(err_line(e));
      } catch (const std::exception& e) {
        say(std::string("err usage ") + e.what());
      }
    }
  }

 private:
  std::string dispatch(const std::vector<std::string>& a) {
    const std::string& cmd = a[0];
    auto arg = [&](std::size_t i) -> const std::string& {
      if (i >= a.size()) throw std::invalid_argument(cmd + ": missing argument " + std::to_string(i));
      return a[i];
    };
    if (cmd == "put" || cmd == "create") {
      const std::size_t n = std::stoull(arg(2));
      CreateOptions opt;
      if (a.size() > 4) opt.share = parse_share(a[4]);
      if (a.size() > 5) opt.timeout = std::chrono::milliseconds(std::stoll(a[5]));
      Buffer b = client_.create(arg(1), dtypes::kUInt8, {static_cast<std::int64_t>(n)}, opt);
      tshm_test::fill_pattern(b.data(), n, std::stoull(arg(3)));
      const auto m = marker(std::stoull(arg(3)));
      std::memcpy(b.data(), m.data(), std::min(n, m.size()));
      const std::uint64_t sum = tshm_test::checksum(b.data(), n);
      if (cmd == "create") {
        const auto info = b.info();
        open_ = std::move(b);
        return "ok id=" + std::to_string(info.object_id) + " segment=" + std::to_string(info.segment_id) +
               " checksum=" + tshm_test::hex(sum);
      }
      const auto info = b.seal();
      return "ok version=" + std::to_string(info.version) + " checksum=" + tshm_test::hex(sum) +
             " segment=" + std::to_string(info.segment_id);
    }
    if (cmd == "seal") return "ok version=" + std::to_string(open_.seal().version);
    if (cmd == "abort") {
      open_.abort();
      return "ok";
    }
    if (cmd == "get" || cmd == "hold") {
      GetOptions opt;
      if (a.size() > 3) {
        opt.newer_than = std::stoull(a[2]);
        opt.timeout = std::chrono::milliseconds(std::stoll(a[3]));
      }
      if (cmd == "get") say("waiting");
      Object o = client_.get(arg(1), opt);
      const std::uint64_t sum = tshm_test::checksum(o.data(), o.nbytes());
      const auto m = tshm_test::mapping_of(o.data());
      std::string out = "ok version=" + std::to_string(o.version()) + " checksum=" + tshm_test::hex(sum) +
                        " nbytes=" + std::to_string(o.nbytes()) + " readonly=" + (m.read_only_shared() ? "1" : "0") +
                        " segment=" + std::to_string(o.info().segment_id);
      if (cmd == "hold") held_.push_back(Held{std::move(o), sum});
      return out;
    }
    if (cmd == "check") {
      int bad = 0;
      for (const Held& h : held_)
        if (tshm_test::checksum(h.object.data(), h.object.nbytes()) != h.checksum) ++bad;
      return "ok held=" + std::to_string(held_.size()) + " mismatches=" + std::to_string(bad);
    }
    if (cmd == "release") {
      const std::size_t n = held_.size();
      held_.clear();
      (void)client_.stats();  // the releases have been processed once this returns
      return "ok released=" + std::to_string(n);
    }
    if (cmd == "mprotect") {
      if (held_.empty()) throw std::invalid_argument("mprotect: hold an object first");
      const long page = ::sysconf(_SC_PAGESIZE);
      auto* p = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(held_.back().object.data()) &
                                        ~static_cast<std::uintptr_t>(page - 1));
      if (::mprotect(p, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE) == 0) return "ok mprotect=allowed";
      return std::string("ok mprotect=refused errno=") + ::strerrorname_np(errno);
    }
    if (cmd == "delete") {
      client_.remove(arg(1));
      return "ok";
    }
    if (cmd == "stat") {
      const auto i = client_.stat(arg(1));
      return "ok version=" + std::to_string(i.version) + " owner=" + std::to_string(i.owner_uid) +
             " share=" + std::to_string(static_cast<int>(i.share)) + " leases=" + std::to_string(i.leases) +
             " segment=" + std::to_string(i.segment_id);
    }
    if (cmd == "list") {
      std::string names;
      for (const auto& i : client_.list(a.size() > 1 ? a[1] : "")) names += (names.empty() ? "" : ",") + i.name;
      return "ok names=" + names;
    }
    if (cmd == "stats") {
      const Stats s = client_.stats();
      return "ok leases=" + std::to_string(s.leases) + " open_creates=" + std::to_string(s.open_creates) +
             " clients=" + std::to_string(s.clients) + " versions=" + std::to_string(s.versions) +
             " objects=" + std::to_string(s.objects) + " pool_used=" + std::to_string(s.pool_used_bytes) +
             " pool_bytes=" + std::to_string(s.pool_bytes) + " dedicated=" + std::to_string(s.dedicated_bytes) +
             " segments=" + std::to_string(s.segments);
    }
    if (cmd == "map") return map(static_cast<std::uint32_t>(std::stoul(arg(1))), arg(2) == "1");
    if (cmd == "scribble") {
      const auto m = marker(std::stoull(arg(1)));
      for (const KeptMapping& w : writable_)
        for (std::size_t off = 4096; off + m.size() <= w.size; off += m.size())
          std::memcpy(const_cast<std::byte*>(w.addr) + off, m.data(), m.size());
      return "ok mappings=" + std::to_string(writable_.size());
    }
    if (cmd == "truncate" || cmd == "punch") {
      if (fds_.empty()) throw std::invalid_argument(cmd + ": keep a writable descriptor first (map S 1, rawcreate)");
      std::string outcome = "allowed";
      for (int fd : fds_) {
        const int rc = cmd == "truncate" ? ::ftruncate(fd, 0)
                                         : ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20);
        if (rc != 0) outcome = std::string("refused(") + ::strerrorname_np(errno) + ")";
      }
      return "ok " + cmd + "=" + outcome + " fds=" + std::to_string(fds_.size());
    }
    if (cmd == "rawget") {
      Fds fds;
      wire::GetT req;
      req.name = arg(1);
      auto r = raw_call(std::move(req), fds.v);
      const auto& obj = *r->body.AsGetReply()->object;
      std::string mode = "none";
      if (!fds.v.empty()) {
        const int m = ::fcntl(fds.v[0], F_GETFL) & O_ACCMODE;
        mode = m == O_RDONLY ? "ro" : m == O_RDWR ? "rw" : "other";
        struct stat st{};
        (void)::fstat(fds.v[0], &st);
        keep(fds.v, static_cast<std::size_t>(st.st_size), false);
      }
      return "ok fd_mode=" + mode + " segment=" + std::to_string(obj.segment_id) + " object=" +
             std::to_string(obj.object_id);
    }
    if (cmd == "fill") {
      const long count = std::stol(arg(2));
      for (long i = 0; i < count; ++i) {
        std::string name = arg(1) + std::to_string(i);
        name.append(kMaxNameBytes - name.size(), 'x');
        (void)client_.put(name, HostView{nullptr, dtypes::kUInt8, {0}, {}});
      }
      return "ok filled=" + std::to_string(count);
    }
    if (cmd == "reopen") {
      if (fds_.empty()) throw std::invalid_argument("reopen: keep a descriptor first");
      const int fd = ::open(("/proc/self/fd/" + std::to_string(fds_.back())).c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) return std::string("ok reopen=refused(") + ::strerrorname_np(errno) + ")";
      ::close(fd);
      return "ok reopen=allowed";
    }
    if (cmd == "rawcreate") return raw_create(arg(1), std::stoull(arg(2)), a.size() > 3 ? parse_share(a[3]) : Share::owner);
    if (cmd == "rawseal") {
      wire::SealT req;
      req.object_id = raw_open_;
      Fds none;
      return "ok version=" + std::to_string(raw_call(std::move(req), none.v)->body.AsSealReply()->object->version);
    }
    if (cmd == "layout") {
      const auto list = [](const std::string& s) {
        std::vector<std::int64_t> v;
        if (s == "-") return v;
        std::istringstream in(s);
        for (std::string x; std::getline(in, x, ',');) v.push_back(std::stoll(x));
        return v;
      };
      const std::string dt = arg(2);
      const DType dtype = dt == "float32" ? dtypes::kFloat32 : dt == "float64" ? dtypes::kFloat64 : dtypes::kUInt8;
      CreateOptions opt;
      opt.strides = list(arg(4));
      const auto shape = list(arg(3));
      Buffer b = client_.create(arg(1), dtype, shape, opt);
      if (b.nbytes() > 0) std::memset(b.data(), 7, b.nbytes());
      const auto info = b.seal();
      return "ok version=" + std::to_string(info.version) + " nbytes=" + std::to_string(info.nbytes);
    }
    if (cmd == "scan") {
      const auto needle = marker(std::stoull(arg(1)));
      for (const KeptMapping& m : mappings_)
        if (std::search(m.addr, m.addr + m.size, needle.begin(), needle.end()) != m.addr + m.size)
          return "ok found=1";
      return "ok found=0";
    }
    if (cmd == "open-shm") {
      auto attempt = [&](int flags) {
        const int fd = ::open(arg(1).c_str(), flags | O_CLOEXEC);
        if (fd < 0) return std::string("refused(") + ::strerrorname_np(errno) + ")";
        ::close(fd);
        return std::string("allowed");
      };
      return "ok read=" + attempt(O_RDONLY) + " write=" + attempt(O_RDWR);
    }
    if (cmd == "connections") {
      const int n = std::stoi(arg(1));
      int opened = 0;
      try {
        for (; opened < n; ++opened) extra_.push_back(Client::connect(Client::Options{"", "tshm_fault_peer extra"}));
      } catch (const Exception& e) {
        return err_line(e) + " opened=" + std::to_string(opened);
      }
      return "ok opened=" + std::to_string(opened);
    }
    if (cmd == "drop-connections") {
      extra_.clear();
      return "ok";
    }
    throw std::invalid_argument("unknown command '" + cmd + "'");
  }

  // MapSegment over a raw connection: what descriptor does the daemon hand
  // out, and can it be mapped writable?
  std::string map(std::uint32_t segment, bool writable) {
    Fds fds;
    wire::MapSegmentT req;
    req.segment_id = segment;
    req.writable = writable;
    auto r = raw_call(std::move(req), fds.v);
    const auto* rep = r->body.AsMapSegmentReply();
    if (rep == nullptr || !rep->segment || fds.v.size() != 1)
      throw Exception(Errc::protocol_error, "MapSegment reply without exactly one descriptor");
    const int mode = ::fcntl(fds.v[0], F_GETFL) & O_ACCMODE;
    const std::size_t size = rep->segment->size;
    void* w = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds.v[0], 0);
    const std::string mmap_write = w == MAP_FAILED ? std::string("refused(") + ::strerrorname_np(errno) + ")" : "allowed";
    if (w != MAP_FAILED) ::munmap(w, size);
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fds.v[0], 0);
    if (p != MAP_FAILED) mappings_.push_back(KeptMapping{static_cast<const std::byte*>(p), size});
    keep(fds.v, size, mode == O_RDWR);
    return std::string("ok fd_mode=") + (mode == O_RDONLY ? "ro" : mode == O_RDWR ? "rw" : "other") +
           " size=" + std::to_string(size) + " mmap_write=" + mmap_write;
  }

  // Keeps the descriptor (taken from `fds`) and, when writable, a writable
  // mapping of it: what an attacker holds on to.
  void keep(std::vector<int>& fds, std::size_t size, bool writable) {
    const int fd = fds[0];
    fds.clear();
    fds_.push_back(fd);
    if (!writable) return;
    void* w = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (w != MAP_FAILED) writable_.push_back(KeptMapping{static_cast<const std::byte*>(w), size});
  }

  std::string raw_create(const std::string& name, std::uint64_t bytes, Share share) {
    Fds fds;
    wire::CreateObjectT req;
    req.name = name;
    req.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kUInt8));
    req.shape = {static_cast<std::int64_t>(bytes)};
    req.share = static_cast<wire::Share>(share);
    auto r = raw_call(std::move(req), fds.v);
    const auto& obj = *r->body.AsCreateObjectReply()->object;
    raw_open_ = obj.object_id;
    std::string out = "ok id=" + std::to_string(obj.object_id) + " segment=" + std::to_string(obj.segment_id) +
                      " fds=" + std::to_string(fds.v.size());
    if (!fds.v.empty()) {
      struct stat st{};
      (void)::fstat(fds.v[0], &st);
      keep(fds.v, static_cast<std::size_t>(st.st_size), true);
    }
    return out;
  }

  // Descriptors a raw request brought, closed unless kept.
  struct Fds {
    std::vector<int> v;
    ~Fds() {
      for (int d : v) io::close_fd(d);
    }
  };

  // One request on the client's own connection, bypassing the client's
  // checks; the reply's descriptors go to `fds`.
  template <class T>
  std::unique_ptr<proto::Message> raw_call(T&& body, std::vector<int>& fds) {
    wire::BodyUnion u;
    u.Set(std::forward<T>(body));
    detail::Connection& conn = client_.connection();
    auto lk = conn.lock();
    auto r = conn.call_locked(u, &fds);
    if (!r) throw Exception(r.error());
    return std::move(*r);
  }

  Client client_;
  Buffer open_;
  std::vector<Held> held_;
  std::vector<KeptMapping> mappings_;
  std::vector<KeptMapping> writable_;  // writable mappings kept (map S 1, rawcreate)
  std::vector<int> fds_;               // descriptors kept
  std::uint64_t raw_open_ = 0;         // the object of the last rawcreate
  std::vector<Client> extra_;
};

// ---- frame mode ----------------------------------------------------------------

int print_frame(int argc, char** argv) {
  const std::string kind = argc > 2 ? argv[2] : "";
  const std::string arg = argc > 3 ? argv[3] : "";
  std::vector<std::byte> f;
  if (kind == "hello") {
    wire::HelloT m;
    m.protocol_version = proto::kVersion;
    m.client_name = "raw";
    m.pid = static_cast<std::int32_t>(::getpid());
    f = proto::encode(std::move(m), 1);
  } else if (kind == "stats") {
    f = proto::encode(wire::StatsT{}, 2);
  } else if (kind == "get") {
    wire::GetT m;
    m.name = arg;
    if (argc > 4) m.timeout_ms = std::stoll(argv[4]);
    f = proto::encode(std::move(m), 3);
  } else if (kind == "release") {
    wire::ReleaseT m;
    m.object_id = std::stoull(arg);
    m.no_reply = true;
    f = proto::encode(std::move(m), 5);
  } else if (kind == "list") {
    wire::ListT m;
    m.prefix = arg;
    f = proto::encode(std::move(m), 4);
  } else {
    std::fprintf(stderr, "frame: hello | stats | get NAME [TIMEOUT_MS] | list PREFIX | release ID\n");
    return 2;
  }
  std::string hex;
  for (std::byte b : f) {
    char two[3];
    std::snprintf(two, sizeof two, "%02x", std::to_integer<unsigned>(b));
    hex += two;
  }
  say(hex);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    if (mode == "soak") return soak_main(argc, argv);
    if (mode == "frame") return print_frame(argc, argv);
    Interactive().run();
    return 0;
  } catch (const Exception& e) {
    say(err_line(e));
    return 3;
  } catch (const std::exception& e) {
    say(std::string("err usage ") + e.what());
    return 2;
  }
}
