// tensorshm C++ client: hand tensors to other processes through tensorshmd.
//
//   auto c = tensorshm::Client::connect();
//   {
//     auto buf = c.create("camera/0", tensorshm::dtypes::kUInt8, {1080, 1920, 3});
//     fill(static_cast<std::uint8_t*>(buf.data()));       // write in place
//     buf.seal();                                          // now visible, immutable
//   }
//   auto obj = c.get("camera/0");                          // another process
//   const auto* px = static_cast<const std::uint8_t*>(obj.data());  // no copy
//
// Errors are thrown as tensorshm::Exception carrying an Errc.
//
// Thread safety: a Client may be shared between threads; its calls are
// serialised over its one connection, so a get() that waits blocks the other
// threads' calls on the same Client until it returns (use one Client per
// thread for independent waits). Object and Buffer are not synchronised: use
// each from one thread at a time. Objects stay valid after their Client is
// destroyed, and after the daemon restarts (the mapping outlives both).
//
// fork(): a Client used in a child process reconnects on its first call; the
// child does not inherit the parent's leases.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"

namespace tensorshm {

namespace detail {
class Connection;
struct Lease;
struct OpenCreate;
}  // namespace detail

/// Thrown by every Client call that fails. code() says which failure.
class Exception : public std::runtime_error {
 public:
  Exception(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  explicit Exception(const Error& e) : Exception(e.code, e.message) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

/// Who besides the owner may read an object.
enum class Share : std::uint8_t { owner = 0, group = 1, everyone = 2 };

/// The share mode's name: "owner", "group" or "everyone" (Python's spelling too).
std::string_view share_name(Share share) noexcept;

/// Metadata of one object version, as the daemon reports it.
struct ObjectInfo {
  std::string name;
  std::uint64_t version = 0;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // elements
  std::uint64_t nbytes = 0;
  std::uint64_t object_id = 0;
  std::uint32_t owner_uid = 0;
  Share share = Share::owner;
  bool sealed = false;
  std::uint64_t created_unix_ns = 0;
  std::uint32_t leases = 0;
  std::uint32_t segment_id = 0;
};

struct GetOptions {
  /// Return a version newer than this one (0: the latest, whatever it is).
  std::uint64_t newer_than = 0;
  /// How long to wait for the name to appear, or for a newer version.
  /// Zero: answer at once (not_found if there is none).
  std::chrono::milliseconds timeout{0};
};

struct CreateOptions {
  /// Strides in elements, non-negative; empty means C order.
  std::vector<std::int64_t> strides;
  /// How long to wait for pool space when the pool is full. Zero: fail at once
  /// with Errc::pool_exhausted.
  std::chrono::milliseconds timeout{0};
  Share share = Share::owner;
};

/// A host array to copy from: data, dtype, shape, strides in elements (empty:
/// C order). Non-contiguous views are packed into C order during the copy.
struct HostView {
  const void* data = nullptr;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;
};

struct SegmentInfo {
  std::uint32_t id = 0;
  std::string name;
  std::uint64_t size = 0;
  bool dedicated = false;
};

/// What the daemon said when this client connected.
struct DaemonInfo {
  std::string socket_path;
  std::string daemon_version;
  std::string instance;
  std::uint32_t protocol_version = 0;
  std::uint32_t page_size = 0;
  int cuda_devices = 0;
  std::uint64_t features = 0;  // protocol::kFeature* bits: optional requests the daemon understands
  std::vector<SegmentInfo> segments;
};

struct Stats {
  std::uint64_t pool_bytes = 0, pool_used_bytes = 0, dedicated_bytes = 0;
  std::uint32_t segments = 0;
  std::uint64_t objects = 0, versions = 0, open_creates = 0, leases = 0, clients = 0;
  std::uint64_t puts = 0, gets = 0, copies = 0, bytes_copied = 0;
  int cuda_devices = 0;
  double uptime_s = 0;
  std::uint64_t quarantined_bytes = 0;  // pool bytes a timed-out GPU copy may still write (never reused)
};

/// `s` in the Prometheus text exposition format (metrics `tensorshm_*`, with
/// HELP and TYPE lines): what `tensorshmctl stats --prometheus` and
/// `python -m tensorshm stats --prometheus` print.
std::string prometheus_text(const Stats& s);

/// A sealed object version, mapped read-only into this process. Holding it
/// holds a lease: the daemon keeps this version (and its memory) until the
/// Object is destroyed or release()d, even after newer puts or a delete.
class Object {
 public:
  Object() = default;
  Object(Object&&) noexcept = default;
  Object& operator=(Object&&) noexcept = default;
  ~Object();

  /// First data byte; valid while this Object lives. Read-only memory:
  /// writing through it faults.
  const void* data() const noexcept { return data_; }
  const ObjectInfo& info() const noexcept;
  DType dtype() const noexcept { return info().dtype; }
  const std::vector<std::int64_t>& shape() const noexcept { return info().shape; }
  const std::vector<std::int64_t>& strides() const noexcept { return info().strides; }
  std::uint64_t version() const noexcept { return info().version; }
  std::uint64_t nbytes() const noexcept { return info().nbytes; }
  bool valid() const noexcept { return lease_ != nullptr; }
  /// Gives the lease back now; data() is invalid afterwards. Idempotent. The
  /// release is sent without waiting for an answer (so dropping an object
  /// costs no round trip); the daemon has applied it by the time it answers
  /// this client's next call.
  void release();

  /// Shares ownership of the lease (used by the Python and torch adapters to
  /// tie the lease to arrays and their views).
  std::shared_ptr<const void> keep_alive() const noexcept;

 private:
  friend class Client;
  std::shared_ptr<detail::Lease> lease_;
  const void* data_ = nullptr;
};

/// A fresh, writable, not yet visible object from Client::create(). seal()
/// publishes it; destroying it unsealed aborts it (its space is reclaimed).
class Buffer {
 public:
  Buffer();  // out of line: detail::OpenCreate is incomplete here
  Buffer(Buffer&&) noexcept;
  Buffer& operator=(Buffer&&) noexcept;
  ~Buffer();

  void* data() const noexcept { return data_; }
  const ObjectInfo& info() const noexcept;
  std::uint64_t nbytes() const noexcept { return info().nbytes; }
  bool open() const noexcept { return open_ != nullptr; }
  /// Publishes the object as the name's newest version and returns its info.
  ObjectInfo seal();
  /// Discards the object. Idempotent.
  void abort() noexcept;
  /// Shares ownership of the writable mapping under data() (empty once sealed
  /// or aborted), so that an adapter's array over it cannot outlive the memory.
  std::shared_ptr<const void> keep_alive() const noexcept;

 private:
  friend class Client;
  std::unique_ptr<detail::OpenCreate> open_;
  void* data_ = nullptr;
};

class Client {
 public:
  struct Options {
    /// Empty: default_client_socket_path() ($TENSORSHM_SOCKET, $XDG_RUNTIME_DIR,
    /// /run/tensorshm/tensorshmd.sock; see tensorshm/paths.hpp). A per-user
    /// socket whose directory another user could write is never used.
    std::string socket_path;
    /// Shown in the daemon's log.
    std::string client_name;
    /// GPU puts: sleep for most of the copy's expected time, then poll the
    /// socket for the reply instead of sleeping in recv, which on servers
    /// with deep CPU idle states costs up to a few hundred microseconds of
    /// wake-up per put (docs/gpu.md). Costs CPU time for the last part of
    /// each wait (at most a quarter of it, 2 ms, plus 0.3 ms). Unset: on,
    /// unless the environment has TENSORSHM_SPIN_WAIT=0.
    std::optional<bool> spin_wait;
    /// Host puts of at least 2 MiB copy with up to this many threads, the
    /// caller's included (helpers are started on first use and then sleep
    /// between copies): one core's memcpy reaches only part of the memory
    /// bandwidth. Unset: $TENSORSHM_COPY_THREADS, else the CPUs this process
    /// may use (its affinity mask and its cgroup's CPU quota), at most 8.
    /// 1: the calling thread alone; at most 64.
    std::optional<unsigned> copy_threads;
    /// The client talks only to a daemon running as root, as the service user
    /// `tensorshm`, as this process's uid, or as this uid (unset:
    /// $TENSORSHM_DAEMON_UID, else none): anyone else listening on the socket
    /// is refused with Errc::permission_denied before a byte is sent.
    std::optional<std::uint32_t> daemon_uid;
  };

  /// Connects and says hello. Throws Exception(daemon_unreachable) naming the
  /// socket tried, the cause (no socket, no daemon behind it, or permission:
  /// with the owner, group and mode in the way) and the fix;
  /// Exception(version_mismatch).
  static Client connect();
  static Client connect(Options options);

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  /// A fresh writable object of the given layout (see Buffer).
  Buffer create(std::string_view name, DType dtype, std::span<const std::int64_t> shape,
                const CreateOptions& options = {});
  Buffer create(std::string_view name, DType dtype, std::initializer_list<std::int64_t> shape,
                const CreateOptions& options = {}) {
    return create(name, dtype, std::span<const std::int64_t>(shape.begin(), shape.size()), options);
  }
  /// create + one copy + seal. Keeps the source's strides when they are C or
  /// Fortran order (and options.strides is empty); packs other layouts to C.
  /// Objects of at most 32 KiB (protocol::kMaxPutBytes) go in one round trip
  /// with their bytes (PutBytes), when the daemon offers it.
  ObjectInfo put(std::string_view name, const HostView& src, const CreateOptions& options = {});
  /// The latest version (or one newer than options.newer_than), leased.
  Object get(std::string_view name, const GetOptions& options = {});
  std::vector<ObjectInfo> list(std::string_view prefix = {}, std::uint32_t limit = 0);
  ObjectInfo stat(std::string_view name);
  /// Removes the name. Leased versions stay readable by their holders until released.
  void remove(std::string_view name);
  Stats stats();
  /// What the daemon said at connect (segments as of then).
  const DaemonInfo& daemon_info() const;
  /// One round trip; returns its duration.
  std::chrono::nanoseconds ping();

  /// The connection, for adapters in this library (CUDA producer). Not part of
  /// the stable API.
  detail::Connection& connection() { return *conn_; }

 private:
  explicit Client(std::shared_ptr<detail::Connection> conn);
  std::shared_ptr<detail::Connection> conn_;
};

}  // namespace tensorshm
