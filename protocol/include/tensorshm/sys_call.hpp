// One checked wrapper for POSIX calls (house style, after iceoryx's
// IOX_POSIX_CALL): it retries EINTR, and turns -1 into an Error that records
// the call's name, the object it acted on and errno.
#pragma once

#include <cerrno>
#include <string_view>

#include "tensorshm/error.hpp"

namespace tensorshm {

/// Calls fn() until it does not fail with EINTR. A return of -1 (or any
/// negative value for calls documented that way) becomes
/// posix_error(call, object, errno). posix_fallocate-style calls that return
/// the error number use posix_call_rc instead.
template <class Fn>
auto posix_call(std::string_view call, std::string_view object, Fn&& fn)
    -> Result<decltype(fn())> {
  for (;;) {
    auto rc = fn();
    if (rc != -1) return rc;
    if (errno == EINTR) continue;
    return posix_error(call, object, errno);
  }
}

/// For calls that return 0 or an error number (posix_fallocate, pthread_*).
template <class Fn>
Status posix_call_rc(std::string_view call, std::string_view object, Fn&& fn) {
  for (;;) {
    int rc = fn();
    if (rc == 0) return ok_status();
    if (rc == EINTR) continue;
    return posix_error(call, object, rc);
  }
}

}  // namespace tensorshm
