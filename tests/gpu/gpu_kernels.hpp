// Host-side launcher of the GPU checks' kernel (gpu_kernels.cu): waits about
// `cycles` clock ticks on the GPU, then sets p[i] = base + i % 251.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace tshm_gpu {

template <class T>
cudaError_t launch_slow_fill(T* p, std::size_t n, T base, cudaStream_t stream, long long cycles);

}  // namespace tshm_gpu
