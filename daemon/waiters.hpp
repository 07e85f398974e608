// Clients parked in the event loop: a get waiting for a name to (re)appear and
// a create waiting for pool space. Each waiter is a timer set to its deadline;
// a notification cancels the timers, which wakes their coroutines to look
// again. Single-threaded: used only from the io_context thread.
#pragma once

#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>

#include "asio.hpp"

namespace tensorshm::daemon {

class Waiters {
 public:
  using Timer = asio::steady_timer;

  /// Registration that removes itself when destroyed.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& o) noexcept { *this = std::move(o); }
    Ticket& operator=(Ticket&& o) noexcept {
      reset();
      owner_ = o.owner_;
      undo_ = std::move(o.undo_);
      o.owner_ = nullptr;
      return *this;
    }
    ~Ticket() { reset(); }
    void reset() {
      if (owner_ && undo_) undo_();
      owner_ = nullptr;
    }

   private:
    friend class Waiters;
    Waiters* owner_ = nullptr;
    std::function<void()> undo_;
  };

  Ticket wait_for_name(const std::string& name, Timer* t) {
    auto it = by_name_.emplace(name, t);
    Ticket k;
    k.owner_ = this;
    k.undo_ = [this, it] { by_name_.erase(it); };
    return k;
  }
  Ticket wait_for_space(Timer* t) {
    auto it = space_.insert(space_.end(), t);
    Ticket k;
    k.owner_ = this;
    k.undo_ = [this, it] { space_.erase(it); };
    return k;
  }
  void notify_name(const std::string& name) {
    auto [lo, hi] = by_name_.equal_range(name);
    for (auto it = lo; it != hi; ++it) it->second->cancel();
  }
  void notify_space() {
    for (Timer* t : space_) t->cancel();
  }
  std::size_t size() const noexcept { return by_name_.size() + space_.size(); }

 private:
  std::multimap<std::string, Timer*> by_name_;
  std::list<Timer*> space_;
};

}  // namespace tensorshm::daemon
