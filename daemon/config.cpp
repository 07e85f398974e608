// Command line, config file and environment, through Boost.ProgramOptions.
// Every key is documented in --help and docs/configuration.md.
#include "config.hpp"

#include <utility>
#include <boost/program_options.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tensorshm/paths.hpp"

namespace po = boost::program_options;

namespace tensorshm::daemon {
namespace {

// Sizes accept K/M/G/T suffixes (powers of 1024): "1G", "256M", "4096".
Result<std::uint64_t> parse_size(const std::string& key, const std::string& text) {
  if (text.empty()) return Error{Errc::invalid_argument, key + ": empty size"};
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (...) {
    return Error{Errc::invalid_argument, key + ": '" + text + "' is not a size (examples: 4096, 256M, 1G)"};
  }
  std::string suffix = text.substr(pos);
  int shift = 0;
  if (suffix == "" || suffix == "B") shift = 0;
  else if (suffix == "K" || suffix == "KiB" || suffix == "k") shift = 10;
  else if (suffix == "M" || suffix == "MiB") shift = 20;
  else if (suffix == "G" || suffix == "GiB") shift = 30;
  else if (suffix == "T" || suffix == "TiB") shift = 40;
  else return Error{Errc::invalid_argument, key + ": unknown size suffix '" + suffix + "' (use K, M, G or T)"};
  if (shift > 0 && v > (~0ull >> shift)) return Error{Errc::invalid_argument, key + ": size overflows"};
  return static_cast<std::uint64_t>(v) << shift;
}

Result<LogLevel> parse_level(const std::string& s) {
  if (s == "debug") return LogLevel::debug;
  if (s == "info") return LogLevel::info;
  if (s == "notice") return LogLevel::notice;
  if (s == "warning") return LogLevel::warning;
  if (s == "error") return LogLevel::error;
  return Error{Errc::invalid_argument, "log-level: '" + s + "' is not one of debug, info, notice, warning, error"};
}

std::string level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::notice: return "notice";
    case LogLevel::warning: return "warning";
    case LogLevel::error: return "error";
  }
  return "info";
}

std::string human_size(std::uint64_t v) {
  const char* suffix[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (i < 4 && v != 0 && v % 1024 == 0) {
    v /= 1024;
    ++i;
  }
  return std::to_string(v) + suffix[i];
}

}  // namespace

std::string segment_prefix(const Config& c) { return "tensorshm." + c.instance + "."; }

Result<Config> parse_config(int argc, const char* const* argv, std::string* help_text) {
  Config c;
  c.socket_path = default_socket_path();
  const Config d = c;
  std::string pool_size, segment_size, max_object_size, max_bytes_per_uid, socket_mode, log_level;
  po::options_description opts("tensorshmd options (also valid as `key = value` lines in --config)");
  // clang-format off
  opts.add_options()
    ("help,h", "print this help and exit")
    ("config,c", po::value(&c.config_file), "read options from this file (key = value lines)")
    ("socket", po::value(&c.socket_path), ("control socket path; env TENSORSHM_SOCKET (default " + d.socket_path + ")").c_str())
    ("socket-mode", po::value(&socket_mode)->default_value("0600"), "socket permission bits, octal; 0660 lets the socket's group connect")
    ("socket-group", po::value(&c.socket_group), "group that owns the socket (default: the daemon's group)")
    ("instance", po::value(&c.instance)->default_value(d.instance), "instance name; segments are /dev/shm/tensorshm.<instance>.*")
    ("pool-size", po::value(&pool_size)->default_value("1G"), "bytes of shared memory reserved, pre-touched (and pinned with a GPU) at start")
    ("segment-size", po::value(&segment_size)->default_value("256M"), "bytes per pool segment; objects larger than one get a dedicated segment; a segment holds one owner's objects of one sharing mode at a time")
    ("max-object-size", po::value(&max_object_size)->default_value("64G"), "largest object accepted, in bytes")
    ("max-objects", po::value(&c.max_objects)->default_value(d.max_objects), "live object versions, all users together")
    ("max-connections", po::value(&c.max_connections)->default_value(d.max_connections), "concurrent client connections")
    ("max-connections-per-uid", po::value(&c.max_connections_per_uid)->default_value(d.max_connections_per_uid), "concurrent connections of one uid")
    ("max-bytes-per-uid", po::value(&max_bytes_per_uid)->default_value("0"), "bytes of objects one uid may hold; 0 = unlimited")
    ("max-objects-per-uid", po::value(&c.max_objects_per_uid)->default_value(d.max_objects_per_uid), "objects one uid may hold; 0 = unlimited")
    ("pretouch-threads", po::value(&c.pretouch_threads)->default_value(d.pretouch_threads), "threads pre-touching the pool at start; 0 = one per CPU")
    ("write-timeout-ms", po::value(&c.write_timeout_ms)->default_value(d.write_timeout_ms), "drop a client that does not read a reply within this time")
    ("housekeeping-ms", po::value(&c.housekeeping_ms)->default_value(d.housekeeping_ms), "period of the housekeeping timer")
    ("shm-dir", po::value(&c.shm_dir)->default_value(d.shm_dir), "the tmpfs where shm_open places segments (swept at start, checked for room)")
    ("cuda", po::value(&c.cuda)->default_value(d.cuda), "auto: use GPUs when a driver and devices exist; off: CPU-only")
    ("cuda-handle-cache", po::value(&c.cuda_handle_cache)->default_value(d.cuda_handle_cache), "opened CUDA IPC handles cached per producer connection")
    ("cuda-copy-timeout-ms", po::value(&c.cuda_copy_timeout_ms)->default_value(d.cuda_copy_timeout_ms), "fail a GPU put whose device-to-host copy has not completed within this time (its extent is quarantined); 0 = never")
    ("cuda-linger-us", po::value(&c.cuda_linger_us)->default_value(d.cuda_linger_us), "after a GPU copy ends, the copy engine's thread keeps polling this long for the producer's next put instead of sleeping (a CPU core's time for one thread wake-up per put); 0 = off")
    ("cuda-io-spin", po::value(&c.cuda_io_spin)->default_value(d.cuda_io_spin), "while a GPU copy is about to end (from shortly before its predicted end, as the copy engine's thread), the io thread polls instead of sleeping, so that the put's answer needs no thread wake-up (a CPU core's time for at most about 1.5 ms per copy); also for cuda-linger-us after each copy")
    ("cuda-wake-ahead", po::value(&c.cuda_wake_ahead)->default_value(d.cuda_wake_ahead), "a producer whose GPU puts arrive at a steady rate (at most 100 ms apart, varying by at most an eighth) finds the copy engine's thread, and with cuda-io-spin the io thread, awake when its next put is due: each wakes on its own timer a little before it (200 us + 2 mean deviations, at most 1 ms) rather than on it, and polls until as long after its due time (two threads for up to 2 ms per put)")
    ("cuda-lost", po::value(&c.cuda_lost)->default_value(d.cuda_lost), "after an error that loses the GPU context (GPU puts fail until tensorshmd restarts): serve = keep serving CPU clients; exit = stop (all objects go) with status 3, for the service manager to restart")
    ("log-level", po::value(&log_level)->default_value("info"), "debug, info, notice, warning or error");
  // clang-format on
  po::variables_map vm;
  bool socket_on_command_line = false;  // flags beat the environment, the file does not
  try {
    po::store(po::parse_command_line(argc, argv, opts), vm);
    socket_on_command_line = vm.count("socket") > 0;
    if (vm.count("help")) {
      std::ostringstream os;
      os << "tensorshmd: shared-memory tensor handoff daemon\n\n"
         << "Usage: tensorshmd [options]\n\n"
         << opts << "\nPrecedence: flags > environment (TENSORSHM_SOCKET) > --config file > defaults.\n";
      if (help_text) *help_text = os.str();
      return c;
    }
    if (vm.count("config")) {
      const std::string file = vm["config"].as<std::string>();
      std::ifstream in(file);
      if (!in) return Error{Errc::invalid_argument, "cannot read config file '" + file + "'"};
      po::store(po::parse_config_file(in, opts, /*allow_unregistered=*/false), vm);
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    return Error{Errc::invalid_argument, std::string(e.what()) + " (see tensorshmd --help)"};
  }
  // The environment beats the file but not an explicit flag.
  if (!socket_on_command_line)
    if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') c.socket_path = s;

  auto ps = parse_size("pool-size", pool_size);
  if (!ps) return ps.error();
  auto ss = parse_size("segment-size", segment_size);
  if (!ss) return ss.error();
  auto mo = parse_size("max-object-size", max_object_size);
  if (!mo) return mo.error();
  auto mb = parse_size("max-bytes-per-uid", max_bytes_per_uid);
  if (!mb) return mb.error();
  auto ll = parse_level(log_level);
  if (!ll) return ll.error();
  c.pool_size = *ps;
  c.segment_size = *ss;
  c.max_object_size = *mo;
  c.max_bytes_per_uid = *mb;
  c.log_level = *ll;
  try {
    std::size_t pos = 0;
    c.socket_mode = static_cast<std::uint32_t>(std::stoul(socket_mode, &pos, 8));
    if (pos != socket_mode.size() || c.socket_mode > 0777) throw std::invalid_argument("mode");
  } catch (...) {
    return Error{Errc::invalid_argument, "socket-mode: '" + socket_mode + "' is not an octal mode such as 0660"};
  }
  if (c.instance.empty() || c.instance.size() > 32 ||
      c.instance.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
          std::string::npos)
    return Error{Errc::invalid_argument, "instance: '" + c.instance + "' must be 1-32 letters, digits, '_' or '-'"};
  if (c.segment_size < (1u << 20) || c.segment_size % 4096 != 0)
    return Error{Errc::invalid_argument, "segment-size must be a multiple of 4096 and at least 1M"};
  if (c.pool_size < c.segment_size && c.pool_size != 0) c.segment_size = (c.pool_size + 4095) / 4096 * 4096;
  if (c.cuda != "auto" && c.cuda != "off")
    return Error{Errc::invalid_argument, "cuda: '" + c.cuda + "' is not one of auto, off"};
  if (c.cuda_lost != "serve" && c.cuda_lost != "exit")
    return Error{Errc::invalid_argument, "cuda-lost: '" + c.cuda_lost + "' is not one of serve, exit"};
  if (c.socket_path.empty()) return Error{Errc::invalid_argument, "socket: empty path"};
  if (c.cuda_linger_us > 100000)
    return Error{Errc::invalid_argument, "cuda-linger-us: " + std::to_string(c.cuda_linger_us) +
                                             " is more than 100000 (100 ms of spinning after every GPU copy)"};
  return c;
}

std::string describe(const Config& c) {
  std::ostringstream os;
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", c.socket_mode);
  os << "socket = " << c.socket_path << "\n"
     << "socket-mode = " << mode << "\n"
     << "socket-group = " << c.socket_group << "\n"
     << "instance = " << c.instance << "\n"
     << "pool-size = " << human_size(c.pool_size) << "\n"
     << "segment-size = " << human_size(c.segment_size) << "\n"
     << "max-object-size = " << human_size(c.max_object_size) << "\n"
     << "max-objects = " << c.max_objects << "\n"
     << "max-connections = " << c.max_connections << "\n"
     << "max-connections-per-uid = " << c.max_connections_per_uid << "\n"
     << "max-bytes-per-uid = " << human_size(c.max_bytes_per_uid) << "\n"
     << "max-objects-per-uid = " << c.max_objects_per_uid << "\n"
     << "pretouch-threads = " << c.pretouch_threads << "\n"
     << "write-timeout-ms = " << c.write_timeout_ms << "\n"
     << "housekeeping-ms = " << c.housekeeping_ms << "\n"
     << "shm-dir = " << c.shm_dir << "\n"
     << "cuda = " << c.cuda << "\n"
     << "cuda-handle-cache = " << c.cuda_handle_cache << "\n"
     << "cuda-copy-timeout-ms = " << c.cuda_copy_timeout_ms << "\n"
     << "cuda-linger-us = " << c.cuda_linger_us << "\n"
     << "cuda-io-spin = " << (c.cuda_io_spin ? "true" : "false") << "\n"
     << "cuda-wake-ahead = " << (c.cuda_wake_ahead ? "true" : "false") << "\n"
     << "cuda-lost = " << c.cuda_lost << "\n"
     << "log-level = " << level_name(c.log_level) << "\n";
  return os.str();
}

}  // namespace tensorshm::daemon
