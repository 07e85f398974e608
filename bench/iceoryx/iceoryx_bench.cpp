// C++ peers of the comparison benchmark (issue 7), driven by bench/python/run.py.
//
// Each mode forks its own producer/consumer processes and prints one JSON
// object per line on stdout (progress goes to stderr):
//
//   floors    --sizes LIST                 bare Unix-socket ping-pong of 64 B between two processes, and
//                                          memcpy of each size between two populated buffers
//   roundtrip --peer iceoryx|tensorshm-create|tensorshm-put --sizes LIST [--socket PATH]
//             the producer hands off a fresh array of each size (its stamp in the first 8 bytes), the
//             consumer touches it (one byte per 4 KiB page and the last byte) and acknowledges with the
//             stamp; iceoryx acknowledges on a second topic, tensorshm over a socketpair, as the Python
//             peers do
//   fanout    --peer iceoryx --seconds S --consumers N --frame BYTES
//             one publisher, N subscribers, every frame delivered to every subscriber (queues of 2,
//             the publisher waits for slow subscribers); frames/s per consumer and latency from the start
//             of filling a frame to a consumer having touched it
//
// Timing of one size: warm-up, then iterations until --budget-s has passed and at least --min-iters
// ran, or --max-iters ran. iceoryx needs a running RouDi (iox-roudi) whose mempools fit the sizes.
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#include "tensorshm/client.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;
constexpr std::uint64_t kStopStamp = ~std::uint64_t{0};

struct Args {
  std::string mode;
  std::string peer;
  std::string socket;
  std::vector<std::size_t> sizes;
  double budget_s = 2.0;
  int min_iters = 3;
  int max_iters = 2000;
  double seconds = 10.0;
  int consumers = 4;
  std::size_t frame = 8u << 20;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "tshm_iceoryx_bench: %s\n", what.c_str());
  std::exit(1);
}

std::uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Reads one byte per page and the last one, as every consumer in the benchmark does.
std::uint64_t touch(const void* data, std::size_t n) {
  const auto* p = static_cast<const volatile std::uint8_t*>(data);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < n; i += kPage) sum += p[i];
  return sum + p[n - 1];
}

std::uint64_t read_stamp(const void* data) {
  std::uint64_t s;
  std::memcpy(&s, data, sizeof s);
  return s;
}

void write_all(int fd, const void* p, std::size_t n) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t k = ::write(fd, c, n);
    if (k <= 0) die("write failed");
    c += k;
    n -= static_cast<std::size_t>(k);
  }
}

bool read_all(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t k = ::read(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

std::string size_label(std::size_t n) {
  char b[32];
  if (n >= (1u << 30)) std::snprintf(b, sizeof b, "%zu GiB", n >> 30);
  else if (n >= (1u << 20)) std::snprintf(b, sizeof b, "%zu MiB", n >> 20);
  else if (n >= 1024) std::snprintf(b, sizeof b, "%zu KiB", n >> 10);
  else std::snprintf(b, sizeof b, "%zu B", n);
  return b;
}

// Runs `one` (returns seconds of one iteration) with warm-up and the time budget; prints the JSON line.
void measure(const Args& a, const std::string& peer, std::size_t size, const std::function<double()>& one,
             const std::string& extra = {}) {
  const int warm = size >= (256u << 20) ? 1 : 2;
  for (int i = 0; i < warm; ++i) (void)one();
  std::vector<double> t;
  const auto start = Clock::now();
  const int least = size >= (256u << 20) ? std::min(a.min_iters, 3) : a.min_iters;  // the big ones take seconds
  while (static_cast<int>(t.size()) < a.max_iters &&
         (static_cast<int>(t.size()) < least ||
          std::chrono::duration<double>(Clock::now() - start).count() < a.budget_s))
    t.push_back(one() * 1e6);
  std::printf("{\"peer\": \"%s\", \"size\": %zu, \"median_us\": %.3f, \"p99_us\": %.3f, \"iters\": %zu%s}\n",
              peer.c_str(), size, percentile(t, 0.5), percentile(t, 0.99), t.size(), extra.c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "    %-18s %8s  %10.1f us median  (%zu iterations)\n", peer.c_str(), size_label(size).c_str(),
               percentile(t, 0.5), t.size());
}

// ---------------------------------------------------------------- floors

void run_floors(const Args& a) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    char buf[64];
    while (read_all(sv[1], buf, sizeof buf)) write_all(sv[1], buf, sizeof buf);
    ::_exit(0);
  }
  ::close(sv[1]);
  char buf[64] = {1};
  Args pa = a;
  pa.min_iters = 1000;
  pa.max_iters = 200000;
  measure(pa, "socket-pingpong-c", 64, [&] {
    const auto t0 = Clock::now();
    write_all(sv[0], buf, sizeof buf);
    if (!read_all(sv[0], buf, sizeof buf)) die("ping-pong peer died");
    return std::chrono::duration<double>(Clock::now() - t0).count();
  });
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);

  for (const std::size_t n : a.sizes) {
    std::vector<std::uint8_t> src(n, 3), dst(n, 0);  // both populated before timing
    measure(a, "memcpy-c", n, [&] {
      const auto t0 = Clock::now();
      std::memcpy(dst.data(), src.data(), n);
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      src[0] = dst[n / 2] + 1;
      return s;
    });
  }
}

// ---------------------------------------------------------------- iceoryx

// Topics are named after the benchmark's top process, so that concurrent runs do not meet.
std::string g_topic_instance;

iox::capro::ServiceDescription topic(const char* event) {
  return {"tshm-bench", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, g_topic_instance.c_str()),
          iox::capro::IdString_t(iox::cxx::TruncateToCapacity, event)};
}

void init_iox_runtime(const std::string& role) {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn);
  const std::string name = "tshm-bench-" + role + "-" + std::to_string(::getpid());
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
}

iox::popo::SubscriberOptions lossless_subscriber(std::uint64_t queue) {
  iox::popo::SubscriberOptions o;
  o.queueCapacity = queue;
  o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
  return o;
}

iox::popo::PublisherOptions waiting_publisher() {
  iox::popo::PublisherOptions o;
  o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
  return o;
}

void* loan_or_die(iox::popo::UntypedPublisher& pub, std::size_t n) {
  auto r = pub.loan(static_cast<std::uint32_t>(n), 64);
  if (r.has_error()) die("iceoryx loan of " + size_label(n) + " failed: does RouDi's config have a mempool for it?");
  return r.value();
}

// Blocks until the subscriber has a sample and returns it.
const void* take_blocking(iox::popo::UntypedSubscriber& sub, iox::popo::WaitSet<>& ws) {
  for (;;) {
    auto r = sub.take();
    if (!r.has_error()) return r.value();
    (void)ws.wait();
  }
}

void wait_connected(iox::popo::UntypedPublisher& pub) {
  while (!pub.hasSubscribers()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void iceoryx_follower() {
  init_iox_runtime("follower");
  iox::popo::UntypedSubscriber ping(topic("ping"), lossless_subscriber(2));
  iox::popo::UntypedPublisher pong(topic("pong"), waiting_publisher());
  iox::popo::WaitSet<> ws;
  if (ws.attachState(ping, iox::popo::SubscriberState::HAS_DATA).has_error()) die("waitset attach");
  for (;;) {
    const void* d = take_blocking(ping, ws);
    const std::uint64_t stamp = read_stamp(d);
    const std::size_t n = iox::mepoo::ChunkHeader::fromUserPayload(d)->userPayloadSize();
    (void)touch(d, n);
    ping.release(d);
    void* r = loan_or_die(pong, 8);
    std::memcpy(r, &stamp, 8);
    pong.publish(r);
    if (stamp == kStopStamp) break;
  }
  // Let the leader take the last pong before the ports go away.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

void iceoryx_roundtrip(const Args& a) {
  const pid_t child = ::fork();
  if (child == 0) {
    iceoryx_follower();
    std::exit(0);  // not _exit: the runtime deregisters from RouDi at exit
  }
  init_iox_runtime("leader");
  iox::popo::UntypedPublisher ping(topic("ping"), waiting_publisher());
  iox::popo::UntypedSubscriber pong(topic("pong"), lossless_subscriber(2));
  iox::popo::WaitSet<> ws;
  if (ws.attachState(pong, iox::popo::SubscriberState::HAS_DATA).has_error()) die("waitset attach");
  wait_connected(ping);
  while (pong.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));

  std::uint64_t stamp = 0;
  auto send = [&](const std::uint8_t* src, std::size_t n, std::uint64_t s) {
    void* p = loan_or_die(ping, n);
    std::memcpy(p, src, n);  // the fill: the producer's data into the loaned chunk
    std::memcpy(p, &s, 8);
    ping.publish(p);
    const void* r = take_blocking(pong, ws);
    const std::uint64_t got = read_stamp(r);
    pong.release(r);
    if (got != s) die("iceoryx: wrong acknowledgement");
  };
  for (const std::size_t n : a.sizes) {
    std::vector<std::uint8_t> src(n, 5);
    measure(a, "iceoryx", n, [&] {
      const auto t0 = Clock::now();
      send(src.data(), n, ++stamp);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    });
  }
  std::vector<std::uint8_t> stop(64, 0);
  send(stop.data(), stop.size(), kStopStamp);
  ::waitpid(child, nullptr, 0);
}

// One fan-out subscriber: says when it is subscribed, takes frames until the stop stamp, then
// sends its latencies (microseconds) down lat_fd.
void fanout_consumer(int k, int ready_fd, int lat_fd) {
  init_iox_runtime("fan" + std::to_string(k));
  iox::popo::UntypedSubscriber sub(topic("fan"), lossless_subscriber(2));
  iox::popo::WaitSet<> ws;
  if (ws.attachState(sub, iox::popo::SubscriberState::HAS_DATA).has_error()) die("waitset attach");
  while (sub.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  write_all(ready_fd, "r", 1);
  std::vector<double> lat;
  lat.reserve(1 << 16);
  for (;;) {
    const void* d = take_blocking(sub, ws);
    const std::uint64_t t0 = read_stamp(d);
    if (t0 == kStopStamp) {
      sub.release(d);
      break;
    }
    const std::size_t n = iox::mepoo::ChunkHeader::fromUserPayload(d)->userPayloadSize();
    (void)touch(d, n);
    lat.push_back(static_cast<double>(now_ns() - t0) / 1e3);
    sub.release(d);
  }
  const std::uint64_t count = lat.size();
  write_all(lat_fd, &count, sizeof count);
  write_all(lat_fd, lat.data(), lat.size() * sizeof(double));
}

void iceoryx_fanout(const Args& a) {
  // One latency pipe per consumer: their reports are larger than PIPE_BUF and would interleave.
  int ready_pipe[2];
  if (::pipe(ready_pipe) != 0) die("pipe");
  std::vector<pid_t> kids;
  std::vector<int> lat_fds;
  for (int k = 0; k < a.consumers; ++k) {
    int lat_pipe[2];
    if (::pipe(lat_pipe) != 0) die("pipe");
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(lat_pipe[0]);
      ::close(ready_pipe[0]);
      fanout_consumer(k, ready_pipe[1], lat_pipe[1]);
      std::exit(0);  // not _exit: the runtime deregisters from RouDi at exit
    }
    ::close(lat_pipe[1]);
    lat_fds.push_back(lat_pipe[0]);
    kids.push_back(pid);
  }
  ::close(ready_pipe[1]);
  init_iox_runtime("fanout-producer");
  iox::popo::UntypedPublisher pub(topic("fan"), waiting_publisher());
  // Every subscriber says when it is subscribed (hasSubscribers() only says "at least one").
  for (int k = 0; k < a.consumers; ++k) {
    char r;
    if (!read_all(ready_pipe[0], &r, 1)) die("fan-out consumer died before subscribing");
  }

  std::vector<std::uint8_t> src(a.frame, 9);
  std::uint64_t frames = 0;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(a.seconds);
  while (Clock::now() < end) {
    const std::uint64_t t0 = now_ns();
    void* p = loan_or_die(pub, a.frame);
    std::memcpy(p, src.data(), a.frame);
    std::memcpy(p, &t0, 8);
    pub.publish(p);
    ++frames;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  void* p = loan_or_die(pub, 64);
  std::memcpy(p, &kStopStamp, 8);
  pub.publish(p);

  std::vector<double> all;
  std::uint64_t received = 0;
  for (const int fd : lat_fds) {
    std::uint64_t count = 0;
    if (!read_all(fd, &count, sizeof count)) die("fan-out consumer died");
    std::vector<double> lat(count);
    if (!read_all(fd, lat.data(), count * sizeof(double))) die("fan-out consumer died");
    ::close(fd);
    received += count;
    all.insert(all.end(), lat.begin(), lat.end());
  }
  for (const pid_t k : kids) ::waitpid(k, nullptr, 0);
  std::printf("{\"peer\": \"iceoryx\", \"workload\": \"fanout\", \"frame\": %zu, \"consumers\": %d, \"seconds\": %.3f, "
              "\"frames_produced\": %llu, \"frames_per_s\": %.2f, \"p50_us\": %.1f, \"p99_us\": %.1f}\n",
              a.frame, a.consumers, elapsed, static_cast<unsigned long long>(frames),
              static_cast<double>(received) / a.consumers / elapsed, percentile(all, 0.5), percentile(all, 0.99));
  std::fflush(stdout);
  std::fprintf(stderr, "    iceoryx fan-out: %.1f frames/s per consumer, p99 %.0f us\n",
               static_cast<double>(received) / a.consumers / elapsed, percentile(all, 0.99));
}

// ---------------------------------------------------------------- tensorshm (C++ client)

tensorshm::Client connect_tensorshm(const std::string& socket, const char* name) {
  tensorshm::Client::Options o;
  o.socket_path = socket;
  o.client_name = name;
  return tensorshm::Client::connect(o);
}

void tensorshm_roundtrip(const Args& a, bool use_put) {
  if (a.socket.empty()) die("--socket is required for the tensorshm peers");
  const std::string name = "bench/cpp/" + std::to_string(::getpid());
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(sv[0]);
    auto c = connect_tensorshm(a.socket, "bench-consumer");
    std::uint64_t last = 0;
    for (;;) {
      tensorshm::Object obj = c.get(name, {.newer_than = last, .timeout = std::chrono::seconds(60)});
      last = obj.version();
      const std::uint64_t stamp = read_stamp(obj.data());
      (void)touch(obj.data(), obj.nbytes());
      obj.release();
      write_all(sv[1], &stamp, sizeof stamp);
      if (stamp == kStopStamp) break;
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  auto c = connect_tensorshm(a.socket, "bench-producer");
  const std::string peer = use_put ? "tensorshm-put-cpp" : "tensorshm-create-cpp";
  std::uint64_t stamp = 0;
  auto send = [&](std::vector<std::uint8_t>& src, std::uint64_t s) {
    const auto n = static_cast<std::int64_t>(src.size());
    if (use_put) {
      std::memcpy(src.data(), &s, 8);
      c.put(name, {src.data(), tensorshm::dtypes::kUInt8, {n}, {}});
    } else {
      auto buf = c.create(name, tensorshm::dtypes::kUInt8, {n});
      std::memcpy(buf.data(), src.data(), src.size());  // the fill
      std::memcpy(buf.data(), &s, 8);
      buf.seal();
    }
    std::uint64_t got = 0;
    if (!read_all(sv[0], &got, sizeof got) || got != s) die("tensorshm: wrong acknowledgement");
  };
  for (const std::size_t n : a.sizes) {
    std::vector<std::uint8_t> src(n, 5);
    measure(a, peer, n, [&] {
      const auto t0 = Clock::now();
      send(src, ++stamp);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    });
  }
  std::vector<std::uint8_t> stop(64, 0);
  send(stop, kStopStamp);
  ::waitpid(child, nullptr, 0);
  c.remove(name);
}

std::vector<std::size_t> parse_sizes(const std::string& s) {
  std::vector<std::size_t> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    const std::size_t comma = s.find(',', pos);
    out.push_back(std::stoull(s.substr(pos, comma - pos)));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  for (const auto n : out)
    if (n < 64) die("sizes must be at least 64 bytes (the stamp and the acknowledgement need them)");
  return out;
}

Args parse(int argc, char** argv) {
  if (argc < 2) die("usage: tshm_iceoryx_bench floors|roundtrip|fanout [options] (see the source's header)");
  Args a;
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) die("missing value for " + k);
    const std::string v = argv[++i];
    if (k == "--peer") a.peer = v;
    else if (k == "--socket") a.socket = v;
    else if (k == "--sizes") a.sizes = parse_sizes(v);
    else if (k == "--budget-s") a.budget_s = std::stod(v);
    else if (k == "--min-iters") a.min_iters = std::stoi(v);
    else if (k == "--max-iters") a.max_iters = std::stoi(v);
    else if (k == "--seconds") a.seconds = std::stod(v);
    else if (k == "--consumers") a.consumers = std::stoi(v);
    else if (k == "--frame") a.frame = std::stoull(v);
    else die("unknown option " + k);
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  g_topic_instance = "p" + std::to_string(::getpid());
  try {
    if (a.mode == "floors") run_floors(a);
    else if (a.mode == "roundtrip" && a.peer == "iceoryx") iceoryx_roundtrip(a);
    else if (a.mode == "roundtrip" && a.peer == "tensorshm-create") tensorshm_roundtrip(a, false);
    else if (a.mode == "roundtrip" && a.peer == "tensorshm-put") tensorshm_roundtrip(a, true);
    else if (a.mode == "fanout" && a.peer == "iceoryx") iceoryx_fanout(a);
    else die("unknown mode/peer: " + a.mode + " " + a.peer);
  } catch (const tensorshm::Exception& e) {
    die(std::string("tensorshm: ") + e.what());
  }
  return 0;
}
