// The CUDA runtime behind the engine's narrow interface, and the factory the
// daemon calls at start. cudart is linked statically, so tensorshmd starts
// on machines without a driver: discovery then fails with no_gpu, the factory
// logs it once and the daemon serves CPU-only. Every call goes through
// cuda_call, which records the call, the object and the cudaError_t. Calls
// that act on a device first make it current on the calling thread.
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <memory>
#include <atomic>
#include <mutex>
#include <string>

#include "config.hpp"
#include "cuda_api.hpp"
#include "cuda_copy_engine.hpp"
#include "log.hpp"
#include "tensorshm/cuda_call.hpp"

namespace tensorshm::daemon {
namespace {

template <class T>
T from_bytes(const IpcBytes& b) {
  static_assert(sizeof(T) == sizeof(IpcBytes));
  T t;
  std::memcpy(&t, b.data(), sizeof t);
  return t;
}

class RuntimeCudaApi final : public CudaApi {
 public:
  Result<int> device_count() override {
    int n = 0;
    TSHM_TRY(call("cudaGetDeviceCount", "discovery", [&] { return cudaGetDeviceCount(&n); }));
    return n;
  }

  Result<DeviceUuid> device_uuid(int device) override {
    cudaDeviceProp prop{};
    TSHM_TRY(call("cudaGetDeviceProperties", "device " + std::to_string(device),
                       [&] { return cudaGetDeviceProperties(&prop, device); }));
    DeviceUuid u{};
    std::memcpy(u.data(), prop.uuid.bytes, u.size());
    name_cache_[device] = prop.name;
    return u;
  }

  std::string device_name(int device) override {
    if (auto it = name_cache_.find(device); it != name_cache_.end()) return it->second;
    return "device " + std::to_string(device);
  }

  Result<void*> create_stream(int device) override {
    TSHM_TRY(use(device));
    cudaStream_t s = nullptr;
    TSHM_TRY(call("cudaStreamCreateWithFlags", "copy stream of device " + std::to_string(device),
                       [&] { return cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); }));
    return static_cast<void*>(s);
  }

  Status destroy_stream(int device, void* stream) override {
    TSHM_TRY(use(device));
    return call("cudaStreamDestroy", "copy stream", [&] { return cudaStreamDestroy(as_stream(stream)); });
  }

  Result<bool> stream_done(int device, void* stream) override {
    TSHM_TRY(use(device));
    const cudaError_t e = cudaStreamQuery(as_stream(stream));
    if (e == cudaErrorNotReady) return false;
    TSHM_TRY(call("cudaStreamQuery", "copy stream", [&] { return e; }));
    return true;
  }

  Status register_host(void* p, std::size_t bytes, std::string_view what) override {
    return call("cudaHostRegister", what, [&] { return cudaHostRegister(p, bytes, cudaHostRegisterPortable); });
  }

  Status unregister_host(void* p, std::string_view what) override {
    return call("cudaHostUnregister", what, [&] { return cudaHostUnregister(p); });
  }

  Result<void*> open_mem_handle(int device, const IpcBytes& handle, std::string_view object) override {
    TSHM_TRY(use(device));
    void* base = nullptr;
    TSHM_TRY(call("cudaIpcOpenMemHandle", object, [&] {
      return cudaIpcOpenMemHandle(&base, from_bytes<cudaIpcMemHandle_t>(handle), cudaIpcMemLazyEnablePeerAccess);
    }));
    return base;
  }

  Status close_mem_handle(int device, void* base) override {
    TSHM_TRY(use(device));
    return call("cudaIpcCloseMemHandle", "producer allocation", [&] { return cudaIpcCloseMemHandle(base); });
  }

  Result<void*> open_event_handle(int device, const IpcBytes& handle, std::string_view object) override {
    TSHM_TRY(use(device));
    cudaEvent_t ev = nullptr;
    TSHM_TRY(call("cudaIpcOpenEventHandle", object,
                       [&] { return cudaIpcOpenEventHandle(&ev, from_bytes<cudaIpcEventHandle_t>(handle)); }));
    return static_cast<void*>(ev);
  }

  Status destroy_event(int device, void* event) override {
    TSHM_TRY(use(device));
    return call("cudaEventDestroy", "event", [&] { return cudaEventDestroy(as_event(event)); });
  }

  Result<bool> query_event(int device, void* event, std::string_view object) override {
    TSHM_TRY(use(device));
    const cudaError_t e = cudaEventQuery(as_event(event));
    if (e == cudaErrorNotReady) return false;
    TSHM_TRY(call("cudaEventQuery", object, [&] { return e; }));
    return true;
  }

  Status copy_to_host(int device, void* stream, void* dst, const void* src, std::size_t bytes,
                      std::string_view object) override {
    TSHM_TRY(use(device));
    return call("cudaMemcpyAsync", object, [&] {
      return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream));
    });
  }

  Result<void*> create_event(int device, std::string_view object) override {
    TSHM_TRY(use(device));
    cudaEvent_t ev = nullptr;
    TSHM_TRY(call("cudaEventCreateWithFlags", object,
                       [&] { return cudaEventCreateWithFlags(&ev, cudaEventDisableTiming); }));
    return static_cast<void*>(ev);
  }

  Status record_event(int device, void* stream, void* event, std::string_view object) override {
    TSHM_TRY(use(device));
    return call("cudaEventRecord", object, [&] { return cudaEventRecord(as_event(event), as_stream(stream)); });
  }

  std::string lost() const override {
    if (!is_lost_.load(std::memory_order_acquire)) return {};  // every put asks: no lock, no copy
    std::lock_guard lk(lost_mu_);
    return lost_;
  }

 private:
  /// cuda_call, noting the first error that poisons the context.
  template <class Fn>
  Status call(std::string_view name, std::string_view object, Fn&& fn) {
    const cudaError_t e = fn();
    if (e != cudaSuccess && cuda_poisons_context(e)) {
      // Every later put hears this, whoever sent it: the call and the error,
      // not the object (another user's name); the log has the whole message.
      std::lock_guard lk(lost_mu_);
      if (lost_.empty()) {
        lost_ = std::string(name) + ": " + cudaGetErrorName(e) + " (error " + std::to_string(static_cast<int>(e)) + ")";
        is_lost_.store(true, std::memory_order_release);
        log::error("the CUDA context is lost: ", cuda_error(name, object, e).message,
                   "; GPU puts fail until tensorshmd restarts");
      }
    }
    return cuda_call(name, object, [e] { return e; });
  }

  static cudaStream_t as_stream(void* p) { return static_cast<cudaStream_t>(p); }
  static cudaEvent_t as_event(void* p) { return static_cast<cudaEvent_t>(p); }

  /// Makes `device` current on this thread (the engine thread and the helper
  /// thread each have their own current device).
  static Status use(int device) {
    thread_local int current = -1;
    if (current == device) return ok_status();
    TSHM_TRY(cuda_call("cudaSetDevice", "device " + std::to_string(device), [&] { return cudaSetDevice(device); }));
    current = device;
    return ok_status();
  }

  std::map<int, std::string> name_cache_;
  mutable std::mutex lost_mu_;
  std::string lost_;  // the first failure that poisoned the context; empty: none
  std::atomic<bool> is_lost_{false};  // lost_ is set
};

}  // namespace

std::unique_ptr<CudaApi> make_runtime_cuda_api() { return std::make_unique<RuntimeCudaApi>(); }

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const Config& config, boost::asio::io_context& io, Pool& pool) {
  CudaCopyEngine::Options options;
  options.handle_cache = config.cuda_handle_cache;
  options.copy_timeout = std::chrono::milliseconds(config.cuda_copy_timeout_ms);
  options.linger = std::chrono::microseconds(config.cuda_linger_us);
  options.io_spin = config.cuda_io_spin;
  options.wake_ahead = config.cuda_wake_ahead;
  auto engine = CudaCopyEngine::create(make_runtime_cuda_api(), io, options);
  if (!engine) {
    log::notice("no usable GPU (", engine.error().message,
                "): serving CPU-only; GPU puts fail with no_gpu \"this daemon has no GPU\"");
    return nullptr;
  }
  (*engine)->attach(pool);
  return std::move(*engine);
}

}  // namespace tensorshm::daemon
