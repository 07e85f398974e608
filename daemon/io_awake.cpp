// The io thread's busy window; see the header.
#include "io_awake.hpp"

namespace tensorshm::daemon {

namespace {

bool open(IoAwake::Clock::rep until) { return IoAwake::Clock::now().time_since_epoch().count() < until; }

}  // namespace

IoAwake::IoAwake(boost::asio::io_context& io) : io_(io) {}

void IoAwake::until(Clock::time_point until) {
  const Clock::rep t = until.time_since_epoch().count();
  // Sequentially consistent throughout: the hand-off of `running` below and
  // in round() (store one flag, then load the other) needs it; acquire and
  // release would let each side miss the other's store.
  Clock::rep seen = state_->until.load();
  while (seen < t && !state_->until.compare_exchange_weak(seen, t)) {
  }
  if (seen >= t || !open(t)) return;  // within the open window already, or over
  state_->last_asked.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  state_->windows.fetch_add(1, std::memory_order_relaxed);
  if (!state_->running.exchange(true))
    boost::asio::post(io_, [&io = io_, state = state_] { round(io, state); });
}

void IoAwake::round(boost::asio::io_context& io, const std::shared_ptr<State>& state) {
  state->rounds.fetch_add(1, std::memory_order_relaxed);
  const auto go_on = [&] { boost::asio::post(io, [&io, state] { round(io, state); }); };
  if (open(state->until.load())) return go_on();
  state->running.store(false);
  // A window opened between the check and the store saw `running` still set
  // and posted nothing: take it up here.
  if (open(state->until.load()) && !state->running.exchange(true)) go_on();
}

}  // namespace tensorshm::daemon
