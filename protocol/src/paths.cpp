#include "tensorshm/paths.hpp"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace tensorshm {

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

std::string octal(unsigned mode) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", mode & 07777);
  return b;
}

}  // namespace

std::string untrusted_socket_directory(const std::string& socket_path, uid_t uid) {
  const auto slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return {};
  const std::string dir = socket_path.substr(0, slash);
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0) return {};  // nothing there yet: nothing to distrust
  if (S_ISLNK(st.st_mode)) return "'" + dir + "' is a symbolic link";
  if (!S_ISDIR(st.st_mode)) return "'" + dir + "' is not a directory";
  if (st.st_uid != uid && st.st_uid != 0)
    return "'" + dir + "' belongs to uid " + std::to_string(st.st_uid) + ", not to uid " + std::to_string(uid);
  if ((st.st_mode & 0022) != 0) return "'" + dir + "' is writable by other users (mode " + octal(st.st_mode) + ")";
  return {};
}

ClientSocket default_client_socket() {
  if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') return {s, {}};
  const std::string own = default_socket_path();
  if (own == kSystemSocketPath) return {own, {}};
  std::string why = untrusted_socket_directory(own, ::geteuid());
  if (why.empty() && is_socket(own)) return {own, {}};
  if (is_socket(kSystemSocketPath)) {
    return {kSystemSocketPath,
            why.empty() ? std::string() : "the per-user socket '" + own + "' was passed over: " + why};
  }
  if (!why.empty()) return {{}, "the per-user socket '" + own + "' cannot be trusted: " + why};
  return {own, {}};
}

std::string default_client_socket_path() { return default_client_socket().path; }

std::optional<uid_t> service_uid() {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwnam_r(kServiceUser, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return std::nullopt;
  return found->pw_uid;
}

bool trusted_daemon_uid(uid_t daemon_uid, uid_t client_uid, std::optional<std::uint32_t> also) {
  if (daemon_uid == 0 || daemon_uid == client_uid) return true;
  if (also && *also == daemon_uid) return true;
  const auto service = service_uid();
  return service && *service == daemon_uid;
}

}  // namespace tensorshm
