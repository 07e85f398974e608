#include "cpu_budget.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace tensorshm::detail {
namespace {

/// The whole of a small file; empty when it cannot be read.
std::string slurp(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<long long> to_number(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  long long v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return v;
}

/// cgroup v2's cpu.max: "max PERIOD" (no quota) or "QUOTA PERIOD".
std::optional<unsigned> parse_cpu_max(std::string_view text) {
  const auto space = text.find(' ');
  if (space == std::string_view::npos || text.substr(0, space) == "max") return std::nullopt;
  const auto quota = to_number(text.substr(0, space)), period = to_number(text.substr(space + 1));
  return quota && period ? cpus_of_quota(*quota, *period) : std::nullopt;
}

/// The folder of this process's group in the hierarchy line of
/// /proc/self/cgroup whose controllers are `controllers` ("" for v2, whose
/// line is "0::/path"; "cpu" matches "cpu" and "cpu,cpuacct").
std::optional<std::string> group_path(std::string_view text, std::string_view controller) {
  std::istringstream lines{std::string(text)};
  for (std::string line; std::getline(lines, line);) {
    const auto a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string_view list = std::string_view(line).substr(a + 1, b - a - 1);
    bool match = controller.empty() ? list.empty() : false;
    for (std::size_t at = 0; !controller.empty() && at <= list.size();) {
      const auto comma = std::min(list.find(',', at), list.size());
      match = match || list.substr(at, comma - at) == controller;
      at = comma + 1;
    }
    if (match) return line.substr(b + 1);
  }
  return std::nullopt;
}

}  // namespace

std::optional<unsigned> cpus_of_quota(long long quota, long long period) noexcept {
  if (quota < 0 || period <= 0) return std::nullopt;
  return static_cast<unsigned>(std::max(1LL, (quota + period - 1) / period));
}

namespace {

/// The folder of a group, `top` + `path`, then each folder above it up to
/// `top` (the mount, or a container's cgroup namespace root) itself.
std::vector<std::string> group_and_ancestors(std::string top, std::string_view path) {
  while (top.size() > 1 && top.back() == '/') top.pop_back();
  std::vector<std::string> dirs;
  std::string dir = top + std::string(path);
  while (dir.size() > top.size() && dir.back() == '/') dir.pop_back();
  for (;;) {
    dirs.push_back(dir);
    const auto slash = dir.rfind('/');
    if (dir.size() <= top.size() || slash == std::string::npos || slash < top.size()) return dirs;
    dir.resize(slash);
  }
}

/// The smallest limit that `limit_in(dir)` reads in the group's folders;
/// `readable` says whether any folder had the files at all.
struct Smallest {
  std::optional<unsigned> limit;
  bool readable = false;
  void add(bool found, std::optional<unsigned> here) {
    readable = readable || found;
    if (here) limit = limit ? std::min(*limit, *here) : *here;
  }
};

}  // namespace

std::optional<unsigned> cgroup_cpu_limit(std::string_view proc_self_cgroup, const std::string& root) {
  if (const auto v2 = group_path(proc_self_cgroup, "")) {
    Smallest s;
    for (const auto& dir : group_and_ancestors(root, *v2)) {
      const std::string text = slurp(dir + "/cpu.max");
      s.add(!text.empty(), text.empty() ? std::nullopt : parse_cpu_max(text));
    }
    if (s.readable) return s.limit;
  }
  if (const auto v1 = group_path(proc_self_cgroup, "cpu")) {
    Smallest s;
    for (const auto& dir : group_and_ancestors(root + "/cpu", *v1)) {
      const auto quota = to_number(slurp(dir + "/cpu.cfs_quota_us"));
      const auto period = to_number(slurp(dir + "/cpu.cfs_period_us"));
      s.add(quota && period, quota && period ? cpus_of_quota(*quota, *period) : std::nullopt);
    }
    if (s.readable) return s.limit;
  }
  return std::nullopt;
}

std::optional<CpuMask> CpuMask::of_process() {
  for (int cpus = 1024; cpus <= (1 << 16); cpus *= 2) {  // hosts with more than 1024 possible CPUs need more
    CpuMask m;
    m.set_.reset(CPU_ALLOC(cpus));
    if (!m.set_) return std::nullopt;
    m.bytes_ = CPU_ALLOC_SIZE(cpus);
    CPU_ZERO_S(m.bytes_, m.set_.get());
    if (::sched_getaffinity(::getpid(), m.bytes_, m.set_.get()) == 0) return m;  // the main thread's: pid == its tid
    if (errno != EINVAL) return std::nullopt;
  }
  return std::nullopt;
}

unsigned CpuMask::count() const noexcept { return static_cast<unsigned>(CPU_COUNT_S(bytes_, set_.get())); }

bool CpuMask::apply_to_this_thread() const noexcept { return ::sched_setaffinity(0, bytes_, set_.get()) == 0; }

unsigned usable_cpus() {
  // Read once per process, not at each connect: a process's affinity and
  // quota are set when it starts (and a forked child inherits them).
  static const unsigned cpus = [] {
    const auto mask = CpuMask::of_process();
    unsigned n = mask ? mask->count() : std::max(1u, std::thread::hardware_concurrency());
    if (const auto quota = cgroup_cpu_limit(slurp("/proc/self/cgroup"), "/sys/fs/cgroup")) n = std::min(n, *quota);
    return std::max(n, 1u);
  }();
  return cpus;
}

}  // namespace tensorshm::detail
