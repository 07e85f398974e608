// Unit tests of the client library's internals, with no daemon: the parallel
// copies of a put (libclient/src/parallel_copy.hpp) against the plain ones,
// for every split, layout and thread count, from several threads at once and
// in a forked child; how many threads it uses (cpu_budget.hpp), against
// cgroup files written into a temporary folder; and when a GPU put stops
// polling for its reply (poll_backoff.hpp), on a CPU shared with busy threads.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <thread>
#include <vector>

#include "cpu_budget.hpp"
#include "parallel_copy.hpp"
#include "poll_backoff.hpp"
#include "strided_copy.hpp"
#include "test_data.hpp"

using namespace tensorshm::detail;
using tshm_test::fill_pattern;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// ThreadSanitizer cannot start threads in the child of a multi-threaded fork
// ("not supported. Dying"): the fork case runs in the other builds only.
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

/// copy_bytes of `n` bytes from and to offsets that are not aligned to
/// anything, with the bytes around the destination checked untouched.
bool copies_exactly(std::size_t n, unsigned threads, std::uint64_t seed) {
  std::vector<std::uint8_t> src(n + 7), dst(n + 64, 0xee);
  fill_pattern(src.data(), src.size(), seed);
  copy_bytes(dst.data() + 5, src.data() + 3, n, threads);
  if (n > 0 && std::memcmp(dst.data() + 5, src.data() + 3, n) != 0) return false;
  for (std::size_t i = 0; i < 5; ++i)
    if (dst[i] != 0xee) return false;
  for (std::size_t i = n + 5; i < dst.size(); ++i)
    if (dst[i] != 0xee) return false;
  return true;
}

/// The element offsets (in elements) of a C-order walk of `shape` with `strides`.
std::vector<std::int64_t> walk(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides) {
  std::vector<std::int64_t> out;
  std::vector<std::int64_t> idx(shape.size(), 0);
  const std::int64_t n = std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
  for (std::int64_t k = 0; k < n; ++k) {
    std::int64_t off = 0;
    for (std::size_t i = 0; i < shape.size(); ++i) off += idx[i] * strides[i];
    out.push_back(off);
    for (std::size_t i = shape.size(); i-- > 0;)
      if (++idx[i] < shape[i]) break;
      else idx[i] = 0;
  }
  return out;
}

/// strided_copy_parallel of `shape` (int32) from a source laid out with
/// `src_strides` into C order gives every element where a C-order walk says.
bool packs_exactly(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& src_strides,
                   unsigned threads) {
  const auto offsets = walk(shape, src_strides);
  std::int64_t span = 0;
  for (auto o : offsets) span = std::max(span, o + 1);
  std::vector<std::int32_t> src(static_cast<std::size_t>(span));
  std::iota(src.begin(), src.end(), 7);
  std::vector<std::int64_t> c(shape.size());
  std::int64_t step = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    c[i] = step;
    step *= shape[i];
  }
  std::vector<std::int32_t> dst(offsets.size(), -1);
  strided_copy_parallel(dst.data(), c, src.data(), src_strides, shape, 4, threads);
  for (std::size_t k = 0; k < offsets.size(); ++k)
    if (dst[k] != src[static_cast<std::size_t>(offsets[k])]) return false;
  return true;
}

}  // namespace

TEST_CASE("copy_bytes_copies_every_byte_and_nothing_else_for_every_size_and_thread_count") {
  const std::size_t sizes[] = {0, 1, 4095, kParallelCopyMin - 1, kParallelCopyMin, kParallelCopyMin + 4097,
                               7 * kMiB + 3, 33 * kMiB + 1};
  for (unsigned threads : {1u, 2u, 3u, 8u})
    for (std::size_t n : sizes) {
      CAPTURE(threads);
      CAPTURE(n);
      CHECK(copies_exactly(n, threads, n + threads));
    }
}

TEST_CASE("a_copy_of_at_least_the_parallel_minimum_starts_helpers_and_a_smaller_one_does_not") {
  // Helpers are per process and kept: the count only grows, to threads - 1.
  const unsigned before = copy_helpers_started();
  CHECK(copies_exactly(kParallelCopyMin - 1, 4, 1));
  CHECK(copy_helpers_started() == before);
  CHECK(copies_exactly(16 * kMiB, 4, 2));
  CHECK(copy_helpers_started() >= 3);
  const unsigned after = copy_helpers_started();
  CHECK(copies_exactly(16 * kMiB, 4, 3));
  CHECK(copy_helpers_started() == after);  // parked helpers are reused, not started again
}

TEST_CASE("helpers_run_part_of_a_large_copy") {
  // The caller takes chunks too, so on a busy machine it may take all of one
  // copy's; over 20 copies of 16 MiB the helpers get some.
  const std::uint64_t before = copy_chunks_by_helpers();
  for (int i = 0; i < 20 && copy_chunks_by_helpers() == before; ++i) CHECK(copies_exactly(16 * kMiB, 4, 40 + i));
  CHECK(copy_chunks_by_helpers() > before);
  // Below the parallel minimum the calling thread copies alone.
  const std::uint64_t small = copy_chunks_by_helpers();
  for (int i = 0; i < 5; ++i) CHECK(copies_exactly(kParallelCopyMin - 1, 4, 60 + i));
  CHECK(copy_chunks_by_helpers() == small);
}

TEST_CASE("strided_copy_parallel_packs_transposed_sliced_broadcast_and_permuted_views_like_a_serial_walk") {
  for (unsigned threads : {1u, 2u, 5u}) {
    CAPTURE(threads);
    CHECK(packs_exactly({1024, 1024}, {1, 1024}, threads));           // a transposed 4 MiB matrix
    CHECK(packs_exactly({600, 1000}, {2000, 2}, threads));            // every other column and row
    CHECK(packs_exactly({2048, 512}, {0, 1}, threads));               // one row broadcast 2048 times
    CHECK(packs_exactly({64, 128, 96}, {96, 64 * 96, 1}, threads));   // dimensions 0 and 1 swapped
    CHECK(packs_exactly({3, 1024, 257}, {257, 3 * 257, 1}, threads)); // fewer rows than threads, 1 MiB each
    CHECK(packs_exactly({1, 1024, 1024}, {1, 1, 1024}, threads));     // one outer row: no split
    CHECK(packs_exactly({0, 1024}, {1024, 1}, threads));              // empty
    CHECK(packs_exactly({1, 1, 512, 2048}, {1, 1, 1, 512}, threads)); // a batch of one, transposed: split dim 2
  }
}

TEST_CASE("a_destination_whose_rows_overlap_or_interleave_is_written_by_one_thread") {
  // 4096 x 512 int32 from C order into Fortran order: row r's elements lie
  // 4096 apart, interleaved with every other row's; and into a destination
  // whose rows all start at the same place (stride 0, the last row wins).
  const std::int64_t rows = 4096, cols = 512;
  std::vector<std::int32_t> src(static_cast<std::size_t>(rows * cols));
  std::iota(src.begin(), src.end(), 1);
  const std::vector<std::int64_t> shape{rows, cols}, c_order{cols, 1};
  std::vector<std::int32_t> f(src.size(), -1);
  strided_copy_parallel(f.data(), std::vector<std::int64_t>{1, rows}, src.data(), c_order, shape, 4, 4);
  bool same = true;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t k = 0; k < cols; ++k) same = same && f[static_cast<std::size_t>(k * rows + r)] == src[static_cast<std::size_t>(r * cols + k)];
  CHECK(same);
  std::vector<std::int32_t> one_row(static_cast<std::size_t>(cols), -1);
  strided_copy_parallel(one_row.data(), std::vector<std::int64_t>{0, 1}, src.data(), c_order, shape, 4, 4);
  CHECK(std::equal(one_row.begin(), one_row.end(), src.end() - cols));  // serial order: the last row
}

TEST_CASE("copies_from_several_threads_at_once_each_arrive_whole") {
  std::vector<std::thread> callers;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&, t] {
      int good = 0;
      for (int i = 0; i < 10; ++i) good += copies_exactly(5 * kMiB + static_cast<std::size_t>(i), 3, t * 100 + i);
      ok[static_cast<std::size_t>(t)] = good;
    });
  for (auto& c : callers) c.join();
  CHECK(ok == std::vector<int>{10, 10, 10, 10});
}

TEST_CASE("a_forked_child_copies_in_parallel_with_helpers_of_its_own" * doctest::skip(kThreadSanitizer)) {
  CHECK(copies_exactly(8 * kMiB, 4, 11));  // the parent's helpers exist before the fork
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::alarm(30);  // a child stuck on its parent's helpers dies instead of hanging the test
    const bool fresh = copy_helpers_started() == 0;  // the parent's pool is not this process's
    const bool ok = copies_exactly(8 * kMiB, 4, 12) && copy_helpers_started() >= 3;
    ::_exit(fresh && ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(copies_exactly(8 * kMiB, 4, 13));  // and the parent's helpers still work
}

TEST_CASE("copy_threads_come_from_the_option_then_the_environment_then_the_cpus_at_most_eight") {
  CHECK(resolve_copy_threads(3u, "5") == 3);
  CHECK(resolve_copy_threads(0u, nullptr) == 1);
  CHECK(resolve_copy_threads(1000u, nullptr) == kMaxCopyThreads);
  CHECK(resolve_copy_threads(std::nullopt, "5") == 5);
  CHECK(resolve_copy_threads(std::nullopt, "1") == 1);
  const unsigned cpus = resolve_copy_threads(std::nullopt, nullptr);
  CHECK(cpus >= 1);
  CHECK(cpus <= 8);
  CHECK(cpus <= std::max(1u, std::thread::hardware_concurrency()));
  for (const char* bad : {"", "four", "4x", "-2", " 4"}) {
    CAPTURE(bad);
    CHECK(resolve_copy_threads(std::nullopt, bad) == cpus);
  }
}

// ---- how many CPUs: cgroup quotas ------------------------------------------------

namespace {

/// A temporary folder standing for /sys/fs/cgroup.
struct FakeCgroupFs {
  std::filesystem::path root = std::filesystem::temp_directory_path() /
                               ("tshm-cgroup-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  FakeCgroupFs() { std::filesystem::create_directories(root); }
  ~FakeCgroupFs() { std::filesystem::remove_all(root); }
  void write(const std::string& rel, const std::string& text) const {
    std::filesystem::create_directories((root / rel).parent_path());
    std::ofstream(root / rel) << text;
  }
  std::optional<unsigned> limit(std::string_view proc_self_cgroup) const {
    return cgroup_cpu_limit(proc_self_cgroup, root.string());
  }
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("a_cpu_quota_allows_its_cpus_rounded_up_and_no_quota_allows_any") {
  CHECK(cpus_of_quota(200000, 100000) == 2u);
  CHECK(cpus_of_quota(150000, 100000) == 2u);
  CHECK(cpus_of_quota(50000, 100000) == 1u);
  CHECK(cpus_of_quota(-1, 100000) == std::nullopt);
  CHECK(cpus_of_quota(100000, 0) == std::nullopt);
}

TEST_CASE("the_cgroup_v2_cpu_max_of_the_process_group_limits_the_copy_threads") {
  FakeCgroupFs fs;
  fs.write("app.slice/job/cpu.max", "250000 100000\n");
  CHECK(fs.limit("0::/app.slice/job\n") == 3u);
  fs.write("app.slice/job/cpu.max", "max 100000\n");
  CHECK(fs.limit("0::/app.slice/job\n") == std::nullopt);
  // A quota on an ancestor (a slice's CPUQuota=) limits the groups below it.
  fs.write("app.slice/cpu.max", "200000 100000\n");
  CHECK(fs.limit("0::/app.slice/job\n") == 2u);
  fs.write("app.slice/job/cpu.max", "100000 100000\n");
  CHECK(fs.limit("0::/app.slice/job\n") == 1u);  // the smallest wins
  // In a container's cgroup namespace the group is the mount's root.
  FakeCgroupFs ns;
  ns.write("cpu.max", "100000 100000\n");
  CHECK(ns.limit("0::/\n") == 1u);
  CHECK(ns.limit("0::/not/mounted/here\n") == 1u);
}

TEST_CASE("the_cgroup_v1_cfs_quota_of_the_cpu_hierarchy_limits_the_copy_threads") {
  FakeCgroupFs fs;
  fs.write("cpu/docker/abc/cpu.cfs_quota_us", "300000\n");
  fs.write("cpu/docker/abc/cpu.cfs_period_us", "100000\n");
  const char* self = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
  CHECK(fs.limit(self) == 3u);
  fs.write("cpu/docker/abc/cpu.cfs_quota_us", "-1\n");
  CHECK(fs.limit(self) == std::nullopt);
  fs.write("cpu/docker/cpu.cfs_quota_us", "150000\n");  // the parent group's quota
  fs.write("cpu/docker/cpu.cfs_period_us", "100000\n");
  CHECK(fs.limit(self) == 2u);
  CHECK(fs.limit("4:cpuacct:/docker/abc\n") == std::nullopt);  // no cpu controller line
}

TEST_CASE("no_readable_cgroup_file_means_no_limit_and_the_process_may_use_at_least_one_cpu") {
  FakeCgroupFs fs;
  CHECK(fs.limit("0::/x\n3:cpu:/y\n") == std::nullopt);
  CHECK(fs.limit("garbage") == std::nullopt);
  CHECK(fs.limit("") == std::nullopt);
  fs.write("x/cpu.max", "lots 100000\n");
  CHECK(fs.limit("0::/x\n") == std::nullopt);
  CHECK(usable_cpus() >= 1);
  CHECK(usable_cpus() <= std::max(1u, std::thread::hardware_concurrency()));
}

// ---- polling for a GPU put's reply on a crowded host -------------------------------

TEST_CASE("a_poll_that_got_less_than_three_quarters_of_its_cpu_backs_off_for_a_second") {
  using namespace std::chrono_literals;
  PollBackoff b;
  const auto t = PollBackoff::Clock::now();
  CHECK(b.may_poll(t));
  CHECK_FALSE(b.polled(100us, 0us, t));     // too short to judge
  CHECK_FALSE(b.polled(1000us, 900us, t));  // ran 90 % of the time
  CHECK(b.may_poll(t));
  CHECK(b.polled(1000us, 500us, t));        // ran half of it: crowded out
  CHECK_FALSE(b.may_poll(t + 999ms));
  CHECK(b.may_poll(t + 1000ms));
  CHECK(b.back_offs() == 1);
}

TEST_CASE("a_thread_polling_on_a_cpu_shared_with_two_busy_threads_measures_that_it_was_crowded_out") {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  REQUIRE(::sched_getaffinity(0, sizeof mine, &mine) == 0);
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &mine)) ++cpu;
  REQUIRE(cpu < CPU_SETSIZE);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  std::atomic<bool> stop{false};
  std::atomic<int> pinned{0};
  const auto hog = [&] {
    pinned += ::sched_setaffinity(0, sizeof one, &one) == 0 ? 1 : 100;
    while (!stop.load(std::memory_order_relaxed)) {
    }
  };
  std::thread h1(hog), h2(hog);
  std::chrono::microseconds wall{0}, cpu_time{0};
  bool measured = false;
  std::thread poller([&] {
    if (::sched_setaffinity(0, sizeof one, &one) != 0) return;
    int fds[2];
    if (::pipe(fds) != 0) return;
    pollfd p{fds[0], POLLIN, 0};
    while (pinned.load() < 2) std::this_thread::yield();
    const auto c0 = thread_cpu_time();
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(60)) (void)::poll(&p, 1, 0);
    const auto c1 = thread_cpu_time();
    wall = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    if (c0 && c1) {
      cpu_time = *c1 - *c0;
      measured = true;
    }
    ::close(fds[0]);
    ::close(fds[1]);
  });
  poller.join();
  stop = true;
  h1.join();
  h2.join();
  REQUIRE(pinned.load() == 2);
  REQUIRE(measured);
  CAPTURE(wall.count());
  CAPTURE(cpu_time.count());
  PollBackoff b;
  CHECK(b.polled(wall, cpu_time, PollBackoff::Clock::now()));  // about a third of the CPU
}
