// Command line, config file and environment, through Boost.ProgramOptions.
// Every key is documented in --help and docs/configuration.md. Boost reads
// every number as text and parse_number converts it strictly (digits only, no
// sign, no overflow) and checks the key's range, so that no value wraps and
// none that would leave the daemon spinning or serving nothing is taken.
#include "config.hpp"

#include <boost/program_options.hpp>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

#include "tensorshm/paths.hpp"

namespace po = boost::program_options;

namespace tensorshm::daemon {
namespace {

constexpr std::uint64_t kU32 = std::numeric_limits<std::uint32_t>::max();
constexpr std::uint64_t kU64 = std::numeric_limits<std::uint64_t>::max();

// A numeric key and the values it accepts. A whole number is digits only; a
// size is digits with an optional suffix. `below` and `above` say why a value
// past that end is refused (null: the end is only the field's width).
struct NumericKey {
  const char* name;
  bool size;
  std::uint64_t min;
  std::uint64_t max;
  const char* below;
  const char* above;
};

// Every numeric key's range, in one place (docs/configuration.md states them).
// clang-format off
constexpr NumericKey kPoolSize{"pool-size", true, 0, kU64, nullptr, nullptr};
constexpr NumericKey kSegmentSize{"segment-size", true, 1ull << 20, kU64,
                                  "every client maps each segment on its own", nullptr};
constexpr NumericKey kMaxObjectSize{"max-object-size", true, 1, kU64, "0 refuses every object", nullptr};
constexpr NumericKey kMaxObjects{"max-objects", false, 1, kU32, "0 refuses every put", nullptr};
constexpr NumericKey kMaxConnections{"max-connections", false, 1, kU32, "0 refuses every client", nullptr};
constexpr NumericKey kMaxConnectionsPerUid{"max-connections-per-uid", false, 1, kU32, "0 refuses every client",
                                           nullptr};
constexpr NumericKey kMaxBytesPerUid{"max-bytes-per-uid", true, 0, kU64, nullptr, nullptr};
constexpr NumericKey kMaxObjectsPerUid{"max-objects-per-uid", false, 0, kU32, nullptr, nullptr};
constexpr NumericKey kPretouchThreads{"pretouch-threads", false, 0, 1024, nullptr,
                                      "more threads only contend for the same memory bandwidth"};
constexpr NumericKey kWriteTimeoutMs{"write-timeout-ms", false, 1, 3600000,
                                     "0 drops every client whose reply does not fit the socket at once",
                                     "a client that has not read for an hour is gone"};
constexpr NumericKey kHelloTimeoutMs{"hello-timeout-ms", false, 100, 600000,
                                     "a client on a busy host needs time to send Hello",
                                     "a silent connection would hold its slot for longer than ten minutes"};
constexpr NumericKey kHousekeepingMs{"housekeeping-ms", false, 10, 60000, "a shorter period spins the event loop",
                                     "status and expiry would lag by more than a minute"};
constexpr NumericKey kCudaHandleCache{"cuda-handle-cache", false, 1, 4096,
                                      "the copy engine keeps at least the handle it copies from",
                                      "each kept handle keeps a producer's GPU memory mapped in the daemon"};
constexpr NumericKey kCudaCopyTimeoutMs{"cuda-copy-timeout-ms", false, 0, 3600000, nullptr,
                                        "a copy that takes longer has hung; 0 waits for ever"};
constexpr NumericKey kCudaLingerUs{"cuda-linger-us", false, 0, 100000, nullptr,
                                   "100 ms of spinning after every GPU copy"};
// clang-format on

std::string human_size(std::uint64_t v) {
  const char* suffix[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (i < 4 && v != 0 && v % 1024 == 0) {
    v /= 1024;
    ++i;
  }
  return std::to_string(v) + suffix[i];
}

// A value of the key as a config file would write it: sizes with a suffix.
std::string show(const NumericKey& k, std::uint64_t v) { return k.size ? human_size(v) : std::to_string(v); }

// The fix that ends each error: "use 10..60000", or "use 1M or more" for a
// size bounded only by 64 bits.
std::string range_fix(const NumericKey& k) {
  if (k.max == kU64) return "use " + show(k, k.min) + " or more";
  return "use " + show(k, k.min) + ".." + show(k, k.max);
}

// Converts `text` strictly: digits only (a size may end in one of B, K, KiB,
// M, MiB, G, GiB, T, TiB), no sign, no blanks, no overflow; then checks the
// key's range. The error names the key, the value, the range and the fix.
Result<std::uint64_t> parse_number(const NumericKey& k, const std::string& text) {
  const std::string what = k.size ? "is not a size (digits with an optional K, M, G or T suffix, no sign, no "
                                    "spaces: 4096, 256M, 1G)"
                                  : "is not a whole number (digits only: no sign, no spaces)";
  const auto not_a_number = [&] {
    return Error{Errc::invalid_argument, std::string(k.name) + ": '" + text + "' " + what + "; " + range_fix(k)};
  };
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return not_a_number();
  const std::string suffix = text.substr(digits);
  int shift = 0;
  if (suffix.empty()) shift = 0;
  else if (!k.size) return not_a_number();
  else if (suffix == "B") shift = 0;
  else if (suffix == "K" || suffix == "KiB" || suffix == "k") shift = 10;
  else if (suffix == "M" || suffix == "MiB") shift = 20;
  else if (suffix == "G" || suffix == "GiB") shift = 30;
  else if (suffix == "T" || suffix == "TiB") shift = 40;
  else return not_a_number();
  bool overflow = false;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < digits && !overflow; ++i) {
    const auto d = static_cast<std::uint64_t>(text[i] - '0');
    overflow = v > (kU64 - d) / 10;
    v = v * 10 + d;
  }
  overflow = overflow || v > (kU64 >> shift);
  if (overflow && k.max == kU64)
    return Error{Errc::invalid_argument,
                 std::string(k.name) + ": " + text + " does not fit in 64 bits; " + range_fix(k)};
  v <<= shift;
  if (overflow || v > k.max)
    return Error{Errc::invalid_argument, std::string(k.name) + ": " + text + " is above the maximum of " +
                                             show(k, k.max) + (k.above ? std::string(" (") + k.above + ")" : "") +
                                             "; " + range_fix(k)};
  if (v < k.min)
    return Error{Errc::invalid_argument, std::string(k.name) + ": " + text + " is below the minimum of " +
                                             show(k, k.min) + (k.below ? std::string(" (") + k.below + ")" : "") +
                                             "; " + range_fix(k)};
  return v;
}

// parse_number into a field narrower than 64 bits (the key's range fits it).
template <class T>
Status parse_into(const NumericKey& k, const std::string& text, T& field) {
  static_assert(std::is_unsigned_v<T>);
  auto v = parse_number(k, text);
  if (!v) return std::move(v).error();
  field = static_cast<T>(*v);
  return ok_status();
}

// An octal permission mode: digits 0-7 only, at most 0777.
Result<std::uint32_t> parse_mode(const std::string& text) {
  const bool octal = !text.empty() && text.size() <= 4 && text.find_first_not_of("01234567") == std::string::npos;
  const auto mode = octal ? static_cast<std::uint32_t>(std::stoul(text, nullptr, 8)) : 01000u;
  if (mode > 0777)
    return Error{Errc::invalid_argument, "socket-mode: '" + text +
                                             "' is not an octal mode such as 0660 (digits 0-7, no sign, at most 0777)"};
  return mode;
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

}  // namespace

std::string segment_prefix(const Config& c) { return "tensorshm." + c.instance + "."; }

// Reads the flags, then the file they name, into text (every number is
// converted by parse_number), refusing the keys that no longer exist or may
// not appear in a file; then converts and checks each value.
Result<Config> parse_config(int argc, const char* const* argv, std::string* help_text) {
  Config c;
  c.socket_path = default_socket_path();
  const Config d = c;
  std::string socket_mode, log_level;
  std::string pool_size, segment_size, max_object_size, max_objects, max_connections, max_connections_per_uid,
      max_bytes_per_uid, max_objects_per_uid, pretouch_threads, write_timeout_ms, hello_timeout_ms, housekeeping_ms,
      cuda_handle_cache, cuda_copy_timeout_ms, cuda_linger_us;
  // Each numeric key is read as text, with its default as a config file would write it.
  const auto number = [](std::string* text, const NumericKey& k, std::uint64_t default_value) {
    return po::value(text)->default_value(show(k, default_value));
  };
  po::options_description opts("tensorshmd options (also valid as `key = value` lines in --config)");
  // clang-format off
  opts.add_options()
    ("help,h", "print this help and exit")
    ("version", "print the version (and whether CUDA is compiled in) and exit")
    ("config,c", po::value(&c.config_file), "read options from this file (key = value lines)")
    ("socket", po::value(&c.socket_path), ("control socket path; env TENSORSHM_SOCKET (default " + d.socket_path + ")").c_str())
    ("socket-mode", po::value(&socket_mode)->default_value("0600"), "socket permission bits, octal; 0660 lets the socket's group connect")
    ("socket-group", po::value(&c.socket_group), "group that owns the socket (default: the daemon's group)")
    ("instance", po::value(&c.instance)->default_value(d.instance), "instance name: a label in logs and in the names of the daemon's memory files (tensorshm.<instance>.p1, ...)")
    ("pool-size", number(&pool_size, kPoolSize, d.pool_size), "bytes of shared memory reserved, pre-touched (and pinned with a GPU) at start")
    ("segment-size", number(&segment_size, kSegmentSize, d.segment_size), "bytes per pool segment; objects larger than one get a dedicated segment; a segment holds one owner's objects of one sharing mode at a time")
    ("max-object-size", number(&max_object_size, kMaxObjectSize, d.max_object_size), "largest object accepted, in bytes")
    ("max-objects", number(&max_objects, kMaxObjects, d.max_objects), "live object versions, all users together")
    ("max-connections", number(&max_connections, kMaxConnections, d.max_connections), "concurrent client connections")
    ("max-connections-per-uid", number(&max_connections_per_uid, kMaxConnectionsPerUid, d.max_connections_per_uid), "concurrent connections of one uid")
    ("max-bytes-per-uid", number(&max_bytes_per_uid, kMaxBytesPerUid, d.max_bytes_per_uid), "bytes of objects one uid may hold; 0 = unlimited")
    ("max-objects-per-uid", number(&max_objects_per_uid, kMaxObjectsPerUid, d.max_objects_per_uid), "objects one uid may hold; 0 = unlimited")
    ("pretouch-threads", number(&pretouch_threads, kPretouchThreads, d.pretouch_threads), "threads pre-touching the pool at start; 0 = one per CPU")
    ("write-timeout-ms", number(&write_timeout_ms, kWriteTimeoutMs, d.write_timeout_ms), "drop a client that does not read a reply within this time")
    ("hello-timeout-ms", number(&hello_timeout_ms, kHelloTimeoutMs, d.hello_timeout_ms), "a connection that has not completed Hello within this time is closed")
    ("housekeeping-ms", number(&housekeeping_ms, kHousekeepingMs, d.housekeeping_ms), "period of the housekeeping timer")
    ("cuda", po::value(&c.cuda)->default_value(d.cuda), "auto: use GPUs when a driver and devices exist; off: CPU-only")
    ("cuda-handle-cache", number(&cuda_handle_cache, kCudaHandleCache, d.cuda_handle_cache), "opened CUDA IPC handles cached per producer connection")
    ("cuda-copy-timeout-ms", number(&cuda_copy_timeout_ms, kCudaCopyTimeoutMs, d.cuda_copy_timeout_ms), "fail a GPU put whose device-to-host copy has not completed within this time (its extent is quarantined); 0 = never")
    ("cuda-linger-us", number(&cuda_linger_us, kCudaLingerUs, d.cuda_linger_us), "after a GPU copy ends, the copy engine's thread keeps polling this long for the producer's next put instead of sleeping (a CPU core's time for one thread wake-up per put); 0 = off")
    ("cuda-io-spin", po::value(&c.cuda_io_spin)->default_value(d.cuda_io_spin), "while a GPU copy is about to end (from shortly before its predicted end, as the copy engine's thread), the io thread polls instead of sleeping, so that the put's answer needs no thread wake-up (a CPU core's time for at most about 1.5 ms per copy); also for cuda-linger-us after each copy")
    ("cuda-wake-ahead", po::value(&c.cuda_wake_ahead)->default_value(d.cuda_wake_ahead), "a producer whose GPU puts arrive at a steady rate (at most 100 ms apart, varying by at most an eighth) finds the copy engine's thread, and with cuda-io-spin the io thread, awake when its next put is due: each wakes on its own timer a little before it (200 us + 2 mean deviations, at most 1 ms) rather than on it, and polls until as long after its due time (two threads for up to 2 ms per put)")
    ("cuda-lost", po::value(&c.cuda_lost)->default_value(d.cuda_lost), "after an error that loses the GPU context (GPU puts fail until tensorshmd restarts): serve = keep serving CPU clients; exit = stop (all objects go) with status 3, for the service manager to restart")
    ("log-level", po::value(&log_level)->default_value("info"), "debug, info, notice, warning or error");
  // Keys that no longer exist: parsed (not shown in --help) only to be refused with a reason.
  po::options_description removed;
  removed.add_options()
    ("shm-dir", po::value<std::string>());
  // clang-format on
  po::options_description accepted;
  accepted.add(opts).add(removed);
  po::variables_map vm;
  bool socket_on_command_line = false;  // flags beat the environment, the file does not
  try {
    po::store(po::parse_command_line(argc, argv, accepted), vm);
    socket_on_command_line = vm.count("socket") > 0;
    if (vm.count("help")) {
      std::ostringstream os;
      os << "tensorshmd: shared-memory tensor handoff daemon\n\n"
         << "Usage: tensorshmd [options]\n\n"
         << opts << "\nPrecedence: flags > environment (TENSORSHM_SOCKET) > --config file > defaults.\n";
      if (help_text) *help_text = os.str();
      return c;
    }
    if (vm.count("version")) {
      c.show_version = true;
      return c;
    }
    if (vm.count("config")) {
      const std::string file = vm["config"].as<std::string>();
      std::ifstream in(file);
      if (!in) return Error{Errc::invalid_argument, "cannot read config file '" + file + "'"};
      const po::parsed_options lines = po::parse_config_file(in, accepted, /*allow_unregistered=*/false);
      for (const po::option& o : lines.options) {
        if (o.string_key == "config")
          return Error{Errc::invalid_argument, "config: a config file cannot name another config file ('" +
                                                   (o.value.empty() ? std::string() : o.value.front()) +
                                                   "'); put the keys in one file or pass --config once"};
        if (o.string_key == "help" || o.string_key == "version")
          return Error{Errc::invalid_argument, o.string_key + ": a command-line flag (tensorshmd --" + o.string_key +
                                                   "), not a key of a config file; remove the line"};
      }
      po::store(lines, vm);
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    return Error{Errc::invalid_argument, std::string(e.what()) + " (see tensorshmd --help)"};
  }
  if (vm.count("shm-dir"))
    return Error{Errc::invalid_argument,
                 "shm-dir: tensorshmd no longer places segments in a directory (they are anonymous memory files, "
                 "memfd, that no other process can name or delete); remove this key"};
  // The environment beats the file but not an explicit flag.
  if (!socket_on_command_line)
    if (const char* s = std::getenv("TENSORSHM_SOCKET"); s != nullptr && *s != '\0') c.socket_path = s;

  auto ps = parse_number(kPoolSize, pool_size);
  if (!ps) return ps.error();
  auto ss = parse_number(kSegmentSize, segment_size);
  if (!ss) return ss.error();
  auto mo = parse_number(kMaxObjectSize, max_object_size);
  if (!mo) return mo.error();
  auto mb = parse_number(kMaxBytesPerUid, max_bytes_per_uid);
  if (!mb) return mb.error();
  c.pool_size = *ps;
  c.segment_size = *ss;
  c.max_object_size = *mo;
  c.max_bytes_per_uid = *mb;
  TSHM_TRY(parse_into(kMaxObjects, max_objects, c.max_objects));
  TSHM_TRY(parse_into(kMaxConnections, max_connections, c.max_connections));
  TSHM_TRY(parse_into(kMaxConnectionsPerUid, max_connections_per_uid, c.max_connections_per_uid));
  TSHM_TRY(parse_into(kMaxObjectsPerUid, max_objects_per_uid, c.max_objects_per_uid));
  TSHM_TRY(parse_into(kPretouchThreads, pretouch_threads, c.pretouch_threads));
  TSHM_TRY(parse_into(kWriteTimeoutMs, write_timeout_ms, c.write_timeout_ms));
  TSHM_TRY(parse_into(kHelloTimeoutMs, hello_timeout_ms, c.hello_timeout_ms));
  TSHM_TRY(parse_into(kHousekeepingMs, housekeeping_ms, c.housekeeping_ms));
  TSHM_TRY(parse_into(kCudaHandleCache, cuda_handle_cache, c.cuda_handle_cache));
  TSHM_TRY(parse_into(kCudaCopyTimeoutMs, cuda_copy_timeout_ms, c.cuda_copy_timeout_ms));
  TSHM_TRY(parse_into(kCudaLingerUs, cuda_linger_us, c.cuda_linger_us));
  auto mode = parse_mode(socket_mode);
  if (!mode) return mode.error();
  c.socket_mode = *mode;
  auto ll = parse_level(log_level);
  if (!ll) return ll.error();
  c.log_level = *ll;
  if (c.instance.empty() || c.instance.size() > 32 ||
      c.instance.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
          std::string::npos)
    return Error{Errc::invalid_argument, "instance: '" + c.instance + "' must be 1-32 letters, digits, '_' or '-'"};
  if (c.segment_size % 4096 != 0)
    return Error{Errc::invalid_argument, "segment-size: " + segment_size +
                                             " is not a multiple of 4K (segments are mapped in whole pages); " +
                                             range_fix(kSegmentSize) + ", a multiple of 4K"};
  if (c.pool_size < c.segment_size && c.pool_size != 0) c.segment_size = (c.pool_size + 4095) / 4096 * 4096;
  if (c.cuda != "auto" && c.cuda != "off")
    return Error{Errc::invalid_argument, "cuda: '" + c.cuda + "' is not one of auto, off"};
  if (c.cuda_lost != "serve" && c.cuda_lost != "exit")
    return Error{Errc::invalid_argument, "cuda-lost: '" + c.cuda_lost + "' is not one of serve, exit"};
  if (c.socket_path.empty()) return Error{Errc::invalid_argument, "socket: empty path"};
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
     << "hello-timeout-ms = " << c.hello_timeout_ms << "\n"
     << "housekeeping-ms = " << c.housekeeping_ms << "\n"
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
