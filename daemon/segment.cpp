// Creating, sealing, reserving, pre-touching and retiring shared-memory segments.
#include "segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "log.hpp"
#include "tensorshm/io.hpp"
#include "tensorshm/segment_layout.h"
#include "tensorshm/sys_call.hpp"

namespace tensorshm::daemon {

void pretouch(std::byte* p, std::size_t n, unsigned threads) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t pages = n / page;
  if (threads > pages / 256 + 1) threads = static_cast<unsigned>(pages / 256 + 1);
  auto work = [&](std::size_t from, std::size_t to) {
    // MADV_POPULATE_WRITE (Linux 5.14) faults the range in one call; older
    // kernels get one write per page.
    if (::madvise(p + from * page, (to - from) * page, 23 /* MADV_POPULATE_WRITE */) == 0) return;
    for (std::size_t i = from; i < to; ++i) reinterpret_cast<volatile char*>(p)[i * page] = 0;
  };
  std::vector<std::thread> pool;
  const std::size_t per = (pages + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) {
    std::size_t from = t * per, to = std::min(pages, from + per);
    if (from >= to) break;
    pool.emplace_back(work, from, to);
  }
  for (auto& t : pool) t.join();
}

namespace {

// "MemAvailable: 123 kB" -> bytes.
std::optional<std::uint64_t> meminfo_available() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("MemAvailable:")) {
      try {
        return static_cast<std::uint64_t>(std::stoull(line.substr(13))) * 1024;
      } catch (...) {
        return std::nullopt;
      }
    }
  return std::nullopt;
}

// A cgroup file holding one number ("max" or a value past 2^62: none).
std::optional<std::uint64_t> read_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return std::nullopt;
  try {
    const auto v = static_cast<std::uint64_t>(std::stoull(word));
    if (v >= (std::uint64_t{1} << 62)) return std::nullopt;  // v1's "no limit"
    return v;
  } catch (...) {
    return std::nullopt;
  }
}

// One key of a cgroup's memory.stat ("inactive_file 1234").
std::uint64_t stat_value(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string k; in >> k;) {
    std::uint64_t v = 0;
    if (!(in >> v)) break;
    if (k == key) return v;
  }
  return 0;
}

// Room under the memory cgroups this process is in: for its group and each
// ancestor the filesystem shows (a container sees its own group as the
// root), the limit minus what is charged, not counting page cache the kernel
// would drop first (inactive files); the smallest room wins.
std::optional<std::uint64_t> cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  std::optional<std::uint64_t> room;
  for (std::string line; std::getline(in, line);) {
    // "0::/path" (v2) or "4:memory:/path" (v1).
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    std::string root, limit_file, usage_file, inactive_key;
    if (controllers.empty()) {
      root = "/sys/fs/cgroup";
      limit_file = "memory.max";
      usage_file = "memory.current";
      inactive_key = "inactive_file";
    } else if (controllers == "memory" || controllers.find("memory,") != std::string::npos ||
               controllers.ends_with(",memory")) {
      root = "/sys/fs/cgroup/memory";
      limit_file = "memory.limit_in_bytes";
      usage_file = "memory.usage_in_bytes";
      inactive_key = "total_inactive_file";
    } else {
      continue;
    }
    for (;;) {
      const std::string dir = root + (path == "/" ? "" : path);
      auto limit = read_number(dir + "/" + limit_file);
      auto usage = read_number(dir + "/" + usage_file);
      if (limit && usage) {
        const std::uint64_t inactive = stat_value(dir + "/memory.stat", inactive_key);
        const std::uint64_t used = *usage > inactive ? *usage - inactive : 0;
        const std::uint64_t here = *limit > used ? *limit - used : 0;
        room = room ? std::min(*room, here) : here;
      }
      if (path.empty() || path == "/") break;
      const auto slash = path.rfind('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  return room;
}

}  // namespace

std::optional<std::uint64_t> memory_available() {
  auto a = meminfo_available();
  auto b = cgroup_room();
  if (a && b) return std::min(*a, *b);
  return a ? a : b;
}

namespace {

Error no_room(const Segment::Params& p, const std::string& why, std::optional<std::uint64_t> room, int err = 0) {
  return Error{Errc::pool_exhausted,
               "cannot reserve " + std::to_string(p.size) + " bytes of memory for segment '" + p.name + "' (" + why +
                   "); only " + (room ? std::to_string(*room) + " bytes" : std::string("an unknown amount")) +
                   " of memory are available to tensorshmd (MemAvailable, and its memory cgroup's limit). Free "
                   "memory, raise the service's memory limit (MemoryMax=), or lower --pool-size / --segment-size / "
                   "--max-object-size",
               err};
}

}  // namespace

Result<std::unique_ptr<Segment>> Segment::create(const Params& p) {
  // Memory files are limited only by memory: asking for more than there is
  // would push the host into swap or the OOM killer instead of failing.
  if (const auto room = memory_available(); room && p.size > *room) return no_room(p, "not enough memory", room);
  std::unique_ptr<Segment> s(new Segment(p));
  // From here on the destructor closes whatever was made on any failure.
  auto rw = posix_call("memfd_create", p.name,
                       [&] { return ::memfd_create(p.name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING); });
  if (!rw) return std::move(rw).error();
  s->rw_fd_ = *rw;
  // A memory file is made with mode 0777: anyone holding a descriptor could
  // reopen it writable through /proc/<pid>/fd. 0600 leaves that to the
  // daemon's own uid.
  TSHM_TRY(posix_call("fchmod(0600)", p.name, [&] { return ::fchmod(s->rw_fd_, 0600); }));
  TSHM_TRY(posix_call("ftruncate", p.name, [&] { return ::ftruncate(s->rw_fd_, static_cast<off_t>(p.size)); }));
  // Nobody, writers included, may change its size from now on: a shrink
  // would turn the daemon's next write into a SIGBUS.
  TSHM_TRY(posix_call("fcntl(F_ADD_SEALS)", p.name, [&] {
    return ::fcntl(s->rw_fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  }));
  auto ro = posix_call("open(/proc/self/fd, O_RDONLY)", p.name, [&] {
    return ::open(("/proc/self/fd/" + std::to_string(s->rw_fd_)).c_str(), O_RDONLY | O_CLOEXEC);
  });
  if (!ro) {
    Error e = std::move(ro).error();
    e.message += "; tensorshmd needs /proc mounted to hand readers read-only descriptors";
    return e;
  }
  s->ro_fd_ = *ro;
  if (auto st = posix_call_rc("fallocate", p.name,
                              [&] { return ::fallocate(s->rw_fd_, 0, 0, static_cast<off_t>(p.size)) == 0 ? 0 : errno; });
      !st) {
    if (st.error().sys_errno == ENOSPC || st.error().sys_errno == ENOMEM)
      return no_room(p, st.error().message, memory_available(), st.error().sys_errno);
    return st.error();
  }
  void* base = ::mmap(nullptr, p.size, PROT_READ | PROT_WRITE, MAP_SHARED, s->rw_fd_, 0);
  if (base == MAP_FAILED) return posix_error("mmap", p.name, errno);
  s->base_ = static_cast<std::byte*>(base);
  pretouch(s->base_, p.size, p.pretouch_threads);
  auto* h = reinterpret_cast<TshmSegmentHeader*>(s->base_);
  std::memset(h, 0, sizeof *h);
  h->magic = TSHM_SEGMENT_MAGIC;
  h->major = TSHM_LAYOUT_MAJOR;
  h->minor = TSHM_LAYOUT_MINOR;
  h->segment_id = p.id;
  h->size = p.size;
  h->page_size = static_cast<std::uint32_t>(::sysconf(_SC_PAGESIZE));
  h->dedicated = p.dedicated ? 1 : 0;
  std::strncpy(h->instance, p.instance.c_str(), sizeof h->instance - 1);
  return s;
}

Segment::~Segment() {
  if (base_ != nullptr) ::munmap(base_, p_.size);
  io::close_fd(rw_fd_);
  io::close_fd(ro_fd_);
}

void Segment::discard() noexcept {
  if (rw_fd_ < 0) return;
  if (::fallocate(rw_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(p_.size)) != 0)
    log::warning("fallocate(PUNCH_HOLE) of retired segment '", p_.name, "' failed: ", std::strerror(errno),
                 " (errno ", errno, "); its memory is freed only when every client that mapped it lets go");
}

}  // namespace tensorshm::daemon
