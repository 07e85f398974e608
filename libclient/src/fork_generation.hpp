// Which fork() generation this process is: a connection, a mapping or a pool
// of helper threads made by a parent is not this process's own in a child.
#pragma once

#include <cstdint>

namespace tensorshm::detail {

/// Changes in each child of fork(); equal values mean the same process.
/// glibc no longer caches getpid(), and the check runs on every call: a
/// counter that a pthread_atfork child handler bumps answers it without a
/// system call (or the pid, if the handler could not be registered).
std::uint64_t fork_generation() noexcept;

}  // namespace tensorshm::detail
