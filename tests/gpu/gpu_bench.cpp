// Device-to-host into the pool against the best a process can do alone: for
// each size from 4 KiB to 1 GiB, the median wall time of
//   raw:  cudaMemcpyAsync into cudaHostAlloc memory + cudaStreamSynchronize
//   shm:  cudaMemcpyAsync into shared memory pinned with cudaHostRegister (the
//         kind of memory the pool is) + cudaStreamSynchronize: separates what
//         the memory costs from what the protocol costs
//   cold: the same, but into a different quarter of a 4x larger pinned shm
//         region each time, as the pool's extents move from put to put (the
//         GPU's translations for the destination are not warm), with 4 KiB
//         pages (cold4k) and with transparent huge pages (cold2m, anonymous
//         memory with MADV_HUGEPAGE; how much became huge is printed)
//   raw_block: raw, but waiting in cudaEventSynchronize on a
//         cudaEventBlockingSync event (the thread sleeps, as one waiting for
//         a reply on a socket does) instead of cudaStreamSynchronize's spin
//   pool: put_cuda (event record, request, the daemon's wait + copy into the
//         pinned pool, seal, reply)
// and pool_nospin, put_cuda with Client::Options::spin_wait off (the reply
// awaited asleep in recv), measured in the same process on the same stream
// and source buffer. Prints
// one line per size ("d2h size=... raw_GBps=... pool_GBps=... ratio=...") and
// needs a running tensorshmd ($TENSORSHM_SOCKET) with room for two copies of
// the largest size in one pool segment.
//
//   tshm_gpu_bench [max_bytes]
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensorshm/client.hpp"
#include "tensorshm/cuda.hpp"

using namespace tensorshm;
using Clock = std::chrono::steady_clock;

namespace {

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// `bytes` of pinned host memory: a memfd mapping (4 KiB pages, like the
/// pool's segments) or anonymous memory advised to use huge pages.
void* pinned_region(std::size_t bytes, bool huge) {
  void* p = MAP_FAILED;
  if (huge) {
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap anonymous");
    if (madvise(p, bytes, MADV_HUGEPAGE) != 0) std::perror("madvise(MADV_HUGEPAGE)");
    std::memset(p, 0, bytes);
  } else {
    const int fd = memfd_create("tshm-bench-shm", 0);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) throw std::runtime_error("memfd_create/ftruncate");
    p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("mmap of the memfd");
  }
  cuda_ok(cudaHostRegister(p, bytes, cudaHostRegisterPortable), "cudaHostRegister");
  return p;
}

long anon_huge_kb() {
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kb = -1;
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
  std::fclose(f);
  return kb;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::size_t max_bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : (1ull << 30);
  auto client = Client::connect();
  Client::Options sleepy_options;
  sleepy_options.spin_wait = false;
  auto sleepy = Client::connect(sleepy_options);
  cudaEvent_t blocking = nullptr;
  cudaStream_t s;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  void* src = nullptr;
  void* host = nullptr;
  cuda_ok(cudaMalloc(&src, max_bytes), "cudaMalloc");
  cuda_ok(cudaMemset(src, 0x5a, max_bytes), "cudaMemset");
  cuda_ok(cudaHostAlloc(&host, max_bytes, cudaHostAllocDefault), "cudaHostAlloc");
  void* shm = pinned_region(max_bytes, false);
  auto* cold4k = static_cast<std::byte*>(pinned_region(4 * max_bytes, false));
  auto* cold2m = static_cast<std::byte*>(pinned_region(4 * max_bytes, true));
  std::printf("cold2m: %ld MiB of %zu MiB anonymous memory in huge pages\n", anon_huge_kb() / 1024,
              4 * max_bytes >> 20);
  cuda_ok(cudaEventCreateWithFlags(&blocking, cudaEventBlockingSync | cudaEventDisableTiming), "cudaEventCreate");
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  cudaDeviceProp prop{};
  cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device %s; daemon %s, %d GPU(s)\n", prop.name, client.daemon_info().daemon_version.c_str(),
              client.daemon_info().cuda_devices);

  for (std::size_t n = 4096; n <= max_bytes; n *= 4) {
    const int reps = static_cast<int>(std::clamp<std::size_t>((std::size_t{2} << 30) / n, 5, 200));
    std::vector<double> raw, reg, c4k, c2m, blk, pool, nospin;
    const std::int64_t shape[] = {static_cast<std::int64_t>(n)};
    // Warm up both paths (first-touch costs, opening the IPC handle once).
    cuda_ok(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, s), "warm-up copy");
    cuda_ok(cudaStreamSynchronize(s), "sync");
    put_cuda(client, "bench/d2h", src, dtypes::kUInt8, shape, {}, s);
    put_cuda(sleepy, "bench/d2h-nospin", src, dtypes::kUInt8, shape, {}, s);
    // Times one way of moving the n bytes and records it.
    auto timed = [](std::vector<double>& into, auto&& work) {
      const auto t0 = Clock::now();
      work();
      into.push_back(seconds_since(t0));
    };
    auto copy_into = [&](void* dst) {
      return [&, dst] {
        cuda_ok(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
        cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      };
    };
    for (int r = 0; r < reps; ++r) {
      const std::size_t slot = static_cast<std::size_t>(r % 4) * max_bytes;
      timed(raw, copy_into(host));
      timed(reg, copy_into(shm));
      timed(c4k, copy_into(cold4k + slot));
      timed(c2m, copy_into(cold2m + slot));
      timed(blk, [&] {
        cuda_ok(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
        cuda_ok(cudaEventRecord(blocking, s), "cudaEventRecord");
        cuda_ok(cudaEventSynchronize(blocking), "cudaEventSynchronize");
      });
      timed(nospin, [&] { put_cuda(sleepy, "bench/d2h-nospin", src, dtypes::kUInt8, shape, {}, s); });
      timed(pool, [&] { put_cuda(client, "bench/d2h", src, dtypes::kUInt8, shape, {}, s); });
    }
    const double r = median(raw), g = median(reg), k = median(c4k), h = median(c2m), p = median(pool);
    const double b = median(blk), q = median(nospin);
    std::printf("d2h size=%zu reps=%d raw_us=%.1f shm_us=%.1f cold4k_us=%.1f cold2m_us=%.1f pool_us=%.1f "
                "raw_GBps=%.2f pool_GBps=%.2f ratio=%.3f ratio_vs_shm=%.3f ratio_vs_cold4k=%.3f cold4k_vs_raw=%.3f "
                "cold2m_vs_raw=%.3f raw_block_us=%.1f pool_nospin_us=%.1f raw_block_vs_raw=%.3f ratio_nospin=%.3f\n",
                n, reps, r * 1e6, g * 1e6, k * 1e6, h * 1e6, p * 1e6, n / r / 1e9, n / p / 1e9, r / p, g / p, k / p,
                r / k, r / h, b * 1e6, q * 1e6, r / b, r / q);
    std::fflush(stdout);
  }
  client.remove("bench/d2h");
  sleepy.remove("bench/d2h-nospin");
  cudaEventDestroy(blocking);
  for (auto [q, len] : {std::pair<void*, std::size_t>{shm, max_bytes}, {cold4k, 4 * max_bytes}, {cold2m, 4 * max_bytes}}) {
    cudaHostUnregister(q);
    munmap(q, len);
  }
  cudaFreeHost(host);
  cudaFree(src);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tshm_gpu_bench: %s\n", e.what());
  return 1;
}
