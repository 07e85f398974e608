// How many CPUs this process may use at once: the CPUs of its affinity mask,
// fewer when its control group has a CPU quota (a container started with
// --cpus=2 sees every CPU of the host in its mask, but is throttled after two
// CPUs' worth of time in each period; copying with more threads than that
// stalls the copy until the next period).
#pragma once

#include <sched.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace tensorshm::detail {

/// The CPUs the process's main thread may run on (taskset, a cpuset cgroup):
/// what the application chose for the process as a whole. A thread the
/// application pins to one core later does not narrow it, so helper threads
/// that such a thread starts are not stuck on its core.
class CpuMask {
 public:
  /// nullopt when it cannot be read (sched_getaffinity failed for a reason
  /// other than too small a set).
  static std::optional<CpuMask> of_process();
  unsigned count() const noexcept;
  /// Moves the calling thread onto these CPUs; false when the kernel refuses.
  bool apply_to_this_thread() const noexcept;

 private:
  struct Free {
    void operator()(cpu_set_t* s) const noexcept { CPU_FREE(s); }
  };
  std::unique_ptr<cpu_set_t, Free> set_;
  std::size_t bytes_ = 0;
};

/// CPUs a quota of `quota` µs per `period` µs allows: rounded up, at least 1;
/// nullopt for no quota (quota < 0, as cgroup v1 writes it, or period <= 0).
std::optional<unsigned> cpus_of_quota(long long quota, long long period) noexcept;

/// The CPU quota of the control group that `proc_self_cgroup` (the text of
/// /proc/self/cgroup) names, read under `root` (normally /sys/fs/cgroup):
/// cgroup v2's cpu.max ("max 100000" or "200000 100000"), else cgroup v1's
/// cpu/cpu.cfs_quota_us and cpu.cfs_period_us; the smallest of the group's
/// and every ancestor's up to the root of the mount (a container's cgroup
/// namespace shows its own group as that root). nullopt: no quota, or
/// nothing readable.
std::optional<unsigned> cgroup_cpu_limit(std::string_view proc_self_cgroup, const std::string& root);

/// min(CPUs of CpuMask::of_process(), the cgroup's quota); at least 1.
/// Read on the first call; later calls return the same.
unsigned usable_cpus();

}  // namespace tensorshm::detail
