#include "cpu_budget.hpp"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
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

std::optional<unsigned> cgroup_cpu_limit(std::string_view proc_self_cgroup, const std::string& root) {
  if (const auto v2 = group_path(proc_self_cgroup, "")) {
    for (const std::string& dir : {root + *v2, root})
      if (const std::string text = slurp(dir + "/cpu.max"); !text.empty()) return parse_cpu_max(text);
  }
  if (const auto v1 = group_path(proc_self_cgroup, "cpu")) {
    for (const std::string& dir : {root + "/cpu" + *v1, root + "/cpu"}) {
      const auto quota = to_number(slurp(dir + "/cpu.cfs_quota_us"));
      const auto period = to_number(slurp(dir + "/cpu.cfs_period_us"));
      if (quota && period) return cpus_of_quota(*quota, *period);
    }
  }
  return std::nullopt;
}

unsigned usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  unsigned cpus = ::sched_getaffinity(0, sizeof set, &set) == 0 ? static_cast<unsigned>(CPU_COUNT(&set)) : 1;
  if (const auto quota = cgroup_cpu_limit(slurp("/proc/self/cgroup"), "/sys/fs/cgroup")) cpus = std::min(cpus, *quota);
  return std::max(cpus, 1u);
}

}  // namespace tensorshm::detail
