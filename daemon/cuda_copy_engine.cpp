// The copy engine's logic, independent of how CUDA is reached: device
// lookup by uuid, pinning in chunks, the per-connection handle caches and
// streams, the order of the calls for one put (open handles, poll the
// producer's event, copy, record an event after the copy and poll it) and
// the bookkeeping that closes handles only when no copy uses them, and the
// threads: the io thread notes each put and its timeout and answers it; the
// engine thread makes every CUDA call and polls; the helper thread that
// copies into memory CUDA could not pin only enqueues on the engine thread.
// Nothing on the io thread calls CUDA or waits for the engine thread without
// a bound.
#include "cuda_copy_engine.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include <sys/prctl.h>

#include <cerrno>
#include <cstring>

#include "asio.hpp"
#include "log.hpp"
#include "pool.hpp"
#include "segment.hpp"

namespace tensorshm::daemon {

// ---- HandleCache ------------------------------------------------------------

HandleCache::Entry* HandleCache::find(const IpcBytes& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);
  return &*it->second;
}

HandleCache::Entry& HandleCache::insert(const IpcBytes& key, int device, void* ptr) {
  order_.push_front(Entry{key, device, ptr, 0, false});
  index_[key] = order_.begin();
  return order_.front();
}

std::optional<HandleCache::Entry> HandleCache::forget(const IpcBytes& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  if (it->second->busy > 0) {
    it->second->doomed = true;
    return std::nullopt;
  }
  Entry e = *it->second;
  order_.erase(it->second);
  index_.erase(it);
  return e;
}

std::optional<HandleCache::Entry> HandleCache::release(const IpcBytes& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  Entry& e = *it->second;
  if (e.busy > 0) --e.busy;
  if (e.busy > 0 || !e.doomed) return std::nullopt;
  Entry out = e;
  order_.erase(it->second);
  index_.erase(it);
  return out;
}

std::vector<HandleCache::Entry> HandleCache::trim(std::size_t capacity) {
  std::vector<Entry> out;
  if (order_.empty()) return out;
  // The most recently used entry (the one just opened) always stays.
  for (auto it = order_.end(); order_.size() > capacity && --it != order_.begin();) {
    if (it->busy > 0) continue;
    out.push_back(*it);
    index_.erase(it->key);
    it = order_.erase(it);
  }
  return out;
}

std::vector<HandleCache::Entry> HandleCache::take_all() {
  std::vector<Entry> out(order_.begin(), order_.end());
  order_.clear();
  index_.clear();
  return out;
}

// ---- JobThread ----------------------------------------------------------------

/// One thread running jobs in order. The engine has two: the engine thread,
/// which makes every CudaApi call, and a helper for copies into memory that
/// could not be pinned (they block until done). Jobs may be pushed from any
/// thread; after close() they are dropped. A thread stuck in a job can be
/// abandoned (detach) at shutdown: the process is exiting.
///
/// `tick`, when given, runs on the thread after every job and whenever the
/// delay it last returned has passed: the engine polls producers' events and
/// the ends of its copies there. It returns the delay until it wants to run
/// again (zero: at once, without sleeping), or nullopt when it has nothing to
/// poll.
class JobThread {
 public:
  using Tick = std::function<std::optional<std::chrono::microseconds>()>;
  explicit JobThread(Tick tick = {}) : tick_(std::move(tick)), thread_([this] { loop(); }) {}
  ~JobThread() {
    close();
    if (thread_.joinable()) thread_.join();  // finishes the jobs queued before close()
  }
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;

  void run(std::function<void()> job) {
    {
      std::lock_guard lk(mu_);
      if (closed_) return;
      jobs_.push_back(std::move(job));
    }
    cv_.notify_all();
  }
  void close() {
    {
      std::lock_guard lk(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  /// Leaves the thread to process exit (it is stuck in a call that may never
  /// return). The JobThread must then never be destroyed: see leak().
  void detach() {
    {
      std::lock_guard lk(mu_);
      closed_ = true;
      jobs_.clear();  // they would touch an engine that is gone
    }
    cv_.notify_all();
    thread_.detach();
  }
  bool on_this_thread() const noexcept { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  void loop() {
    if (tick_) {
      // Polls run every few microseconds while an event is pending; the
      // default 50 us timer slack would stretch each wait.
      if (::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL) != 0)
        log::warning("prctl(PR_SET_TIMERSLACK, 1000) on the copy engine's thread: ", std::strerror(errno),
                     "; polls of producers' events may run late");
    }
    std::optional<std::chrono::microseconds> next;
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lk(mu_);
        const auto ready = [&] { return closed_ || !jobs_.empty(); };
        if (!next) cv_.wait(lk, ready);
        else if (next->count() > 0) cv_.wait_for(lk, *next, ready);  // zero: poll again at once
        if (jobs_.empty() && closed_) return;  // closed and drained
        if (!jobs_.empty()) {
          job = std::move(jobs_.front());
          jobs_.pop_front();
        }
      }
      if (job) job();
      next = std::nullopt;
      if (tick_) {
        {
          std::lock_guard lk(mu_);
          if (closed_ && jobs_.empty()) return;  // detached or closing: the engine may be gone
        }
        next = tick_();
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool closed_ = false;
  Tick tick_;
  std::thread thread_;  // last: starts once the rest is ready
};

namespace {

/// Gives up a stuck thread: detached, and its JobThread (which the thread
/// still uses) never freed.
void leak(std::shared_ptr<JobThread>& t) {
  if (!t) return;
  t->detach();
  static std::mutex mu;
  static auto* abandoned = new std::vector<std::shared_ptr<JobThread>>;  // never deleted (reachable, not a leak)
  std::lock_guard lk(mu);
  abandoned->push_back(std::move(t));
}

}  // namespace

// ---- CudaCopyEngine ---------------------------------------------------------

namespace {

bool all_zero(const auto& bytes) {
  for (auto b : bytes)
    if (b != 0) return false;
  return true;
}

/// Keeps in `next` the sooner of it and `d`: when a poll wants to run again.
void sooner(std::optional<std::chrono::microseconds>& next, std::chrono::microseconds d) {
  next = next ? std::min(*next, d) : d;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

template <class Fn>
auto CudaCopyEngine::watched(const char* call, std::string_view object, Fn&& fn) {
  {
    std::lock_guard lk(activity_.mu);
    activity_.call = call;
    activity_.object = object;
    activity_.since = std::chrono::steady_clock::now();
  }
  auto result = fn();
  std::lock_guard lk(activity_.mu);
  activity_.call = nullptr;
  return result;
}

std::optional<std::string> CudaCopyEngine::stuck_call(std::string_view told) const {
  std::lock_guard lk(activity_.mu);
  if (activity_.call == nullptr) return std::nullopt;
  std::string out = std::string("the engine thread has been in ") + activity_.call + " (";
  // A client hears the name of its own put, never another's (another user's).
  if (!told.empty() && activity_.object != told && activity_.object.starts_with("put '")) out.append("another put");
  else out.append(activity_.object);
  return out + ") for " + std::to_string(static_cast<long long>(ms_since(activity_.since))) + " ms";
}

std::string CudaCopyEngine::engine_activity() const {
  return stuck_call().value_or("the engine thread is not in a CUDA call");
}

bool CudaCopyEngine::claim(std::atomic<int>& state, PutState to) {
  int expected = PutState::waiting;
  return state.compare_exchange_strong(expected, to);
}

std::string format_uuid(const DeviceUuid& u) {
  char s[64];
  std::snprintf(s, sizeof s, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  return s;
}

struct CudaCopyEngine::Pending {
  Done done;
  std::shared_ptr<std::atomic<int>> state;  // PutState, shared with the engine thread
  std::chrono::steady_clock::time_point submitted = std::chrono::steady_clock::now();
  std::unique_ptr<asio::steady_timer> timer;  // the put's timeout; null when there is none
  const void* dst = nullptr;
  std::uint64_t nbytes = 0;
  std::string object;
};

CudaCopyEngine::CudaCopyEngine(std::shared_ptr<CudaApi> api, asio::io_context& io, Options options)
    : api_(std::move(api)),
      io_(io),
      options_(options),
      engine_thread_(std::make_shared<JobThread>(
          [this, alive = std::weak_ptr<int>(alive_)]() -> std::optional<std::chrono::microseconds> {
            if (alive.expired()) return std::nullopt;
            return poll();
          })) {}

Result<std::unique_ptr<CudaCopyEngine>> CudaCopyEngine::create(std::shared_ptr<CudaApi> api, asio::io_context& io,
                                                               Options options) {
  // Discovery runs on the caller's thread: nothing is queued yet, and no
  // producer can have wedged a device.
  auto count = api->device_count();
  if (!count) return std::move(count).error();
  if (*count == 0) return Error{Errc::no_gpu, "the CUDA driver reports no device"};
  std::unique_ptr<CudaCopyEngine> e(new CudaCopyEngine(std::move(api), io, options));
  for (int i = 0; i < *count; ++i) {
    auto uuid = e->api_->device_uuid(i);
    if (!uuid) return std::move(uuid).error();
    e->devices_.push_back(Device{i, *uuid, e->api_->device_name(i), {}});
    log::notice("CUDA device ", i, ": ", e->devices_.back().name, " (", format_uuid(*uuid), ")");
  }
  return e;
}

bool CudaCopyEngine::on_engine(std::function<void()> job, std::optional<std::chrono::milliseconds> patience) {
  if (engine_thread_->on_this_thread()) {
    job();
    return true;
  }
  struct Flag {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto flag = std::make_shared<Flag>();
  engine_thread_->run([job = std::move(job), flag] {
    job();
    {
      std::lock_guard lk(flag->mu);
      flag->done = true;
    }
    flag->cv.notify_all();
  });
  std::unique_lock lk(flag->mu);
  if (!patience) {
    flag->cv.wait(lk, [&] { return flag->done; });
    return true;
  }
  return flag->cv.wait_for(lk, *patience, [&] { return flag->done; });
}

void CudaCopyEngine::drain() {
  // Polls too: events that completed since the last tick are acted on before
  // this returns (the tick after a job runs outside it).
  on_engine([this] { poll(/*all_now=*/true); });
}

double CudaCopyEngine::copy_rate(int device) {
  double rate = 0;
  on_engine([&] {
    if (device >= 0 && device < device_count()) rate = devices_[static_cast<std::size_t>(device)].clock.rate();
  });
  return rate;
}

CudaCopyEngine::~CudaCopyEngine() {
  if (pool_ != nullptr) {
    pool_->on_segment_added = nullptr;
    pool_->on_segment_removed = nullptr;
  }
  // The engine thread waits for the copies in flight (bounded by
  // shutdown_patience) and gives everything back; this thread waits for it a
  // little longer than that. If it is stuck in a CUDA call that never returns
  // (a device wedged by a producer killed mid-copy), the destructor returns
  // anyway: the process is exiting, which releases the GPU resources.
  auto released = std::make_shared<bool>(false);  // outlives this frame if the wait gives up
  const bool answered = on_engine([this, released] { *released = shut_down(); },
                                  options_.shutdown_patience + options_.hook_patience);
  alive_.reset();  // completions posted from now on are dropped
  pending_.clear();
  if (!answered) {
    log::warning("copy engine stopping while its thread is stuck in a CUDA call (", engine_activity(),
                 "); leaving it and the GPU resources to process exit");
    leak(engine_thread_);
    leak(worker_);
    return;
  }
  if (!*released) {
    leak(worker_);  // its thread may be blocked in such a copy; never joined
    engine_thread_.reset();
    return;
  }
  worker_.reset();          // finishes its jobs first
  engine_thread_.reset();   // idle: shut_down ran last
}

bool CudaCopyEngine::shut_down() {
  stopping_ = true;
  // Let the copies in flight finish, for a bounded time: a stream waiting on
  // the event of a producer that died before its work ran may never drain.
  // Puts still waiting for their producer's event were never queued on the GPU.
  for (auto& [session, queue] : std::exchange(waiting_, {}))
    for (auto& w : queue) abandon(w, ok_status());
  if (!copies_.empty()) log::notice("copy engine stopping: waiting for ", copies_.size(), " copy(ies) in flight");
  const auto give_up = std::chrono::steady_clock::now() + options_.shutdown_patience;
  std::size_t stuck = 0;
  for (auto& [id, s] : sessions_)
    for (auto [dev, stream] : s.streams)
      for (;;) {
        auto done = watched("cudaStreamQuery", "shutdown", [&] { return api_->stream_done(dev, stream); });
        if (!done || *done) break;
        if (std::chrono::steady_clock::now() >= give_up) {
          ++stuck;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
  if (stuck > 0) {
    // Closing handles or unpinning memory a DMA may still target is unsafe;
    // the process is exiting, which releases everything anyway.
    log::warning("copy engine stopping with ", stuck, " stream(s) still waiting on a producer's event; "
                 "leaving their CUDA resources to process exit");
    return false;
  }
  worker_.reset();  // finishes its copies first (their streams are done)
  for (auto& [id, c] : copies_)  // ended, not yet polled
    if (c.done_event != nullptr) devices_[static_cast<std::size_t>(c.device)].idle_events.push_back(c.done_event);
  copies_.clear();
  on_streams_.clear();
  for (auto& [id, s] : sessions_) {
    for (const auto& e : s.mems.take_all()) close_mem(e);
    for (const auto& e : s.events.take_all()) close_event(e);
    for (auto [dev, stream] : s.streams)
      (void)watched("cudaStreamDestroy", "shutdown", [&] { return api_->destroy_stream(dev, stream); });
  }
  sessions_.clear();
  for (auto& d : devices_) {
    for (void* stream : d.idle_streams)
      (void)watched("cudaStreamDestroy", "shutdown", [&] { return api_->destroy_stream(d.ordinal, stream); });
    d.idle_streams.clear();
    for (void* event : d.idle_events)
      (void)watched("cudaEventDestroy", "shutdown", [&] { return api_->destroy_event(d.ordinal, event); });
    d.idle_events.clear();
  }
  for (auto& [id, r] : regions_) unpin(r);
  regions_.clear();
  return true;
}

void CudaCopyEngine::attach(Pool& pool) {
  pool_ = &pool;
  const auto t0 = std::chrono::steady_clock::now();
  std::uint64_t bytes = 0;
  std::size_t pinned = 0;
  for (const Segment* s : pool.pool_segments()) {
    add_region(s->id(), s->base(), s->size(), "segment " + s->name());
    bytes += s->size();
    pinned += region_pinned(s->id()) ? 1 : 0;
  }
  log::notice("pinned ", pinned, " of ", pool.pool_segments().size(), " pool segment(s), ", bytes, " bytes, in ",
              ms_since(t0), " ms (cudaHostRegister in chunks of at most ", options_.pin_chunk, " bytes)");
  // Dedicated segments, and pool segments replaced for a new owner, come and
  // go on the io thread. Pinning one may wait for
  // the engine thread: at most hook_patience, after which the pinning stays
  // queued (it still runs before any later put into that segment, jobs run in
  // order). Unpinning must finish before the pool unmaps the segment; when it
  // does not in time the segment stays mapped until the pool is destroyed:
  // leaking its memory beats unmapping pages CUDA may still have registered
  // (and a DMA may still target), and the io thread is never held for ever.
  pool.on_segment_added = [this](const Segment& s) {
    const std::uint32_t id = s.id();
    std::byte* base = s.base();
    const std::uint64_t size = s.size();
    std::string what = (s.dedicated() ? "dedicated segment " : "pool segment ") + s.name();
    if (!on_engine([this, id, base, size, what] { add_region_now(id, base, size, what); }, options_.hook_patience))
      log::warning("pinning ", what, " is queued behind a CUDA call that has not returned for ",
                   options_.hook_patience.count(), " ms; GPU puts into it wait for it (", engine_activity(), ")");
  };
  pool.on_segment_removed = [this](const Segment& s) {
    const std::uint32_t id = s.id();
    if (on_engine([this, id] { remove_region_now(id); }, options_.hook_patience)) return true;
    log::warning("unpinning segment ", s.name(), " is queued behind a CUDA call that has not returned for ",
                 options_.hook_patience.count(), " ms; keeping it mapped (", s.size(),
                 " bytes) until tensorshmd stops (", engine_activity(), ")");
    return false;
  };
}

void CudaCopyEngine::add_region(std::uint32_t id, std::byte* base, std::uint64_t bytes, const std::string& what) {
  on_engine([&] { add_region_now(id, base, bytes, what); });
}

void CudaCopyEngine::remove_region(std::uint32_t id) {
  on_engine([&] { remove_region_now(id); });
}

void CudaCopyEngine::add_region_now(std::uint32_t id, std::byte* base, std::uint64_t bytes, const std::string& what) {
  Region r{id, base, bytes, true, {}, what};
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t off = 0; off < bytes; off += options_.pin_chunk) {
    const std::uint64_t n = std::min(options_.pin_chunk, bytes - off);
    auto st = watched("cudaHostRegister", what, [&] { return api_->register_host(base + off, n, what); });
    if (!st) {
      log::warning("could not pin ", what, " (", bytes, " bytes): ", st.error().message,
                   "; copies into it run unpinned, at about half the speed, on a helper thread");
      unpin(r);
      r.pinned = false;
      break;
    }
    r.chunks.emplace_back(base + off, n);
  }
  if (r.pinned) log::info("pinned ", what, ": ", bytes, " bytes in ", r.chunks.size(), " chunk(s), ", ms_since(t0), " ms");
  regions_[id] = std::move(r);
}

void CudaCopyEngine::remove_region_now(std::uint32_t id) {
  auto it = regions_.find(id);
  if (it == regions_.end()) return;
  unpin(it->second);
  regions_.erase(it);
}

void CudaCopyEngine::unpin(Region& r) {
  for (auto [p, n] : r.chunks)
    if (auto st = watched("cudaHostUnregister", r.what, [&] { return api_->unregister_host(p, r.what); }); !st)
      log::warning("unpinning ", r.what, ": ", st.error().message);
  r.chunks.clear();
}

bool CudaCopyEngine::region_pinned(std::uint32_t id) {
  bool pinned = false;
  on_engine([&] {
    auto it = regions_.find(id);
    pinned = it != regions_.end() && it->second.pinned;
  });
  return pinned;
}

std::size_t CudaCopyEngine::in_flight() {
  std::size_t n = 0;
  on_engine([&] { n = copies_.size(); });
  return n;
}

std::size_t CudaCopyEngine::sessions() {
  std::size_t n = 0;
  on_engine([&] { n = sessions_.size(); });
  return n;
}

std::size_t CudaCopyEngine::cached_handles(std::uint64_t session) {
  std::size_t n = 0;
  on_engine([&] {
    auto it = sessions_.find(session);
    n = it == sessions_.end() ? 0 : it->second.mems.size();
  });
  return n;
}

std::size_t CudaCopyEngine::cached_events(std::uint64_t session) {
  std::size_t n = 0;
  on_engine([&] {
    auto it = sessions_.find(session);
    n = it == sessions_.end() ? 0 : it->second.events.size();
  });
  return n;
}

// ---- one put ----------------------------------------------------------------

void CudaCopyEngine::submit(Request request, Done done) {
  // On the io thread: note the put, arm its timeout, hand it to the engine
  // thread. Nothing here calls CUDA or waits.
  const std::uint64_t id = next_copy_++;
  std::optional<PutCadence::Window> window;
  if (options_.wake_ahead) window = expect_next_put(request.session);
  auto p = std::make_unique<Pending>();
  p->done = std::move(done);
  p->dst = request.dst;
  p->nbytes = request.nbytes;
  p->object = "put '" + request.object_name + "'";
  if (request.nbytes == 0) {  // an empty tensor: nothing to wait for or copy
    pending_[id] = std::move(p);
    post_complete(id, ok_status());
    return;
  }
  if (options_.copy_timeout.count() > 0) {
    p->timer = std::make_unique<asio::steady_timer>(io_, options_.copy_timeout);
    p->timer->async_wait([this, alive = std::weak_ptr<int>(alive_), id](const boost::system::error_code& ec) {
      if (!ec && !alive.expired()) time_out(id);
    });
  }
  std::string object = p->object;
  auto state = std::make_shared<std::atomic<int>>(PutState::waiting);
  p->state = state;
  pending_[id] = std::move(p);
  engine_thread_->run([this, alive = std::weak_ptr<int>(alive_), id, r = std::move(request),
                       object = std::move(object), state, window]() mutable {
    if (alive.expired()) return;
    if (auto st = start(id, r, object, state, window); !st) {
      log::warning(st.error().message);
      if (claim(*state, PutState::cancelled)) post_complete(id, std::move(st));
    }
  });
}

std::optional<PutCadence::Window> CudaCopyEngine::expect_next_put(std::uint64_t session) {
  IoCadence& c = cadences_[session];
  c.cadence.arrived(std::chrono::steady_clock::now());
  auto w = c.cadence.next();
  if (w && options_.io_spin) {
    if (!c.wake) c.wake = std::make_unique<asio::steady_timer>(io_);
    c.wake->expires_at(w->from);  // cancels the wait for the window before, if any
    c.wake->async_wait([this, alive = std::weak_ptr<int>(alive_), until = w->until](const error_code& ec) {
      if (ec || alive.expired()) return;
      io_wake_aheads_.fetch_add(1, std::memory_order_relaxed);
      io_awake_.until(until);
    });
  }
  return w;
}

std::string CudaCopyEngine::trouble() const {
  const std::string lost = api_->lost();
  return lost.empty() ? std::string() : "GPU context lost: " + lost;
}

namespace {

/// What a put hears once the CUDA context is lost.
std::string lost_context_hint(const std::string& lost) {
  return "this daemon's CUDA context is lost since " + lost +
         "; every GPU put fails until tensorshmd restarts (systemctl restart tensorshmd); CPU puts and gets go on";
}

}  // namespace

Status CudaCopyEngine::start(std::uint64_t id, Request& r, const std::string& object,
                             const std::shared_ptr<std::atomic<int>>& state,
                             std::optional<PutCadence::Window> window) {
  if (state->load() == PutState::cancelled) return ok_status();  // timed out before its turn: answered
  if (const std::string lost = api_->lost(); !lost.empty())
    return Error{Errc::cuda_error, object + ": " + lost_context_hint(lost)};
  auto dev = device_for(r, object);
  if (!dev) return std::move(dev).error();
  const Region* region = region_for(r.dst, r.nbytes);
  if (region == nullptr)
    return Error{Errc::internal, object + ": the destination is not inside a pool segment the engine knows"};
  if (all_zero(r.mem_handle))
    return Error{Errc::invalid_argument, object + ": the CUDA memory handle is all zeros"};

  SessionState& s = sessions_[r.session];
  s.window = window;
  auto stream = stream_for(s, **dev, object);
  if (!stream) return std::move(stream).error();
  auto mem = open_mem(s, r.mem_handle, (*dev)->ordinal, object);
  if (!mem) return std::move(mem).error();
  const int device = (*dev)->ordinal;
  const bool has_event = !all_zero(r.event_handle);
  void* event = nullptr;
  if (has_event) {
    auto ev = open_event(s, r.event_handle, device, object);
    if (!ev) return std::move(ev).error();
    event = (*ev)->ptr;
  }
  // From here on the put holds its handles until release().
  (*mem)->busy++;
  if (has_event) s.events.find(r.event_handle)->busy++;
  s.in_flight++;
  const auto now = std::chrono::steady_clock::now();
  Copy& c = copies_[id];
  c.session = r.session;
  c.mem_key = r.mem_handle;
  if (has_event) c.event_key = r.event_handle;
  c.object = object;
  c.bytes = r.nbytes;
  c.started = now;
  const auto* src = static_cast<const std::byte*>((*mem)->ptr) + r.alloc_offset;
  // Queued behind the producer's earlier puts; the tick that runs right after
  // this job queries the event and issues the copy once it has completed.
  waiting_[r.session].push_back(Issue{id, device, *stream, event, region->pinned, split(*region, r.dst, src, r.nbytes),
                                      state, now, object});
  return ok_status();
}

void CudaCopyEngine::issue(Issue& w) {
  if (!claim(*w.state, PutState::issued)) {
    abandon(w, ok_status());  // the io thread timed it out: answered already
    return;
  }
  const std::uint64_t id = w.id;
  Copy& c = copies_.at(id);
  c.issued = std::chrono::steady_clock::now();
  if (!w.pinned) {
    // Into pageable memory cudaMemcpyAsync returns only when the copy is
    // done: keep that wait off the engine thread too.
    if (!worker_) worker_ = std::make_shared<JobThread>();
    worker_->run([this, back = std::weak_ptr<JobThread>(engine_thread_), alive = std::weak_ptr<int>(alive_),
                  api = api_, device = w.device, st = w.stream, pieces = w.pieces, id, object = w.object] {
      Status status = ok_status();
      for (const auto& p : pieces)
        if (!(status = api->copy_to_host(device, st, p.dst, p.src, p.bytes, object))) break;
      post_finish(back, alive, this, id, std::move(status));
    });
    return;
  }
  for (const auto& p : w.pieces) {
    c.queue_error = watched("cudaMemcpyAsync", w.object,
                            [&] { return api_->copy_to_host(w.device, w.stream, p.dst, p.src, p.bytes, w.object); });
    if (!c.queue_error) break;
  }
  // Even when a piece could not be queued, the ones before it were: the
  // handles stay in use until the stream passes them.
  Device& d = devices_[static_cast<std::size_t>(w.device)];
  c.device = w.device;
  c.stream = w.stream;
  c.done_event = mark_end(d, c);
  const TimePoint link_busy = share_link(c);
  StreamCopies& on_stream = on_streams_[w.stream];
  c.start_known = on_stream.empty();
  c.start = c.start_known ? c.issued : std::max(c.issued, copies_.at(on_stream.back()).expected_end);
  c.expected_end = std::max(c.start, link_busy) + d.clock.predict(c.bytes);
  on_stream.push_back(id);
}

CudaCopyEngine::TimePoint CudaCopyEngine::share_link(Copy& c) {
  TimePoint busy{};
  for (auto& [stream, q] : on_streams_) {
    if (stream == c.stream || q.empty() || copies_.at(q.front()).device != c.device) continue;
    c.shared = true;
    for (const std::uint64_t id : q) {
      Copy& other = copies_.at(id);
      other.shared = true;
      // Only copies issued before c are ahead of it on the link (when a
      // stream's next copy is predicted again, later ones may be queued).
      if (other.issued <= c.issued) busy = std::max(busy, other.expected_end);
    }
  }
  return busy;
}

void* CudaCopyEngine::mark_end(Device& d, Copy& c) {
  void* event = nullptr;
  if (!d.idle_events.empty()) {
    event = d.idle_events.back();
    d.idle_events.pop_back();
  } else {
    auto made = watched("cudaEventCreateWithFlags", c.object, [&] { return api_->create_event(d.ordinal, c.object); });
    if (!made) {
      no_event(d, c, made.error());
      return nullptr;
    }
    event = *made;
  }
  auto st =
      watched("cudaEventRecord", c.object, [&] { return api_->record_event(d.ordinal, c.stream, event, c.object); });
  if (!st) {
    no_event(d, c, st.error());
    (void)watched("cudaEventDestroy", c.object, [&] { return api_->destroy_event(d.ordinal, event); });
    return nullptr;
  }
  return event;
}

void CudaCopyEngine::no_event(Device& d, const Copy& c, const Error& e) {
  if (std::exchange(d.events_failed, true))
    log::debug(c.object, ": ", e.message, "; its end is seen on the next copy's event or the stream");
  else
    log::warning(c.object, ": ", e.message, "; the end of this copy (and of any other copy on device ", d.ordinal,
                 " that gets no event) is seen on the next copy's event or on its stream (logged once)");
}

std::optional<std::chrono::microseconds> CudaCopyEngine::poll(bool all_now) {
  // After shut_down nothing is polled: ending a copy may close handles, which
  // blocks on a device wedged by a copy that never ends.
  if (stopping_) return std::nullopt;
  polls_.fetch_add(1, std::memory_order_relaxed);
  std::optional<std::chrono::microseconds> next;
  for (auto d : {poll_events(all_now), poll_copies(all_now), poll_cadences()})
    if (d) sooner(next, *d);
  // Linger awake for the producer's next put, if asked to, whatever else waits.
  if (options_.linger.count() > 0 && std::chrono::steady_clock::now() - last_end_ < options_.linger)
    return std::chrono::microseconds(0);
  return next;
}

std::optional<std::chrono::microseconds> CudaCopyEngine::poll_copies(bool all_now) {
  if (on_streams_.empty()) return std::nullopt;
  std::optional<std::chrono::microseconds> next;
  for (auto it = on_streams_.begin(); it != on_streams_.end();) {
    StreamCopies& q = it->second;
    bool look_now = all_now;
    while (!q.empty()) {
      const std::uint64_t id = q.front();
      Copy& c = copies_.at(id);
      const auto now = std::chrono::steady_clock::now();
      const CopyClock::Plan plan = CopyClock::plan(now, c.start, c.expected_end, c.bytes, c.last_look);
      if (plan.query && plan.delay.count() == 0 && options_.io_spin && !std::exchange(c.io_woken, true))
        io_awake_.until(CopyClock::spin_end(c.start, c.expected_end));  // its answer then finds the io thread up
      if (!plan.query && !look_now) {
        sooner(next, plan.delay);
        break;
      }
      bool own_event = false;  // the answer came from the head's own event
      Result<bool> done = head_done(q, own_event);
      const auto seen = std::chrono::steady_clock::now();
      if (done && !*done) {
        c.last_look = seen;
        sooner(next, plan.delay);
        break;
      }
      const bool prompt = c.last_look != TimePoint{} && CopyClock::prompt(c.start, c.last_look, seen);
      // A prompt end times the link only for a copy that had it to itself. A
      // bound (not prompt) holds for any copy, but teaches only when the
      // start is the copy's own issue: a start taken from the end of the copy
      // before is itself up to that end's slack late.
      if (done && own_event && c.start_known && (prompt ? !c.shared : c.start == c.issued))
        devices_[static_cast<std::size_t>(c.device)].clock.observe(c.bytes, c.start, seen, prompt);
      q.pop_front();
      finish(id, done ? ok_status() : Status(std::move(done).error()));
      if (q.empty()) break;
      // The next copy started when this one ended: known when that was seen
      // promptly. It may have ended too: look at once.
      Copy& head = copies_.at(q.front());
      head.start = std::max(head.issued, seen);
      head.start_known = done && prompt;
      head.expected_end = std::max(head.start, share_link(head)) +
                          devices_[static_cast<std::size_t>(head.device)].clock.predict(head.bytes);
      look_now = true;
    }
    it = q.empty() ? on_streams_.erase(it) : std::next(it);
  }
  return next;
}

std::optional<std::chrono::microseconds> CudaCopyEngine::poll_cadences() {
  using namespace std::chrono_literals;
  if (!options_.wake_ahead) return std::nullopt;
  const auto now = std::chrono::steady_clock::now();
  std::optional<std::chrono::microseconds> next;
  for (auto& [session, s] : sessions_) {
    const auto& w = s.window;
    if (!w || now >= w->until || s.closed) continue;
    if (now < w->from) {
      sooner(next, std::chrono::duration_cast<std::chrono::microseconds>(w->from - now) + 1us);
      continue;
    }
    // Inside the window: the put is due. Stay awake (the io thread's timer
    // keeps it awake too), so that neither wakes up on the put's path.
    if (s.awake_until != w->until) {
      s.awake_until = w->until;
      wake_aheads_.fetch_add(1, std::memory_order_relaxed);
    }
    next = 0us;
  }
  return next;
}

Result<bool> CudaCopyEngine::head_done(const StreamCopies& q, bool& own_event) {
  // A stream runs its work in order: the end of any later copy is this one's
  // too. Without an event (none could be made or recorded), the next copy's
  // is the nearest sign; the stream's own state (all its work done) the last.
  for (const std::uint64_t id : q) {
    const Copy& c = copies_.at(id);
    if (c.done_event == nullptr) continue;
    own_event = id == q.front();
    return watched("cudaEventQuery", c.object, [&] { return api_->query_event(c.device, c.done_event, c.object); });
  }
  const Copy& head = copies_.at(q.front());
  return watched("cudaStreamQuery", head.object, [&] { return api_->stream_done(head.device, head.stream); });
}

std::optional<std::chrono::microseconds> CudaCopyEngine::poll_events(bool all_now) {
  using namespace std::chrono_literals;
  if (waiting_.empty()) return std::nullopt;
  const auto now = std::chrono::steady_clock::now();
  std::optional<std::chrono::microseconds> next;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    auto& queue = it->second;
    while (!queue.empty()) {
      Issue& w = queue.front();
      if (w.state->load() == PutState::cancelled) {
        abandon(w, ok_status());
        queue.pop_front();
        continue;
      }
      if (w.event != nullptr) {
        if (!all_now && now < w.next_query) {  // each event on its own schedule
          sooner(next, std::chrono::duration_cast<std::chrono::microseconds>(w.next_query - now) + 1us);
          break;
        }
        auto done = watched("cudaEventQuery", w.object, [&] { return api_->query_event(w.device, w.event, w.object); });
        if (!done) {
          std::string why = w.object + ": waiting for the producer's event: " + done.error().message;
          if (const std::string lost = api_->lost(); !lost.empty()) why += "; " + lost_context_hint(lost);
          drop(w, Error{done.error().code, std::move(why)});
          queue.pop_front();
          continue;
        }
        if (!*done) {
          // Fast while the producer's work is probably about to finish, then
          // backing off: a kernel that runs for seconds costs few queries.
          const auto age = now - w.since;
          const std::chrono::microseconds delay = age < 2ms ? 10us : age < 50ms ? 100us : 1000us;
          w.next_query = now + delay;
          sooner(next, delay);
          break;
        }
      }
      Issue ready = std::move(w);
      queue.pop_front();
      issue(ready);
    }
    it = queue.empty() ? waiting_.erase(it) : std::next(it);
  }
  return next;
}

void CudaCopyEngine::abandon(Issue& w, Status status) {
  release(w.id);
  if (!status) {
    log::warning(status.error().message);
    post_complete(w.id, std::move(status));
  }
}

void CudaCopyEngine::drop(Issue& w, Error why) {
  abandon(w, claim(*w.state, PutState::cancelled) ? Status(std::move(why)) : ok_status());
}

Result<CudaCopyEngine::Device*> CudaCopyEngine::device_for(const Request& r, const std::string& object) {
  if (all_zero(r.device_uuid)) {
    if (r.device >= 0 && r.device < device_count()) return &devices_[static_cast<std::size_t>(r.device)];
    return Error{Errc::cuda_error, object + ": the producer names device " + std::to_string(r.device) +
                                       " without a uuid, and this daemon has " + std::to_string(device_count()) +
                                       " device(s)"};
  }
  for (auto& d : devices_)
    if (d.uuid == r.device_uuid) return &d;
  std::string seen;
  for (const auto& d : devices_) seen += (seen.empty() ? "" : ", ") + format_uuid(d.uuid) + " (" + d.name + ")";
  return Error{Errc::cuda_error, object + ": the data is on GPU " + format_uuid(r.device_uuid) +
                                     ", which this daemon cannot see (it sees " + seen +
                                     "); start tensorshmd with that GPU visible (check CUDA_VISIBLE_DEVICES)"};
}

const CudaCopyEngine::Region* CudaCopyEngine::region_for(const void* dst, std::uint64_t bytes) const {
  const auto* p = static_cast<const std::byte*>(dst);
  for (const auto& [id, r] : regions_)
    if (p >= r.base && p + bytes <= r.base + r.bytes) return &r;
  return nullptr;
}

Result<void*> CudaCopyEngine::stream_for(SessionState& s, Device& d, const std::string& object) {
  if (auto it = s.streams.find(d.ordinal); it != s.streams.end()) return it->second;
  void* stream = nullptr;
  if (!d.idle_streams.empty()) {
    stream = d.idle_streams.back();
    d.idle_streams.pop_back();
  } else {
    auto made = watched("cudaStreamCreateWithFlags", object, [&] { return api_->create_stream(d.ordinal); });
    if (!made) return Error{made.error().code, object + ": " + made.error().message};
    stream = *made;
  }
  s.streams[d.ordinal] = stream;
  return stream;
}

Result<HandleCache::Entry*> CudaCopyEngine::open_mem(SessionState& s, const IpcBytes& key, int device,
                                                     const std::string& object) {
  if (auto* e = s.mems.find(key)) return e;
  auto base = watched("cudaIpcOpenMemHandle", object, [&] { return api_->open_mem_handle(device, key, object); });
  if (!base)
    return Error{base.error().code, object + ": the producer's CUDA memory handle could not be opened: " +
                                         base.error().message +
                                         ". It must come from cudaIpcGetMemHandle in a live process, for memory "
                                         "from cudaMalloc (not cudaMallocAsync pools or cuMemCreate)"};
  auto& e = s.mems.insert(key, device, *base);
  for (const auto& old : s.mems.trim(mem_capacity())) close_mem(old);
  return &e;
}

Result<HandleCache::Entry*> CudaCopyEngine::open_event(SessionState& s, const IpcBytes& key, int device,
                                                       const std::string& object) {
  if (auto* e = s.events.find(key)) return e;
  auto ev = watched("cudaIpcOpenEventHandle", object, [&] { return api_->open_event_handle(device, key, object); });
  if (!ev)
    return Error{ev.error().code, object + ": the producer's CUDA event handle could not be opened: " +
                                       ev.error().message +
                                       ". It must come from cudaIpcGetEventHandle of an event created with "
                                       "cudaEventInterprocess | cudaEventDisableTiming"};
  auto& e = s.events.insert(key, device, *ev);
  for (const auto& old : s.events.trim(event_capacity())) close_event(old);
  return &e;
}

std::vector<CudaCopyEngine::Piece> CudaCopyEngine::split(const Region& region, void* dst, const void* src,
                                                         std::uint64_t bytes) const {
  // One cudaMemcpyAsync per registered chunk the destination touches: a copy
  // must not straddle two separately registered ranges.
  std::vector<Piece> out;
  auto* d = static_cast<std::byte*>(dst);
  const auto* sp = static_cast<const std::byte*>(src);
  const std::uint64_t chunk = region.pinned ? options_.pin_chunk : bytes;
  while (bytes > 0) {
    const auto off = static_cast<std::uint64_t>(d - region.base);
    const std::uint64_t room = chunk - off % chunk;
    const std::uint64_t n = std::min(bytes, room);
    out.push_back(Piece{d, sp, n});
    d += n;
    sp += n;
    bytes -= n;
  }
  return out;
}

// ---- completions ------------------------------------------------------------

void CudaCopyEngine::post_finish(const std::weak_ptr<JobThread>& engine_thread, std::weak_ptr<int> alive,
                                 CudaCopyEngine* engine, std::uint64_t copy_id, Status status) {
  // Runs on the helper thread (copies into unpinned memory): it only enqueues on
  // the engine thread, which touches the engine once it is known alive (the
  // engine joins that thread before its state goes away).
  if (auto t = engine_thread.lock())
    t->run([alive = std::move(alive), engine, copy_id, status = std::move(status)]() mutable {
      if (!alive.expired()) engine->finish(copy_id, std::move(status));
    });
}

void CudaCopyEngine::post_complete(std::uint64_t copy_id, Status status) {
  asio::post(io_, [this, alive = std::weak_ptr<int>(alive_), copy_id, status = std::move(status)]() mutable {
    if (!alive.expired()) complete(copy_id, std::move(status));
  });
}

void CudaCopyEngine::release(std::uint64_t copy_id) {
  // Engine thread: the put is done with its handles (copied, failed or dropped).
  auto node = copies_.extract(copy_id);
  if (node.empty()) return;
  Copy& c = node.mapped();
  SessionState& s = sessions_.at(c.session);
  if (auto doomed = s.mems.release(c.mem_key)) close_mem(*doomed);
  if (c.event_key)
    if (auto doomed = s.events.release(*c.event_key)) close_event(*doomed);
  --s.in_flight;
  for (const auto& old : s.mems.trim(mem_capacity())) close_mem(old);
  for (const auto& old : s.events.trim(event_capacity())) close_event(old);
  if (s.closed && s.in_flight == 0) drop_session(c.session);
}

void CudaCopyEngine::finish(std::uint64_t copy_id, Status status) {
  // Engine thread: the stream passed the copy.
  auto it = copies_.find(copy_id);
  if (it == copies_.end()) return;
  last_end_ = std::chrono::steady_clock::now();  // Options::linger counts from here
  if (options_.io_spin && options_.linger.count() > 0) io_awake_.until(last_end_ + options_.linger);
  if (void* event = std::exchange(it->second.done_event, nullptr); event != nullptr)
    devices_[static_cast<std::size_t>(it->second.device)].idle_events.push_back(event);
  if (!it->second.queue_error) status = std::move(it->second.queue_error);
  if (!status) {
    std::string why = it->second.object + ": the device-to-host copy failed: " + status.error().message;
    if (const std::string lost = api_->lost(); !lost.empty()) why += "; " + lost_context_hint(lost);
    status = Error{status.error().code, std::move(why)};
    log::warning(status.error().message);
  } else if (log::enabled(LogLevel::debug)) {
    const Copy& c = it->second;
    const double copy_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - c.issued).count();
    log::debug("gpu copy: ", c.object, " bytes=", c.bytes, " event_wait_us=",
               std::chrono::duration<double, std::micro>(c.issued - c.started).count(), " copy_us=", copy_us,
               " GBps=", copy_us > 0 ? static_cast<double>(c.bytes) / copy_us / 1e3 : 0.0);
  }
  release(copy_id);
  post_complete(copy_id, std::move(status));
}

void CudaCopyEngine::complete(std::uint64_t copy_id, Status status) {
  // io thread: answer the put, unless its timeout answered it already.
  auto node = pending_.extract(copy_id);
  if (node.empty()) {
    log::notice("a GPU copy that had timed out ended after all (", status ? "completed" : status.error().message,
                "); its destination stays quarantined");
    return;
  }
  if (status && log::enabled(LogLevel::debug))
    log::debug("gpu put answered: ", node.mapped()->object, " bytes=", node.mapped()->nbytes, " submit_to_answer_us=",
               std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - node.mapped()->submitted)
                   .count());
  node.mapped()->done(std::move(status));
}

void CudaCopyEngine::time_out(std::uint64_t copy_id) {
  // io thread. The DMA may still be queued and land later: the destination is
  // quarantined so that nothing else is ever allocated there.
  auto node = pending_.extract(copy_id);
  if (node.empty()) return;
  Pending& p = *node.mapped();
  const std::string ms = std::to_string(options_.copy_timeout.count());
  const std::optional<std::string> stuck = stuck_call(p.object);
  if (claim(*p.state, PutState::cancelled)) {
    // Nothing was queued on the GPU: the engine thread drops the put when it
    // next looks at it, and the destination is freed as for any failed put.
    Error e{Errc::cuda_error,
            stuck ? p.object + ": the copy could not be started within " + ms + " ms: " + *stuck +
                        "; nothing was copied"
                  : p.object + ": the producer's GPU work before the put did not complete within " + ms +
                        " ms (its event never completed: the producer may have died, or a kernel of it "
                        "hangs); nothing was copied"};
    log::warning(e.message, stuck ? " (" + engine_activity() + ")" : std::string());
    p.done(std::move(e));
    return;
  }
  quarantined_.emplace_back(p.dst, p.nbytes);
  if (pool_ != nullptr) pool_->quarantine(static_cast<const std::byte*>(p.dst), p.nbytes);
  Error e{Errc::cuda_error, p.object + ": the device-to-host copy did not complete within " + ms +
                                " ms; the producer may have died mid-copy (its destination is quarantined until "
                                "tensorshmd restarts)"};
  log::warning(e.message, " (", engine_activity(), ")");
  p.done(std::move(e));
}

void CudaCopyEngine::forget_handle(std::uint64_t session, const std::array<std::uint8_t, 64>& handle) {
  engine_thread_->run([this, alive = std::weak_ptr<int>(alive_), session, handle] {
    if (alive.expired()) return;
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return;
    if (auto idle = it->second.mems.forget(handle)) close_mem(*idle);
  });
}

void CudaCopyEngine::session_closed(std::uint64_t session) {
  cadences_.erase(session);  // io thread: its timer goes with it
  engine_thread_->run([this, alive = std::weak_ptr<int>(alive_), session] {
    if (alive.expired()) return;
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return;
    it->second.closed = true;
    // Puts still waiting for the producer's event are dropped: a producer
    // that is gone never completes its work (ready ones are issued first).
    poll_events(/*all_now=*/true);
    if (auto w = waiting_.find(session); w != waiting_.end()) {
      auto queue = std::move(w->second);
      waiting_.erase(w);
      for (auto& put : queue)
        drop(put, Error{Errc::cuda_error,
                        put.object + ": the producer disconnected before its GPU work completed; nothing was copied"});
    }
    it = sessions_.find(session);  // abandon() may have dropped it
    if (it == sessions_.end()) return;
    if (it->second.in_flight == 0) drop_session(session);
    else log::info("session ", session, " left with ", it->second.in_flight,
                   " GPU copy(ies) in flight; its CUDA handles close when they finish");
  });
}

void CudaCopyEngine::drop_session(std::uint64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  for (const auto& e : it->second.mems.take_all()) close_mem(e);
  for (const auto& e : it->second.events.take_all()) close_event(e);
  for (auto [dev, stream] : it->second.streams) devices_[static_cast<std::size_t>(dev)].idle_streams.push_back(stream);
  sessions_.erase(it);
}

void CudaCopyEngine::close_mem(const HandleCache::Entry& e) {
  auto st = watched("cudaIpcCloseMemHandle", "a cached memory handle",
                    [&] { return api_->close_mem_handle(e.device, e.ptr); });
  if (!st)
    log::warning("closing a CUDA memory handle: ", st.error().message);
}

void CudaCopyEngine::close_event(const HandleCache::Entry& e) {
  auto st = watched("cudaEventDestroy", "a cached event handle", [&] { return api_->destroy_event(e.device, e.ptr); });
  if (!st)
    log::warning("closing a CUDA event handle: ", st.error().message);
}

}  // namespace tensorshm::daemon
