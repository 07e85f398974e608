// The registry: validated names -> immutable versions, leases and open
// creates. An object version lives while it is the latest of its name or
// leased by a client; the moment neither holds, its extent goes back to the
// pool. Pure bookkeeping: no sockets, no timers (the server wires its two
// notifications to waiting clients), so that tests drive it directly.
//
// Per-uid limits (--max-objects-per-uid, --max-bytes-per-uid) count what a
// uid keeps alive: its open creates and latest versions, and every version it
// holds a lease on. A version kept alive only by another uid's leases counts
// for that uid, not for its owner, so a reader cannot use up the owner's
// allowance by holding old versions.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "pool.hpp"
#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

enum class Share : std::uint8_t { owner = 0, group = 1, everyone = 2 };

/// Who asks: the session and its peer credentials.
struct Caller {
  std::uint64_t session = 0;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
};

struct Object {
  std::uint64_t id = 0;
  std::string name;
  std::uint64_t version = 0;  // 0 until sealed
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // elements
  std::uint64_t nbytes = 0;
  Extent extent;
  std::uint64_t data_offset = 0;  // from the segment start
  std::uint64_t generation = 0;
  std::uint32_t owner_uid = 0;
  std::uint32_t owner_gid = 0;
  Share share = Share::owner;
  bool sealed = false;
  bool latest = false;
  std::uint64_t creator_session = 0;  // session holding it open while !sealed
  std::uint32_t leases = 0;
  /// Leases per uid (usually one or two entries): who keeps it alive.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> leases_by;
  std::uint64_t created_unix_ns = 0;
};

struct CreateParams {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // empty: C order
  Share share = Share::owner;
};

class Registry {
 public:
  Registry(Pool& pool, const Config& config) : pool_(pool), config_(config) {}
  ~Registry();

  /// Validates name and layout, checks ownership of the name and the limits,
  /// and allocates an extent. Errors: invalid_name, invalid_argument,
  /// unsupported_dtype, permission_denied, limit_exceeded, pool_exhausted.
  Result<Object*> create(const Caller& c, CreateParams p);
  /// Publishes an object the caller created as its name's newest version. If
  /// the name meanwhile belongs to another uid the object is discarded.
  Result<Object*> seal(const Caller& c, std::uint64_t id);
  /// Discards an object the caller created and has not sealed.
  Status abort(const Caller& c, std::uint64_t id);
  /// The latest sealed version of `name` if newer than `newer_than`, readable
  /// by the caller. not_found when there is none (yet).
  Result<Object*> find(const Caller& c, const std::string& name, std::uint64_t newer_than);
  /// Takes one lease for the caller on an object returned by find() or
  /// seal(). limit_exceeded when the version would newly count for the
  /// caller's uid and take it over its per-uid limits.
  Status lease(const Caller& c, Object& o);
  /// Gives one of the caller's leases back; frees the version when it was the
  /// last and the version is no longer the latest.
  Status unlease(const Caller& c, std::uint64_t id);
  /// Removes a name: its latest version stops being the latest.
  Status remove(const Caller& c, const std::string& name);
  /// Sealed latest versions whose name starts with prefix and comes after
  /// `start_after` (empty: from the first), readable by c, in name order.
  std::vector<const Object*> list(const Caller& c, const std::string& prefix, const std::string& start_after,
                                  std::uint32_t limit, bool* truncated) const;
  Object* get(std::uint64_t id);

  std::uint64_t names() const noexcept { return latest_.size(); }
  std::uint64_t versions() const noexcept { return objects_.size() - open_; }
  std::uint64_t open_creates() const noexcept { return open_; }
  std::uint64_t leases() const noexcept { return total_leases_; }

  /// What counts for a uid's limits (tests and stats).
  struct Usage {
    std::uint64_t bytes = 0;
    std::uint32_t objects = 0;
  };
  Usage usage(std::uint32_t uid) const;

  /// Called after a version is published (name) and after an extent is freed.
  std::function<void(const std::string&)> on_published;
  std::function<void()> on_space_freed;

 private:
  bool may_read(const Caller& c, const Object& o) const;
  /// Does `o` count for `uid`'s limits (owner of an open or latest version,
  /// or holder of a lease on it)?
  static bool counts_for(const Object& o, std::uint32_t uid) noexcept;
  static std::uint32_t leases_of(const Object& o, std::uint32_t uid) noexcept;
  void charge(std::uint32_t uid, const Object& o);
  void uncharge(std::uint32_t uid, const Object& o);
  /// Whether one more version of `bytes` keeps `uid` within its limits; the
  /// error names the limit and what the uid holds.
  Status within_limits(std::uint32_t uid, std::uint64_t bytes, const std::string& what) const;
  void write_header(const Object& o);
  void maybe_free(Object& o);
  void destroy(Object& o);

  Pool& pool_;
  const Config& config_;
  std::uint64_t next_id_ = 1;
  std::uint64_t next_version_ = 1;
  std::uint64_t next_generation_ = 1;
  std::uint64_t open_ = 0;
  std::uint64_t total_leases_ = 0;
  std::unordered_map<std::uint64_t, std::unique_ptr<Object>> objects_;
  std::map<std::string, std::uint64_t, std::less<>> latest_;
  std::unordered_map<std::uint32_t, Usage> usage_;
};

}  // namespace tensorshm::daemon
