// Accepting connections, stopping, periodic housekeeping.
#include "server.hpp"

#include <grp.h>
#include <malloc.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "copy_engine.hpp"
#include "log.hpp"
#include "session.hpp"
#include "tensorshm/sys_call.hpp"

namespace tensorshm::daemon {

Server::Server(asio::io_context& io, const Config& config, Pool& pool, Registry& registry, CopyEngine* engine)
    : closer_(),
      io_(io),
      config_(config),
      pool_(pool),
      registry_(registry),
      engine_(engine),
      housekeeping_timer_(io) {
  registry_.on_published = [this](const std::string& name) { waiters_.notify_name(name); };
  registry_.on_space_freed = [this] { waiters_.notify_space(); };
}

Server::~Server() {
  registry_.on_published = nullptr;
  registry_.on_space_freed = nullptr;
  if (bound_here_) ::unlink(config_.socket_path.c_str());
}

int Server::cuda_devices() const noexcept { return engine_ ? engine_->device_count() : 0; }
std::string Server::gpu_trouble() const { return engine_ ? engine_->trouble() : std::string(); }

double Server::uptime_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

namespace {

// True when something accepts connections at path (another daemon).
bool someone_listens(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// Parameters are copied into the coroutine frame: the frame owns the session.
awaitable<void> run_session(std::shared_ptr<Session> session) { co_await session->run(); }

}  // namespace

Status Server::listen(int inherited_fd) {
  using stream = asio::local::stream_protocol;
  if (inherited_fd >= 0) {
    acceptor_.emplace(io_);
    error_code ec;
    acceptor_->assign(stream(), inherited_fd, ec);
    if (ec) return Error{Errc::system_error, "adopting the inherited socket: " + ec.message()};
    log::info("listening on the socket passed by the service manager");
    return ok_status();
  }
  const std::string& path = config_.socket_path;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path))
    return Error{Errc::invalid_argument, "socket path '" + path + "' is too long"};
  // The directory exists and is checked: prepare_socket_directory (main).
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Error{Errc::invalid_argument, "'" + path + "' exists and is not a socket; refusing to replace it"};
    if (someone_listens(path))
      return Error{Errc::system_error, "another tensorshmd already listens on '" + path +
                                           "'; stop it first or choose another --socket"};
    TSHM_TRY(posix_call("unlink", path, [&] { return ::unlink(path.c_str()); }));
    log::notice("removed stale socket ", path);
  }
  acceptor_.emplace(io_);
  error_code ec;
  acceptor_->open(stream(), ec);
  if (!ec) acceptor_->bind(stream::endpoint(path), ec);
  if (ec) return Error{Errc::system_error, "bind('" + path + "'): " + ec.message()};
  bound_here_ = true;
  TSHM_TRY(posix_call("chmod", path, [&] { return ::chmod(path.c_str(), config_.socket_mode); }));
  if (!config_.socket_group.empty()) {
    group* g = ::getgrnam(config_.socket_group.c_str());
    if (g == nullptr) return Error{Errc::invalid_argument, "socket-group: no group '" + config_.socket_group + "'"};
    TSHM_TRY(posix_call("chown", path, [&] { return ::chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid); }));
  }
  acceptor_->listen(1024, ec);
  if (ec) return Error{Errc::system_error, "listen('" + path + "'): " + ec.message()};
  log::info("listening on ", path);
  return ok_status();
}

void Server::start() {
  asio::co_spawn(io_, accept_loop(), asio::detached);
  if (engine_ != nullptr && config_.cuda_lost == "exit")
    add_housekeeping([this] {
      const std::string trouble = gpu_trouble();
      if (trouble.empty() || stopping_) return;
      failure_ = trouble;
      log::error(trouble, "; stopping (cuda-lost = exit) so that the service manager restarts tensorshmd");
      stop();
    });
  arm_housekeeping();
}

void Server::arm_housekeeping() {
  housekeeping_timer_.expires_after(std::chrono::milliseconds(config_.housekeeping_ms));
  housekeeping_timer_.async_wait([this](error_code ec) {
    if (ec || stopping_) return;
    for (auto& fn : housekeeping_) fn();
    arm_housekeeping();
  });
}

void Server::stop() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& fn : on_stop_) fn();
  error_code ec;
  if (acceptor_) acceptor_->close(ec);
  housekeeping_timer_.cancel();
  for (auto& [id, weak] : sessions_)
    if (auto s = weak.lock()) s->close();
}

void Server::forget(std::uint64_t session_id, std::uint32_t uid) {
  sessions_.erase(session_id);
  if (auto it = per_uid_.find(uid); it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
  // The last client left: give the heap that many connections grew back to
  // the system, so that an idle daemon returns to its idle footprint.
  if (sessions_.empty()) ::malloc_trim(0);
}

awaitable<void> Server::accept_loop() {
  for (;;) {
    error_code ec;
    unix_socket sock = co_await acceptor_->async_accept(nothrow(ec));
    if (ec) {
      if (stopping_ || ec == asio::error::operation_aborted) co_return;
      log::warning("accept: ", ec.message());
      if (ec == asio::error::no_descriptors || ec.value() == EMFILE || ec.value() == ENFILE) {
        // Out of descriptors: back off instead of spinning.
        asio::steady_timer t(io_, std::chrono::milliseconds(100));
        co_await t.async_wait(nothrow(ec));
      }
      continue;
    }
    auto cred = io::peer_credentials(sock.native_handle());
    if (!cred) {
      log::warning("dropping a connection: ", cred.error().message);
      continue;
    }
    ++counters_.connections_total;
    if (sessions_.size() >= config_.max_connections) {
      refuse(std::move(sock), *cred,
             Error{Errc::limit_exceeded, "tensorshmd serves " + std::to_string(sessions_.size()) +
                                             " connections, its limit (--max-connections); try again later"});
      continue;
    }
    if (const auto stuck = closer_.stuck(cred->uid); stuck > 0) {
      refuse(std::move(sock), *cred,
             Error{Errc::limit_exceeded, "uid " + std::to_string(cred->uid) + ": " + std::to_string(stuck) +
                                             " descriptor(s) it sent are still closing after a second (a socket "
                                             "lingering on close?); its new connections are refused until they are"});
      continue;
    }
    if (auto it = per_uid_.find(cred->uid); it != per_uid_.end() && it->second >= config_.max_connections_per_uid) {
      refuse(std::move(sock), *cred,
             Error{Errc::limit_exceeded, "uid " + std::to_string(cred->uid) + " has " + std::to_string(it->second) +
                                             " connections, its limit (--max-connections-per-uid)"});
      continue;
    }
    const std::uint64_t id = next_session_++;
    ++per_uid_[cred->uid];
    auto session = std::make_shared<Session>(*this, std::move(sock), id, *cred);
    sessions_.emplace(id, session);
    asio::co_spawn(io_, run_session(std::move(session)), asio::detached);
  }
}

void Server::refuse(unix_socket sock, const io::PeerCred& cred, const Error& why) {
  ++counters_.refused;
  // Logged at most once per second with a count: a flood of refused
  // connections must not flood the log as well.
  const auto now = std::chrono::steady_clock::now();
  ++refused_unlogged_;
  if (now - refused_logged_at_ >= std::chrono::seconds(1)) {
    log::warning("refusing pid ", cred.pid, " uid ", cred.uid, ": ", why.message,
                 refused_unlogged_ > 1 ? " (" + std::to_string(refused_unlogged_ - 1) + " more refused since the last such line)" : "");
    refused_logged_at_ = now;
    refused_unlogged_ = 0;
  }
  // A fresh socket's send buffer takes the few hundred bytes of the answer;
  // if it does not, the peer learns of the refusal from the closed socket.
  const auto frame = protocol::encode(protocol::make_error(why), /*request_id=*/0);
  (void)io::send_with_fds(sock.native_handle(), frame, {}, /*dont_wait=*/true);
  error_code ec;
  const int fd = sock.release(ec);
  if (!ec) closer_.close(fd, cred.uid);
}

}  // namespace tensorshm::daemon
