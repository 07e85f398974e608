// The one kernel the GPU checks need, compiled by nvcc as C++17 (the checks
// themselves are C++20 host code): spin for a while, then fill. Launched on
// the producer's stream right before put_cuda, it proves that the daemon's
// copy waits for the producer's queued work.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "gpu_kernels.hpp"

namespace {

template <class T>
__global__ void slow_fill(T* p, std::size_t n, long long cycles, T base) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = static_cast<T>(base + static_cast<T>(i % 251));
}

}  // namespace

namespace tshm_gpu {

template <class T>
cudaError_t launch_slow_fill(T* p, std::size_t n, T base, cudaStream_t stream, long long cycles) {
  slow_fill<T><<<256, 256, 0, stream>>>(p, n, cycles, base);
  return cudaGetLastError();
}

template cudaError_t launch_slow_fill<float>(float*, std::size_t, float, cudaStream_t, long long);
template cudaError_t launch_slow_fill<double>(double*, std::size_t, double, cudaStream_t, long long);
template cudaError_t launch_slow_fill<int>(int*, std::size_t, int, cudaStream_t, long long);
template cudaError_t launch_slow_fill<std::int8_t>(std::int8_t*, std::size_t, std::int8_t, cudaStream_t, long long);
template cudaError_t launch_slow_fill<std::int64_t>(std::int64_t*, std::size_t, std::int64_t, cudaStream_t,
                                                    long long);

}  // namespace tshm_gpu
