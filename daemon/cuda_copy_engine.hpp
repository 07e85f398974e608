// The copy engine over a CudaApi: discovers the GPUs, pins the pool's memory
// once (in chunks of at most 1 GiB, timed and logged), and turns each CUDA put
// into "wait for the producer's event, copy device-to-host into the extent,
// tell the io thread". Opened IPC memory and event handles are cached per
// producer connection, keyed by the handle bytes, in a bounded LRU; a handle
// is never closed while a copy uses it. The producer's event is waited for on
// the host (cudaEventQuery, polled from the engine thread's tick), so nothing
// is queued on the GPU behind an event that may never complete (a producer
// killed before its work ran); each producer connection has its own queue and
// stream per device (recycled when it leaves), so a late event holds up only
// that producer. The end of a copy is polled the same way, on an event of the
// engine's own recorded after it, at times the CopyClock plans from the
// copy's predicted end: no CUDA callback thread and no wake-up of the engine
// thread lie between the end of the DMA and the answer, and the io thread is
// kept polling over that end (Options::io_spin). A producer that puts at a
// steady rate finds both threads awake when its next put is due
// (Options::wake_ahead, PutCadence).
//
// Every CudaApi call runs on one engine thread, never on the io_context
// thread: a CUDA call that blocks behind a wedged copy (a producer killed
// mid-copy) then stalls GPU puts only, never the event loop and its CPU-only
// clients. submit/forget_handle/session_closed only enqueue; the engine's
// state (handle caches, streams, regions, copies in flight) is touched only
// on the engine thread; the helper thread's copies into unpinned memory
// enqueue their end there too. Each put's
// answer, and its timeout (Options::copy_timeout), live on the io thread,
// which calls `done` exactly once; a put that times out after its copy was
// queued has its destination quarantined in the pool, since its DMA may
// still land (one timed out before that is simply dropped: PutState).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "copy_clock.hpp"
#include "copy_engine.hpp"
#include "cuda_api.hpp"
#include "io_awake.hpp"
#include "put_cadence.hpp"

namespace tensorshm::daemon {

class JobThread;

/// Opened handles of one producer connection, least recently used last.
/// Entries in use (busy > 0) are never closed; an entry the producer forgot
/// while in use is closed when its last copy ends.
class HandleCache {
 public:
  struct Entry {
    IpcBytes key{};
    int device = 0;
    void* ptr = nullptr;      // opened base pointer or event
    std::uint32_t busy = 0;   // copies using it now
    bool doomed = false;      // close as soon as it is idle
  };
  /// The entry, now most recently used; nullptr when absent.
  Entry* find(const IpcBytes& key);
  Entry& insert(const IpcBytes& key, int device, void* ptr);
  /// Removes and returns the entry when it is idle; marks it doomed when busy.
  std::optional<Entry> forget(const IpcBytes& key);
  /// Drops one use; returns the entry when it was doomed and is now idle.
  std::optional<Entry> release(const IpcBytes& key);
  /// Removes and returns idle entries, least recent first, until at most
  /// `capacity` remain (busy entries may keep it above). The most recently
  /// used entry always stays.
  std::vector<Entry> trim(std::size_t capacity);
  /// Removes and returns everything (the connection is gone, copies done).
  std::vector<Entry> take_all();
  std::size_t size() const noexcept { return order_.size(); }

 private:
  std::list<Entry> order_;  // front: most recently used
  std::map<IpcBytes, std::list<Entry>::iterator> index_;
};

class CudaCopyEngine final : public CopyEngine {
 public:
  struct Options {
    std::uint32_t handle_cache = 64;        // opened memory handles kept per connection
    std::uint32_t event_cache = 64;         // opened event handles kept per connection
    std::uint64_t pin_chunk = 1ull << 30;   // bytes per cudaHostRegister call
    std::chrono::milliseconds shutdown_patience{10000};  // wait for copies in flight when destroyed
    std::chrono::milliseconds copy_timeout{30000};       // fail a put not copied by then; 0: never
    // How long the io thread waits for the engine thread to pin or unpin a
    // dedicated segment. Pinning takes ~0.1 s per GiB, so this is only ever
    // reached when the engine thread is stuck in a CUDA call.
    std::chrono::milliseconds hook_patience{5000};
    // After a copy ends, the engine thread keeps polling (without sleeping)
    // this long before it sleeps: a producer's next put then finds it awake.
    std::chrono::microseconds linger{0};
    // Shortly before a copy's predicted end (when the engine thread starts
    // querying it without sleeping) the io thread is kept polling too, until
    // the engine would stop (CopyClock::spin_end), and for `linger` after a
    // copy ends: the put's answer then needs no wake-up of the io thread.
    bool io_spin = true;
    // A producer whose puts arrive at a steady rate (PutCadence) finds the
    // engine thread, and with io_spin the io thread, awake when its next put
    // is due: both wake a little before it instead of on it.
    bool wake_ahead = true;
  };

  /// Discovers the devices. An Error (no_gpu: no driver, no device) when
  /// there is nothing to copy from; the caller then serves CPU-only.
  static Result<std::unique_ptr<CudaCopyEngine>> create(std::shared_ptr<CudaApi> api, boost::asio::io_context& io,
                                                        Options options);
  ~CudaCopyEngine() override;
  CudaCopyEngine(const CudaCopyEngine&) = delete;
  CudaCopyEngine& operator=(const CudaCopyEngine&) = delete;

  int device_count() const noexcept override { return static_cast<int>(devices_.size()); }
  void submit(Request request, Done done) override;
  void forget_handle(std::uint64_t session, const std::array<std::uint8_t, 64>& handle) override;
  void session_closed(std::uint64_t session) override;
  /// "GPU context lost: <the call that lost it>" once CudaApi::lost() says so.
  std::string trouble() const override;

  /// Pins [base, base + bytes) in chunks of at most options.pin_chunk. When
  /// pinning fails the region is left pageable (logged once) and copies into
  /// it run on a helper thread, since they then block until done. Runs on
  /// the engine thread; returns when it is done.
  void add_region(std::uint32_t id, std::byte* base, std::uint64_t bytes, const std::string& what);
  void remove_region(std::uint32_t id);
  /// Pins the pool's segments now (logging how long it took) and follows the
  /// segments it adds and removes later, waiting at most
  /// options.hook_patience for the engine thread each time; a segment the
  /// engine could not unpin in time stays mapped (Pool::on_segment_removed).
  /// Puts that time out are quarantined in this pool. Detaches in the
  /// destructor.
  void attach(Pool& pool);

  // Observations, for tests and the log. Each waits for the engine thread.
  std::size_t in_flight();
  std::size_t sessions();
  std::size_t cached_handles(std::uint64_t session);
  std::size_t cached_events(std::uint64_t session);
  bool region_pinned(std::uint32_t id);
  /// Returns once everything enqueued before the call has run on the engine
  /// thread, and the events that completed by then (producers' events and
  /// the ends of copies, whatever their planned poll time) have been polled.
  void drain();
  /// The device's learned copy rate in bytes per microsecond; 0 until learned.
  double copy_rate(int device);
  /// How many times the engine thread has polled (its tick), from any thread.
  std::uint64_t polls() const noexcept { return polls_.load(std::memory_order_relaxed); }
  /// The io thread's busy windows (Options::io_spin), from any thread.
  const IoAwake& io_awake() const noexcept { return io_awake_; }
  /// Windows the engine thread stayed awake in for a producer's next put
  /// (Options::wake_ahead), from any thread.
  std::uint64_t wake_aheads() const noexcept { return wake_aheads_.load(std::memory_order_relaxed); }
  /// The same for the io thread (its timer opened the window), from any thread.
  std::uint64_t io_wake_aheads() const noexcept { return io_wake_aheads_.load(std::memory_order_relaxed); }
  /// Destinations of puts that timed out (io thread).
  const std::vector<std::pair<const void*, std::uint64_t>>& quarantined() const noexcept { return quarantined_; }
  /// What the engine thread is doing, from any thread, for the messages of
  /// puts that time out and hooks that wait too long: "the engine thread has
  /// been in cudaIpcCloseMemHandle (put 'x') for 1234 ms" or "the engine
  /// thread is not in a CUDA call".
  std::string engine_activity() const;

 private:
  struct Activity {  // the CUDA call the engine thread is in, if any
    mutable std::mutex mu;
    const char* call = nullptr;
    // The call's argument, alive while the call runs; read only while `call`
    // is set, under `mu`, so no copy of it is made for every call.
    std::string_view object;
    std::chrono::steady_clock::time_point since{};
  };
  struct Device {
    int ordinal = 0;
    DeviceUuid uuid{};
    std::string name;
    std::vector<void*> idle_streams;
    std::vector<void*> idle_events;  // the engine's own, recorded after copies
    bool events_failed = false;      // making or recording one failed (logged once)
    CopyClock clock;
  };
  struct Region {
    std::uint32_t id = 0;
    std::byte* base = nullptr;
    std::uint64_t bytes = 0;
    bool pinned = false;
    std::vector<std::pair<std::byte*, std::uint64_t>> chunks;  // registered pieces
    std::string what;
  };
  struct SessionState {
    HandleCache mems;
    HandleCache events;
    std::map<int, void*> streams;  // device -> stream
    std::uint32_t in_flight = 0;
    bool closed = false;
    std::optional<PutCadence::Window> window;  // when its next put is due (Options::wake_ahead)
    PutCadence::TimePoint awake_until{};       // the end of the last window entered for it
  };
  using TimePoint = std::chrono::steady_clock::time_point;
  struct Copy {  // engine thread
    std::uint64_t session = 0;
    IpcBytes mem_key{};
    std::optional<IpcBytes> event_key;
    std::string object;
    std::uint64_t bytes = 0;
    TimePoint started{};  // submitted to the engine thread, for the debug log
    // Set when the copy is queued on the GPU:
    int device = 0;
    void* stream = nullptr;
    void* done_event = nullptr;  // recorded after the copy; null: poll the stream instead
    Status queue_error = ok_status();  // a piece that could not be queued (those before it were)
    TimePoint issued{};
    // When the GPU starts it: its issue, or behind the copies before it on
    // the stream (predicted, then when the one before was seen done).
    TimePoint start{};
    bool start_known = false;  // the stream was idle, or the one before was seen ending promptly
    // Copies on another stream of its device were queued while it was: they
    // shared the link, so its time says nothing of the link's rate.
    bool shared = false;
    TimePoint expected_end{};
    TimePoint last_look{};  // the last query that found it not done; {}: none
    bool io_woken = false;  // the io thread was kept awake for its end (Options::io_spin)
  };
  using StreamCopies = std::deque<std::uint64_t>;  // engine thread: copies queued on one stream, oldest first
  struct Pending;  // io thread: a put not answered yet
  // Who owns a put: the engine thread moves it from waiting to issued before
  // it queues the copy; the io thread's timeout moves it from waiting to
  // cancelled. Exactly one wins, so a timed-out put is quarantined only when
  // a DMA into its destination was really queued.
  enum PutState : int { waiting = 0, issued = 1, cancelled = 2 };

  struct Piece {
    void* dst;
    const void* src;
    std::uint64_t bytes;
  };
  struct Issue {  // engine thread: a put ready to be queued once its producer's event completes
    std::uint64_t id = 0;
    int device = 0;
    void* stream = nullptr;
    void* event = nullptr;  // null: the producer sent no event
    bool pinned = true;
    std::vector<Piece> pieces;
    std::shared_ptr<std::atomic<int>> state;
    std::chrono::steady_clock::time_point since;  // when it started waiting
    std::string object;
    std::chrono::steady_clock::time_point next_query{};  // its event's next poll
  };

  CudaCopyEngine(std::shared_ptr<CudaApi> api, boost::asio::io_context& io, Options options);
  /// Runs `job` on the engine thread and waits for it, at most `patience`
  /// when given; false when it had not run by then (it still runs later, so
  /// it must own what it uses).
  bool on_engine(std::function<void()> job, std::optional<std::chrono::milliseconds> patience = std::nullopt);
  Status start(std::uint64_t id, Request& r, const std::string& object,
               const std::shared_ptr<std::atomic<int>>& state, std::optional<PutCadence::Window> window);
  /// Queues the copy and records an event after it (or hands it to the
  /// helper thread when the destination is not pinned), unless the io thread
  /// cancelled the put first.
  void issue(Issue& w);
  /// Copy `c` (queued on its stream) shares its device's link with the
  /// copies queued on the device's other streams: marks them all `shared`
  /// and returns when those issued before `c` are expected to be done ({}:
  /// none).
  TimePoint share_link(Copy& c);
  /// Records the event that marks the end of copy `c` on its stream: an idle
  /// one of the device's or a new one; null when neither works (logged), and
  /// the copy's end is then polled with cudaStreamQuery.
  void* mark_end(Device& d, Copy& c);
  /// Logs, once per device, that copies there go without an event.
  void no_event(Device& d, const Copy& c, const Error& e);
  /// Engine thread, from the JobThread's tick: polls producers' events and
  /// the ends of copies. Returns when to poll again.
  std::optional<std::chrono::microseconds> poll(bool all_now = false);
  /// Engine thread, from the JobThread's tick: queries the event at the head
  /// of each producer's queue and issues the puts whose events completed, in
  /// the order each producer submitted them. Returns when to poll again.
  std::optional<std::chrono::microseconds> poll_events(bool all_now = false);
  /// Engine thread: queries the end of the oldest copy on each stream when
  /// its CopyClock plan says so (every one when `all_now`), finishes those
  /// that ended, in order, teaching the device's clock. Returns when to poll
  /// again.
  std::optional<std::chrono::microseconds> poll_copies(bool all_now);
  /// Engine thread: keeps the engine thread awake in the window around each
  /// regular producer's next put. Returns when to look again (zero: inside a
  /// window).
  std::optional<std::chrono::microseconds> poll_cadences();
  /// Io thread: notes that `session` put now; returns the window around its
  /// next put, if its puts are regular, and sets a timer that keeps the io
  /// thread awake through that window (Options::io_spin). The engine thread
  /// wakes for the same window on its own, so the two wake-ups overlap.
  std::optional<PutCadence::Window> expect_next_put(std::uint64_t session);
  /// Whether the copy at the head of `q` has ended: its event, or (when it
  /// has none) the next copy's on the stream, or the stream itself.
  Result<bool> head_done(const StreamCopies& q, bool& own_event);
  /// Releases a put that will never be copied (cancelled, failed, producer
  /// gone); answers it with `status` unless `status` is ok (already answered).
  void abandon(Issue& w, Status status);
  /// Cancels a waiting put with `why`, unless the io thread's timeout got to
  /// it first (then it was answered already), and releases it.
  void drop(Issue& w, Error why);
  /// Moves a put from waiting to `to`; false when the other thread moved it first.
  static bool claim(std::atomic<int>& state, PutState to);
  /// engine_activity() when the engine thread is in a CUDA call, else
  /// nullopt. With `told` (the put whose producer hears it), another put's
  /// object is not named.
  std::optional<std::string> stuck_call(std::string_view told = {}) const;
  void add_region_now(std::uint32_t id, std::byte* base, std::uint64_t bytes, const std::string& what);
  void remove_region_now(std::uint32_t id);
  bool shut_down();
  Result<Device*> device_for(const Request& r, const std::string& object);
  const Region* region_for(const void* dst, std::uint64_t bytes) const;
  Result<void*> stream_for(SessionState& s, Device& d, const std::string& object);
  Result<HandleCache::Entry*> open_mem(SessionState& s, const IpcBytes& key, int device, const std::string& object);
  Result<HandleCache::Entry*> open_event(SessionState& s, const IpcBytes& key, int device,
                                         const std::string& object);
  std::vector<Piece> split(const Region& region, void* dst, const void* src, std::uint64_t bytes) const;
  void finish(std::uint64_t copy_id, Status status);
  /// Gives back the handles a put held and forgets it (nothing if unknown).
  void release(std::uint64_t copy_id);
  void complete(std::uint64_t copy_id, Status status);
  void time_out(std::uint64_t copy_id);
  void post_complete(std::uint64_t copy_id, Status status);
  static void post_finish(const std::weak_ptr<JobThread>& engine_thread, std::weak_ptr<int> alive,
                          CudaCopyEngine* engine, std::uint64_t copy_id, Status status);
  // A cache keeps at least the entry just opened.
  std::size_t mem_capacity() const noexcept { return std::max<std::size_t>(1, options_.handle_cache); }
  std::size_t event_capacity() const noexcept { return std::max<std::size_t>(1, options_.event_cache); }
  void close_mem(const HandleCache::Entry& e);
  void close_event(const HandleCache::Entry& e);
  void drop_session(std::uint64_t session);
  void unpin(Region& r);
  /// Runs one CudaApi call on the engine thread, noting it in activity_.
  template <class Fn>
  auto watched(const char* call, std::string_view object, Fn&& fn);

  std::shared_ptr<CudaApi> api_;
  boost::asio::io_context& io_;
  IoAwake io_awake_{io_};
  Options options_;
  std::vector<Device> devices_;
  std::map<std::uint32_t, Region> regions_;
  std::map<std::uint64_t, SessionState> sessions_;
  std::map<std::uint64_t, Copy> copies_;
  std::map<std::uint64_t, std::deque<Issue>> waiting_;  // per session, in submission order
  std::map<void*, StreamCopies> on_streams_;  // copies queued on the GPU, per stream
  bool stopping_ = false;  // shut_down ran: nothing is polled any more
  TimePoint last_end_{};   // when the engine last saw a copy end (Options::linger)
  std::atomic<std::uint64_t> polls_{0};
  std::atomic<std::uint64_t> wake_aheads_{0};
  std::atomic<std::uint64_t> io_wake_aheads_{0};
  struct IoCadence {  // io thread: a producer connection's put cadence (Options::wake_ahead)
    PutCadence cadence;
    std::unique_ptr<boost::asio::steady_timer> wake;  // opens the io thread's window when the next put is due
  };
  std::map<std::uint64_t, IoCadence> cadences_;  // io thread, per session
  std::map<std::uint64_t, std::unique_ptr<Pending>> pending_;  // io thread
  std::vector<std::pair<const void*, std::uint64_t>> quarantined_;  // io thread
  std::uint64_t next_copy_ = 1;  // io thread
  Pool* pool_ = nullptr;
  Activity activity_;
  std::shared_ptr<JobThread> worker_;   // copies into unpinned memory, which block until done
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // posted jobs check it before touching the engine
  std::shared_ptr<JobThread> engine_thread_;  // every CudaApi call runs here
};

/// Formats a device uuid as nvidia-smi does: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
std::string format_uuid(const DeviceUuid& uuid);

}  // namespace tensorshm::daemon
