// What Client::connect says when it cannot reach tensorshmd, for each cause:
// no socket (ENOENT), a socket no daemon listens on (ECONNREFUSED) and a
// socket or directory this user may not use (EACCES, in a child turned into
// uid 65534: needs root). The sockets are the test's own; no daemon runs.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "temp_dir.hpp"
#include "tensorshm/client.hpp"

using namespace tensorshm;

namespace {

constexpr uid_t kNobody = 65534;

using tshm_test::TempDir;

// A Unix socket bound at `path`, listening when `listen` is set; the caller closes it.
int bound_socket(const std::string& path, bool listen) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  if (listen) REQUIRE(::listen(fd, 4) == 0);
  return fd;
}

// The code and message of Client::connect to `path`.
std::pair<Errc, std::string> connect_error(const std::string& path) {
  try {
    (void)Client::connect(Client::Options{path, "unreachable-test"});
  } catch (const Exception& e) {
    return {e.code(), e.what()};
  }
  return {Errc::ok, "connected"};
}

// connect_error(path) as uid/gid 65534 with no supplementary groups, in a child.
std::string connect_error_as_nobody(const std::string& path) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(20);
    const auto [code, message] = connect_error(path);
    const std::string line = std::string(errc_name(code)) + ": " + message;
    const bool written = ::write(fds[1], line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::_exit(written ? 0 : 21);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("connecting_where_no_socket_exists_asks_whether_the_daemon_runs_and_says_how_to_start_it") {
  TempDir dir("tshm-unreachable");
  const std::string path = dir.path + "/tensorshmd.sock";
  const auto [code, message] = connect_error(path);
  CHECK(code == Errc::daemon_unreachable);
  CHECK(contains(message, "cannot reach tensorshmd at '" + path + "': no socket there"));
  CHECK(contains(message, "No such file or directory"));
  CHECK(contains(message, "Is the daemon running?"));
  CHECK(contains(message, "`tensorshmd --socket " + path + "`"));
  CHECK(contains(message, "TENSORSHM_SOCKET"));
  CHECK_FALSE(contains(message, "not even its directory"));

  const std::string deeper = dir.path + "/gone/tensorshmd.sock";
  CHECK(contains(connect_error(deeper).second, "not even its directory '" + dir.path + "/gone'"));
}

TEST_CASE("connecting_to_a_socket_no_daemon_listens_on_says_the_daemon_stopped_and_how_to_start_it_again") {
  TempDir dir("tshm-unreachable");
  const std::string path = dir.path + "/tensorshmd.sock";
  ::close(bound_socket(path, /*listen=*/false));  // the file stays, as a killed daemon leaves it
  const auto [code, message] = connect_error(path);
  CHECK(code == Errc::daemon_unreachable);
  CHECK(contains(message, "a socket file is there but no daemon listens on it"));
  CHECK(contains(message, "Connection refused"));
  CHECK(contains(message, "has stopped or died"));
  CHECK(contains(message, "`tensorshmd --socket " + path + "` (it replaces the stale socket)"));

  const std::string file = dir.path + "/plain-file";
  const int plain = ::open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  REQUIRE(plain >= 0);
  ::close(plain);
  CHECK(contains(connect_error(file).second, "that is not a socket"));
}

TEST_CASE("another_users_socket_names_its_owner_group_and_mode_and_says_to_join_the_group") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: acting as another user (uid 65534) needs root");
    return;
  }
  const group* daemon_group = ::getgrnam("daemon");  // in every Debian base system; nobody is not a member
  if (daemon_group == nullptr) {
    MESSAGE("skipped: this system has no group 'daemon' to give the socket");
    return;
  }
  TempDir dir("tshm-unreachable");
  REQUIRE(::chmod(dir.path.c_str(), 0711) == 0);  // others may pass, not list
  const std::string path = dir.path + "/tensorshmd.sock";
  const int fd = bound_socket(path, /*listen=*/true);

  // Group members may connect: the fix is to join the group.
  REQUIRE(::chown(path.c_str(), 0, daemon_group->gr_gid) == 0);
  REQUIRE(::chmod(path.c_str(), 0660) == 0);
  const std::string grouped = connect_error_as_nobody(path);
  CHECK(contains(grouped, "daemon_unreachable: cannot reach tensorshmd at '" + path + "': permission denied"));
  CHECK(contains(grouped, "Permission denied"));
  CHECK(contains(grouped, "the socket has owner root, group daemon, mode 0660 (rw-rw----)"));
  CHECK(contains(grouped, "runs as nobody (uid 65534)"));
  CHECK(contains(grouped, "`sudo usermod -aG daemon $USER`"));
  CHECK_FALSE(contains(grouped, "Start it"));

  // Only the owner may: the operator has to let a group in first.
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
  const std::string owner_only = connect_error_as_nobody(path);
  CHECK(contains(owner_only, "mode 0600 (rw-------)"));
  CHECK(contains(owner_only, "joining one does not help"));
  CHECK(contains(owner_only, "--socket-group <group> --socket-mode 0660"));

  // A directory on the way that the user may not pass is named instead.
  REQUIRE(::chmod(path.c_str(), 0666) == 0);
  REQUIRE(::chown(dir.path.c_str(), 0, daemon_group->gr_gid) == 0);
  REQUIRE(::chmod(dir.path.c_str(), 0710) == 0);
  const std::string blocked = connect_error_as_nobody(path);
  CHECK(contains(blocked, "the directory '" + dir.path + "' (owner root, group daemon, mode 0710 (rwx--x---))"));
  CHECK(contains(blocked, "`sudo usermod -aG daemon $USER`"));
  ::close(fd);
}
