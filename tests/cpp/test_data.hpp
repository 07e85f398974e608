// Shared by the tests and tshm_test_peer: the byte pattern both sides agree
// on, its checksum, where a pointer lies in this process's mappings
// (/proc/self/maps), and which segments (memory files) an instance holds.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace tshm_test {

/// Byte i of the pattern with this seed.
inline std::uint8_t pattern_byte(std::uint64_t seed, std::size_t i) {
  return static_cast<std::uint8_t>((seed * 131 + i * 31 + (i >> 12)) & 0xff);
}

inline void fill_pattern(void* dst, std::size_t n, std::uint64_t seed) {
  auto* p = static_cast<std::uint8_t*>(dst);
  for (std::size_t i = 0; i < n; ++i) p[i] = pattern_byte(seed, i);
}

/// FNV-1a, 64 bits.
inline std::uint64_t checksum(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

inline std::uint64_t pattern_checksum(std::size_t n, std::uint64_t seed) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ pattern_byte(seed, i)) * 0x100000001b3ull;
  return h;
}

/// The /proc/self/maps line holding an address: its permissions ("r--s")
/// and path; empty permissions when no mapping holds it.
struct MappingOf {
  std::string perms;
  std::string path;
  bool read_only_shared() const { return perms.size() == 4 && perms[0] == 'r' && perms[1] == '-' && perms[3] == 's'; }
};

inline MappingOf mapping_of(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long long lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%llx-%llx %7s", &lo, &hi, perms) != 3) continue;
    if (addr < lo || addr >= hi) continue;
    MappingOf m;
    m.perms = perms;
    if (auto slash = line.find('/'); slash != std::string::npos) m.path = line.substr(slash);
    return m;
  }
  return {};
}

/// The segments of an instance: the memory files "tensorshm.<instance>.*"
/// that process `pid` holds open (0: this process, < 0: none), each once, and any file of
/// that name in /dev/shm (tensorshm makes none there), sorted. A segment is a
/// memfd: /proc/<pid>/fd shows it as "/memfd:<name> (deleted)".
inline std::vector<std::string> shm_files_of(const std::string& instance, int pid = 0) {
  std::vector<std::string> out;
  const std::string prefix = "tensorshm." + instance + ".";
  const std::string fds = pid > 0 ? "/proc/" + std::to_string(pid) + "/fd" : "/proc/self/fd";
  if (DIR* d = pid < 0 ? nullptr : ::opendir(fds.c_str())) {
    while (dirent* e = ::readdir(d)) {
      char target[512];
      const ssize_t n = ::readlink((fds + "/" + e->d_name).c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      std::string_view t(target, static_cast<std::size_t>(n));
      if (!t.starts_with("/memfd:")) continue;
      t.remove_prefix(7);
      if (const auto cut = t.find(" (deleted)"); cut != std::string_view::npos) t = t.substr(0, cut);
      if (t.starts_with(prefix)) out.emplace_back(t);
    }
    ::closedir(d);
  }
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d))
      if (std::string_view(e->d_name).starts_with(prefix)) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

inline std::string hex(std::uint64_t v) {
  std::ostringstream os;
  os << std::hex << v;
  return os.str();
}

}  // namespace tshm_test
