// Device-to-host into the pool against the best a process can do alone: for
// each size from 4 KiB to 1 GiB, the median wall time of
//   raw:  cudaMemcpyAsync into cudaHostAlloc memory + cudaStreamSynchronize
//   shm:  cudaMemcpyAsync into shared memory pinned with cudaHostRegister (the
//         kind of memory the pool is) + cudaStreamSynchronize: separates what
//         the memory costs from what the protocol costs
//   pool: put_cuda (event record, request, the daemon's wait + copy into the
//         pinned pool, seal, reply)
// measured in the same process on the same stream and source buffer. Prints
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

}  // namespace

int main(int argc, char** argv) try {
  const std::size_t max_bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : (1ull << 30);
  auto client = Client::connect();
  cudaStream_t s;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  void* src = nullptr;
  void* host = nullptr;
  cuda_ok(cudaMalloc(&src, max_bytes), "cudaMalloc");
  cuda_ok(cudaMemset(src, 0x5a, max_bytes), "cudaMemset");
  cuda_ok(cudaHostAlloc(&host, max_bytes, cudaHostAllocDefault), "cudaHostAlloc");
  const int fd = memfd_create("tshm-bench-shm", 0);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(max_bytes)) != 0) throw std::runtime_error("memfd_create/ftruncate");
  void* shm = mmap(nullptr, max_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (shm == MAP_FAILED) throw std::runtime_error("mmap of the memfd");
  close(fd);
  cuda_ok(cudaHostRegister(shm, max_bytes, cudaHostRegisterPortable), "cudaHostRegister");
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  cudaDeviceProp prop{};
  cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device %s; daemon %s, %d GPU(s)\n", prop.name, client.daemon_info().daemon_version.c_str(),
              client.daemon_info().cuda_devices);

  for (std::size_t n = 4096; n <= max_bytes; n *= 4) {
    const int reps = static_cast<int>(std::clamp<std::size_t>((std::size_t{2} << 30) / n, 5, 200));
    std::vector<double> raw, reg, pool;
    const std::int64_t shape[] = {static_cast<std::int64_t>(n)};
    // Warm up both paths (first-touch costs, opening the IPC handle once).
    cuda_ok(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, s), "warm-up copy");
    cuda_ok(cudaStreamSynchronize(s), "sync");
    put_cuda(client, "bench/d2h", src, dtypes::kUInt8, shape, {}, s);
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      cuda_ok(cudaMemcpyAsync(host, src, n, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
      cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      raw.push_back(seconds_since(t0));
      t0 = Clock::now();
      cuda_ok(cudaMemcpyAsync(shm, src, n, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync into shm");
      cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      reg.push_back(seconds_since(t0));
      t0 = Clock::now();
      put_cuda(client, "bench/d2h", src, dtypes::kUInt8, shape, {}, s);
      pool.push_back(seconds_since(t0));
    }
    const double r = median(raw), g = median(reg), p = median(pool);
    std::printf("d2h size=%zu reps=%d raw_us=%.1f shm_us=%.1f pool_us=%.1f raw_GBps=%.2f shm_GBps=%.2f "
                "pool_GBps=%.2f ratio=%.3f ratio_vs_shm=%.3f\n",
                n, reps, r * 1e6, g * 1e6, p * 1e6, n / r / 1e9, n / g / 1e9, n / p / 1e9, r / p, g / p);
    std::fflush(stdout);
  }
  client.remove("bench/d2h");
  cudaHostUnregister(shm);
  munmap(shm, max_bytes);
  cudaFreeHost(host);
  cudaFree(src);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tshm_gpu_bench: %s\n", e.what());
  return 1;
}
