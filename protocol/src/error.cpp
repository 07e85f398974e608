#include "tensorshm/error.hpp"

#include <cstring>
#include <string>

namespace tensorshm {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::not_found: return "not_found";
    case Errc::timeout: return "timeout";
    case Errc::pool_exhausted: return "pool_exhausted";
    case Errc::invalid_name: return "invalid_name";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::unsupported_dtype: return "unsupported_dtype";
    case Errc::protocol_error: return "protocol_error";
    case Errc::version_mismatch: return "version_mismatch";
    case Errc::permission_denied: return "permission_denied";
    case Errc::not_open: return "not_open";
    case Errc::limit_exceeded: return "limit_exceeded";
    case Errc::daemon_unreachable: return "daemon_unreachable";
    case Errc::no_gpu: return "no_gpu";
    case Errc::cuda_error: return "cuda_error";
    case Errc::system_error: return "system_error";
    case Errc::internal: return "internal";
  }
  return "unknown";
}

Error posix_error(std::string_view call, std::string_view object, int err) {
  std::string msg;
  msg.reserve(call.size() + object.size() + 64);
  msg.append(call).append("(").append(object).append("): ");
  msg.append(std::strerror(err)).append(" (errno ").append(std::to_string(err)).append(")");
  return Error{Errc::system_error, std::move(msg), err};
}

}  // namespace tensorshm
