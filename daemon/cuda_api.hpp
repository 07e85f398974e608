// The narrow interface between the copy engine and CUDA: the dozen runtime
// calls the engine makes, each reporting failure as an Error that names the
// call, the object it served and the cudaError_t. The real implementation
// (cuda_api_runtime.cpp) is compiled only when the build has CUDA; the
// host-memory one (host_cuda_api.hpp) lets tests drive the engine's logic on
// machines without a GPU. Nothing here includes a CUDA header: streams and
// events travel as opaque pointers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

/// cudaIpcMemHandle_t / cudaIpcEventHandle_t bytes.
using IpcBytes = std::array<std::uint8_t, 64>;
/// cudaDeviceProp::uuid bytes.
using DeviceUuid = std::array<std::uint8_t, 16>;

class CudaApi {
 public:
  virtual ~CudaApi() = default;

  /// Devices this process can use. An Error with Errc::no_gpu when there is
  /// no driver or no device; another Error when discovery itself failed.
  virtual Result<int> device_count() = 0;
  virtual Result<DeviceUuid> device_uuid(int device) = 0;
  /// "NVIDIA H100 80GB HBM3", for the log.
  virtual std::string device_name(int device) = 0;

  /// A non-blocking stream on `device` (cudaStreamNonBlocking).
  virtual Result<void*> create_stream(int device) = 0;
  virtual Status destroy_stream(int device, void* stream) = 0;
  /// True when all work queued on the stream has finished (cudaStreamQuery);
  /// used at shutdown, where the engine waits a bounded time.
  virtual Result<bool> stream_done(int device, void* stream) = 0;

  /// Page-locks host memory for all devices (cudaHostRegisterPortable).
  virtual Status register_host(void* p, std::size_t bytes, std::string_view what) = 0;
  virtual Status unregister_host(void* p, std::string_view what) = 0;

  /// cudaIpcOpenMemHandle on `device`: the base of the producer's allocation.
  virtual Result<void*> open_mem_handle(int device, const IpcBytes& handle, std::string_view object) = 0;
  virtual Status close_mem_handle(int device, void* base) = 0;
  /// cudaIpcOpenEventHandle on `device`.
  virtual Result<void*> open_event_handle(int device, const IpcBytes& handle, std::string_view object) = 0;
  virtual Status destroy_event(int device, void* event) = 0;

  /// True once the work recorded before `event` has completed (cudaEventQuery).
  /// The engine waits for a producer's event on the host, never with
  /// cudaStreamWaitEvent: a device-side wait on the event of a producer that
  /// died before its work ran never ends, and calls that synchronize the
  /// device (cudaIpcCloseMemHandle among them) then block for ever.
  virtual Result<bool> query_event(int device, void* event, std::string_view object) = 0;
  /// cudaMemcpyAsync device-to-host. Returns at once when `dst` is
  /// page-locked; into pageable memory it returns when the copy is done, so
  /// the engine calls it off the io thread then.
  virtual Status copy_to_host(int device, void* stream, void* dst, const void* src, std::size_t bytes,
                              std::string_view object) = 0;
  /// An event of the daemon's own (cudaEventDisableTiming, not
  /// interprocess), recorded after each copy.
  virtual Result<void*> create_event(int device, std::string_view object) = 0;
  /// cudaEventRecord: `event` completes once the work queued on `stream`
  /// before this call has finished; query_event then says so, or returns the
  /// error that stopped the work. The engine polls it for the end of a copy:
  /// no CUDA callback thread, and no wake-up from it, between the end of the
  /// DMA and the answer.
  virtual Status record_event(int device, void* stream, void* event, std::string_view object) = 0;

  /// Empty while CUDA works; once a call failed with an error that poisons
  /// the process's CUDA context (cudaErrorIllegalAddress, cudaErrorLaunchFailure,
  /// an uncorrectable ECC error, ...: every later call fails the same way
  /// until the process restarts), that failure's message. Any thread.
  virtual std::string lost() const = 0;
};

/// The implementation over the CUDA runtime (static cudart); only in builds
/// with CUDA.
std::unique_ptr<CudaApi> make_runtime_cuda_api();

}  // namespace tensorshm::daemon
