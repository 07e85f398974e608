// Creating, reserving, pre-touching and removing shared-memory segments.
#include "segment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <utility>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstring>
#include <thread>
#include <vector>

#include "log.hpp"
#include "tensorshm/io.hpp"
#include "tensorshm/segment_layout.h"
#include "tensorshm/sys_call.hpp"

namespace bip = boost::interprocess;

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

Result<std::unique_ptr<Segment>> Segment::create(const Params& p) {
  std::unique_ptr<Segment> s(new Segment(p));
  try {
    bip::permissions perm;
    perm.set_permissions(0600);
    bip::shared_memory_object shm(bip::create_only, p.name.c_str(), bip::read_write, perm);
    // Our own descriptors outlive the Boost object: dup them.
    auto rw = posix_call("fcntl(F_DUPFD_CLOEXEC)", p.name,
                         [&] { return ::fcntl(shm.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 3); });
    if (!rw) {
      bip::shared_memory_object::remove(p.name.c_str());
      return std::move(rw).error();
    }
    s->rw_fd_ = *rw;
  } catch (const bip::interprocess_exception& e) {
    return Error{Errc::system_error, "shm_open('" + p.name + "', O_CREAT|O_EXCL): " + e.what() +
                                         " (native error " + std::to_string(e.get_native_error()) + ")"};
  }
  // From here on the destructor unlinks the segment on any failure.
  auto ro = posix_call("open(O_RDONLY)", p.name, [&] {
    return ::open(("/proc/self/fd/" + std::to_string(s->rw_fd_)).c_str(), O_RDONLY | O_CLOEXEC);
  });
  if (!ro) return std::move(ro).error();
  s->ro_fd_ = *ro;
  TSHM_TRY(posix_call("ftruncate", p.name, [&] { return ::ftruncate(s->rw_fd_, static_cast<off_t>(p.size)); }));
  if (auto st = posix_call_rc("posix_fallocate", p.name,
                              [&] { return ::posix_fallocate(s->rw_fd_, 0, static_cast<off_t>(p.size)); });
      !st) {
    if (st.error().message.find("errno 28") != std::string::npos) {  // ENOSPC
      struct statvfs vfs{};
      std::string room = "unknown";
      if (::fstatvfs(s->rw_fd_, &vfs) == 0)
        room = std::to_string(static_cast<unsigned long long>(vfs.f_bavail) * vfs.f_frsize);
      return Error{Errc::pool_exhausted,
                   "cannot reserve " + std::to_string(p.size) + " bytes for segment '" + p.name +
                       "': the shared-memory filesystem has only " + room +
                       " bytes free. Enlarge it (docker run --shm-size=..., or mount -o remount,size=... /dev/shm) "
                       "or lower --pool-size / --segment-size"};
    }
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
  if (rw_fd_ >= 0 && !bip::shared_memory_object::remove(p_.name.c_str()))
    log::warning("shm_unlink('", p_.name, "') failed: ", std::strerror(errno));
}

Result<unsigned> sweep_stale_segments(const std::string& shm_dir, const std::string& prefix,
                                      const std::string& keep) {
  DIR* dir = ::opendir(shm_dir.c_str());
  if (dir == nullptr) return posix_error("opendir", shm_dir, errno);
  unsigned removed = 0;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string_view n(e->d_name);
    if (n.starts_with(prefix) && n != keep) names.emplace_back(n);
  }
  ::closedir(dir);
  for (const auto& n : names) {
    if (bip::shared_memory_object::remove(n.c_str())) {
      ++removed;
      log::notice("removed stale segment ", shm_dir, "/", n, " left by an earlier run");
    } else {
      log::warning("cannot remove stale segment ", shm_dir, "/", n, ": ", std::strerror(errno));
    }
  }
  return removed;
}

}  // namespace tensorshm::daemon
