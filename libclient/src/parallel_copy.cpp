#include "parallel_copy.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string_view>
#include <system_error>
#include <thread>

#include "cpu_budget.hpp"
#include "fork_generation.hpp"
#include "strided_copy.hpp"
#include "tensorshm/protocol.hpp"

namespace tensorshm::detail {
namespace {

/// One parallel copy: `chunks` pieces, each taken by whichever thread is free
/// next, so that a helper that wakes late only takes fewer of them.
struct Job {
  void (*run)(const void* ctx, std::size_t chunk) noexcept = nullptr;
  const void* ctx = nullptr;
  std::size_t chunks = 0;
  std::atomic<std::size_t> next{0};
  unsigned wanted = 0;  // helpers still to join it (HelperPool::mu_)
  unsigned inside = 0;  // helpers working on it (HelperPool::mu_)

  /// Runs chunks until none is left; returns how many it ran.
  std::size_t drain() noexcept {
    std::size_t ran = 0;
    for (std::size_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks; ++ran) run(ctx, c);
    return ran;
  }
};

/// The helper threads of this process: started on demand, parked on a
/// condition variable between copies, with every signal blocked (signals go
/// to the application's threads) and the CPUs of the process (CpuMask: not
/// those of a thread pinned by the application that happened to start them).
/// Never destroyed, since helpers stay parked in it while the process exits.
/// A child of fork() has none of its parent's threads: it starts a pool of
/// its own and leaves the inherited one alone (its mutex may have been held
/// at the fork).
class HelperPool {
 public:
  /// Throws std::bad_alloc.
  static HelperPool& of_this_process() {
    struct Owner {
      std::uint64_t forks;
      HelperPool* pool;
      Owner* parents;  // the pools inherited over fork()s: kept reachable, never used
    };
    static std::atomic<Owner*> current{nullptr};
    const std::uint64_t forks = fork_generation();
    Owner* seen = current.load(std::memory_order_acquire);
    while (seen == nullptr || seen->forks != forks) {
      auto pool = std::make_unique<HelperPool>();
      auto mine = std::make_unique<Owner>(Owner{forks, pool.get(), seen});
      if (current.compare_exchange_weak(seen, mine.get(), std::memory_order_acq_rel)) {
        pool.release();  // the parent's pool (and Owner) are left behind in a child on purpose
        return *mine.release()->pool;
      }
    }
    return *seen->pool;
  }

  HelperPool() : mask_(CpuMask::of_process()) {}

  /// Runs `job` on the calling thread and on up to threads - 1 helpers;
  /// returns when every chunk is done and no helper touches `job` any more.
  void run(Job& job, unsigned threads) noexcept {
    std::unique_lock lk(mu_);
    job.wanted = grow_locked(threads - 1);
    if (job.wanted > 0) {
      jobs_.push_back(&job);
      for (unsigned i = 0; i < job.wanted; ++i) work_.notify_one();
    }
    lk.unlock();
    job.drain();
    lk.lock();
    if (job.wanted > 0) jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));
    job.wanted = 0;
    left_.wait(lk, [&] { return job.inside == 0; });
  }

  unsigned started() const noexcept { return started_.load(std::memory_order_relaxed); }
  std::uint64_t chunks_by_helpers() const noexcept { return by_helpers_.load(std::memory_order_relaxed); }

 private:
  /// Starts helpers until there are `want`; returns how many there are, at
  /// most `want`. After a failure to start one (EAGAIN: out of threads or
  /// memory) it stops trying: copies use the helpers there are.
  unsigned grow_locked(unsigned want) noexcept {
    while (helpers_ < want && !cannot_grow_) {
      sigset_t all, old;
      ::sigfillset(&all);
      if (::pthread_sigmask(SIG_BLOCK, &all, &old) != 0) {  // EINVAL only: cannot happen with SIG_BLOCK
        cannot_grow_ = true;
        break;
      }
      try {
        std::thread([this] { helper(); }).detach();
        ++helpers_;
        started_.fetch_add(1, std::memory_order_relaxed);
      } catch (...) {  // std::system_error (EAGAIN) or std::bad_alloc
        cannot_grow_ = true;
      }
      (void)::pthread_sigmask(SIG_SETMASK, &old, nullptr);  // restores the mask read above: cannot fail
    }
    return std::min(helpers_, want);
  }

  void helper() noexcept {
    // Both only change where and under which name it runs: on failure it
    // runs where its creator could, named like the process.
    if (mask_) (void)mask_->apply_to_this_thread();
    (void)::pthread_setname_np(::pthread_self(), "tshm-copy");
    std::unique_lock lk(mu_);
    for (;;) {
      work_.wait(lk, [&] { return !jobs_.empty(); });
      Job* job = jobs_.front();
      if (--job->wanted == 0) jobs_.pop_front();
      ++job->inside;
      lk.unlock();
      by_helpers_.fetch_add(job->drain(), std::memory_order_relaxed);
      lk.lock();
      if (--job->inside == 0) left_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_;  // a job wants helpers
  std::condition_variable left_;  // a helper left a job
  std::deque<Job*> jobs_;         // jobs that still want helpers, oldest first
  unsigned helpers_ = 0;
  bool cannot_grow_ = false;
  const std::optional<CpuMask> mask_;
  std::atomic<unsigned> started_{0};
  std::atomic<std::uint64_t> by_helpers_{0};  // chunks helpers ran (tests)
};

/// Runs fn(chunk) for chunk in [0, chunks) on up to `threads` threads.
template <class F>
void run_chunks(std::size_t chunks, unsigned threads, const F& fn) noexcept {
  Job job;
  job.run = [](const void* ctx, std::size_t chunk) noexcept { (*static_cast<const F*>(ctx))(chunk); };
  job.ctx = &fn;
  job.chunks = chunks;
  try {
    HelperPool::of_this_process().run(job, threads);
  } catch (const std::bad_alloc&) {  // no pool: the calling thread copies alone
    job.drain();
  }
}

/// Threads for a copy of `bytes`: each moves at least kParallelCopyGrain.
unsigned threads_for(std::size_t bytes, unsigned threads) noexcept {
  if (bytes < kParallelCopyMin || threads <= 1) return 1;
  return static_cast<unsigned>(std::min<std::size_t>(std::min(threads, kMaxCopyThreads), bytes / kParallelCopyGrain));
}

// Copies are cut into one chunk per thread: glibc's memcpy picks its method
// by size, and moves large copies with non-temporal stores, which write
// memory without reading it first (above 114 MiB on the development VM, 3/4
// of a core's share of the last-level cache); smaller chunks would fall below
// that and run slower (2 threads on 256 MiB: 23 ms in 2 chunks, 27 ms in 4,
// 33 ms in 256 there).

}  // namespace

unsigned resolve_copy_threads(std::optional<unsigned> requested, const char* env) {
  unsigned n = 0;
  const std::string_view e = env != nullptr ? env : "";
  if (requested) {
    n = *requested;
  } else if (auto [end, ec] = std::from_chars(e.data(), e.data() + e.size(), n);
             e.empty() || ec != std::errc{} || end != e.data() + e.size()) {
    n = std::min(usable_cpus(), 8u);  // not a number
  }
  return std::clamp(n, 1u, kMaxCopyThreads);
}

void copy_bytes(void* dst, const void* src, std::size_t n, unsigned threads) noexcept {
  const unsigned t = threads_for(n, threads);
  if (t <= 1) {
    if (n > 0) std::memcpy(dst, src, n);
    return;
  }
  constexpr std::size_t kPage = 4096;  // chunks of whole pages: at most the two lines at each seam are shared
  const std::size_t chunk =
      std::max(kParallelCopyGrain, (n / t + kPage - 1) / kPage * kPage);
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  run_chunks((n + chunk - 1) / chunk, t, [&](std::size_t c) noexcept {
    const std::size_t at = c * chunk;
    std::memcpy(d + at, s + at, std::min(chunk, n - at));
  });
}

void strided_copy_parallel(void* dst, std::span<const std::int64_t> dst_strides, const void* src,
                           std::span<const std::int64_t> src_strides, std::span<const std::int64_t> shape,
                           std::int64_t itemsize, unsigned threads) noexcept {
  // Leading dimensions of extent 1 (a batch of one) add nothing: split along
  // the first one with more.
  std::size_t k = 0;
  while (k + 1 < shape.size() && shape[k] == 1) ++k;
  const auto dims = shape.subspan(k), ds = dst_strides.subspan(k), ss = src_strides.subspan(k);
  std::size_t bytes = static_cast<std::size_t>(itemsize);
  for (auto d : dims) bytes *= static_cast<std::size_t>(d);
  // Threads write whole rows of dims[0]: only when a row's span in dst lies
  // below the next row's start, so that no two threads write the same bytes
  // (a Fortran-order destination would interleave them).
  std::int64_t row_span = 1;
  for (std::size_t i = 1; i < dims.size(); ++i) row_span += (dims[i] - 1) * std::abs(ds[i]);
  const bool rows_apart = !dims.empty() && std::abs(ds[0]) >= row_span;
  const unsigned t = dims.empty() || dims[0] < 2 || !rows_apart ? 1 : threads_for(bytes, threads);
  if (t <= 1) {
    strided_copy(dst, dst_strides, src, src_strides, shape, itemsize);
    return;
  }
  const auto rows = static_cast<std::size_t>(dims[0]);
  const std::size_t row_bytes = bytes / rows;
  const std::size_t min_rows = (kParallelCopyGrain + row_bytes - 1) / row_bytes;
  const std::size_t per = std::max(min_rows, (rows + t - 1) / t);
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  run_chunks((rows + per - 1) / per, t, [&](std::size_t c) noexcept {
    const std::size_t first = c * per;
    std::array<std::int64_t, protocol::kMaxDims> sub{};
    std::copy(dims.begin(), dims.end(), sub.begin());
    sub[0] = static_cast<std::int64_t>(std::min(per, rows - first));
    const auto at = static_cast<std::int64_t>(first);
    strided_copy(d + at * ds[0] * itemsize, ds, s + at * ss[0] * itemsize, ss,
                 std::span<const std::int64_t>(sub.data(), dims.size()), itemsize);
  });
}

unsigned copy_helpers_started() { return HelperPool::of_this_process().started(); }

std::uint64_t copy_chunks_by_helpers() { return HelperPool::of_this_process().chunks_by_helpers(); }

}  // namespace tensorshm::detail
