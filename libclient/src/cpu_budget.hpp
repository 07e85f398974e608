// How many CPUs this process may use at once: the CPUs of its affinity mask,
// fewer when its control group has a CPU quota (a container started with
// --cpus=2 sees every CPU of the host in its mask, but is throttled after two
// CPUs' worth of time in each period; copying with more threads than that
// stalls the copy until the next period).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tensorshm::detail {

/// CPUs a quota of `quota` µs per `period` µs allows: rounded up, at least 1;
/// nullopt for no quota (quota < 0, as cgroup v1 writes it, or period <= 0).
std::optional<unsigned> cpus_of_quota(long long quota, long long period) noexcept;

/// The CPU quota of the control group that `proc_self_cgroup` (the text of
/// /proc/self/cgroup) names, read under `root` (normally /sys/fs/cgroup):
/// cgroup v2's cpu.max ("max 100000" or "200000 100000"), else cgroup v1's
/// cpu/cpu.cfs_quota_us and cpu.cfs_period_us; in the group's own folder, else
/// at the root of the mount (a container's namespace). nullopt: no quota, or
/// nothing readable.
std::optional<unsigned> cgroup_cpu_limit(std::string_view proc_self_cgroup, const std::string& root);

/// min(CPUs in the affinity mask, the cgroup's quota); at least 1.
unsigned usable_cpus();

}  // namespace tensorshm::detail
