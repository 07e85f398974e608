// Child processes, the daemon fixture and the raw socket of the integration
// tests (see daemon_fixture.hpp).
#include "daemon_fixture.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <doctest/doctest.h>

extern char** environ;

namespace tshm_test {

namespace {

int remaining_ms(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<std::int64_t>(0, left.count()));
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// ---- LineReader ----------------------------------------------------------------

LineReader& LineReader::operator=(LineReader&& o) noexcept {
  std::swap(fd_, o.fd_);
  std::swap(buffer_, o.buffer_);
  return *this;
}

LineReader::~LineReader() { close_fd(fd_); }

std::optional<std::string> LineReader::next() {
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    if (fd_ < 0) return std::nullopt;
    pollfd p{fd_, POLLIN, 0};
    const int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    char buf[4096];
    const ssize_t got = ::read(fd_, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      close_fd(fd_);
      if (buffer_.empty()) return std::nullopt;
      return std::exchange(buffer_, std::string());
    }
    buffer_.append(buf, static_cast<std::size_t>(got));
  }
}

// ---- Process -------------------------------------------------------------------

Process Process::spawn(const Spec& spec) {
  // Everything the child needs is prepared before fork(): between fork and
  // exec it only makes system calls.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    const auto key = kv.substr(0, kv.find('='));
    const bool replaced = std::any_of(spec.env.begin(), spec.env.end(), [&](const auto& p) { return p.first == key; });
    if (!replaced) env.emplace_back(kv);
  }
  for (const auto& [k, v] : spec.env) env.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = spec.argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);

  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  int file = -1;
  if (!spec.output_file.empty()) {
    file = ::open(spec.output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    REQUIRE(file >= 0);
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // A test process that dies (a CTest timeout kills it) takes its children
    // along; SIGTERM lets a daemon remove its segments on the way out.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(126);
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);  // expected crashes (SIGSEGV tests) leave no core file
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(file >= 0 ? file : out[1], STDOUT_FILENO);
    if (file >= 0) ::dup2(file, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  if (file >= 0) ::close(file);
  Process p;
  p.pid_ = pid;
  p.in_ = in[1];
  p.out_ = LineReader(out[0]);
  return p;
}

Process& Process::operator=(Process&& o) noexcept {
  std::swap(pid_, o.pid_);
  std::swap(in_, o.in_);
  std::swap(out_, o.out_);
  std::swap(status_, o.status_);
  return *this;
}

Process::~Process() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  close_fd(in_);
}

void Process::close_stdin() { close_fd(in_); }

void Process::signal(int sig) const {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

int Process::wait() {
  if (status_) return *status_;
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  int st = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) {
      st = -1;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      MESSAGE("process ", pid_, " did not exit within the patience limit; killing it");
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &st, 0);
      break;
    }
    std::this_thread::sleep_for(2ms);
  }
  status_ = st;
  return st;
}

bool Process::running() {
  if (status_ || pid_ <= 0) return false;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) {
    status_ = st;
    return false;
  }
  return true;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// ---- Daemon --------------------------------------------------------------------

std::string unique_instance() {
  static int n = 0;
  return "it" + std::to_string(::getpid()) + "x" + std::to_string(++n);
}


std::string field(const std::string& line, const std::string& key) {
  std::size_t at = line.rfind(" " + key + "=");
  at = at == std::string::npos ? (line.starts_with(key + "=") ? 0 : std::string::npos) : at + 1;
  if (at == std::string::npos) return {};
  const std::size_t from = at + key.size() + 1;
  return line.substr(from, line.find(' ', from) - from);
}

Daemon::Daemon(Options options) : options_(std::move(options)) {
  char tmpl[] = "/tmp/tshm-it-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  dir_ = tmpl;
  socket_ = dir_ + "/tensorshmd.sock";
  instance_ = options_.instance.empty() ? unique_instance() : options_.instance;
  std::vector<std::string> argv{TENSORSHMD_PATH, "--socket", socket_, "--instance", instance_};
  const auto given = [&](const std::string& flag) {
    return std::any_of(options_.extra_args.begin(), options_.extra_args.end(),
                       [&](const std::string& a) { return a == flag || a.starts_with(flag + "="); });
  };
  for (auto [flag, value] : {std::pair{"--pool-size", "64M"}, std::pair{"--pretouch-threads", "1"},
                             std::pair{"--log-level", "info"}})
    if (!given(flag)) argv.insert(argv.end(), {flag, value});
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  process_ = Process::spawn({argv, {}, dir_ + "/tensorshmd.log"});
  if (!options_.wait_ready) return;

  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  for (;;) {
    if (!process_.running()) {
      stopped_ = true;
      FAIL("tensorshmd exited during start-up (", exit_code(process_.wait()), "); its log:\n", log());
    }
    try {
      (void)tensorshm::Client::connect(tensorshm::Client::Options{socket_, "readiness probe"});
      return;
    } catch (const tensorshm::Exception&) {
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      const int code = stop();
      FAIL("tensorshmd did not accept connections in time (exit ", code, "); its log:\n", log());
    }
    std::this_thread::sleep_for(5ms);
  }
}

Daemon::~Daemon() {
  if (!stopped_) {
    const int code = stop();
    CHECK_MESSAGE(code == 0, "tensorshmd exited with ", code, "; its log:\n", log());
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

tensorshm::Client Daemon::connect(const std::string& client_name) const {
  return tensorshm::Client::connect(tensorshm::Client::Options{socket_, client_name});
}

int Daemon::stop() {
  stopped_ = true;
  process_.signal(SIGTERM);
  const int code = exit_code(process_.wait());
  const auto left = shm_files();
  CHECK_MESSAGE(left.empty(), "tensorshmd left ", left.size(), " file(s) of instance ", instance_,
                " in /dev/shm, the first: ", left.empty() ? "" : left.front());
  return code;
}

std::vector<std::string> Daemon::shm_files() const {
  return shm_files_of(instance_, stopped_ ? -1 : process_.pid());
}

std::string Daemon::log() const { return read_file(dir_ + "/tensorshmd.log"); }

Process Daemon::peer(std::vector<std::string> args) const {
  args.insert(args.begin(), TSHM_TEST_PEER_PATH);
  return Process::spawn({args, {{"TENSORSHM_SOCKET", socket_}}, ""});
}

std::pair<int, std::vector<std::string>> Daemon::run_peer(std::vector<std::string> args) const {
  Process p = peer(std::move(args));
  std::vector<std::string> lines;
  while (auto line = p.read_line()) lines.push_back(*line);
  return {exit_code(p.wait()), lines};
}

tensorshm::Stats Daemon::stats_when(const std::function<bool(const tensorshm::Stats&)>& done) const {
  auto c = connect("stats poller");
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  for (;;) {
    tensorshm::Stats s = c.stats();
    if (done(s) || std::chrono::steady_clock::now() >= deadline) return s;
    std::this_thread::sleep_for(5ms);
  }
}

int Daemon::run_to_exit(std::vector<std::string> args, std::string* output) {
  char tmpl[] = "/tmp/tshm-it-out-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  ::close(fd);
  args.insert(args.begin(), TENSORSHMD_PATH);
  Process p = Process::spawn({args, {}, tmpl});
  const int code = exit_code(p.wait());
  if (output) *output = read_file(tmpl);
  ::unlink(tmpl);
  return code;
}

// ---- RawSocket -----------------------------------------------------------------

RawSocket::RawSocket(const std::string& path) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd_ >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
}

RawSocket::~RawSocket() { close(); }

void RawSocket::close() { close_fd(fd_); }

void RawSocket::shutdown_write() { ::shutdown(fd_, SHUT_WR); }

void RawSocket::send_bytes(const std::vector<std::byte>& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the daemon may already have hung up: that is what some tests expect
    off += static_cast<std::size_t>(n);
  }
}

void RawSocket::send(const tensorshm::wire::BodyUnion& body, std::uint32_t request_id) {
  send_bytes(tensorshm::protocol::encode(body, request_id));
}

void RawSocket::hello() {
  tensorshm::wire::HelloT h;
  h.protocol_version = tensorshm::protocol::kVersion;
  h.client_name = "raw socket";
  h.pid = static_cast<std::int32_t>(::getpid());
  send(std::move(h));
  auto r = reply();
  REQUIRE(r->body.AsHelloReply() != nullptr);
}

bool RawSocket::read_exact(void* p, std::size_t n) {
  auto* dst = static_cast<char*>(p);
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  while (n > 0) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, remaining_ms(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t got = ::recv(fd_, dst, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    dst += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

std::optional<std::pair<tensorshm::protocol::FrameHeader, std::vector<std::byte>>> RawSocket::read_frame() {
  std::array<std::byte, tensorshm::protocol::kHeaderSize> hb{};
  if (!read_exact(hb.data(), hb.size())) return std::nullopt;
  auto h = tensorshm::protocol::decode_header(hb);
  REQUIRE_MESSAGE(h.has_value(), h.error().message);
  std::vector<std::byte> payload(h->length);
  if (!read_exact(payload.data(), payload.size())) return std::nullopt;
  return std::pair{*h, std::move(payload)};
}

std::unique_ptr<tensorshm::protocol::Message> RawSocket::reply() {
  auto f = read_frame();
  REQUIRE_MESSAGE(f.has_value(), "the daemon closed the connection instead of replying");
  auto m = tensorshm::protocol::decode(f->first, f->second);
  REQUIRE_MESSAGE(m.has_value(), m.error().message);
  return std::move(m).value();
}

bool RawSocket::closed_by_peer() {
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  for (;;) {
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, remaining_ms(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    char buf[4096];
    const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
    if (got == 0 || (got < 0 && errno == ECONNRESET)) return true;
    if (got < 0 && errno != EINTR) return false;
  }
}

}  // namespace tshm_test
