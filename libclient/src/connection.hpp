// The client's one connection to tensorshmd: framing over a blocking Unix
// socket, reconnection after fork() or a lost daemon, and the per-client cache
// of segment mappings (each pool segment is mapped once and reused; reading
// mappings are read-only). Internal to libclient.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "parallel_copy.hpp"
#include "poll_backoff.hpp"
#include "tensorshm/client.hpp"
#include "tensorshm/protocol.hpp"

namespace tensorshm::detail {

/// A non-owning reference to a callable, for callbacks that run before the
/// call taking them returns: unlike std::function it never allocates (the
/// request path stays allocation-free).
template <class Sig>
class FunctionRef;
template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f) noexcept  // NOLINT: implicit, as std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* obj, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(obj))(std::forward<Args>(args)...);
        }) {}
  R operator()(Args... args) const { return call_(obj_, std::forward<Args>(args)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

/// One mmap of a segment; unmapped when the last user lets go.
struct Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  bool writable = false;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  /// Connects and says hello. Errors: daemon_unreachable, version_mismatch.
  static Result<std::shared_ptr<Connection>> open(Client::Options options);
  ~Connection();

  /// Serialises requests: hold it across a request and the mapping it needs so
  /// both belong to the same connection epoch.
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mu_); }

  /// Sends one request and returns the reply (an ErrorReply becomes the Error
  /// it carries). Reconnects first when the process forked or the previous
  /// connection broke. Caller holds lock().
  Result<std::unique_ptr<protocol::Message>> call_locked(const wire::BodyUnion& body,
                                                         std::vector<int>* fds = nullptr);
  template <class T>
    requires(!std::is_same_v<std::remove_cvref_t<T>, wire::BodyUnion>)
  Result<std::unique_ptr<protocol::Message>> call_locked(T&& body) {
    wire::BodyUnion u;
    u.Set(std::forward<T>(body));
    return call_locked(u);
  }

  /// Like call_locked, without unpacking: the view into the reply stays valid
  /// until the next request. For the hot path (get).
  Result<const wire::Message*> call_view_locked(const wire::BodyUnion& body, std::vector<int>* fds);
  /// Connects (again) when the process forked or the connection broke, so
  /// that info() describes the daemon the next request goes to. Caller holds
  /// lock().
  Status ensure_connected_locked();
  /// Like call_view_locked, for a request that `build` writes straight into
  /// the connection's builder (it must Finish a Message of `type`), so that
  /// large fields are written once; called again if the request is resent on
  /// a new connection.
  Result<const wire::Message*> call_built_locked(wire::Body type,
                                                 FunctionRef<void(flatbuffers::FlatBufferBuilder&)> build,
                                                 std::vector<int>* fds = nullptr);

  /// The mapping of a segment, mapping it on first use (one MapSegment round
  /// trip, the descriptor arrives by SCM_RIGHTS). Caller holds lock().
  /// `fd`: a descriptor of that segment that came with the reply (dedicated
  /// segments), or -1; it is consumed (closed) either way.
  Result<std::shared_ptr<Mapping>> mapping_locked(std::uint32_t segment_id, bool writable, int fd = -1);

  /// Sends Release unless the lease belongs to an earlier epoch (the daemon
  /// dropped it already when that connection ended). Never throws.
  void release(std::uint64_t object_id, std::uint64_t epoch) noexcept;
  /// Sends Abort likewise.
  void abort(std::uint64_t object_id, std::uint64_t epoch) noexcept;

  /// The reply to the next request is expected about `in` after it is sent
  /// (a GPU put's copy time): the wait for it sleeps until shortly before
  /// then and polls the socket from there (Client::Options::spin_wait).
  /// One-shot. Caller holds lock().
  void expect_reply_in(std::chrono::microseconds in) noexcept { reply_in_ = in; }

  /// Changes whenever a new connection replaces the old one.
  std::uint64_t epoch() const noexcept { return epoch_; }
  const DaemonInfo& info() const noexcept { return info_; }
  /// Client::Options::copy_threads, resolved against the environment.
  unsigned copy_threads() const noexcept { return copy_threads_; }

 private:
  explicit Connection(Client::Options options) : options_(std::move(options)) {
    if (!options_.daemon_uid)
      if (const char* uid = std::getenv("TENSORSHM_DAEMON_UID"); uid != nullptr && *uid != '\0') {
        char* end = nullptr;
        const unsigned long v = std::strtoul(uid, &end, 10);
        if (end != nullptr && *end == '\0' && v <= 0xFFFFFFFFul) options_.daemon_uid = static_cast<std::uint32_t>(v);
      }
    const char* env = std::getenv("TENSORSHM_SPIN_WAIT");
    spin_wait_ = options_.spin_wait.value_or(env == nullptr || std::string_view(env) != "0");
    copy_threads_ = resolve_copy_threads(options_.copy_threads, std::getenv("TENSORSHM_COPY_THREADS"));
  }
  Status connect_locked();
  /// Refuses a daemon whose uid this client does not trust (paths.hpp).
  Status check_peer_locked();
  /// Drops cached pool mappings nothing uses any more beyond the daemon's
  /// number of pool segments (segments replaced for a new owner get new ids).
  void trim_pool_maps_locked();
  void disconnect_locked() noexcept;
  /// Sends one request, which `frame(request_id)` writes into wbuf_ (again if
  /// it is resent on a new connection), and receives its reply.
  Result<const wire::Message*> call_framed_locked(wire::Body type, FunctionRef<void(std::uint32_t)> frame,
                                                  std::vector<int>* fds);
  /// Sends the whole frame; `sent` (if given) says how much went out.
  Status send_frame_locked(const std::vector<std::byte>& frame, std::size_t* sent = nullptr);
  /// Receives the reply to `request_id` into rbuf_ and verifies it; the view
  /// points into rbuf_ (or scratch_).
  Result<const wire::Message*> recv_frame_locked(std::uint32_t request_id, std::vector<int>* fds);

  Error lost(const Error& why);
  /// Waits, sleeping then polling, until the reply may have arrived by
  /// `expected`; returns early when the socket is readable.
  void await_reply_locked(std::chrono::steady_clock::time_point expected) noexcept;

  Client::Options options_;
  std::mutex mu_;
  int fd_ = -1;
  pid_t pid_ = 0;
  std::uint64_t fork_gen_ = 0;  // fork generation when connected: a child sees another
  bool broken_ = false;
  std::uint64_t epoch_ = 0;
  std::uint32_t next_request_ = 1;
  std::chrono::microseconds reply_in_{0};  // expect_reply_in, for the next request only
  bool spin_wait_ = true;                  // Client::Options::spin_wait, resolved against the environment
  PollBackoff backoff_;                    // stops spin_wait's polling while the host's CPUs are crowded
  unsigned copy_threads_ = 1;               // Client::Options::copy_threads, likewise
  DaemonInfo info_;
  std::vector<std::byte> rbuf_;
  std::vector<std::byte> wbuf_;
  std::vector<std::uint64_t> scratch_;
  flatbuffers::FlatBufferBuilder fbb_{1024};
  std::map<std::pair<std::uint32_t, bool>, std::shared_ptr<Mapping>> pool_maps_;
  std::map<std::pair<std::uint32_t, bool>, std::weak_ptr<Mapping>> dedicated_maps_;
};

/// Converts a wire descriptor to the public ObjectInfo.
ObjectInfo to_info(const wire::ObjectDescT& d);
ObjectInfo to_info(const wire::ObjectDesc& d);

/// What an Object holds: its connection, its mapping and its metadata.
struct Lease {
  std::shared_ptr<Connection> conn;
  std::shared_ptr<Mapping> map;
  ObjectInfo info;
  std::uint64_t epoch = 0;
  ~Lease() {
    if (conn) conn->release(info.object_id, epoch);
  }
};

struct OpenCreate {
  std::shared_ptr<Connection> conn;
  std::shared_ptr<Mapping> map;
  ObjectInfo info;
  std::uint64_t epoch = 0;
};

}  // namespace tensorshm::detail
