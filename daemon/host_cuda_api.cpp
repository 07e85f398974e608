// CUDA simulated in host memory for the copy engine's logic tests; see the
// header. Everything runs under one mutex; a copy into unregistered memory
// waits on a condition variable until its stream reaches it, as a pageable
// cudaMemcpyAsync blocks until the copy is done.
#include "host_cuda_api.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

namespace tensorshm::daemon {
namespace {

Error simulated(std::string_view call, std::string_view object, std::string_view error) {
  std::string m;
  m.append(call).append("(").append(object).append("): ").append(error).append(" (host simulation)");
  return Error{Errc::cuda_error, std::move(m)};
}

}  // namespace

HostCudaApi::HostCudaApi(int devices) : devices_(devices) {}

HostCudaApi::~HostCudaApi() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  if (gpu_.joinable()) gpu_.join();
  for (auto* s : streams_) delete s;
  for (auto* e : opened_events_) delete e;
  for (auto* e : local_events_) delete e;
}

DeviceUuid HostCudaApi::uuid_of(int device) {
  DeviceUuid u{};
  u.fill(static_cast<std::uint8_t>(device + 1));
  return u;
}

IpcBytes HostCudaApi::make_token(char kind, int device) {
  IpcBytes b{};
  const std::uint64_t n = next_token_++;
  std::memcpy(b.data(), &n, sizeof n);
  b[8] = static_cast<std::uint8_t>(kind);
  b[9] = static_cast<std::uint8_t>(device);
  return b;
}

IpcBytes HostCudaApi::export_memory(int device, const void* base) {
  std::lock_guard lk(mu_);
  IpcBytes h = make_token('M', device);
  allocations_[h] = Allocation{device, base, false};
  return h;
}

void HostCudaApi::free_memory(const IpcBytes& handle) {
  std::lock_guard lk(mu_);
  allocations_.at(handle).freed = true;
}

IpcBytes HostCudaApi::export_event(int device) {
  std::lock_guard lk(mu_);
  IpcBytes h = make_token('E', device);
  events_[h] = std::make_shared<EventState>();
  return h;
}

void HostCudaApi::hold(const IpcBytes& event) {
  std::lock_guard lk(mu_);
  events_.at(event)->complete = false;
}

void HostCudaApi::fire(const IpcBytes& event) {
  {
    std::lock_guard lk(mu_);
    events_.at(event)->complete = true;
  }
  progress_.notify_all();
}

void HostCudaApi::fail_next(const std::string& call, const std::string& error) {
  std::lock_guard lk(mu_);
  failures_[call] = error;
}

void HostCudaApi::stall_next_copy(int after) {
  std::lock_guard lk(mu_);
  stall_in_ = after;
  unstalled_ = false;
}

void HostCudaApi::unstall() {
  {
    std::lock_guard lk(mu_);
    unstalled_ = true;
  }
  progress_.notify_all();
}

void HostCudaApi::lose_context_on_next_copy() {
  std::lock_guard lk(mu_);
  fail_copy_when_run_ = true;
  lose_context_when_run_ = true;
}

std::string HostCudaApi::lost() const {
  std::lock_guard lk(mu_);
  return lost_;
}

void HostCudaApi::fail_next_copy_when_run() {
  std::lock_guard lk(mu_);
  fail_copy_when_run_ = true;
}

std::size_t HostCudaApi::run() {
  std::size_t n = 0;
  {
    std::lock_guard lk(mu_);
    n = run_locked();
  }
  progress_.notify_all();
  return n;
}

std::size_t HostCudaApi::run_locked() {
  std::size_t total = 0;
  for (;;) {
    std::size_t n = 0;
    for (auto* s : streams_) n += run_stream(*s);
    if (n == 0) return total;
    total += n;
  }
}

std::size_t HostCudaApi::run_stream(Stream& s) {
  std::size_t n = 0;
  while (!s.ops.empty()) {
    Op& op = s.ops.front();
    if (op.stalled && !unstalled_) break;
    // Running by itself, a copy ends bytes / bytes_per_us after it reaches
    // the head of its stream and its device's link is free (one copy at a
    // time per device: copies on several streams share it), whoever looks.
    if (bytes_per_us_ > 0 && op.kind == Op::copy) {
      const auto now = std::chrono::steady_clock::now();
      if (op.due == std::chrono::steady_clock::time_point{}) {
        auto& link = link_free_[s.device];
        op.due = std::max(now, link) +
                 std::chrono::microseconds(static_cast<std::int64_t>(static_cast<double>(op.bytes) / bytes_per_us_));
        link = op.due;
      }
      if (now < op.due) break;
    }
    run_op(s, op);
    s.ops.pop_front();
    ++n;
  }
  return n;
}

void HostCudaApi::run_op(Stream& s, Op& op) {
  if (op.kind == Op::record) {
    op.event->complete = true;
    op.event->error = std::exchange(s.error, ok_status());
    return;
  }
  // Failures happen when the copy runs (its due time, running by itself),
  // even when its bytes moved at issue (move_bytes).
  if (fail_copy_when_run_) {
    fail_copy_when_run_ = false;
    s.error = simulated("cudaMemcpyAsync", "stream work", "cudaErrorIllegalAddress");
    if (std::exchange(lose_context_when_run_, false)) lost_ = "cudaMemcpyAsync: cudaErrorIllegalAddress (host simulation)";
    return;
  }
  move_bytes(op);
}

void HostCudaApi::move_bytes(Op& op) {
  if (std::exchange(op.copied, true)) return;
  std::memcpy(op.dst, op.src, op.bytes);
  ++copies_run_;
  const bool pinned = registered_locked(op.dst, op.bytes);
  // A destination that is partly registered straddles registrations.
  if (!pinned)
    for (const auto& [p, len] : registered_)
      if (static_cast<const std::byte*>(op.dst) < static_cast<const std::byte*>(p) + len &&
          static_cast<const std::byte*>(p) < static_cast<const std::byte*>(op.dst) + op.bytes)
        straddled_ = true;
}

void HostCudaApi::run_by_itself(double bytes_per_us) {
  std::lock_guard lk(mu_);
  bytes_per_us_ = bytes_per_us;
  if (!gpu_.joinable()) gpu_ = std::thread([this] { run_by_itself_loop(); });
}

void HostCudaApi::run_by_itself_loop() {
  for (;;) {
    std::size_t ran = 0;
    {
      std::lock_guard lk(mu_);
      if (stop_) return;
      ran = run_locked();
    }
    if (ran > 0) progress_.notify_all();
    std::this_thread::sleep_for(std::chrono::microseconds(10));
  }
}

bool HostCudaApi::registered_locked(const void* p, std::size_t n) const {
  const auto* b = static_cast<const std::byte*>(p);
  auto it = registered_.upper_bound(p);
  if (it == registered_.begin()) return false;
  --it;
  const auto* r = static_cast<const std::byte*>(it->first);
  return b >= r && b + n <= r + it->second;
}

int HostCudaApi::mem_handles_open() const {
  std::lock_guard lk(mu_);
  return static_cast<int>(opened_mems_.size());
}
int HostCudaApi::mem_opens() const {
  std::lock_guard lk(mu_);
  return mem_opens_;
}
int HostCudaApi::event_queries() const {
  std::lock_guard lk(mu_);
  return event_queries_;
}
int HostCudaApi::event_queries_between(std::chrono::steady_clock::time_point from,
                                       std::chrono::steady_clock::time_point to) const {
  std::lock_guard lk(mu_);
  return static_cast<int>(std::count_if(query_times_.begin(), query_times_.end(),
                                        [&](auto t) { return t >= from && t < to; }));
}

int HostCudaApi::local_events_live() const {
  std::lock_guard lk(mu_);
  return static_cast<int>(local_events_.size());
}
int HostCudaApi::local_events_created() const {
  std::lock_guard lk(mu_);
  return local_events_created_;
}

int HostCudaApi::event_handles_open() const {
  std::lock_guard lk(mu_);
  return static_cast<int>(opened_events_.size());
}
int HostCudaApi::streams_live() const {
  std::lock_guard lk(mu_);
  return static_cast<int>(streams_.size());
}
int HostCudaApi::streams_created() const {
  std::lock_guard lk(mu_);
  return streams_created_;
}
std::size_t HostCudaApi::copies_run() const {
  std::lock_guard lk(mu_);
  return copies_run_;
}
std::size_t HostCudaApi::queued() const {
  std::lock_guard lk(mu_);
  std::size_t n = 0;
  for (auto* s : streams_) n += s->ops.size();
  return n;
}
std::vector<std::pair<const void*, std::size_t>> HostCudaApi::registered() const {
  std::lock_guard lk(mu_);
  return {registered_.begin(), registered_.end()};
}
bool HostCudaApi::copies_stayed_within_one_registration() const {
  std::lock_guard lk(mu_);
  return !straddled_;
}

void HostCudaApi::block_next(const std::string& call) {
  std::lock_guard lk(mu_);
  block_call_ = call;
  released_ = false;
}

void HostCudaApi::unblock() {
  {
    std::lock_guard lk(mu_);
    released_ = true;
    block_call_.clear();
  }
  unblocked_.notify_all();
}

bool HostCudaApi::blocked() const {
  std::lock_guard lk(mu_);
  return parked_;
}

void HostCudaApi::maybe_block(const std::string& call) {
  std::unique_lock lk(mu_);
  if (block_call_.empty() || block_call_ != call) return;
  block_call_.clear();
  parked_ = true;
  unblocked_.wait(lk, [&] { return released_; });
  parked_ = false;
}

// ---- CudaApi ------------------------------------------------------------------

Status HostCudaApi::injected(const std::string& call, std::string_view object) {
  if (!lost_.empty()) return simulated(call, object, "cudaErrorIllegalAddress");
  auto it = failures_.find(call);
  if (it == failures_.end()) return ok_status();
  Error e = simulated(call, object, it->second);
  failures_.erase(it);
  return e;
}

Status HostCudaApi::check_device(int device, const char* call) {
  if (device < 0 || device >= devices_)
    return simulated(call, "device " + std::to_string(device), "cudaErrorInvalidDevice");
  return ok_status();
}

HostCudaApi::OpenedEvent* HostCudaApi::event_of(void* e) const {
  auto* ev = static_cast<OpenedEvent*>(e);
  return opened_events_.count(ev) || local_events_.count(ev) ? ev : nullptr;
}

HostCudaApi::Stream* HostCudaApi::stream_of(void* s) {
  auto* st = static_cast<Stream*>(s);
  return streams_.count(st) ? st : nullptr;
}

Result<int> HostCudaApi::device_count() {
  std::lock_guard lk(mu_);
  TSHM_TRY(injected("cudaGetDeviceCount", "discovery"));
  if (devices_ == 0)
    return Error{Errc::no_gpu, "cudaGetDeviceCount(discovery): cudaErrorNoDevice (host simulation)"};
  return devices_;
}

Result<DeviceUuid> HostCudaApi::device_uuid(int device) {
  std::lock_guard lk(mu_);
  TSHM_TRY(check_device(device, "cudaGetDeviceProperties"));
  return uuid_of(device);
}

std::string HostCudaApi::device_name(int device) { return "host-simulated GPU " + std::to_string(device); }

Result<void*> HostCudaApi::create_stream(int device) {
  maybe_block("cudaStreamCreateWithFlags");
  std::lock_guard lk(mu_);
  TSHM_TRY(check_device(device, "cudaStreamCreateWithFlags"));
  TSHM_TRY(injected("cudaStreamCreateWithFlags", "copy stream"));
  auto* s = new Stream{device, {}, ok_status()};
  streams_.insert(s);
  ++streams_created_;
  return static_cast<void*>(s);
}

Status HostCudaApi::destroy_stream(int, void* stream) {
  std::lock_guard lk(mu_);
  Stream* s = stream_of(stream);
  if (s == nullptr) return simulated("cudaStreamDestroy", "copy stream", "cudaErrorInvalidResourceHandle");
  streams_.erase(s);
  delete s;
  return ok_status();
}

Result<bool> HostCudaApi::stream_done(int, void* stream) {
  maybe_block("cudaStreamQuery");
  std::lock_guard lk(mu_);
  Stream* s = stream_of(stream);
  if (s == nullptr) return simulated("cudaStreamQuery", "copy stream", "cudaErrorInvalidResourceHandle");
  run_locked();
  return s->ops.empty();
}

Status HostCudaApi::register_host(void* p, std::size_t bytes, std::string_view what) {
  maybe_block("cudaHostRegister");
  std::lock_guard lk(mu_);
  TSHM_TRY(injected("cudaHostRegister", what));
  for (const auto& [q, len] : registered_)
    if (static_cast<std::byte*>(p) < static_cast<const std::byte*>(q) + len &&
        static_cast<const std::byte*>(q) < static_cast<std::byte*>(p) + bytes)
      return simulated("cudaHostRegister", what, "cudaErrorHostMemoryAlreadyRegistered");
  registered_[p] = bytes;
  return ok_status();
}

Status HostCudaApi::unregister_host(void* p, std::string_view what) {
  maybe_block("cudaHostUnregister");
  std::lock_guard lk(mu_);
  if (registered_.erase(p) == 0) return simulated("cudaHostUnregister", what, "cudaErrorHostMemoryNotRegistered");
  return ok_status();
}

Result<void*> HostCudaApi::open_mem_handle(int device, const IpcBytes& handle, std::string_view object) {
  maybe_block("cudaIpcOpenMemHandle");
  std::lock_guard lk(mu_);
  TSHM_TRY(check_device(device, "cudaIpcOpenMemHandle"));
  TSHM_TRY(injected("cudaIpcOpenMemHandle", object));
  auto it = allocations_.find(handle);
  if (it == allocations_.end() || it->second.freed)
    return simulated("cudaIpcOpenMemHandle", object, "cudaErrorInvalidValue");
  ++mem_opens_;
  opened_mems_.insert(it->second.base);
  return const_cast<void*>(it->second.base);
}

Status HostCudaApi::close_mem_handle(int, void* base) {
  maybe_block("cudaIpcCloseMemHandle");
  std::lock_guard lk(mu_);
  auto it = opened_mems_.find(base);
  if (it == opened_mems_.end()) return simulated("cudaIpcCloseMemHandle", "producer allocation", "cudaErrorInvalidValue");
  opened_mems_.erase(it);
  return ok_status();
}

Result<void*> HostCudaApi::open_event_handle(int device, const IpcBytes& handle, std::string_view object) {
  maybe_block("cudaIpcOpenEventHandle");
  std::lock_guard lk(mu_);
  TSHM_TRY(check_device(device, "cudaIpcOpenEventHandle"));
  TSHM_TRY(injected("cudaIpcOpenEventHandle", object));
  auto it = events_.find(handle);
  if (it == events_.end()) return simulated("cudaIpcOpenEventHandle", object, "cudaErrorInvalidValue");
  auto* e = new OpenedEvent{it->second};
  opened_events_.insert(e);
  return static_cast<void*>(e);
}

Status HostCudaApi::destroy_event(int, void* event) {
  maybe_block("cudaEventDestroy");
  std::lock_guard lk(mu_);
  auto* e = static_cast<OpenedEvent*>(event);
  if (opened_events_.erase(e) == 0 && local_events_.erase(e) == 0)
    return simulated("cudaEventDestroy", "event", "cudaErrorInvalidResourceHandle");
  delete e;
  return ok_status();
}

Result<bool> HostCudaApi::query_event(int, void* event, std::string_view object) {
  maybe_block("cudaEventQuery");
  std::lock_guard lk(mu_);
  TSHM_TRY(injected("cudaEventQuery", object));
  OpenedEvent* e = event_of(event);
  if (e == nullptr) return simulated("cudaEventQuery", object, "cudaErrorInvalidResourceHandle");
  ++event_queries_;
  query_times_.push_back(std::chrono::steady_clock::now());
  if (!e->state->complete) return false;
  if (!e->state->error) return e->state->error.error();
  return true;
}

Status HostCudaApi::copy_to_host(int, void* stream, void* dst, const void* src, std::size_t bytes,
                                 std::string_view object) {
  std::unique_lock lk(mu_);
  TSHM_TRY(injected("cudaMemcpyAsync", object));
  Stream* s = stream_of(stream);
  if (s == nullptr) return simulated("cudaMemcpyAsync", object, "cudaErrorInvalidResourceHandle");
  Op op{Op::copy};
  op.dst = dst;
  op.src = src;
  op.bytes = bytes;
  op.seq = next_seq_++;
  op.stalled = stall_in_ == 0;
  if (stall_in_ >= 0) --stall_in_;
  // Running by itself, the bytes move now, on the caller's thread (a memcpy
  // under a sanitizer can take longer than the simulated copy, and must not
  // hold up the simulation); the copy still ends at its due time.
  if (bytes_per_us_ > 0 && !op.stalled) move_bytes(op);
  const std::uint64_t seq = op.seq;
  s->ops.push_back(std::move(op));
  if (registered_locked(dst, bytes)) return ok_status();
  // Pageable destination: return only once this copy has run.
  for (;;) {
    run_locked();
    bool pending = false;
    for (const auto& o : s->ops) pending = pending || o.seq == seq;
    if (!pending) break;
    progress_.wait(lk);
  }
  Status st = std::move(s->error);
  s->error = ok_status();
  return st;
}

Result<void*> HostCudaApi::create_event(int device, std::string_view object) {
  maybe_block("cudaEventCreateWithFlags");
  std::lock_guard lk(mu_);
  TSHM_TRY(check_device(device, "cudaEventCreateWithFlags"));
  TSHM_TRY(injected("cudaEventCreateWithFlags", object));
  auto* e = new OpenedEvent{std::make_shared<EventState>()};
  local_events_.insert(e);
  ++local_events_created_;
  return static_cast<void*>(e);
}

Status HostCudaApi::record_event(int, void* stream, void* event, std::string_view object) {
  maybe_block("cudaEventRecord");
  std::lock_guard lk(mu_);
  TSHM_TRY(injected("cudaEventRecord", object));
  Stream* s = stream_of(stream);
  OpenedEvent* e = event_of(event);
  if (s == nullptr || e == nullptr || local_events_.count(e) == 0)
    return simulated("cudaEventRecord", object, "cudaErrorInvalidResourceHandle");
  e->state->complete = false;
  e->state->error = ok_status();
  Op op{Op::record};
  op.event = e->state;
  op.seq = next_seq_++;
  s->ops.push_back(std::move(op));
  return ok_status();
}

}  // namespace tensorshm::daemon
