// GPU producers over the CUDA runtime (tensorshm/cuda.hpp). A put finds the
// allocation holding the data (cudaPointerGetAttributes for the device, the
// driver's cuMemGetAddressRange and cuPointerGetAttributes, fetched through
// cudaGetDriverEntryPointByVersion, for its base, size and process-unique
// buffer id), exports it once (cudaIpcGetMemHandle, cached per allocation and
// re-exported when a new allocation appears at the same base), records an
// interprocess event from a small per-device ring on the caller's stream and
// sends CudaPut. The daemon waits on that event on its own stream, so the
// producer never synchronizes. An event slot is reused only after the daemon
// answered the put that recorded it.
#include <cuda.h>  // driver types only; the functions come through the runtime
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "connection.hpp"
#include "tensorshm/cuda.hpp"
#include "tensorshm/cuda_call.hpp"
#include "tensorshm/protocol.hpp"

namespace tensorshm {
namespace {

using IpcBytes = std::array<std::uint8_t, 64>;

[[noreturn]] void raise(const Error& e) { throw Exception(e); }
void check(const Status& s) {
  if (!s) raise(s.error());
}
template <class T>
T unwrap(Result<T>&& r) {
  if (!r) raise(r.error());
  return std::move(r).value();
}

// ---- the allocation behind a pointer -------------------------------------------

struct Allocation {
  int device = 0;
  std::uintptr_t base = 0;
  std::size_t size = 0;
  std::uint64_t buffer_id = 0;
};

struct DriverCalls {
  PFN_cuMemGetAddressRange_v3020 get_address_range = nullptr;
  PFN_cuPointerGetAttributes_v7000 get_pointer_attributes = nullptr;
  Status status = ok_status();
};

Status driver_symbol(const char* name, void** fn) {
  cudaDriverEntryPointQueryResult found{};
  TSHM_TRY(cuda_call("cudaGetDriverEntryPointByVersion", name, [&] {
    return cudaGetDriverEntryPointByVersion(name, fn, 12000, cudaEnableDefault, &found);
  }));
  if (found != cudaDriverEntryPointSuccess || *fn == nullptr)
    return Error{Errc::cuda_error, std::string("the CUDA driver has no ") + name + " (driver too old?)"};
  return ok_status();
}

const DriverCalls& driver() {
  static const DriverCalls calls = [] {
    DriverCalls c;
    void* fn = nullptr;
    if (auto s = driver_symbol("cuMemGetAddressRange", &fn); !s) c.status = s;
    c.get_address_range = reinterpret_cast<PFN_cuMemGetAddressRange_v3020>(fn);
    fn = nullptr;
    if (auto s = driver_symbol("cuPointerGetAttributes", &fn); !s && c.status) c.status = s;
    c.get_pointer_attributes = reinterpret_cast<PFN_cuPointerGetAttributes_v7000>(fn);
    return c;
  }();
  return calls;
}

Error driver_error(const char* call, std::string_view object, CUresult r) {
  return Error{Errc::cuda_error, std::string(call) + "(" + std::string(object) + "): CUresult " +
                                     std::to_string(static_cast<int>(r))};
}

Result<Allocation> find_allocation(const void* p, std::string_view object) {
  cudaPointerAttributes attr{};
  if (auto st = cuda_call("cudaPointerGetAttributes", object, [&] { return cudaPointerGetAttributes(&attr, p); });
      !st) {
    if (st.error().code != Errc::no_gpu) return st.error();
    return Error{Errc::no_gpu, std::string(object) + ": this process has no usable CUDA driver or device (" +
                                   st.error().message + ")"};
  }
  if (attr.type != cudaMemoryTypeDevice) {
    const char* kind = attr.type == cudaMemoryTypeHost      ? "page-locked host memory"
                       : attr.type == cudaMemoryTypeManaged ? "managed (unified) memory"
                                                            : "not CUDA memory";
    return Error{Errc::invalid_argument, std::string(object) + ": the pointer is " + kind +
                                             ", not device memory; put host data with Client::put, and managed "
                                             "memory after copying it to a cudaMalloc buffer"};
  }
  const DriverCalls& d = driver();
  TSHM_TRY(d.status);
  Allocation a;
  a.device = attr.device;
  CUdeviceptr base = 0;
  if (CUresult r = d.get_address_range(&base, &a.size, reinterpret_cast<CUdeviceptr>(p)); r != CUDA_SUCCESS)
    return driver_error("cuMemGetAddressRange", object, r);
  a.base = static_cast<std::uintptr_t>(base);
  unsigned long long buffer_id = 0, ipc_capable = 0;  // the driver writes a bool into the low byte
  CUpointer_attribute which[] = {CU_POINTER_ATTRIBUTE_BUFFER_ID, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE};
  void* out[] = {&buffer_id, &ipc_capable};
  if (CUresult r = d.get_pointer_attributes(2, which, out, reinterpret_cast<CUdeviceptr>(p)); r != CUDA_SUCCESS)
    return driver_error("cuPointerGetAttributes", object, r);
  if (ipc_capable == 0)
    return Error{Errc::invalid_argument,
                 std::string(object) +
                     ": this GPU memory cannot be exported with cudaIpcGetMemHandle (it comes from "
                     "cudaMallocAsync pools or cuMemCreate; with PyTorch unset "
                     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True); allocate it with cudaMalloc"};
  a.buffer_id = buffer_id;
  return a;
}

// ---- exported handles, one per allocation ---------------------------------------

/// Process-wide cache of cudaIpcGetMemHandle results keyed by allocation
/// base. The driver's buffer id tells a live allocation from a new one made
/// at the same address after a free; the stale handle is then returned so
/// that the daemon can be told to close it.
class ExportCache {
 public:
  Result<IpcBytes> handle_for(const Allocation& a, const void* p, std::string_view object,
                              std::optional<IpcBytes>* stale) {
    std::lock_guard lk(mu_);
    if (auto it = entries_.find(a.base); it != entries_.end()) {
      if (it->second.buffer_id == a.buffer_id) return it->second.handle;
      *stale = it->second.handle;
      entries_.erase(it);
    }
    cudaIpcMemHandle_t h{};
    TSHM_TRY(cuda_call("cudaIpcGetMemHandle", object,
                       [&] { return cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(a.base)); }));
    (void)p;
    IpcBytes bytes{};
    std::memcpy(bytes.data(), &h, bytes.size());
    if (entries_.size() >= kMaxEntries) entries_.clear();
    entries_[a.base] = Entry{a.buffer_id, bytes};
    return bytes;
  }
  /// Forgets the allocation at `base`; its handle when it was exported.
  std::optional<IpcBytes> take(std::uintptr_t base) {
    std::lock_guard lk(mu_);
    auto it = entries_.find(base);
    if (it == entries_.end()) return std::nullopt;
    IpcBytes h = it->second.handle;
    entries_.erase(it);
    return h;
  }

 private:
  static constexpr std::size_t kMaxEntries = 4096;
  struct Entry {
    std::uint64_t buffer_id;
    IpcBytes handle;
  };
  std::mutex mu_;
  std::map<std::uintptr_t, Entry> entries_;
};

ExportCache& exports() {
  static ExportCache c;
  return c;
}

// ---- devices and the event ring --------------------------------------------------

/// Makes a device current for the guard's lifetime, then restores the
/// caller's.
class DeviceGuard {
 public:
  Status enter(int device) {
    TSHM_TRY(cuda_call("cudaGetDevice", "current device", [&] { return cudaGetDevice(&previous_); }));
    if (previous_ == device) return ok_status();
    TSHM_TRY(cuda_call("cudaSetDevice", "device " + std::to_string(device), [&] { return cudaSetDevice(device); }));
    changed_ = true;
    return ok_status();
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool changed_ = false;
};

Result<std::array<std::uint8_t, 16>> device_uuid(int device) {
  static std::mutex mu;
  static std::map<int, std::array<std::uint8_t, 16>> uuids;
  std::lock_guard lk(mu);
  if (auto it = uuids.find(device); it != uuids.end()) return it->second;
  cudaDeviceProp prop{};
  TSHM_TRY(cuda_call("cudaGetDeviceProperties", "device " + std::to_string(device),
                     [&] { return cudaGetDeviceProperties(&prop, device); }));
  std::array<std::uint8_t, 16> u{};
  std::memcpy(u.data(), prop.uuid.bytes, u.size());
  uuids[device] = u;
  return u;
}

/// Interprocess events (cudaEventInterprocess | cudaEventDisableTiming), made
/// on demand up to kSlots per device and reused; each one's IPC handle is
/// exported once. A slot is busy from its record until the daemon answered.
class EventRing {
 public:
  static constexpr std::size_t kSlots = 32;
  struct Slot {
    cudaEvent_t event = nullptr;
    IpcBytes handle{};
    bool busy = false;
  };

  /// A free slot on `device` (current on this thread), waiting while all are busy.
  Result<std::size_t> acquire(int device, std::string_view object) {
    std::unique_lock lk(mu_);
    auto& slots = rings_[device];
    for (;;) {
      for (std::size_t i = 0; i < slots.size(); ++i)
        if (!slots[i].busy) {
          slots[i].busy = true;
          return i;
        }
      if (slots.size() < kSlots) break;
      freed_.wait(lk);
    }
    Slot s;
    TSHM_TRY(cuda_call("cudaEventCreateWithFlags", object, [&] {
      return cudaEventCreateWithFlags(&s.event, cudaEventInterprocess | cudaEventDisableTiming);
    }));
    cudaIpcEventHandle_t h{};
    if (auto st = cuda_call("cudaIpcGetEventHandle", object, [&] { return cudaIpcGetEventHandle(&h, s.event); }); !st) {
      (void)cudaEventDestroy(s.event);
      return st.error();
    }
    std::memcpy(s.handle.data(), &h, s.handle.size());
    s.busy = true;
    slots.push_back(s);
    return slots.size() - 1;
  }
  Slot slot(int device, std::size_t i) {
    std::lock_guard lk(mu_);
    return rings_[device][i];
  }
  void release(int device, std::size_t i) {
    {
      std::lock_guard lk(mu_);
      rings_[device][i].busy = false;
    }
    freed_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable freed_;
  std::map<int, std::vector<Slot>> rings_;  // never shrinks: events live as long as the process
};

EventRing& events() {
  static auto* ring = new EventRing;  // never destroyed: CUDA may be torn down first at exit
  return *ring;
}

/// Gives an event slot back when the put that used it is over.
struct SlotLease {
  int device = -1;
  std::size_t index = 0;
  SlotLease() = default;
  SlotLease(SlotLease&& o) noexcept : device(std::exchange(o.device, -1)), index(o.index) {}
  SlotLease& operator=(SlotLease&&) = delete;
  ~SlotLease() { reset(); }
  void reset() {
    if (device >= 0) events().release(device, index);
    device = -1;
  }
};

// ---- one put ---------------------------------------------------------------------

/// How long a put of n bytes takes from request to reply, learned from this
/// process's puts: a fixed part (from puts under 1 MiB) and the copy's
/// bandwidth, as moving averages. It tells the connection when to stop
/// sleeping and start polling for the reply (Connection::expect_reply_in).
class ReplyTime {
 public:
  std::chrono::microseconds expect(std::uint64_t bytes) const {
    std::lock_guard lk(mu_);
    return std::chrono::microseconds(static_cast<std::int64_t>(fixed_us_ + static_cast<double>(bytes) / bytes_per_us_));
  }
  void observed(std::uint64_t bytes, double us) {
    std::lock_guard lk(mu_);
    if (bytes < (1u << 20)) {
      fixed_us_ = 0.8 * fixed_us_ + 0.2 * us;
      return;
    }
    const double copy_us = std::max(1.0, us - fixed_us_);
    bytes_per_us_ = 0.7 * bytes_per_us_ + 0.3 * (static_cast<double>(bytes) / copy_us);
  }

 private:
  mutable std::mutex mu_;
  double fixed_us_ = 60;
  double bytes_per_us_ = 20000;  // 20 GB/s until measured
};

ReplyTime& reply_time() {
  static auto* t = new ReplyTime;  // never destroyed: puts may run on helper threads at exit
  return *t;
}

struct Prepared {
  wire::CudaPutT message;
  std::uint64_t nbytes = 0;
  std::optional<IpcBytes> stale;  // a handle of a freed allocation to close first
  SlotLease slot;
  cudaEvent_t event = nullptr;    // recorded after the data; null for empty tensors
};

// ---- daemons that cannot open our events ---------------------------------------------

/// The phrase tensorshmd's copy engine puts in its error when it cannot open
/// a producer's interprocess event (daemon/cuda_copy_engine.cpp, open_event;
/// an engine test pins it). That is always so when the daemon runs as another
/// user: the driver backs each event with a 0600 file in /dev/shm
/// (docs/operations.md, "NVIDIA devices"). Memory handles still open, so the
/// producer then waits for its own event and sends none.
constexpr std::string_view kEventRefused = "event handle could not be opened";

class EventlessDaemons {
 public:
  bool contains(const std::string& socket) {
    std::lock_guard lk(mu_);
    return sockets_.count(socket) != 0;
  }
  void add(const std::string& socket) {
    std::lock_guard lk(mu_);
    sockets_.insert(socket);
  }

 private:
  std::mutex mu_;
  std::set<std::string> sockets_;
};

EventlessDaemons& eventless() {
  static EventlessDaemons d;
  return d;
}

/// The producer-side wait of the fallback: the event's work is done, so the
/// daemon needs no event.
void wait_on_host(Prepared& p) {
  check(cuda_call("cudaEventSynchronize", "put_cuda '" + p.message.name + "'",
                  [&] { return cudaEventSynchronize(p.event); }));
  p.message.event_handle.assign(64, 0);
  p.event = nullptr;
}

Prepared prepare(std::string_view name, const void* device_ptr, DType dtype, std::span<const std::int64_t> shape,
                 std::span<const std::int64_t> strides, void* stream, const CreateOptions& options) {
  const std::string object = "put_cuda '" + std::string(name) + "'";
  const std::uint64_t nbytes =
      unwrap(protocol::check_layout(dtype, shape, strides, std::numeric_limits<std::uint64_t>::max() / 2));
  Prepared p;
  auto& m = p.message;
  m.name = std::string(name);
  m.dtype = std::make_unique<wire::DType>(protocol::to_wire(dtype));
  m.shape.assign(shape.begin(), shape.end());
  m.strides.assign(strides.begin(), strides.end());
  m.timeout_ms = options.timeout.count();
  m.share = static_cast<wire::Share>(options.share);
  m.mem_handle.assign(64, 0);
  m.event_handle.assign(64, 0);
  m.device = -1;
  p.nbytes = nbytes;
  if (nbytes == 0) return p;  // nothing to copy: no device memory is touched
  if (device_ptr == nullptr) raise(Error{Errc::invalid_argument, object + ": the device pointer is null"});

  const Allocation a = unwrap(find_allocation(device_ptr, object));
  const auto offset = reinterpret_cast<std::uintptr_t>(device_ptr) - a.base;
  if (offset + nbytes > a.size)
    raise(Error{Errc::invalid_argument, object + ": the data's " + std::to_string(nbytes) + " bytes at offset " +
                                            std::to_string(offset) + " reach past the end of its allocation (" +
                                            std::to_string(a.size) + " bytes)"});
  DeviceGuard guard;
  check(guard.enter(a.device));
  const IpcBytes handle = unwrap(exports().handle_for(a, device_ptr, object, &p.stale));
  const auto uuid = unwrap(device_uuid(a.device));
  const std::size_t i = unwrap(events().acquire(a.device, object));
  p.slot.device = a.device;
  p.slot.index = i;
  const EventRing::Slot s = events().slot(a.device, i);
  check(cuda_call("cudaEventRecord", object, [&] {
    return cudaEventRecord(s.event, static_cast<cudaStream_t>(stream));
  }));
  m.device = a.device;
  m.device_uuid.assign(uuid.begin(), uuid.end());
  m.mem_handle.assign(handle.begin(), handle.end());
  m.event_handle.assign(s.handle.begin(), s.handle.end());
  m.alloc_offset = offset;
  p.event = s.event;
  return p;
}

ObjectInfo send_once(detail::Connection& conn, Prepared& p) {
  auto lk = conn.lock();
  if (p.stale) {
    wire::CudaForgetT forget;
    forget.mem_handle.assign(p.stale->begin(), p.stale->end());
    (void)conn.call_locked(std::move(forget));  // best effort: the daemon's cache is bounded anyway
    p.stale.reset();
  }
  const bool timed = p.nbytes > 0 && p.event != nullptr;
  if (timed) conn.expect_reply_in(reply_time().expect(p.nbytes));
  const auto t0 = std::chrono::steady_clock::now();
  auto reply = unwrap(conn.call_locked(wire::CudaPutT(p.message)));
  if (timed)
    reply_time().observed(p.nbytes,
                          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  return detail::to_info(*reply->body.AsCudaPutReply()->object);
}

/// Sends the put; when the daemon cannot open the event, waits for it here
/// and sends the put again without it (and does so from the start for that
/// daemon afterwards).
ObjectInfo send(detail::Connection& conn, Prepared& p) {
  const std::string daemon = conn.info().socket_path;
  if (p.event != nullptr && eventless().contains(daemon)) wait_on_host(p);
  try {
    return send_once(conn, p);
  } catch (const Exception& e) {
    if (p.event == nullptr || e.code() != Errc::cuda_error ||
        std::string_view(e.what()).find(kEventRefused) == std::string_view::npos)
      throw;
    eventless().add(daemon);
    wait_on_host(p);
    return send_once(conn, p);
  }
}

}  // namespace

bool cuda_supported() noexcept { return true; }

ObjectInfo put_cuda(Client& client, std::string_view name, const void* device_ptr, DType dtype,
                    std::span<const std::int64_t> shape, std::span<const std::int64_t> strides, void* stream,
                    const CreateOptions& options) {
  Prepared p = prepare(name, device_ptr, dtype, shape, strides, stream, options);
  return send(client.connection(), p);
}

void forget_cuda(Client& client, const void* device_ptr) {
  const Allocation a = unwrap(find_allocation(device_ptr, "forget_cuda"));
  auto handle = exports().take(a.base);
  if (!handle) return;  // never exported: the daemon never opened it
  wire::CudaForgetT m;
  m.mem_handle.assign(handle->begin(), handle->end());
  auto& conn = client.connection();
  auto lk = conn.lock();
  (void)unwrap(conn.call_locked(std::move(m)));
}

// ---- the asynchronous variant ------------------------------------------------------

struct CudaPutFuture::State {
  std::mutex mu;
  bool done = false;
  std::optional<ObjectInfo> info;
  std::exception_ptr error;
  std::thread worker;
  ~State() {
    if (worker.joinable()) worker.join();
  }
};

CudaPutFuture::CudaPutFuture() = default;
CudaPutFuture::CudaPutFuture(CudaPutFuture&&) noexcept = default;
CudaPutFuture& CudaPutFuture::operator=(CudaPutFuture&&) noexcept = default;
CudaPutFuture::~CudaPutFuture() = default;  // State's destructor waits for the worker

bool CudaPutFuture::ready() const {
  if (!state_) return true;
  std::lock_guard lk(state_->mu);
  return state_->done;
}

ObjectInfo CudaPutFuture::get() {
  if (!state_) raise(Error{Errc::not_open, "this CudaPutFuture holds no put"});
  if (state_->worker.joinable()) state_->worker.join();
  if (state_->error) std::rethrow_exception(state_->error);
  return *state_->info;
}

CudaPutFuture put_cuda_async(Client& client, std::string_view name, const void* device_ptr, DType dtype,
                             std::span<const std::int64_t> shape, std::span<const std::int64_t> strides,
                             void* stream, const CreateOptions& options) {
  // The event is recorded now, on the caller's thread, so the copy is ordered
  // after exactly the work queued before this call; only the wait for the
  // daemon's answer moves to a thread.
  auto prepared = std::make_shared<Prepared>(prepare(name, device_ptr, dtype, shape, strides, stream, options));
  CudaPutFuture f;
  f.state_ = std::make_shared<CudaPutFuture::State>();
  CudaPutFuture::State* st = f.state_.get();
  std::shared_ptr<detail::Connection> conn = client.connection().shared_from_this();
  st->worker = std::thread([st, conn, prepared] {
    std::optional<ObjectInfo> info;
    std::exception_ptr error;
    try {
      info = send(*conn, *prepared);
    } catch (...) {
      error = std::current_exception();
    }
    prepared->slot.reset();  // the daemon answered: the event may be recorded again
    {
      std::lock_guard lk(st->mu);
      st->info = std::move(info);
      st->error = error;
      st->done = true;
    }
  });
  return f;
}

}  // namespace tensorshm
