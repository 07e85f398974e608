// CUDA simulated in host memory, so that tests drive the copy engine's logic
// on machines without a GPU. "Device memory" is host memory a test exports
// (as a producer would with cudaIpcGetMemHandle); IPC handles are tokens that
// name it; streams are queues that run only when the test calls run(), so the
// test decides when a producer's event fires and when copies finish (or, after
// run_by_itself(), as a GPU would, each copy taking its bytes' time). Errors
// can be injected per call, and a call made to block as on a wedged device.
// Thread-safe: the engine thread and its helper thread call it (copies into
// unpinned memory block there until their stream gets to them, as with CUDA).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_api.hpp"

namespace tensorshm::daemon {

class HostCudaApi final : public CudaApi {
 public:
  /// `devices` simulated GPUs; device i has the uuid whose bytes are all i+1.
  explicit HostCudaApi(int devices = 1);
  ~HostCudaApi() override;

  // ---- what the test plays: producers and the GPU --------------------------
  static DeviceUuid uuid_of(int device);
  /// Exports host memory at `base` as a device allocation on `device`.
  IpcBytes export_memory(int device, const void* base);
  /// The producer freed the allocation: opening its handle fails from now on
  /// (mappings already open stay valid, as with CUDA).
  void free_memory(const IpcBytes& handle);
  /// A producer's interprocess event. Complete until hold() (like a fresh event).
  IpcBytes export_event(int device);
  /// The event was recorded behind work that has not run yet.
  void hold(const IpcBytes& event);
  /// That work finished.
  void fire(const IpcBytes& event);
  /// The next call named `call` ("cudaIpcOpenMemHandle", "cudaMemcpyAsync",
  /// "cudaHostRegister", ...) fails with `error`.
  void fail_next(const std::string& call, const std::string& error = "cudaErrorInvalidValue");
  /// The next call named `call` blocks until unblock(), as a CUDA call stuck
  /// behind a wedged device would (a producer killed mid-copy).
  void block_next(const std::string& call);
  /// Lets the blocked call return (and later ones named so not block).
  void unblock();
  /// True while a call is parked by block_next.
  bool blocked() const;
  /// The next copy fails when its stream runs it (an asynchronous error): the
  /// event recorded after it reports the error.
  void fail_next_copy_when_run();
  /// As fail_next_copy_when_run, with an error that poisons the context:
  /// lost() says so from then on, and every later call fails with it.
  void lose_context_on_next_copy();
  /// The next copy queued (or the one after `after` more copies) never
  /// finishes until unstall(): its stream stops there, as behind a DMA that
  /// does not end.
  void stall_next_copy(int after = 0);
  void unstall();
  /// Runs all queued stream work (up to a stalled copy). Returns the number
  /// of operations run.
  std::size_t run();
  /// From now on the streams run by themselves on a thread of the
  /// simulation, as on a GPU: a copy ends bytes / bytes_per_us after it
  /// reaches the head of its stream and its device's link is free (a device
  /// moves one copy at a time, so copies on several streams share it), the
  /// rest as soon as it does.
  void run_by_itself(double bytes_per_us);

  // ---- observations --------------------------------------------------------
  int mem_handles_open() const;
  int mem_opens() const;
  int event_handles_open() const;
  int event_queries() const;
  /// Event queries made in [from, to), counted by when they happened, so that
  /// a test thread that runs late still counts the right ones.
  int event_queries_between(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) const;
  /// The daemon's own events (create_event): live now, and made in all.
  int local_events_live() const;
  int local_events_created() const;
  int streams_live() const;
  int streams_created() const;
  std::size_t copies_run() const;
  std::size_t queued() const;
  std::vector<std::pair<const void*, std::size_t>> registered() const;
  /// False if some copy's destination straddled two registrations.
  bool copies_stayed_within_one_registration() const;

  // ---- CudaApi -------------------------------------------------------------
  Result<int> device_count() override;
  Result<DeviceUuid> device_uuid(int device) override;
  std::string device_name(int device) override;
  Result<void*> create_stream(int device) override;
  Status destroy_stream(int device, void* stream) override;
  Result<bool> stream_done(int device, void* stream) override;
  Status register_host(void* p, std::size_t bytes, std::string_view what) override;
  Status unregister_host(void* p, std::string_view what) override;
  Result<void*> open_mem_handle(int device, const IpcBytes& handle, std::string_view object) override;
  Status close_mem_handle(int device, void* base) override;
  Result<void*> open_event_handle(int device, const IpcBytes& handle, std::string_view object) override;
  Status destroy_event(int device, void* event) override;
  Result<bool> query_event(int device, void* event, std::string_view object) override;
  Status copy_to_host(int device, void* stream, void* dst, const void* src, std::size_t bytes,
                      std::string_view object) override;
  Result<void*> create_event(int device, std::string_view object) override;
  Status record_event(int device, void* stream, void* event, std::string_view object) override;
  std::string lost() const override;

 private:
  struct EventState {
    bool complete = true;
    Status error = ok_status();  // the stream's asynchronous error, once recorded work has run
  };
  struct OpenedEvent {  // a producer's event opened by the engine, or one of the engine's own
    std::shared_ptr<EventState> state;
  };
  struct Op {
    enum Kind { copy, record } kind;
    bool stalled = false;
    void* dst = nullptr;
    const void* src = nullptr;
    std::size_t bytes = 0;
    std::shared_ptr<EventState> event;  // record
    std::uint64_t seq = 0;
    std::chrono::steady_clock::time_point due{};  // run_by_itself: when a copy at the head ends
    bool copied = false;                          // its bytes have moved
  };
  struct Stream {
    int device = 0;
    std::deque<Op> ops;
    Status error = ok_status();  // asynchronous error, reported by the next event recorded
  };
  struct Allocation {
    int device = 0;
    const void* base = nullptr;
    bool freed = false;
  };

  Status injected(const std::string& call, std::string_view object);
  OpenedEvent* event_of(void* e) const;
  void maybe_block(const std::string& call);
  Status check_device(int device, const char* call);
  Stream* stream_of(void* s);
  IpcBytes make_token(char kind, int device);
  std::size_t run_stream(Stream& s);
  /// Runs the op at the head of `s` (the caller pops it).
  void run_op(Stream& s, Op& op);
  /// The memcpy of a copy op, once.
  void move_bytes(Op& op);
  void run_by_itself_loop();
  std::size_t run_locked();
  bool registered_locked(const void* p, std::size_t n) const;

  mutable std::mutex mu_;
  std::condition_variable progress_;
  int devices_;
  std::uint64_t next_token_ = 1;
  std::uint64_t next_seq_ = 1;
  std::map<IpcBytes, Allocation> allocations_;
  std::map<IpcBytes, std::shared_ptr<EventState>> events_;
  std::set<Stream*> streams_;
  std::set<OpenedEvent*> opened_events_;
  std::set<OpenedEvent*> local_events_;
  int local_events_created_ = 0;
  std::multiset<const void*> opened_mems_;
  std::map<const void*, std::size_t> registered_;
  std::map<std::string, std::string> failures_;
  bool fail_copy_when_run_ = false;
  bool lose_context_when_run_ = false;
  std::string lost_;  // set when a copy lost the context
  int stall_in_ = -1;  // copies to queue before the stalled one; -1: none
  bool unstalled_ = false;
  std::string block_call_;      // block_next's call, until it comes
  bool parked_ = false;         // a call is blocked now
  bool released_ = false;       // unblock() was called
  std::condition_variable unblocked_;
  int mem_opens_ = 0;
  int event_queries_ = 0;
  std::vector<std::chrono::steady_clock::time_point> query_times_;  // of the event queries, in order
  int streams_created_ = 0;
  std::size_t copies_run_ = 0;
  bool straddled_ = false;
  double bytes_per_us_ = 0;  // run_by_itself's rate; 0: only run() runs streams
  std::map<int, std::chrono::steady_clock::time_point> link_free_;  // run_by_itself: device -> its last copy's end
  bool stop_ = false;
  std::thread gpu_;  // run_by_itself's thread
};

}  // namespace tensorshm::daemon
