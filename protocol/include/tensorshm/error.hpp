// Error codes shared by the daemon, the wire protocol and every client, and the
// expected-style Result<T> that fallible functions return inside the project.
// Exceptions (tensorshm::Exception in client.hpp) are thrown only at the public
// client API edge.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace tensorshm {

/// One code per failure a caller can act on. Values travel on the wire
/// (ErrorReply.code): never renumber, only append.
enum class Errc : std::uint16_t {
  ok = 0,
  not_found = 1,           // no object of that name (or no version newer than asked)
  timeout = 2,             // a wait ran out
  pool_exhausted = 3,      // no room in the pool, even after evicting what may go
  invalid_name = 4,        // empty, too long, non-printable or containing ".."
  invalid_argument = 5,    // bad shape, strides, sizes, flags
  unsupported_dtype = 6,   // dtype outside the supported DLPack set
  protocol_error = 7,      // malformed frame or payload
  version_mismatch = 8,    // peer speaks another protocol version
  permission_denied = 9,   // not the owner, not shared with the caller
  not_open = 10,           // seal/abort/release of something not open or not held
  limit_exceeded = 11,     // per-uid or global limits (objects, bytes, connections)
  daemon_unreachable = 12, // cannot connect, or the connection broke
  no_gpu = 13,             // a CUDA request to a daemon serving CPU-only
  cuda_error = 14,         // a CUDA call failed (message names it)
  system_error = 15,       // a POSIX call failed (message names it and errno)
  internal = 16,
};

/// A stable lower-case name for the code, e.g. "pool_exhausted".
std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code = Errc::internal;
  std::string message;  // says what failed, on which object, and what to do
  int sys_errno = 0;    // the errno of the failed system call, when that is what failed
};

/// Builds an Error for a failed POSIX call: "<call>(<object>): <strerror> (errno N)".
Error posix_error(std::string_view call, std::string_view object, int err);

/// Holds either a value or an Error. Deliberately small: has_value(), value(),
/// error(), operator bool and operator*/->.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT
  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

/// Result of a function that returns nothing on success.
struct Unit {};
using Status = Result<Unit>;
inline Status ok_status() { return Unit{}; }

}  // namespace tensorshm

/// Evaluates a Result-returning expression and returns its Error from the
/// enclosing function on failure.
#define TSHM_TRY(expr)                                 \
  do {                                                 \
    auto tshm_try_r_ = (expr);                         \
    if (!tshm_try_r_) return std::move(tshm_try_r_).error(); \
  } while (0)
