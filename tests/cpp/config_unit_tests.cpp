// The daemon's configuration from flags, file and environment: defaults,
// precedence, every key's range (no value wraps, none spins), the keys that
// are refused with their reason, and the shipped config file restating the
// defaults. Part of tshm_daemon_unit_tests (daemon_unit_tests.cpp has the main).
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config.hpp"
#include "tensorshm/paths.hpp"

using namespace tensorshm;
using namespace tensorshm::daemon;

namespace {

constexpr std::uint64_t kMiB = 1u << 20;

// ---- Config --------------------------------------------------------------------

// Sets or clears an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

Result<Config> parse(std::vector<std::string> args, std::string* help = nullptr) {
  args.insert(args.begin(), "tensorshmd");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_config(static_cast<int>(argv.size()), argv.data(), help);
}

// A config file in a temporary directory, removed with the object.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/tshm-config-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
    std::ofstream(path) << text;
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

TEST_CASE("with_no_arguments_the_config_holds_the_embedded_defaults") {
  ScopedEnv env("TENSORSHM_SOCKET", nullptr);
  auto c = parse({});
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  const Config defaults;  // the one struct that holds them
  CHECK(c->socket_path == default_socket_path());
  CHECK(c->instance == "default");
  CHECK(c->pool_size == (std::uint64_t{1} << 30));  // 1 GiB, as documented
  CHECK(c->segment_size == defaults.segment_size);
  CHECK(c->max_object_size == defaults.max_object_size);
  CHECK(c->max_objects == defaults.max_objects);
  CHECK(c->socket_mode == 0600);
  CHECK(c->cuda == "auto");
  CHECK(c->log_level == LogLevel::info);
  CHECK(c->hello_timeout_ms == 10000);
  CHECK(describe(*c) == describe([&] {
          Config d = defaults;
          d.socket_path = default_socket_path();
          return d;
        }()));
}

TEST_CASE("flags_set_sizes_with_suffixes_and_the_other_keys") {
  ScopedEnv env("TENSORSHM_SOCKET", nullptr);
  auto c = parse({"--pool-size", "256M", "--segment-size=64M", "--max-object-size", "2G", "--instance", "lab-2",
                  "--socket", "/tmp/x/s.sock", "--socket-mode", "0660", "--log-level", "debug",
                  "--max-bytes-per-uid", "4K", "--cuda", "off", "--max-objects", "12"});
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  CHECK(c->pool_size == 256 * kMiB);
  CHECK(c->segment_size == 64 * kMiB);
  CHECK(c->max_object_size == (std::uint64_t{2} << 30));
  CHECK(c->instance == "lab-2");
  CHECK(c->socket_path == "/tmp/x/s.sock");
  CHECK(c->socket_mode == 0660);
  CHECK(c->log_level == LogLevel::debug);
  CHECK(c->max_bytes_per_uid == 4096);
  CHECK(c->cuda == "off");
  CHECK(c->max_objects == 12);
}

TEST_CASE("a_pool_smaller_than_one_segment_becomes_a_single_segment_of_its_size") {
  auto c = parse({"--pool-size", "64M"});
  REQUIRE(c.has_value());
  CHECK(c->segment_size == 64 * kMiB);
}

TEST_CASE("a_config_file_sets_keys_and_flags_override_it") {
  ScopedEnv env("TENSORSHM_SOCKET", nullptr);
  TempFile file("pool-size = 128M\ninstance = from-file\nsocket = /tmp/file.sock\nlog-level = warning\n");
  auto c = parse({"--config", file.path, "--instance", "from-flag"});
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  CHECK(c->pool_size == 128 * kMiB);
  CHECK(c->instance == "from-flag");
  CHECK(c->socket_path == "/tmp/file.sock");
  CHECK(c->log_level == LogLevel::warning);
  CHECK(c->config_file == file.path);
}

TEST_CASE("tensorshm_socket_beats_the_config_file_but_not_the_flag") {
  TempFile file("socket = /tmp/file.sock\n");
  ScopedEnv env("TENSORSHM_SOCKET", "/tmp/env.sock");
  auto from_env = parse({"--config", file.path});
  REQUIRE(from_env.has_value());
  CHECK(from_env->socket_path == "/tmp/env.sock");
  auto from_flag = parse({"--config", file.path, "--socket", "/tmp/flag.sock"});
  REQUIRE(from_flag.has_value());
  CHECK(from_flag->socket_path == "/tmp/flag.sock");
  auto from_flag_eq = parse({"--socket=/tmp/flag2.sock"});
  REQUIRE(from_flag_eq.has_value());
  CHECK(from_flag_eq->socket_path == "/tmp/flag2.sock");
}

TEST_CASE("a_config_written_by_describe_reads_back_the_same") {
  ScopedEnv env("TENSORSHM_SOCKET", nullptr);
  auto original = parse({"--pool-size", "96M", "--instance", "roundtrip", "--socket", "/tmp/rt.sock",
                         "--max-objects-per-uid", "7", "--log-level", "notice"});
  REQUIRE(original.has_value());
  TempFile file(describe(*original));
  auto back = parse({"--config", file.path});
  REQUIRE_MESSAGE(back.has_value(), back.error().message);
  CHECK(describe(*back) == describe(*original));
}

TEST_CASE("bad_sizes_and_values_are_usage_errors_naming_the_key") {
  for (auto args : std::vector<std::vector<std::string>>{
           {"--pool-size", "12Q"},
           {"--pool-size", "lots"},
           {"--pool-size", ""},
           {"--pool-size", "99999999999T"},
           {"--segment-size", "4000"},
           {"--segment-size", "1M1"},
           {"--max-object-size", "-1G"},
           {"--socket-mode", "0999"},
           {"--log-level", "loud"},
           {"--cuda", "maybe"},
           {"--instance", "has space"},
           {"--instance", "a/b"},
           {"--no-such-flag"},
       }) {
    auto c = parse(args);
    CHECK_MESSAGE(!c.has_value(), "accepted ", args[0], " ", args.size() > 1 ? args[1] : "");
    if (!c) CHECK(c.error().code == Errc::invalid_argument);
  }
  auto pool = parse({"--pool-size", "12Q"});
  REQUIRE_FALSE(pool.has_value());
  CHECK(pool.error().message.find("pool-size") != std::string::npos);
}

TEST_CASE("a_missing_or_malformed_config_file_is_a_usage_error") {
  auto missing = parse({"--config", "/nonexistent/tensorshmd.conf"});
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().message.find("/nonexistent/tensorshmd.conf") != std::string::npos);
  TempFile unknown_key("colour = blue\n");
  CHECK_FALSE(parse({"--config", unknown_key.path}).has_value());
}

TEST_CASE("cuda_linger_above_100_ms_is_a_usage_error_and_up_to_it_is_taken") {
  auto ok = parse({"--cuda-linger-us", "300"});
  REQUIRE(ok.has_value());
  CHECK(ok->cuda_linger_us == 300);
  auto too_long = parse({"--cuda-linger-us", "100001"});
  REQUIRE_FALSE(too_long.has_value());
  CHECK(too_long.error().message ==
        "cuda-linger-us: 100001 is above the maximum of 100000 (100 ms of spinning after every GPU copy); "
        "use 0..100000");
  CHECK_FALSE(parse({"--cuda-linger-us", "-1"}).has_value());
}

TEST_CASE("the_gpu_polling_switches_are_on_by_default_turned_off_by_a_flag_or_the_file_and_take_only_booleans") {
  struct Switch {
    std::string key;
    bool Config::*member;
  };
  for (const Switch& sw :
       {Switch{"cuda-io-spin", &Config::cuda_io_spin}, Switch{"cuda-wake-ahead", &Config::cuda_wake_ahead}}) {
    CAPTURE(sw.key);
    auto defaults = parse({});
    REQUIRE(defaults.has_value());
    CHECK((*defaults).*sw.member);
    CHECK(describe(*defaults).find(sw.key + " = true\n") != std::string::npos);
    const std::string flag_name = "--" + sw.key;
    auto flag = parse({flag_name, "false"});
    REQUIRE(flag.has_value());
    CHECK_FALSE((*flag).*sw.member);
    CHECK(flag->cuda_io_spin + flag->cuda_wake_ahead == 1);  // one switch does not move the other
    TempFile file(sw.key + " = off\n");
    auto from_file = parse({"--config", file.path});
    REQUIRE(from_file.has_value());
    CHECK_FALSE((*from_file).*sw.member);
    CHECK(describe(*from_file).find(sw.key + " = false\n") != std::string::npos);
    auto bad = parse({flag_name, "sometimes"});
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find(sw.key) != std::string::npos);
  }
}

TEST_CASE("cuda_lost_is_serve_by_default_takes_exit_from_a_flag_or_the_file_and_refuses_anything_else") {
  auto defaults = parse({});
  REQUIRE(defaults.has_value());
  CHECK(defaults->cuda_lost == "serve");
  auto flag = parse({"--cuda-lost", "exit"});
  REQUIRE(flag.has_value());
  CHECK(flag->cuda_lost == "exit");
  TempFile file("cuda-lost = exit\n");
  auto from_file = parse({"--config", file.path});
  REQUIRE(from_file.has_value());
  CHECK(from_file->cuda_lost == "exit");
  CHECK(describe(*from_file).find("cuda-lost = exit\n") != std::string::npos);
  auto bad = parse({"--cuda-lost", "restart"});
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().message == "cuda-lost: 'restart' is not one of serve, exit");
}

// ---- Config: strict numbers ---------------------------------------------------

// Every numeric key, as the flag and config-file key it is.
const std::vector<std::string> kSizeKeys = {"pool-size", "segment-size", "max-object-size", "max-bytes-per-uid"};
const std::vector<std::string> kWholeNumberKeys = {
    "max-objects",      "max-connections",  "max-connections-per-uid", "max-objects-per-uid",
    "pretouch-threads", "write-timeout-ms", "hello-timeout-ms",        "housekeeping-ms",
    "cuda-handle-cache", "cuda-copy-timeout-ms", "cuda-linger-us"};

// Checks that `args` are refused as a usage error whose message names `key`.
void check_refused_naming(const std::vector<std::string>& args, const std::string& key) {
  auto c = parse(args);
  REQUIRE_MESSAGE(!c.has_value(), "accepted ", args.front(), " ", args.size() > 1 ? args[1] : "");
  CHECK(c.error().code == Errc::invalid_argument);
  CHECK_MESSAGE(c.error().message.rfind(key + ": ", 0) == 0, c.error().message);
}

TEST_CASE("a_negative_pool_size_is_refused_naming_the_key") {
  auto c = parse({"--pool-size", "-1"});
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().message ==
        "pool-size: '-1' is not a size (digits with an optional K, M, G or T suffix, no sign, no spaces: 4096, "
        "256M, 1G); use 0 or more");
  TempFile file("pool-size = -1\n");
  check_refused_naming({"--config", file.path}, "pool-size");
}

TEST_CASE("a_negative_value_of_any_numeric_key_is_refused_naming_the_key_instead_of_wrapping") {
  for (const auto& keys : {kSizeKeys, kWholeNumberKeys})
    for (const std::string& key : keys) {
      CAPTURE(key);
      check_refused_naming({"--" + key, "-1"}, key);
      check_refused_naming({"--" + key + "=-5"}, key);
      TempFile file(key + " = -1\n");
      check_refused_naming({"--config", file.path}, key);
    }
  auto connections = parse({"--max-connections", "-1"});
  REQUIRE_FALSE(connections.has_value());
  CHECK(connections.error().message ==
        "max-connections: '-1' is not a whole number (digits only: no sign, no spaces); use 1..4294967295");
}

TEST_CASE("numbers_with_a_sign_spaces_or_other_characters_are_refused_naming_the_key") {
  for (const auto& keys : {kSizeKeys, kWholeNumberKeys})
    for (const std::string& key : keys)
      for (const char* text : {"", "+5", " 5", "5 ", "5 0", "0x10", "1e3", "5.0", "five", "\t5"}) {
        CAPTURE(key);
        CAPTURE(text);
        check_refused_naming({"--" + key, text}, key);
      }
  // A file's blanks around the value are the file's syntax; blanks inside it are not.
  TempFile spaced("max-objects = 1 000\n");
  check_refused_naming({"--config", spaced.path}, "max-objects");
  TempFile padded("max-objects =   12   \n");
  auto c = parse({"--config", padded.path});
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  CHECK(c->max_objects == 12);
  // Whole-number keys take no size suffix.
  check_refused_naming({"--max-objects", "1K"}, "max-objects");
}

TEST_CASE("a_number_too_large_for_its_key_is_refused_instead_of_wrapping") {
  for (const std::string& key : kWholeNumberKeys) {
    CAPTURE(key);
    check_refused_naming({"--" + key, "4294967296"}, key);
    check_refused_naming({"--" + key, "99999999999999999999999"}, key);
  }
  for (const std::string& key : kSizeKeys) {
    CAPTURE(key);
    check_refused_naming({"--" + key, "18446744073709551616"}, key);
    check_refused_naming({"--" + key, "16777216T"}, key);
  }
  auto objects = parse({"--max-objects", "4294967296"});
  REQUIRE_FALSE(objects.has_value());
  CHECK(objects.error().message == "max-objects: 4294967296 is above the maximum of 4294967295; use 1..4294967295");
  auto pool = parse({"--pool-size", "16777216T"});
  REQUIRE_FALSE(pool.has_value());
  CHECK(pool.error().message == "pool-size: 16777216T does not fit in 64 bits; use 0 or more");
}

TEST_CASE("housekeeping_ms_outside_10_to_60000_is_refused_naming_the_range_and_the_reason") {
  auto zero = parse({"--housekeeping-ms", "0"});
  REQUIRE_FALSE(zero.has_value());
  CHECK(zero.error().message ==
        "housekeeping-ms: 0 is below the minimum of 10 (a shorter period spins the event loop); use 10..60000");
  auto long_period = parse({"--housekeeping-ms", "60001"});
  REQUIRE_FALSE(long_period.has_value());
  CHECK(long_period.error().message ==
        "housekeeping-ms: 60001 is above the maximum of 60000 (status and expiry would lag by more than a "
        "minute); use 10..60000");
  TempFile file("housekeeping-ms = 9\n");
  check_refused_naming({"--config", file.path}, "housekeeping-ms");
}

TEST_CASE("a_write_timeout_of_0_is_refused_because_it_would_drop_every_slow_reader") {
  auto c = parse({"--write-timeout-ms", "0"});
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().message ==
        "write-timeout-ms: 0 is below the minimum of 1 (0 drops every client whose reply does not fit the socket "
        "at once); use 1..3600000");
  check_refused_naming({"--write-timeout-ms", "3600001"}, "write-timeout-ms");
}

TEST_CASE("zero_connections_or_objects_are_refused_naming_the_key") {
  for (const char* key : {"max-connections", "max-connections-per-uid", "max-objects"}) {
    CAPTURE(key);
    check_refused_naming({std::string("--") + key, "0"}, key);
    TempFile file(std::string(key) + " = 0\n");
    check_refused_naming({"--config", file.path}, key);
  }
  auto c = parse({"--max-connections-per-uid", "0"});
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().message ==
        "max-connections-per-uid: 0 is below the minimum of 1 (0 refuses every client); use 1..4294967295");
}

TEST_CASE("zero_stays_valid_where_it_means_unlimited_one_per_cpu_or_never") {
  auto c = parse({"--max-bytes-per-uid", "0", "--max-objects-per-uid", "0", "--pretouch-threads", "0",
                  "--cuda-copy-timeout-ms", "0", "--cuda-linger-us", "0", "--pool-size", "0"});
  REQUIRE_MESSAGE(c.has_value(), c.error().message);
  CHECK(c->max_bytes_per_uid == 0);
  CHECK(c->max_objects_per_uid == 0);
  CHECK(c->pretouch_threads == 0);
  CHECK(c->cuda_copy_timeout_ms == 0);
  CHECK(c->cuda_linger_us == 0);
  CHECK(c->pool_size == 0);
}

TEST_CASE("each_numeric_key_takes_both_ends_of_its_range_and_refuses_one_past_them") {
  struct Row {
    std::string key;
    std::string min, max;                    // the ends, as written
    std::optional<std::string> below, above;  // one past each end, where the type allows one
    std::uint64_t (*field)(const Config&);
    std::uint64_t min_value, max_value;
  };
  const std::vector<Row> rows = {
      {"pool-size", "0", "16777215T", std::nullopt, "16777216T", [](const Config& c) { return c.pool_size; }, 0,
       std::uint64_t{16777215} << 40},
      {"segment-size", "1M", "16777215T", "1020K", "16777216T", [](const Config& c) { return c.segment_size; },
       kMiB, std::uint64_t{16777215} << 40},
      {"max-object-size", "1", "16777215T", "0", "16777216T", [](const Config& c) { return c.max_object_size; }, 1,
       std::uint64_t{16777215} << 40},
      {"max-bytes-per-uid", "0", "16777215T", std::nullopt, "16777216T",
       [](const Config& c) { return c.max_bytes_per_uid; }, 0, std::uint64_t{16777215} << 40},
      {"max-objects", "1", "4294967295", "0", "4294967296",
       [](const Config& c) { return std::uint64_t{c.max_objects}; }, 1, 4294967295},
      {"max-connections", "1", "4294967295", "0", "4294967296",
       [](const Config& c) { return std::uint64_t{c.max_connections}; }, 1, 4294967295},
      {"max-connections-per-uid", "1", "4294967295", "0", "4294967296",
       [](const Config& c) { return std::uint64_t{c.max_connections_per_uid}; }, 1, 4294967295},
      {"max-objects-per-uid", "0", "4294967295", std::nullopt, "4294967296",
       [](const Config& c) { return std::uint64_t{c.max_objects_per_uid}; }, 0, 4294967295},
      {"pretouch-threads", "0", "1024", std::nullopt, "1025",
       [](const Config& c) { return std::uint64_t{c.pretouch_threads}; }, 0, 1024},
      {"write-timeout-ms", "1", "3600000", "0", "3600001",
       [](const Config& c) { return std::uint64_t{c.write_timeout_ms}; }, 1, 3600000},
      {"hello-timeout-ms", "100", "600000", "99", "600001",
       [](const Config& c) { return std::uint64_t{c.hello_timeout_ms}; }, 100, 600000},
      {"housekeeping-ms", "10", "60000", "9", "60001",
       [](const Config& c) { return std::uint64_t{c.housekeeping_ms}; }, 10, 60000},
      {"cuda-handle-cache", "1", "4096", "0", "4097",
       [](const Config& c) { return std::uint64_t{c.cuda_handle_cache}; }, 1, 4096},
      {"cuda-copy-timeout-ms", "0", "3600000", std::nullopt, "3600001",
       [](const Config& c) { return std::uint64_t{c.cuda_copy_timeout_ms}; }, 0, 3600000},
      {"cuda-linger-us", "0", "100000", std::nullopt, "100001",
       [](const Config& c) { return std::uint64_t{c.cuda_linger_us}; }, 0, 100000},
  };
  for (const Row& row : rows) {
    CAPTURE(row.key);
    // A pool of 0 keeps segment-size as given (a smaller pool shrinks it).
    const auto with = [&](const std::string& value) {
      std::vector<std::string> args{"--" + row.key, value};
      if (row.key == "segment-size") args.insert(args.end(), {"--pool-size", "0"});
      return parse(args);
    };
    auto low = with(row.min);
    REQUIRE_MESSAGE(low.has_value(), low.error().message);
    CHECK(row.field(*low) == row.min_value);
    auto high = with(row.max);
    REQUIRE_MESSAGE(high.has_value(), high.error().message);
    CHECK(row.field(*high) == row.max_value);
    if (row.below) check_refused_naming({"--" + row.key, *row.below}, row.key);
    if (row.above) check_refused_naming({"--" + row.key, *row.above}, row.key);
  }
}

TEST_CASE("sizes_take_the_suffixes_b_k_kib_m_mib_g_gib_t_tib_and_nothing_else") {
  const std::vector<std::pair<std::string, std::uint64_t>> sizes = {
      {"4096", 4096},          {"4096B", 4096},           {"4K", 4096},
      {"4KiB", 4096},          {"4k", 4096},              {"3M", 3 * kMiB},
      {"3MiB", 3 * kMiB},      {"2G", std::uint64_t{2} << 30}, {"2GiB", std::uint64_t{2} << 30},
      {"1T", std::uint64_t{1} << 40}, {"1TiB", std::uint64_t{1} << 40}};
  for (const auto& [text, bytes] : sizes) {
    CAPTURE(text);
    auto c = parse({"--max-bytes-per-uid", text});
    REQUIRE_MESSAGE(c.has_value(), c.error().message);
    CHECK(c->max_bytes_per_uid == bytes);
  }
  for (const char* text : {"4KB", "4m", "4P", "4 K", "K", "4KK"}) {
    CAPTURE(text);
    check_refused_naming({"--max-bytes-per-uid", text}, "max-bytes-per-uid");
  }
}

TEST_CASE("a_segment_size_that_is_not_a_whole_number_of_pages_is_refused_naming_the_fix") {
  auto c = parse({"--segment-size", "1025K"});
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().message ==
        "segment-size: 1025K is not a multiple of 4K (segments are mapped in whole pages); use 1M or more, a "
        "multiple of 4K");
  auto small = parse({"--segment-size", "512K"});
  REQUIRE_FALSE(small.has_value());
  CHECK(small.error().message ==
        "segment-size: 512K is below the minimum of 1M (every client maps each segment on its own); use 1M or more");
}

TEST_CASE("socket_mode_takes_only_octal_digits_up_to_0777") {
  for (const auto& [text, mode] :
       std::vector<std::pair<std::string, std::uint32_t>>{{"0", 0}, {"0777", 0777}, {"660", 0660}, {"0600", 0600}}) {
    CAPTURE(text);
    auto c = parse({"--socket-mode", text});
    REQUIRE_MESSAGE(c.has_value(), c.error().message);
    CHECK(c->socket_mode == mode);
  }
  for (const char* text : {"-1", "+0660", " 0660", "0660 ", "01000", "1000", "0x1ff", "0668", ""}) {
    CAPTURE(text);
    check_refused_naming({"--socket-mode", text}, "socket-mode");
  }
}

TEST_CASE("hello_timeout_defaults_to_10_s_and_takes_100_ms_to_10_min_from_a_flag_or_the_file") {
  auto defaults = parse({});
  REQUIRE(defaults.has_value());
  CHECK(defaults->hello_timeout_ms == 10000);
  CHECK(describe(*defaults).find("write-timeout-ms = 5000\nhello-timeout-ms = 10000\n") != std::string::npos);
  auto flag = parse({"--hello-timeout-ms", "250"});
  REQUIRE_MESSAGE(flag.has_value(), flag.error().message);
  CHECK(flag->hello_timeout_ms == 250);
  TempFile file("hello-timeout-ms = 600000\n");
  auto from_file = parse({"--config", file.path});
  REQUIRE_MESSAGE(from_file.has_value(), from_file.error().message);
  CHECK(from_file->hello_timeout_ms == 600000);
  auto too_short = parse({"--hello-timeout-ms", "99"});
  REQUIRE_FALSE(too_short.has_value());
  CHECK(too_short.error().message ==
        "hello-timeout-ms: 99 is below the minimum of 100 (a client on a busy host needs time to send Hello); use "
        "100..600000");
  check_refused_naming({"--hello-timeout-ms", "600001"}, "hello-timeout-ms");
}

TEST_CASE("a_config_file_that_names_another_config_file_is_refused") {
  TempFile other("pool-size = 2G\n");
  TempFile file("instance = nested\nconfig = " + other.path + "\n");
  auto c = parse({"--config", file.path});
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().code == Errc::invalid_argument);
  CHECK(c.error().message == "config: a config file cannot name another config file ('" + other.path +
                                 "'); put the keys in one file or pass --config once");
}

TEST_CASE("version_asks_main_to_print_the_version_and_is_refused_as_a_key_of_a_config_file") {
  auto asked = parse({"--version", "--pool-size", "not-a-number"});  // nothing else is read
  REQUIRE_MESSAGE(asked.has_value(), asked.error().message);
  CHECK(asked->show_version);
  auto plain = parse({});
  REQUIRE(plain.has_value());
  CHECK_FALSE(plain->show_version);
  for (const char* line : {"version = true\n", "help = true\n"}) {
    TempFile file(std::string("instance = x\n") + line);
    auto c = parse({"--config", file.path});
    REQUIRE_MESSAGE(!c.has_value(), "accepted ", line);
    CHECK(c.error().code == Errc::invalid_argument);
    CHECK_MESSAGE(c.error().message.find("not a key of a config file") != std::string::npos, c.error().message);
  }
}

TEST_CASE("shm_dir_is_refused_as_a_flag_or_in_a_config_file_saying_that_segments_are_memfd_files") {
  const std::string expected =
      "shm-dir: tensorshmd no longer places segments in a directory (they are anonymous memory files, memfd, that "
      "no other process can name or delete); remove this key";
  auto flag = parse({"--shm-dir", "/dev/shm"});
  REQUIRE_FALSE(flag.has_value());
  CHECK(flag.error().code == Errc::invalid_argument);
  CHECK(flag.error().message == expected);
  TempFile file("shm-dir = /dev/shm\n");
  auto from_file = parse({"--config", file.path});
  REQUIRE_FALSE(from_file.has_value());
  CHECK(from_file.error().message == expected);
  auto defaults = parse({});
  REQUIRE(defaults.has_value());
  CHECK(describe(*defaults).find("shm-dir") == std::string::npos);
}

TEST_CASE("the_shipped_config_file_states_exactly_the_built_in_defaults") {
  // systemd/tensorshmd.conf, found from this file's path (the build passes absolute source paths).
  const std::string here = __FILE__;
  const std::string conf = here.substr(0, here.rfind("tests/cpp/")) + "systemd/tensorshmd.conf";
  REQUIRE_MESSAGE(std::ifstream(conf).good(), "cannot read ", conf);
  ScopedEnv env("TENSORSHM_SOCKET", nullptr);
  auto shipped = parse({"--config", conf, "--socket", "/tmp/same.sock"});
  REQUIRE_MESSAGE(shipped.has_value(), shipped.error().message);
  auto defaults = parse({"--socket", "/tmp/same.sock"});
  REQUIRE(defaults.has_value());
  CHECK(describe(*shipped) == describe(*defaults));
}

TEST_CASE("describe_states_every_option_of_help_once_so_that_the_shipped_file_is_compared_on_every_key") {
  // The test above compares describe()'s lines: an option left out of describe()
  // would go unchecked in the shipped file. (--help, --version and --config are
  // for the command line only.)
  std::string help;
  REQUIRE(parse({"--help"}, &help).has_value());
  std::multiset<std::string> options, described;
  const std::regex option(R"(^\s+(?:-\w \[ )?--([a-z0-9-]+))");
  std::istringstream help_lines(help);
  for (std::string line; std::getline(help_lines, line);)
    if (std::smatch m; std::regex_search(line, m, option) && m[1] != "help" && m[1] != "version" && m[1] != "config")
      options.insert(m[1]);
  auto defaults = parse({});
  REQUIRE(defaults.has_value());
  std::istringstream described_lines(describe(*defaults));
  for (std::string line; std::getline(described_lines, line);) described.insert(line.substr(0, line.find(" = ")));
  CHECK(options.size() > 20);
  CHECK(described == options);
}

TEST_CASE("help_documents_every_key") {
  std::string help;
  auto c = parse({"--help"}, &help);
  REQUIRE(c.has_value());
  for (const char* key : {"--socket", "--instance", "--pool-size", "--segment-size", "--max-object-size",
                          "--config", "--log-level", "--write-timeout-ms", "--hello-timeout-ms", "TENSORSHM_SOCKET"})
    CHECK_MESSAGE(help.find(key) != std::string::npos, key);
  CHECK(help.find("--shm-dir") == std::string::npos);  // parsed only to be refused
}

}  // namespace
