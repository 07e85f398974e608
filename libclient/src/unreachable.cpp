// The message of a failed connect to tensorshmd (see unreachable.hpp): what
// went wrong, found by looking at the socket path as this process sees it,
// and what the user or the operator can do about it.
#include "unreachable.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <vector>

#include "tensorshm/sys_call.hpp"

namespace tensorshm::detail {
namespace {

// The name in the passwd or group entry `get_r` (getpwuid_r or getgrgid_r,
// bound to an id) finds, or "" when there is none or the lookup fails. The
// buffer starts at sysconf(size_name) bytes (1024 when unknown) and doubles
// while the entry does not fit (ERANGE).
template <class Entry, class GetR>
std::string entry_name(int size_name, char* Entry::*name, GetR get_r) {
  const long hint = ::sysconf(size_name);
  std::vector<char> buf(hint > 0 ? static_cast<std::size_t>(hint) : 1024);
  for (;;) {
    Entry entry{}, *found = nullptr;
    const int rc = get_r(&entry, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    return rc == 0 && found != nullptr ? std::string(found->*name) : std::string();
  }
}

// "root", or "uid 1234" when no user has that id (or the lookup fails).
std::string user_name(uid_t uid) {
  std::string n = entry_name(_SC_GETPW_R_SIZE_MAX, &passwd::pw_name, [uid](passwd* e, char* b, std::size_t size,
                                                                            passwd** found) {
    return ::getpwuid_r(uid, e, b, size, found);
  });
  return n.empty() ? "uid " + std::to_string(uid) : n;
}

// The group's name, or its number when it has none (or the lookup fails):
// `usermod -aG` takes either.
std::string group_name(gid_t gid) {
  std::string n = entry_name(_SC_GETGR_R_SIZE_MAX, &group::gr_name, [gid](group* e, char* b, std::size_t size,
                                                                          group** found) {
    return ::getgrgid_r(gid, e, b, size, found);
  });
  return n.empty() ? std::to_string(gid) : n;
}

// "0660 (rw-rw----)".
std::string mode_text(mode_t mode) {
  char octal[8];
  std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode & 07777));
  std::string s = std::string(octal) + " (";
  const char* rwx = "rwxrwxrwx";
  for (int bit = 8; bit >= 0; --bit) s += (mode & (1u << bit)) ? rwx[8 - bit] : '-';
  return s + ")";
}

// Whether this process has gid among its groups (effective or supplementary).
bool in_group(gid_t gid) {
  if (::getegid() == gid) return true;
  const int n = ::getgroups(0, nullptr);
  if (n <= 0) return false;  // none, or getgroups failed: then not known to be a member
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  const int got = ::getgroups(n, groups.data());
  for (int i = 0; i < got; ++i)
    if (groups[static_cast<std::size_t>(i)] == gid) return true;
  return false;
}

std::string me() {
  const uid_t uid = ::geteuid();
  return "this process runs as " + user_name(uid) + " (uid " + std::to_string(uid) + ")";
}

std::string owner_text(const struct stat& st) {
  return "owner " + user_name(st.st_uid) + ", group " + group_name(st.st_gid) + ", mode " + mode_text(st.st_mode);
}

// The fix for a file (socket or directory) this process may not use: `need`
// is the group permission bit it needs (S_IWGRP to connect, S_IXGRP to pass).
std::string access_fix(const struct stat& st, mode_t need) {
  const std::string group = group_name(st.st_gid);
  if (st.st_mode & need) {
    if (!in_group(st.st_gid))
      return "Join its group: `sudo usermod -aG " + group + " $USER`, then log in again (`id` shows your groups); "
             "or ask the operator of tensorshmd to add you.";
    return "This process is in group " + group + " and the mode admits the group, so an ACL or a security module "
           "denies it: ask the operator of tensorshmd.";
  }
  return "Its mode admits no group, so joining one does not help: ask the operator of tensorshmd to let a group in "
         "(`--socket-group <group> --socket-mode 0660`, or socket-group and socket-mode in its config file), then "
         "join that group (`sudo usermod -aG <group> $USER`).";
}

// The first directory on the way to `path` that this process may not pass, or "".
std::string blocked_directory(const std::string& path) {
  const auto closed = [](const std::string& dir) {
    return ::faccessat(AT_FDCWD, dir.c_str(), X_OK, AT_EACCESS) != 0 && errno == EACCES;
  };
  if (path.rfind('/', 0) == 0 && closed("/")) return "/";
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1))
    if (const std::string dir = path.substr(0, slash); closed(dir)) return dir;
  return {};
}

std::string start_advice(const std::string& path) {
  return "Start it with `tensorshmd --socket " + path + "` (or `systemctl start tensorshmd` for the system "
         "service), or, if a daemon runs on another socket, set TENSORSHM_SOCKET to that socket's path.";
}

}  // namespace

Error unreachable_error(const std::string& path, int err, const std::string& connect_error) {
  const std::string head = "cannot reach tensorshmd at '" + path + "': ";
  std::string why;
  if (err == ENOENT) {
    const std::string::size_type slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    struct stat st {};
    const bool dir_exists = ::stat(dir.c_str(), &st) == 0;
    why = "no socket there" +
          (dir_exists ? std::string() : " (not even its directory '" + dir + "')") + " (" + connect_error +
          "). Is the daemon running? " + start_advice(path);
  } else if (err == ECONNREFUSED) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
      why = "that is not a socket but another kind of file (" + connect_error +
            "): a wrong TENSORSHM_SOCKET or --socket? " + start_advice(path);
    else
      why = "a socket file is there but no daemon listens on it (" + connect_error +
            "): the tensorshmd that made it has stopped or died (its log says why: `journalctl -u tensorshmd`, "
            "or the terminal it ran in). Start it again: `tensorshmd --socket " + path +
            "` (it replaces the stale socket) or `systemctl restart tensorshmd`.";
  } else if (err == EACCES) {
    struct stat st {};
    if (const std::string dir = blocked_directory(path); !dir.empty() && ::stat(dir.c_str(), &st) == 0) {
      why = "permission denied (" + connect_error + "): the directory '" + dir + "' (" + owner_text(st) +
            ") does not let " + me() + " through. " + access_fix(st, S_IXGRP);
    } else if (::stat(path.c_str(), &st) == 0) {
      why = "permission denied (" + connect_error + "): the socket has " + owner_text(st) + ", and " + me() +
            ", which may not write to it. " + access_fix(st, S_IWGRP);
    } else {
      const int stat_errno = errno;
      why = "permission denied (" + connect_error + "); " + me() +
            ", and the socket's owner and mode cannot be read (" +
            posix_error("stat", path, stat_errno).message + "): ask the operator of tensorshmd for access.";
    }
  } else {
    why = connect_error + ". " + start_advice(path);
  }
  return Error{Errc::daemon_unreachable, head + why, err};
}

}  // namespace tensorshm::detail
