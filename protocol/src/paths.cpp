#include "tensorshm/paths.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace tensorshm {

static constexpr const char* kSystemSocketPath = "/run/tensorshm/tensorshmd.sock";

std::string default_socket_path() {
  if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') return s;
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0')
    return std::string(x) + "/tensorshm/tensorshmd.sock";
  if (::geteuid() == 0) return kSystemSocketPath;
  return "/tmp/tensorshm-" + std::to_string(::geteuid()) + "/tensorshmd.sock";
}

namespace {

bool is_socket(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}
}  // namespace

std::string default_client_socket_path() {
  std::string p = default_socket_path();
  if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') return p;
  if (::geteuid() != 0 && !is_socket(p) && is_socket(kSystemSocketPath)) return kSystemSocketPath;
  return p;
}

}  // namespace tensorshm
