#include "cpu_budget.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <sstream>
#include <thread>

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

std::optional<unsigned> cgroup_cpu_limit(std::string_view proc_self_cgroup, const std::string& root) {
  // Reads `leaf` and each folder above it up to `top`; keeps the smallest limit.
  const auto smallest = [](std::string top, const std::string& path, auto&& limit_in) {
    while (top.size() > 1 && top.back() == '/') top.pop_back();
    std::optional<unsigned> best;
    bool any = false;
    for (std::string dir = top + path;;) {
      while (dir.size() > top.size() && dir.back() == '/') dir.pop_back();
      if (const auto here = limit_in(dir, any)) best = best ? std::min(*best, *here) : *here;
      if (dir.size() <= top.size()) break;
      const auto slash = dir.rfind('/');
      if (slash == std::string::npos || slash < top.size()) break;
      dir.resize(std::max(slash, top.size()));
    }
    return std::pair{best, any};
  };
  if (const auto v2 = group_path(proc_self_cgroup, "")) {
    const auto [limit, any] = smallest(root, *v2, [](const std::string& dir, bool& any) -> std::optional<unsigned> {
      const std::string text = slurp(dir + "/cpu.max");
      any = any || !text.empty();
      return text.empty() ? std::nullopt : parse_cpu_max(text);
    });
    if (any) return limit;
  }
  if (const auto v1 = group_path(proc_self_cgroup, "cpu")) {
    const auto [limit, any] =
        smallest(root + "/cpu", *v1, [](const std::string& dir, bool& any) -> std::optional<unsigned> {
          const auto quota = to_number(slurp(dir + "/cpu.cfs_quota_us"));
          const auto period = to_number(slurp(dir + "/cpu.cfs_period_us"));
          any = any || (quota && period);
          return quota && period ? cpus_of_quota(*quota, *period) : std::nullopt;
        });
    if (any) return limit;
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
  const auto mask = CpuMask::of_process();
  unsigned cpus = mask ? mask->count() : std::max(1u, std::thread::hardware_concurrency());
  if (const auto quota = cgroup_cpu_limit(slurp("/proc/self/cgroup"), "/sys/fs/cgroup")) cpus = std::min(cpus, *quota);
  return std::max(cpus, 1u);
}

}  // namespace tensorshm::detail
