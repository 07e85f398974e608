// The io thread's busy window; see the header.
#include "io_awake.hpp"

namespace tensorshm::daemon {

namespace {

bool open(IoAwake::Clock::rep until) { return IoAwake::Clock::now().time_since_epoch().count() < until; }

}  // namespace

IoAwake::IoAwake(boost::asio::io_context& io) : io_(io) {}

void IoAwake::until(Clock::time_point until) {
  const Clock::rep t = until.time_since_epoch().count();
  Clock::rep seen = state_->until.load(std::memory_order_relaxed);
  while (seen < t && !state_->until.compare_exchange_weak(seen, t, std::memory_order_release)) {
  }
  if (seen >= t || !open(t)) return;  // within the open window already, or over
  state_->windows.fetch_add(1, std::memory_order_relaxed);
  if (!state_->running.exchange(true, std::memory_order_acq_rel))
    boost::asio::post(io_, [&io = io_, state = state_] { round(io, state); });
}

void IoAwake::round(boost::asio::io_context& io, const std::shared_ptr<State>& state) {
  state->rounds.fetch_add(1, std::memory_order_relaxed);
  const auto go_on = [&] { boost::asio::post(io, [&io, state] { round(io, state); }); };
  if (open(state->until.load(std::memory_order_acquire))) return go_on();
  state->running.store(false, std::memory_order_release);
  // A window opened between the check and the store saw `running` still set
  // and posted nothing: take it up here.
  if (open(state->until.load(std::memory_order_acquire)) && !state->running.exchange(true, std::memory_order_acq_rel))
    go_on();
}

}  // namespace tensorshm::daemon
