// The closer threads: see fd_closer.hpp.
#include "fd_closer.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <mutex>
#include <thread>

#include "log.hpp"
#include "tensorshm/io.hpp"

namespace tensorshm::daemon {

using Clock = std::chrono::steady_clock;

struct FdCloser::State {
  struct Job {
    int fd;
    std::uint32_t uid;
  };
  struct Running {
    std::uint32_t uid;
    Clock::time_point since;
  };
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;          // guarded by mu
  std::list<Running> running;     // guarded by mu: closes in progress
  unsigned threads = 0;           // guarded by mu: closer threads alive
  unsigned idle = 0;              // guarded by mu: of which waiting for work
  bool stop = false;              // guarded by mu
};

void defuse(int fd, int depth, int* budget) noexcept {
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  // Without SO_LINGER the kernel finishes sending in the background and the
  // close returns at once.
  const linger off{0, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
  int domain = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return;
  if (depth <= 0 || *budget <= 0) return;
  // A Unix socket closes what is queued in it: take those descriptors first.
  // Shut for reading, its peer can queue nothing more.
  (void)::shutdown(fd, SHUT_RD);
  std::vector<std::byte> scratch(64 * 1024);
  std::vector<int> fds;
  while (*budget > 0) {
    fds.clear();
    auto r = io::recv_taking_fds(fd, scratch, &fds);
    for (int inner : fds) {
      --*budget;
      defuse(inner, depth - 1, budget);
      io::close_fd(inner);
    }
    if (!r || r->would_block || r->got == 0) break;
  }
}

namespace {

void close_defused(int fd) noexcept {
  int budget = FdCloser::kMaxDrained;
  defuse(fd, FdCloser::kMaxDepth, &budget);
  io::close_fd(fd);
}

// The first queued job whose uid has fewer than kPerUid closes running, so
// that one uid's blocking closes hold at most that many threads. Caller holds
// s->mu.
std::deque<FdCloser::State::Job>::iterator next_job(FdCloser::State& s) {
  for (auto it = s.queue.begin(); it != s.queue.end(); ++it) {
    unsigned running = 0;
    for (const auto& r : s.running) running += r.uid == it->uid;
    if (running < FdCloser::kPerUid) return it;
  }
  return s.queue.end();
}

void run(const std::shared_ptr<FdCloser::State>& s) {
  // No signal is for these threads: SIGTERM and SIGINT belong to the io thread.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock lk(s->mu);
  for (;;) {
    ++s->idle;
    auto it = s->queue.end();
    s->cv.wait(lk, [&] { return (it = next_job(*s)) != s->queue.end() || (s->stop && s->queue.empty()); });
    --s->idle;
    if (it == s->queue.end()) break;  // stop, and nothing left
    const auto job = *it;
    s->queue.erase(it);
    auto me = s->running.insert(s->running.end(), FdCloser::State::Running{job.uid, Clock::now()});
    lk.unlock();
    close_defused(job.fd);
    lk.lock();
    const auto took = Clock::now() - me->since;
    s->running.erase(me);
    s->cv.notify_all();  // a job of this uid may be eligible now
    if (took > std::chrono::seconds(1))
      log::warning("closing a descriptor of uid ", job.uid, " took ",
                   std::chrono::duration_cast<std::chrono::milliseconds>(took).count(),
                   " ms on a closer thread (a socket or file that blocks on close)");
  }
  --s->threads;
  s->cv.notify_all();
}

// Starts one more closer thread; false if it cannot. Caller holds s->mu.
bool start_thread(const std::shared_ptr<FdCloser::State>& s) {
  try {
    std::thread(run, s).detach();
    ++s->threads;
    return true;
  } catch (const std::exception& e) {
    log::warning("cannot start a descriptor closer thread (", e.what(), ")");
    return false;
  }
}

}  // namespace

FdCloser::FdCloser() : state_(std::make_shared<State>()) {
  std::lock_guard lk(state_->mu);
  if (!start_thread(state_))
    log::warning("descriptors that clients send will be closed on the io thread");
}

FdCloser::~FdCloser() {
  std::unique_lock lk(state_->mu);
  state_->stop = true;
  state_->cv.notify_all();
  if (!state_->cv.wait_for(lk, std::chrono::seconds(1), [&] { return state_->threads == 0; }))
    log::warning(state_->queue.size() + state_->running.size(),
                 " client descriptor(s) still closing at exit; left to the kernel");
}

void FdCloser::close(int fd, std::uint32_t uid) noexcept {
  if (fd < 0) return;
  try {
    std::lock_guard lk(state_->mu);
    if (state_->threads > 0) {
      state_->queue.push_back(State::Job{fd, uid});
      // Every thread busy (maybe blocked in a close): one more, up to the cap.
      if (state_->idle == 0 && state_->threads < kMaxThreads) (void)start_thread(state_);
      state_->cv.notify_one();
      return;
    }
  } catch (...) {  // out of memory: close here rather than leak
  }
  close_defused(fd);
}

std::size_t FdCloser::pending() const noexcept {
  std::lock_guard lk(state_->mu);
  return state_->queue.size();
}

std::uint32_t FdCloser::stuck(std::uint32_t uid) const noexcept {
  std::lock_guard lk(state_->mu);
  const auto limit = Clock::now() - std::chrono::seconds(1);
  std::uint32_t n = 0;
  for (const auto& r : state_->running) n += r.uid == uid && r.since < limit;
  return n;
}

}  // namespace tensorshm::daemon
