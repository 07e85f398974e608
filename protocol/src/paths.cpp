#include "tensorshm/paths.hpp"

#include <unistd.h>

#include <cstdlib>

namespace tensorshm {

std::string default_socket_path() {
  if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') return s;
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0')
    return std::string(x) + "/tensorshm/tensorshmd.sock";
  if (::geteuid() == 0) return "/run/tensorshm/tensorshmd.sock";
  return "/tmp/tensorshm-" + std::to_string(::geteuid()) + "/tensorshmd.sock";
}

}  // namespace tensorshm
