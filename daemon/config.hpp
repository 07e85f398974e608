// The daemon's configuration: one struct holding every default, filled in
// order from the embedded defaults, the config file (--config), the
// environment (TENSORSHM_SOCKET) and the command-line flags; later sources win.
// Each numeric key has a range (daemon/config.cpp, docs/configuration.md);
// parse_config refuses a value outside it rather than wrapping or clamping it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensorshm/error.hpp"

namespace tensorshm::daemon {

enum class LogLevel { debug = 7, info = 6, notice = 5, warning = 4, error = 3 };

struct Config {
  std::string socket_path;                       // default_socket_path()
  std::uint32_t socket_mode = 0600;              // permission bits of the socket
  std::string socket_group;                      // group owning the socket; empty: the daemon's
  std::string instance = "default";              // segment names are "tensorshm.<instance>.*"
  std::uint64_t pool_size = 1ull << 30;          // bytes of pooled shared memory
  std::uint64_t segment_size = 256ull << 20;     // bytes per pool segment (the pool is split into these)
  std::uint64_t max_object_size = 64ull << 30;   // largest single object (dedicated segment) in bytes
  std::uint32_t max_objects = 1u << 20;          // live object versions, all users together
  std::uint32_t max_connections = 4096;          // concurrent client connections
  std::uint32_t max_connections_per_uid = 1024;  // per uid
  std::uint64_t max_bytes_per_uid = 0;           // 0: no per-uid byte limit
  std::uint32_t max_objects_per_uid = 0;         // 0: no per-uid object limit
  std::uint32_t pretouch_threads = 0;            // 0: one per CPU
  std::uint32_t write_timeout_ms = 5000;         // drop a client that does not read its reply
  std::uint32_t hello_timeout_ms = 10000;        // close a connection that has not completed Hello by then
  std::uint32_t housekeeping_ms = 1000;          // period of the housekeeping timer
  std::string cuda = "auto";                     // auto | off
  std::uint32_t cuda_handle_cache = 64;          // opened IPC handles kept per producer connection
  std::uint32_t cuda_copy_timeout_ms = 30000;    // fail a GPU put whose copy has not completed; 0: never
  std::uint32_t cuda_linger_us = 0;              // copy engine keeps polling this long after a copy ends; 0: sleeps
  bool cuda_io_spin = true;                      // io thread polls while a GPU copy is about to end (no wake-up)
  bool cuda_wake_ahead = true;                   // threads awake just before a steady producer's next GPU put
  std::string cuda_lost = "serve";               // after the GPU context is lost: serve (CPU only) | exit (status 3)
  LogLevel log_level = LogLevel::info;
  std::string config_file;                       // --config
  bool show_version = false;                     // --version: print the version and exit (main.cpp)
};

/// Parses argv (and the file and environment it points to). Returns the
/// config, or an Error whose message is the usage problem. `--help` sets
/// *help_text and returns the defaults; `--version` sets show_version.
Result<Config> parse_config(int argc, const char* const* argv, std::string* help_text);

/// The shared-memory name prefix of an instance: "tensorshm.<instance>.".
std::string segment_prefix(const Config& c);

/// One line per key, "key = value", as a config file would hold them.
std::string describe(const Config& c);

}  // namespace tensorshm::daemon
