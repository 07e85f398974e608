// Unit tests of the client library's internals, with no daemon: the parallel
// copies of a put (libclient/src/parallel_copy.hpp) against the plain ones,
// for every split, layout and thread count, from several threads at once and
// in a forked child.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "parallel_copy.hpp"
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
  }
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
    const bool ok = copies_exactly(8 * kMiB, 4, 12) && copy_helpers_started() >= 3;
    ::_exit(ok ? 0 : 1);
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
  CHECK(cpus <= std::thread::hardware_concurrency());
  for (const char* bad : {"", "four", "4x", "-2", " 4"}) {
    CAPTURE(bad);
    CHECK(resolve_copy_threads(std::nullopt, bad) == cpus);
  }
}
