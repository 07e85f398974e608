// GPU producers: hand device memory to tensorshmd without synchronizing the
// device. The client exports the allocation with cudaIpcGetMemHandle (cached
// per allocation base), records an interprocess event on `stream` after the
// producer's pending work, and sends both; the daemon waits for the event
// (polling it, never blocking the producer) and then copies device-to-host on
// its own stream straight into pinned shared memory.
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
/// already queued on `stream` (nullptr: the legacy default stream of the
/// data's device); `stream` must belong to the device holding the data.
/// Returns once the daemon says the device memory may be reused.
///
/// The memory must come from cudaMalloc (directly or through a caching
/// allocator such as PyTorch's): memory from cudaMallocAsync pools,
/// cuMemCreate or managed memory cannot be exported and fails with
/// invalid_argument. Non-negative strides of any kind are accepted: the
/// daemon copies the bytes the layout spans in one piece, gaps included, so
/// pack sparse views (a column of a big matrix) on the device first.
/// Errors: no_gpu (no driver or device here, or a daemon serving CPU-only),
/// cuda_error (a CUDA call failed; the message names it), and the errors of
/// Client::create.
ObjectInfo put_cuda(Client& client, std::string_view name, const void* device_ptr, DType dtype,
                    std::span<const std::int64_t> shape, std::span<const std::int64_t> strides, void* stream,
                    const CreateOptions& options = {});

/// The asynchronous variant: records the event (so the copy is ordered after
/// the work queued on `stream` at the call), then returns; get() blocks until
/// the daemon answers. The device memory must stay allocated and unmodified
/// until then. The request travels on the client's connection from a helper
/// thread, so other calls on the same Client wait until it is answered; use
/// one Client per thread for overlapping puts.
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

/// Tells the daemon to close its mapping of the allocation holding
/// `device_ptr`. Call it before freeing memory you have put from, when the
/// producer process lives on: otherwise the daemon keeps the allocation
/// mapped (and its GPU memory in use) until its per-connection cache evicts
/// it or the connection ends. A new allocation at a freed one's address is
/// noticed by the next put, which closes the old mapping itself.
void forget_cuda(Client& client, const void* device_ptr);

}  // namespace tensorshm
