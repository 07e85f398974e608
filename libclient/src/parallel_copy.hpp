// Copies into objects with several threads: one core's memcpy reaches a
// fraction of the memory bandwidth (about 7 GB/s on the development VM, where
// two threads reach 12 GB/s), so a put of a large array splits its copy
// between the calling thread and a small per-process pool of helper threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace tensorshm::detail {

/// Copies below this many bytes stay on the calling thread: waking a helper
/// costs tens of microseconds.
inline constexpr std::size_t kParallelCopyMin = std::size_t{2} << 20;
/// Each thread of a parallel copy moves at least this many bytes.
inline constexpr std::size_t kParallelCopyGrain = std::size_t{1} << 20;
/// Threads of one copy, the caller included, at most.
inline constexpr unsigned kMaxCopyThreads = 64;

/// The threads a client copies with: `requested` when given (0 counts as 1),
/// else $TENSORSHM_COPY_THREADS when it is a number, else the CPUs this
/// process may use (cpu_budget.hpp: its affinity mask and its cgroup's CPU
/// quota), at most 8 (more rarely add bandwidth); at most kMaxCopyThreads.
unsigned resolve_copy_threads(std::optional<unsigned> requested, const char* env);

/// memcpy of `n` bytes with up to `threads` threads, the caller included:
/// parts of at least kParallelCopyGrain, on the calling thread alone below
/// kParallelCopyMin or with threads <= 1. The ranges must not overlap.
void copy_bytes(void* dst, const void* src, std::size_t n, unsigned threads) noexcept;

/// strided_copy (strided_copy.hpp) with up to `threads` threads, split along
/// the outermost dimension when the copy moves at least kParallelCopyMin.
void strided_copy_parallel(void* dst, std::span<const std::int64_t> dst_strides, const void* src,
                           std::span<const std::int64_t> src_strides, std::span<const std::int64_t> shape,
                           std::int64_t itemsize, unsigned threads) noexcept;

/// The helper threads this process has started for copies, and the chunks
/// of copies they ran (tests).
unsigned copy_helpers_started();
std::uint64_t copy_chunks_by_helpers();

}  // namespace tensorshm::detail
