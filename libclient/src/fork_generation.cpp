#include "fork_generation.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace tensorshm::detail {
namespace {

std::atomic<std::uint64_t> g_forks{0};
std::once_flag g_atfork_once;
bool g_counting = false;  // set once, under g_atfork_once

}  // namespace

std::uint64_t fork_generation() noexcept {
  std::call_once(g_atfork_once, [] {
    // ENOMEM is its only error: then the pid tells processes apart instead.
    g_counting = ::pthread_atfork(nullptr, nullptr, [] { g_forks.fetch_add(1, std::memory_order_relaxed); }) == 0;
  });
  return g_counting ? g_forks.load(std::memory_order_relaxed) : static_cast<std::uint64_t>(::getpid());
}

}  // namespace tensorshm::detail
