// tensorshmd: start-up and shutdown. Parses the configuration, checks the
// socket's directory and takes the lock beside the socket, reserves the pool,
// starts the copy engine (when a GPU exists) and serves until SIGINT/SIGTERM
// (or, with cuda-lost = exit, until the GPU context is lost: exit status 3);
// on the way out its segments go with it (clients keep what they mapped).
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <csignal>
#include <iostream>
#include <sstream>

#include "asio.hpp"
#include "config.hpp"
#include "copy_engine.hpp"
#include "instance_lock.hpp"
#include "log.hpp"
#include "pool.hpp"
#include "registry.hpp"
#include "server.hpp"
#include "service_manager.hpp"
#include "tensorshm/protocol.hpp"

using namespace tensorshm;
using namespace tensorshm::daemon;

namespace {

constexpr int kExitGpuLost = 3;  // docs/configuration.md, cuda-lost

int fail(const Error& e) {
  log::error("tensorshmd: ", e.message);
  return 1;
}

int serve(const Config& config) {
  // Signals are caught from the very start. One that arrives while the pool
  // is being reserved stops the reservation at the next segment (the ones
  // made so far are unlinked); later ones stop the server.
  asio::io_context io(1);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  int stop_signal = 0;
  Server* running = nullptr;
  signals.async_wait([&](error_code ec, int sig) {
    if (ec) return;
    stop_signal = sig;
    log::notice("received ", sig == SIGINT ? "SIGINT" : "SIGTERM", ", shutting down");
    if (running != nullptr) running->stop();
  });
  // The socket's directory is checked (or made) and the lock beside the
  // socket taken before anything else: a second daemon for this socket stops
  // here. Segments need no sweeping: they are memory files that vanish with
  // the last process holding them.
  if (auto s = prepare_socket_directory(config.socket_path, config.socket_mode); !s) return fail(s.error());
  auto lock = InstanceLock::acquire(config.socket_path + ".lock");
  if (!lock) return fail(lock.error());

  ServiceManager sm;
  sm.status("reserving " + std::to_string(config.pool_size) + " bytes of shared memory");
  auto pool = Pool::create(config, [&] {
    io.poll();  // runs the signal handler if a signal came
    return stop_signal != 0;
  });
  if (stop_signal != 0) {
    log::notice("tensorshmd stopped during start-up");
    return 0;
  }
  if (!pool) return fail(pool.error());

  std::unique_ptr<CopyEngine> engine;
  if (config.cuda != "off") engine = make_cuda_copy_engine(config, io, **pool);
  else log::notice("CUDA disabled by configuration: serving CPU-only");

  Registry registry(**pool, config);
  Server server(io, config, **pool, registry, engine.get());
  if (auto s = server.listen(sm.inherited_socket()); !s) return fail(s.error());
  sm.attach(server);
  server.start();
  server.on_stop([&signals] {
    error_code ec;
    signals.cancel(ec);
  });
  running = &server;
  log::notice("tensorshmd ", TENSORSHM_VERSION, " ready: instance '", config.instance, "', pool ",
              config.pool_size, " bytes, ", server.cuda_devices(), " GPU(s)");
  sm.ready();
  io.run();
  // Teardown unlinks the segments: a second SIGTERM/SIGINT must not cut it short.
  std::signal(SIGTERM, SIG_IGN);
  std::signal(SIGINT, SIG_IGN);
  engine.reset();
  log::notice("tensorshmd stopped; its segments go when the last client lets go of them");
  // Stopped by itself (cuda-lost = exit): a failure, so that the service
  // manager restarts it (Restart=on-failure).
  return server.failure().empty() ? 0 : kExitGpuLost;
}

}  // namespace

int main(int argc, char** argv) {
  std::string help;
  auto config = parse_config(argc, argv, &help);
  if (!config) {
    std::fprintf(stderr, "tensorshmd: %s\n", config.error().message.c_str());
    return 2;
  }
  if (!help.empty()) {
    std::cout << help;
    return 0;
  }
  if (config->show_version) {
    std::cout << "tensorshmd " << TENSORSHM_VERSION << " (protocol " << protocol::kVersion << ", "
              << (TENSORSHM_CUDA_COMPILED_IN ? "CUDA compiled in" : "built without CUDA: CPU-only") << ")\n";
    return 0;
  }
  log::set_level(config->log_level);
  // One line per key, each with its own priority prefix for journald.
  std::istringstream lines(describe(*config));
  for (std::string line; std::getline(lines, line);) log::info("config: ", line);
  return serve(*config);
}
