// GPU producers: hand device memory to tensorshmd without synchronizing the
// device. The client exports the allocation with cudaIpcGetMemHandle (cached
// per allocation base), records an interprocess event on `stream` after the
// producer's pending work, and sends both; the daemon waits on the event on
// its own stream and copies device-to-host straight into pinned shared memory.
//
// This header needs no CUDA headers: streams travel as void* (cudaStream_t).
// In a libtensorshm built without CUDA every call throws Exception(no_gpu).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "tensorshm/client.hpp"

namespace tensorshm {

/// True when this libtensorshm was built with CUDA support (it may still find
/// no device at run time).
bool cuda_supported() noexcept;

/// Copies `shape`/`strides` (elements; empty strides: C order) of device
/// memory at `device_ptr` into a new version of `name`. Ordered after the work
/// already queued on `stream` (nullptr: the legacy default stream). Returns
/// once the daemon says the device memory may be reused.
ObjectInfo put_cuda(Client& client, std::string_view name, const void* device_ptr, DType dtype,
                    std::span<const std::int64_t> shape, std::span<const std::int64_t> strides, void* stream,
                    const CreateOptions& options = {});

/// The asynchronous variant: returns at once; get() blocks until the daemon
/// answers. The device memory must stay allocated and unmodified until then.
class CudaPutFuture {
 public:
  CudaPutFuture();
  CudaPutFuture(CudaPutFuture&&) noexcept;
  CudaPutFuture& operator=(CudaPutFuture&&) noexcept;
  ~CudaPutFuture();  // waits if still pending
  bool ready() const;
  ObjectInfo get();

 private:
  friend CudaPutFuture put_cuda_async(Client&, std::string_view, const void*, DType, std::span<const std::int64_t>,
                                      std::span<const std::int64_t>, void*, const CreateOptions&);
  struct State;
  std::shared_ptr<State> state_;
};

CudaPutFuture put_cuda_async(Client& client, std::string_view name, const void* device_ptr, DType dtype,
                             std::span<const std::int64_t> shape, std::span<const std::int64_t> strides,
                             void* stream, const CreateOptions& options = {});

}  // namespace tensorshm
