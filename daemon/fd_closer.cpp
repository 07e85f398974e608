// The closer thread: see fd_closer.hpp.
#include "fd_closer.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "log.hpp"
#include "tensorshm/io.hpp"

namespace tensorshm::daemon {

struct FdCloser::State {
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<int> queue;  // guarded by mu
  bool stop = false;      // guarded by mu
  bool done = false;      // guarded by mu: the thread has left its loop
  bool threaded = false;  // set once, before the thread starts
};

namespace {

// A socket that lingers makes its last close wait until its unsent data is
// acknowledged or the linger time passes; without SO_LINGER the kernel sends
// it in the background and close returns at once.
void unlinger(int fd) noexcept {
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  const linger off{0, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
}

void run(const std::shared_ptr<FdCloser::State>& s) {
  // No signal is for this thread: SIGTERM and SIGINT belong to the io thread.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock lk(s->mu);
  for (;;) {
    s->cv.wait(lk, [&] { return s->stop || !s->queue.empty(); });
    if (s->queue.empty()) break;  // stop, and nothing left
    const int fd = s->queue.front();
    s->queue.pop_front();
    lk.unlock();
    unlinger(fd);
    io::close_fd(fd);
    lk.lock();
  }
  s->done = true;
  s->cv.notify_all();
}

}  // namespace

FdCloser::FdCloser() : state_(std::make_shared<State>()) {
  try {
    std::thread(run, state_).detach();
    state_->threaded = true;
  } catch (const std::exception& e) {
    log::warning("cannot start the descriptor closer thread (", e.what(),
                 "); descriptors that clients send will be closed on the io thread");
  }
}

FdCloser::~FdCloser() {
  std::unique_lock lk(state_->mu);
  state_->stop = true;
  state_->cv.notify_all();
  if (state_->threaded &&
      !state_->cv.wait_for(lk, std::chrono::seconds(1), [&] { return state_->done; }))
    log::warning(state_->queue.size(), " client descriptor(s) still closing at exit; left to the kernel");
}

void FdCloser::close(int fd) noexcept {
  if (fd < 0) return;
  if (!state_->threaded) {
    unlinger(fd);
    io::close_fd(fd);
    return;
  }
  try {
    std::lock_guard lk(state_->mu);
    state_->queue.push_back(fd);
  } catch (...) {  // out of memory: close here rather than leak
    unlinger(fd);
    io::close_fd(fd);
    return;
  }
  state_->cv.notify_one();
}

std::size_t FdCloser::pending() const noexcept {
  std::lock_guard lk(state_->mu);
  return state_->queue.size();
}

}  // namespace tensorshm::daemon
