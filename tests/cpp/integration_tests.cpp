// Integration tests against the real tensorshmd: each test starts the daemon
// on a temporary socket with its own instance name and a 64 MiB pool, drives
// it through the public client, raw sockets and tshm_test_peer processes, and
// stops it with SIGTERM (the fixture checks exit status 0 and that /dev/shm
// holds no file of the instance afterwards).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "daemon_fixture.hpp"
#include "tensorshm/names.hpp"
#include "test_data.hpp"

using namespace tensorshm;
using namespace tshm_test;

namespace {

constexpr std::size_t kMiB = 1u << 20;

ObjectInfo put_pattern(Client& c, const std::string& name, std::size_t n, std::uint64_t seed,
                       const CreateOptions& options = {}) {
  auto b = c.create(name, dtypes::kUInt8, {static_cast<std::int64_t>(n)}, options);
  fill_pattern(b.data(), n, seed);
  return b.seal();
}

// The Errc a call throws, or Errc::ok when it does not throw.
template <class Fn>
Errc error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Exception& e) {
    return e.code();
  }
  return Errc::ok;
}

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Exception& e) {
    return e.what();
  }
  return {};
}

bool exists(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0;
}

std::string expected_sum(std::size_t n, std::uint64_t seed) { return hex(pattern_checksum(n, seed)); }

wire::CreateObjectT create_request(const std::string& name, DType dtype, std::vector<std::int64_t> shape) {
  wire::CreateObjectT m;
  m.name = name;
  m.dtype = std::make_unique<wire::DType>(protocol::to_wire(dtype));
  m.shape = std::move(shape);
  return m;
}

// ---- handoff between processes ------------------------------------------------

TEST_CASE("a_tensor_put_by_one_process_is_read_by_another_through_a_read_only_mapping") {
  Daemon d;
  const std::size_t n = 3 * kMiB + 123;
  auto [put_code, put_lines] = d.run_peer({"put", "handoff/frame", std::to_string(n), "7"});
  REQUIRE(put_code == 0);
  REQUIRE(put_lines.size() == 1);
  CHECK(field(put_lines[0], "checksum") == expected_sum(n, 7));

  auto [get_code, get_lines] = d.run_peer({"get", "handoff/frame"});
  REQUIRE(get_code == 0);
  REQUIRE(get_lines.size() == 2);
  CHECK(get_lines[0] == "waiting");
  CHECK(field(get_lines[1], "version") == field(put_lines[0], "version"));
  CHECK(field(get_lines[1], "nbytes") == std::to_string(n));
  CHECK(field(get_lines[1], "checksum") == expected_sum(n, 7));
  CHECK(field(get_lines[1], "readonly") == "1");
  CHECK(field(get_lines[1], "path").starts_with("/memfd:tensorshm." + d.instance() + ".p"));  // not a name anyone can open

  // This process reads the same bytes in place, from its own read-only mapping
  // of the segment, mapped once and shared by its gets.
  auto c = d.connect();
  auto o = c.get("handoff/frame");
  CHECK(checksum(o.data(), o.nbytes()) == pattern_checksum(n, 7));
  const auto m = mapping_of(o.data());
  CHECK(m.read_only_shared());
  CHECK(m.path.starts_with("/memfd:tensorshm." + d.instance() + ".p"));
  auto again = c.get("handoff/frame");
  CHECK(again.data() == o.data());
  CHECK(c.stats().leases == 2);
}

TEST_CASE("writing_through_a_got_pointer_faults_and_leaves_the_object_intact") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "read/only", 8192, 3);
  auto scribbler = d.peer({"scribble", "read/only"});
  auto line = scribbler.read_line();
  REQUIRE(line.has_value());
  CHECK(line->starts_with("writing"));
  CHECK(field(*line, "readonly") == "1");
  const int status = scribbler.wait();
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);

  auto o = c.get("read/only");
  CHECK(checksum(o.data(), o.nbytes()) == pattern_checksum(8192, 3));
  // The crashed reader's lease went with its connection.
  CHECK(d.stats_when([](const Stats& s) { return s.leases == 1; }).leases == 1);
}

TEST_CASE("get_of_unknown_name_fails_with_not_found") {
  Daemon d;
  auto c = d.connect();
  CHECK(error_of([&] { (void)c.get("no/such/object"); }) == Errc::not_found);
  CHECK(message_of([&] { (void)c.get("no/such/object"); }).find("no/such/object") != std::string::npos);
  CHECK(error_of([&] { (void)c.stat("no/such/object"); }) == Errc::not_found);
  CHECK(error_of([&] { c.remove("no/such/object"); }) == Errc::not_found);
  auto [code, lines] = d.run_peer({"get", "no/such/object"});
  CHECK(code == 3);
  REQUIRE(lines.size() == 2);
  CHECK(field(lines[1], "code") == "not_found");
}

TEST_CASE("a_client_with_no_daemon_fails_with_daemon_unreachable_naming_the_socket") {
  Client::Options o;
  o.socket_path = "/tmp/tshm-no-daemon-" + std::to_string(::getpid()) + ".sock";
  try {
    (void)Client::connect(o);
    FAIL("connected to a socket nobody listens on");
  } catch (const Exception& e) {
    CHECK(e.code() == Errc::daemon_unreachable);
    CHECK(std::string(e.what()).find(o.socket_path) != std::string::npos);
  }
}

// ---- versions and waiting -------------------------------------------------------

TEST_CASE("each_put_makes_a_newer_version_and_get_returns_the_latest") {
  Daemon d;
  auto c = d.connect();
  auto [code, lines] = d.run_peer({"put", "v", "5000", "1"});
  REQUIRE(code == 0);
  const std::uint64_t v1 = std::stoull(field(lines.at(0), "version"));
  const auto v2 = put_pattern(c, "v", 6000, 2);
  CHECK(v2.version > v1);
  auto o = c.get("v");
  CHECK(o.version() == v2.version);
  CHECK(o.nbytes() == 6000);
  CHECK(checksum(o.data(), o.nbytes()) == pattern_checksum(6000, 2));
  CHECK(c.stat("v").version == v2.version);
  CHECK(c.list().size() == 1);
  // The unleased old version was freed at once.
  CHECK(c.stats().versions == 1);
}

TEST_CASE("a_get_for_a_newer_version_waits_until_another_process_puts_it") {
  Daemon d;
  auto c = d.connect();
  const auto v1 = put_pattern(c, "stream", 4096, 1);
  auto waiter = d.peer({"get", "stream", std::to_string(v1.version), "20000"});
  REQUIRE(waiter.read_line() == std::optional<std::string>("waiting"));
  // The waiter is most likely parked in the daemon by now; the outcome is the
  // same if it is not.
  std::this_thread::sleep_for(50ms);
  const auto v2 = put_pattern(c, "stream", 4096, 2);
  auto got = waiter.read_line();
  REQUIRE(got.has_value());
  CHECK(field(*got, "version") == std::to_string(v2.version));
  CHECK(field(*got, "checksum") == expected_sum(4096, 2));
  CHECK(exit_code(waiter.wait()) == 0);
}

TEST_CASE("a_get_with_a_timeout_waits_for_a_name_to_appear") {
  Daemon d;
  auto c = d.connect();
  auto waiter = d.peer({"get", "later", "0", "20000"});
  REQUIRE(waiter.read_line() == std::optional<std::string>("waiting"));
  std::this_thread::sleep_for(50ms);
  (void)put_pattern(c, "later", 100, 5);
  auto got = waiter.read_line();
  REQUIRE(got.has_value());
  CHECK(got->starts_with("got "));
  CHECK(field(*got, "checksum") == expected_sum(100, 5));
}

TEST_CASE("a_get_for_a_newer_version_that_never_comes_fails_with_timeout") {
  Daemon d;
  auto c = d.connect();
  const auto v1 = put_pattern(c, "quiet", 64, 1);
  GetOptions o;
  o.newer_than = v1.version;
  o.timeout = 100ms;
  CHECK(error_of([&] { (void)c.get("quiet", o); }) == Errc::timeout);
  o.timeout = 0ms;
  CHECK(error_of([&] { (void)c.get("quiet", o); }) == Errc::not_found);
  auto [code, lines] = d.run_peer({"get", "quiet", std::to_string(v1.version), "100"});
  CHECK(code == 3);
  REQUIRE(lines.size() == 2);
  CHECK(field(lines[1], "code") == "timeout");
  // The connection that timed out still serves.
  CHECK(c.get("quiet").version() == v1.version);
}

// ---- leases and delete -------------------------------------------------------------

TEST_CASE("a_lease_keeps_an_old_version_readable_after_a_new_put") {
  Daemon d;
  auto c = d.connect();
  const auto v1 = put_pattern(c, "x", kMiB, 1);
  Object old = c.get("x");
  auto [code, lines] = d.run_peer({"put", "x", std::to_string(kMiB), "2"});
  REQUIRE(code == 0);
  CHECK(old.version() == v1.version);
  CHECK(checksum(old.data(), old.nbytes()) == pattern_checksum(kMiB, 1));
  auto s = c.stats();
  CHECK(s.versions == 2);
  CHECK(s.objects == 1);
  CHECK(s.leases == 1);
  {
    Object cur = c.get("x");
    CHECK(cur.version() > v1.version);
    CHECK(cur.data() != old.data());
    CHECK(checksum(cur.data(), cur.nbytes()) == pattern_checksum(kMiB, 2));
  }
  const std::uint64_t used_both = c.stats().pool_used_bytes;
  old.release();
  s = c.stats();
  CHECK(s.versions == 1);
  CHECK(s.leases == 0);
  CHECK(s.pool_used_bytes < used_both);
}

TEST_CASE("delete_hides_a_name_while_a_leased_version_stays_readable_until_released") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "doomed", 2 * kMiB, 4);
  Object held = c.get("doomed");
  c.remove("doomed");
  CHECK(error_of([&] { (void)c.get("doomed"); }) == Errc::not_found);
  CHECK(error_of([&] { (void)c.stat("doomed"); }) == Errc::not_found);
  CHECK(c.list().empty());
  CHECK(error_of([&] { c.remove("doomed"); }) == Errc::not_found);
  CHECK(checksum(held.data(), held.nbytes()) == pattern_checksum(2 * kMiB, 4));
  auto s = c.stats();
  CHECK(s.objects == 0);
  CHECK(s.versions == 1);
  held.release();
  s = c.stats();
  CHECK(s.versions == 0);
  CHECK(s.pool_used_bytes == 0);
}

// ---- a full pool ---------------------------------------------------------------------

TEST_CASE("a_full_pool_fails_with_pool_exhausted_and_recovers_after_release") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "a", 40 * kMiB, 1);
  Object held = c.get("a");
  c.remove("a");
  const std::string why = message_of([&] { (void)c.create("b", dtypes::kUInt8, {40 * kMiB}); });
  CHECK(error_of([&] { (void)c.create("b", dtypes::kUInt8, {40 * kMiB}); }) == Errc::pool_exhausted);
  CHECK(why.find("pool exhausted") != std::string::npos);
  CHECK(why.find("'b'") != std::string::npos);
  CHECK(c.stats().open_creates == 0);
  held.release();
  const auto b = put_pattern(c, "b", 40 * kMiB, 2);
  CHECK(checksum(c.get("b").data(), b.nbytes) == pattern_checksum(40 * kMiB, 2));
}

TEST_CASE("a_create_waiting_for_space_succeeds_when_another_process_releases_it") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "a", 40 * kMiB, 1);
  auto holder = d.peer({"hold", "a"});
  auto held = holder.read_line();
  REQUIRE(held.has_value());
  REQUIRE(held->starts_with("held"));
  c.remove("a");

  std::atomic<bool> created = false;
  Errc failure = Errc::ok;
  std::thread creator([&] {
    try {
      auto other = d.connect("waiting creator");
      CreateOptions o;
      o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(kPatience);
      (void)put_pattern(other, "b", 40 * kMiB, 2, o);
      created = true;
    } catch (const Exception& e) {
      failure = e.code();
    }
  });
  std::this_thread::sleep_for(50ms);  // most likely waiting in the daemon by now
  holder.close_stdin();
  CHECK(holder.read_line() == std::optional<std::string>("released"));
  creator.join();
  CHECK(failure == Errc::ok);
  CHECK(created);
  CHECK(c.get("b").nbytes() == 40 * kMiB);
}

TEST_CASE("a_create_waiting_for_space_that_never_frees_fails_with_timeout") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "a", 40 * kMiB, 1);
  CreateOptions o;
  o.timeout = 100ms;
  CHECK(error_of([&] { (void)c.create("b", dtypes::kUInt8, {40 * kMiB}, o); }) == Errc::timeout);
  CHECK(c.stats().open_creates == 0);
}

// ---- clients that die or leave ----------------------------------------------------------

TEST_CASE("a_killed_client_loses_its_leases_and_half_made_objects") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "kept", kMiB, 1);
  auto holder = d.peer({"hold", "kept"});
  REQUIRE(holder.read_line().value_or("").starts_with("held"));
  auto maker = d.peer({"create-and-hang", "half", std::to_string(8 * kMiB)});
  REQUIRE(maker.read_line().value_or("").starts_with("created"));
  c.remove("kept");  // from now on only the holder's lease keeps it

  auto busy = c.stats();
  CHECK(busy.leases == 1);
  CHECK(busy.open_creates == 1);
  CHECK(busy.versions == 1);
  CHECK(busy.pool_used_bytes > 9 * kMiB);

  holder.signal(SIGKILL);
  maker.signal(SIGKILL);
  CHECK(exit_code(holder.wait()) == 128 + SIGKILL);
  CHECK(exit_code(maker.wait()) == 128 + SIGKILL);
  auto after = d.stats_when([](const Stats& s) {
    return s.leases == 0 && s.open_creates == 0 && s.versions == 0 && s.pool_used_bytes == 0;
  });
  CHECK(after.leases == 0);
  CHECK(after.open_creates == 0);
  CHECK(after.versions == 0);
  CHECK(after.pool_used_bytes == 0);
  CHECK(error_of([&] { (void)c.get("half"); }) == Errc::not_found);
}

TEST_CASE("a_client_disconnecting_mid_create_frees_its_space") {
  Daemon d;
  auto c = d.connect();
  {
    RawSocket raw(d.socket_path());
    raw.hello();
    raw.send(create_request("half/made", dtypes::kFloat32, {2 * 1024 * 1024}), 2);
    auto r = raw.reply();
    REQUIRE(r->body.AsCreateObjectReply() != nullptr);
    auto s = c.stats();
    CHECK(s.open_creates == 1);
    CHECK(s.pool_used_bytes >= 8 * kMiB);
  }
  auto after = d.stats_when([](const Stats& s) { return s.open_creates == 0 && s.pool_used_bytes == 0; });
  CHECK(after.open_creates == 0);
  CHECK(after.pool_used_bytes == 0);
  CHECK(error_of([&] { (void)c.get("half/made"); }) == Errc::not_found);
}

TEST_CASE("a_forked_child_reconnects_and_works_while_the_parent_keeps_its_lease") {
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "family", 4096, 1);
  Object held = c.get("family");
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int rc = 0;
    try {
      if (checksum(held.data(), held.nbytes()) != pattern_checksum(4096, 1)) rc = 10;  // inherited mapping
      Object mine = c.get("family");  // a new connection of the child's own
      if (checksum(mine.data(), mine.nbytes()) != pattern_checksum(4096, 1)) rc = 11;
      (void)put_pattern(c, "from/child", 4096, 9);
      if (c.stats().leases != 2) rc = 12;  // the parent's and the child's
    } catch (...) {
      rc = 13;
    }
    ::_exit(rc);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(exit_code(status) == 0);
  // The parent's connection and lease are untouched by the child's exit.
  CHECK(d.stats_when([](const Stats& s) { return s.leases == 1; }).leases == 1);
  CHECK(checksum(held.data(), held.nbytes()) == pattern_checksum(4096, 1));
  auto o = c.get("from/child");
  CHECK(checksum(o.data(), o.nbytes()) == pattern_checksum(4096, 9));
  CHECK(c.stats().leases == 2);
}

// ---- segments: memory files of the daemon -------------------------------------------------
// d.shm_files() lists the segments the daemon holds open, and any file of the
// instance in /dev/shm (there should never be one).

TEST_CASE("an_object_larger_than_a_pool_segment_gets_a_dedicated_segment_whose_file_goes_with_it") {
  Daemon d(Daemon::Options{{"--segment-size", "16M"}});
  auto c = d.connect();
  REQUIRE(c.daemon_info().segments.size() == 4);
  const auto files_before = d.shm_files();
  const std::size_t n = 24 * kMiB;
  const auto info = put_pattern(c, "huge", n, 3);
  const auto& pool = c.daemon_info().segments;
  CHECK(std::none_of(pool.begin(), pool.end(), [&](const SegmentInfo& s) { return s.id == info.segment_id; }));
  const auto files = d.shm_files();
  REQUIRE(files.size() == files_before.size() + 1);
  std::string dedicated;
  for (const auto& f : files)
    if (std::find(files_before.begin(), files_before.end(), f) == files_before.end()) dedicated = f;
  CHECK(dedicated == "tensorshm." + d.instance() + ".d" + std::to_string(info.segment_id));
  CHECK_FALSE(exists("/dev/shm/" + dedicated));
  auto s = c.stats();
  CHECK(s.dedicated_bytes >= n);
  CHECK(s.pool_used_bytes == 0);

  auto [code, lines] = d.run_peer({"get", "huge"});
  REQUIRE(code == 0);
  REQUIRE(lines.size() == 2);
  CHECK(field(lines[1], "checksum") == expected_sum(n, 3));
  CHECK(field(lines[1], "readonly") == "1");
  CHECK(field(lines[1], "path") == "/memfd:" + dedicated);

  Object held = c.get("huge");
  c.remove("huge");
  const auto while_held = d.shm_files();
  CHECK(std::find(while_held.begin(), while_held.end(), dedicated) != while_held.end());
  CHECK(checksum(held.data(), held.nbytes()) == pattern_checksum(n, 3));
  held.release();                         // one-way: no reply to wait for
  CHECK(c.stats().dedicated_bytes == 0);  // a round trip after it: the release is done
  CHECK(d.shm_files() == files_before);
}

TEST_CASE("shutdown_leaves_no_segment_behind_and_held_objects_stay_readable") {
  Daemon d(Daemon::Options{{"--segment-size", "16M"}});
  auto c = d.connect();
  (void)put_pattern(c, "small", kMiB, 1);
  (void)put_pattern(c, "huge", 20 * kMiB, 2);
  Object small = c.get("small");
  Object huge = c.get("huge");
  Buffer open = c.create("never/sealed", dtypes::kUInt8, {4096});
  CHECK(d.shm_files().size() == 5);  // 4 pool segments, 1 dedicated
  CHECK(d.stop() == 0);
  CHECK(d.shm_files().empty());
  // The mappings outlive the daemon: what a reader holds stays readable.
  CHECK(checksum(small.data(), small.nbytes()) == pattern_checksum(kMiB, 1));
  CHECK(checksum(huge.data(), huge.nbytes()) == pattern_checksum(20 * kMiB, 2));
  CHECK(error_of([&] { (void)c.stats(); }) == Errc::daemon_unreachable);
}

TEST_CASE("a_sigterm_while_the_pool_is_being_reserved_still_removes_every_segment") {
  // A pool of many segments pre-touched by one thread takes a while to
  // reserve; the signal arrives in the middle of it.
  Daemon d(Daemon::Options{{"--pool-size", "2G", "--segment-size", "64M", "--pretouch-threads", "1"}, "", false});
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  while (d.shm_files().size() < 2 && std::chrono::steady_clock::now() < deadline)  // two segments made
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(d.stop() == 0);  // stop() also checks that no file of the instance is left
  CHECK(d.shm_files().empty());
}

TEST_CASE("a_stopping_daemon_wakes_a_client_waiting_in_get_instead_of_waiting_for_its_timeout") {
  Daemon d;
  auto c = d.connect();
  std::atomic<int> outcome{-1};
  std::thread waiter([&] {
    outcome = static_cast<int>(error_of([&] { (void)c.get("never", {0, std::chrono::seconds(600)}); }));
  });
  (void)d.stats_when([](const Stats& s) { return s.clients >= 1; });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the get reach the daemon and park
  CHECK(d.stop() == 0);  // a daemon still waiting would be killed after kPatience and not exit 0
  waiter.join();
  CHECK(outcome == static_cast<int>(Errc::daemon_unreachable));
}

TEST_CASE("files_planted_under_the_instances_names_in_dev_shm_are_neither_used_nor_touched") {
  // Segments are memory files nobody can name: what anyone leaves or plants
  // in /dev/shm under the instance's names (a segment, the old lock, a link)
  // neither stops the daemon nor is written by it.
  const std::string instance = unique_instance();
  const std::string planted = "/dev/shm/tensorshm." + instance + ".p1";
  const std::string old_lock = "/dev/shm/tensorshm." + instance + ".lock";
  const std::string target = "/dev/shm/tshm-target-" + instance;
  std::ofstream(planted) << "planted";
  std::ofstream(target) << "untouched";
  REQUIRE(::symlink(target.c_str(), old_lock.c_str()) == 0);
  {
    Daemon d(Daemon::Options{{"--segment-size", "16M"}, instance});
    auto c = d.connect();
    (void)put_pattern(c, "small", kMiB, 1);
    (void)put_pattern(c, "huge", 20 * kMiB, 2);
    auto o = c.get("huge");
    CHECK(checksum(o.data(), o.nbytes()) == pattern_checksum(20 * kMiB, 2));
    CHECK(read_file(planted) == "planted");
    CHECK(read_file(target) == "untouched");
    ::unlink(planted.c_str());  // before the fixture's check that the daemon left nothing in /dev/shm
    ::unlink(old_lock.c_str());
    CHECK(d.stop() == 0);
  }
  CHECK(read_file(target) == "untouched");
  ::unlink(target.c_str());
}

TEST_CASE("a_second_daemon_with_the_same_instance_on_another_socket_serves_beside_the_first") {
  // Instances only label memory files: they cannot collide.
  Daemon d;
  auto c = d.connect();
  (void)put_pattern(c, "mine", 4096, 1);
  Daemon other(Daemon::Options{{}, d.instance()});
  auto c2 = other.connect();
  (void)put_pattern(c2, "mine", 4096, 2);
  auto a = c.get("mine");
  auto b = c2.get("mine");
  CHECK(checksum(a.data(), a.nbytes()) == pattern_checksum(4096, 1));
  CHECK(checksum(b.data(), b.nbytes()) == pattern_checksum(4096, 2));
}

TEST_CASE("a_second_daemon_on_the_same_socket_refuses_to_start_and_leaves_nothing") {
  Daemon d;
  const std::string other = unique_instance();
  std::string out;
  const int code = Daemon::run_to_exit(
      {"--socket", d.socket_path(), "--instance", other, "--pool-size", "8M", "--pretouch-threads", "1"}, &out);
  CHECK(code != 0);
  CHECK(out.find("another tensorshmd (pid " + std::to_string(d.pid()) + ") serves this socket") != std::string::npos);
  CHECK(shm_files_of(other).empty());
  auto c = d.connect();  // the socket still belongs to the first daemon
  (void)c.ping();
}

// ---- bad input over the wire --------------------------------------------------------------

TEST_CASE("bad_names_dtypes_and_shapes_fail_with_the_right_code_and_lose_nothing") {
  Daemon d(Daemon::Options{{"--max-object-size", "32M"}});
  auto c = d.connect();
  const std::uint64_t word = 0;  // a put of it is one round trip (PutBytes)
  for (const std::string& bad : {std::string(""), std::string("a b"), std::string("a/../b"), std::string("/lead"),
                                std::string("trail/"), std::string("a//b"), std::string(256, 'n'),
                                std::string("nul\0byte", 8)}) {
    CAPTURE(printable_name(bad));
    CHECK(error_of([&] { (void)c.create(bad, dtypes::kUInt8, {1}); }) == Errc::invalid_name);
    CHECK(error_of([&] { (void)c.put(bad, HostView{&word, dtypes::kUInt8, {8}, {}}); }) == Errc::invalid_name);
    CHECK(error_of([&] { (void)c.get(bad); }) == Errc::invalid_name);
    CHECK(error_of([&] { c.remove(bad); }) == Errc::invalid_name);
  }
  CHECK(error_of([&] { (void)c.create("odd", DType{3, 64, 1}, {4}); }) == Errc::unsupported_dtype);
  CHECK(error_of([&] { (void)c.create("odd", DType{2, 32, 4}, {4}); }) == Errc::unsupported_dtype);
  CHECK(error_of([&] { (void)c.put("odd", HostView{&word, DType{3, 64, 1}, {1}, {}}); }) == Errc::unsupported_dtype);
  CHECK(error_of([&] { (void)c.put("neg", HostView{&word, dtypes::kUInt8, {-1}, {}}); }) == Errc::invalid_argument);
  CHECK(error_of([&] { (void)c.create("neg", dtypes::kFloat32, {4, -1}); }) == Errc::invalid_argument);
  const std::vector<std::int64_t> dims33(33, 1);
  CHECK(error_of([&] { (void)c.create("deep", dtypes::kFloat32, dims33); }) == Errc::invalid_argument);
  CHECK(error_of([&] {
          (void)c.create("overflow", dtypes::kComplex128, {std::int64_t{1} << 40, std::int64_t{1} << 40});
        }) == Errc::invalid_argument);
  const std::string oversize = message_of([&] { (void)c.create("oversize", dtypes::kUInt8, {64 * kMiB}); });
  CHECK(oversize.find("'oversize'") != std::string::npos);
  CHECK(error_of([&] { (void)c.create("oversize", dtypes::kUInt8, {64 * kMiB}); }) == Errc::invalid_argument);
  CreateOptions bad_strides;
  bad_strides.strides = {1};
  CHECK(error_of([&] { (void)c.create("strided", dtypes::kFloat32, {2, 2}, bad_strides); }) ==
        Errc::invalid_argument);
  CHECK(error_of([&] { (void)c.list(std::string(300, 'p')); }) == Errc::invalid_name);

  // Nothing was half made, and the connection still serves.
  const auto s = c.stats();
  CHECK(s.open_creates == 0);
  CHECK(s.pool_used_bytes == 0);
  CHECK(s.dedicated_bytes == 0);
  CHECK(put_pattern(c, "fine", 10, 1).version > 0);
}

TEST_CASE("stat_of_an_invalid_name_fails_with_invalid_name") {
  Daemon d;
  auto c = d.connect();
  CHECK(error_of([&] { (void)c.stat("a/../b"); }) == Errc::invalid_name);
  CHECK(error_of([&] { (void)c.stat(""); }) == Errc::invalid_name);
}

namespace {
std::unique_ptr<protocol::Message> request(RawSocket& raw, wire::BodyUnion body) {
  static std::uint32_t id = 100;
  raw.send(body, ++id);
  return raw.reply();
}
template <class T>
std::unique_ptr<protocol::Message> request(RawSocket& raw, T body) {
  wire::BodyUnion u;
  u.Set(std::move(body));
  return request(raw, std::move(u));
}
Errc code_of(const std::unique_ptr<protocol::Message>& m) {
  const auto* e = m->body.AsErrorReply();
  return e ? static_cast<Errc>(e->code) : Errc::ok;
}
wire::SealT seal(std::uint64_t id) {
  wire::SealT m;
  m.object_id = id;
  return m;
}
wire::AbortT abort_of(std::uint64_t id) {
  wire::AbortT m;
  m.object_id = id;
  return m;
}
wire::ReleaseT release(std::uint64_t id) {
  wire::ReleaseT m;
  m.object_id = id;
  return m;
}
}  // namespace

TEST_CASE("seal_abort_and_release_of_something_not_yours_or_not_open_fail_with_not_open") {
  Daemon d;
  auto c = d.connect();
  Buffer theirs = c.create("theirs", dtypes::kUInt8, {10});
  const std::uint64_t their_id = theirs.info().object_id;

  RawSocket raw(d.socket_path());
  raw.hello();
  CHECK(code_of(request(raw, seal(their_id))) == Errc::not_open);
  CHECK(code_of(request(raw, abort_of(their_id))) == Errc::not_open);
  CHECK(code_of(request(raw, release(their_id))) == Errc::not_open);
  CHECK(code_of(request(raw, seal(987654321))) == Errc::not_open);
  CHECK(theirs.seal().version > 0);  // still open for its creator
  CHECK(code_of(request(raw, release(their_id))) == Errc::not_open);  // sealed, but not leased by raw

  auto created = request(raw, create_request("mine", dtypes::kUInt8, {10}));
  REQUIRE(created->body.AsCreateObjectReply() != nullptr);
  const std::uint64_t mine = created->body.AsCreateObjectReply()->object->object_id;
  CHECK(code_of(request(raw, release(mine))) == Errc::not_open);  // open, not leased
  CHECK(code_of(request(raw, seal(mine))) == Errc::ok);
  CHECK(code_of(request(raw, seal(mine))) == Errc::not_open);
  CHECK(code_of(request(raw, abort_of(mine))) == Errc::not_open);
  wire::GetT get;
  get.name = "mine";
  CHECK(code_of(request(raw, std::move(get))) == Errc::ok);
  CHECK(code_of(request(raw, release(mine))) == Errc::ok);
  CHECK(code_of(request(raw, release(mine))) == Errc::not_open);
  CHECK(c.stats().leases == 0);

  // A one-way release gets no reply, not even an error; the next request's
  // reply comes next, and the release is done by then.
  wire::GetT again;
  again.name = "mine";
  CHECK(code_of(request(raw, std::move(again))) == Errc::ok);
  CHECK(c.stats().leases == 1);
  for (int i = 0; i < 2; ++i) {  // the second one releases nothing
    wire::ReleaseT one_way = release(mine);
    one_way.no_reply = true;
    raw.send(std::move(one_way), 900 + i);
  }
  auto stats = request(raw, wire::StatsT{});
  REQUIRE(stats->body.AsStatsReply() != nullptr);
  CHECK(stats->body.AsStatsReply()->leases == 0);
}

TEST_CASE("another_user_can_neither_read_nor_map_nor_replace_a_private_object") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: acting as another user (uid 65534) needs root");
    return;
  }
  Daemon d(Daemon::Options{{"--socket-mode", "0666", "--segment-size", "16M"}});
  REQUIRE(::chmod(d.dir().c_str(), 0755) == 0);
  auto c = d.connect();
  (void)put_pattern(c, "private", 4096, 1);
  CreateOptions everyone;
  everyone.share = Share::everyone;
  (void)put_pattern(c, "public", 4096, 2, everyone);
  Buffer open = c.create("open/by/root", dtypes::kUInt8, {10});
  const std::uint32_t private_segment = c.stat("private").segment_id;
  const std::uint32_t public_segment = c.stat("public").segment_id;
  CHECK(private_segment != public_segment);  // a segment holds one reader class

  // A child turned into uid 65534 reports "check=errc" lines on a pipe.
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    const int out = pipe_fds[1];
    auto report = [&](const char* check, Errc e) { ::dprintf(out, "%s=%s\n", check, errc_name(e).data()); };
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(20);
    try {
      auto nobody = Client::connect(Client::Options{d.socket_path(), "nobody"});
      report("get_private", error_of([&] { (void)nobody.get("private"); }));
      report("stat_private", error_of([&] { (void)nobody.stat("private"); }));
      report("put_private", error_of([&] { (void)put_pattern(nobody, "private", 16, 3); }));
      report("remove_private", error_of([&] { nobody.remove("private"); }));
      ::dprintf(out, "listed=%zu\n", nobody.list().size());
      report("get_public", error_of([&] {
               auto o = nobody.get("public");
               if (checksum(o.data(), o.nbytes()) != pattern_checksum(4096, 2) ||
                   !mapping_of(o.data()).read_only_shared())
                 throw Exception(Errc::internal, "wrong bytes or a writable mapping");
             }));
      RawSocket raw(d.socket_path());
      raw.hello();
      wire::MapSegmentT map;
      map.segment_id = private_segment;
      report("map_private", code_of(request(raw, map)));
      map.segment_id = public_segment;
      report("map_public", code_of(request(raw, map)));
      map.writable = true;
      report("map_public_writable", code_of(request(raw, map)));
      report("seal_roots_open_object", code_of(request(raw, seal(open.info().object_id))));
    } catch (const Exception& e) {
      report("exception", e.code());
    } catch (...) {  // a failed REQUIRE in the child must not run the rest of the suite here
      report("exception", Errc::internal);
    }
    ::close(out);
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::map<std::string, std::string> got;
  {
    LineReader lines(pipe_fds[0]);
    while (auto line = lines.next()) {
      const auto eq = line->find('=');
      got[line->substr(0, eq)] = line->substr(eq + 1);
    }
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(exit_code(status) == 0);
  CHECK(got.count("exception") == 0);
  CHECK(got["get_private"] == "permission_denied");
  CHECK(got["stat_private"] == "permission_denied");
  CHECK(got["put_private"] == "permission_denied");
  CHECK(got["remove_private"] == "permission_denied");
  CHECK(got["listed"] == "1");
  CHECK(got["get_public"] == "ok");
  CHECK(got["map_private"] == "permission_denied");
  CHECK(got["map_public"] == "ok");
  CHECK(got["map_public_writable"] == "permission_denied");
  CHECK(got["seal_roots_open_object"] == "not_open");
  // Root's objects are untouched.
  CHECK(checksum(c.get("private").data(), 4096) == pattern_checksum(4096, 1));
  CHECK(open.seal().version > 0);
}

// ---- malformed frames on a raw socket --------------------------------------------------------

// Sends `bytes` on a fresh connection and checks that the daemon hangs up on
// it while an established client keeps being served.
void expect_hang_up(Daemon& d, const std::vector<std::byte>& bytes, bool say_hello_first = false,
                    bool then_shutdown = false) {
  auto bystander = d.connect("bystander");
  RawSocket raw(d.socket_path());
  if (say_hello_first) raw.hello();
  raw.send_bytes(bytes);
  if (then_shutdown) raw.shutdown_write();
  CHECK(raw.closed_by_peer());
  (void)bystander.ping();
  (void)d.connect("newcomer").ping();
  CHECK(d.running());
}

std::vector<std::byte> frame_with(protocol::FrameHeader h, const std::vector<std::byte>& payload) {
  const auto hb = protocol::encode_header(h);
  std::vector<std::byte> out(hb.size() + payload.size());
  std::copy(hb.begin(), hb.end(), out.begin());
  std::copy(payload.begin(), payload.end(), out.begin() + static_cast<std::ptrdiff_t>(hb.size()));
  return out;
}

std::vector<std::byte> stats_frame() { return protocol::encode(wire::StatsT{}, 5); }

TEST_CASE("a_frame_with_bad_magic_closes_the_connection_and_the_daemon_keeps_serving") {
  Daemon d;
  const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  std::vector<std::byte> bytes(http.size());
  std::memcpy(bytes.data(), http.data(), http.size());
  expect_hang_up(d, bytes);
}

TEST_CASE("an_oversized_frame_closes_the_connection_before_its_payload_is_read") {
  Daemon d;
  protocol::FrameHeader h;
  h.type = static_cast<std::uint16_t>(wire::Body::Stats);
  h.length = protocol::kMaxPayload + 1;
  expect_hang_up(d, frame_with(h, {}), /*say_hello_first=*/true);
}

TEST_CASE("a_truncated_frame_closes_the_connection_and_the_daemon_keeps_serving") {
  Daemon d;
  wire::GetT g;
  g.name = "some/long/enough/name";
  auto bytes = protocol::encode(std::move(g), 5);
  bytes.resize(bytes.size() - 7);
  expect_hang_up(d, bytes, /*say_hello_first=*/true, /*then_shutdown=*/true);
}

TEST_CASE("a_garbage_payload_closes_the_connection_and_the_daemon_keeps_serving") {
  Daemon d;
  protocol::FrameHeader h;
  h.type = static_cast<std::uint16_t>(wire::Body::Get);
  h.length = 64;
  expect_hang_up(d, frame_with(h, std::vector<std::byte>(64, std::byte{0xAB})), /*say_hello_first=*/true);
}

TEST_CASE("a_frame_whose_type_differs_from_its_payload_closes_the_connection") {
  Daemon d;
  auto bytes = stats_frame();
  bytes[6] = static_cast<std::byte>(wire::Body::Get);
  expect_hang_up(d, bytes, /*say_hello_first=*/true);
}

TEST_CASE("a_frame_of_unknown_type_closes_the_connection") {
  Daemon d;
  auto bytes = stats_frame();
  bytes[6] = std::byte{200};
  expect_hang_up(d, bytes, /*say_hello_first=*/true);
}

TEST_CASE("a_first_message_other_than_hello_is_answered_with_protocol_error_and_closed") {
  Daemon d;
  RawSocket raw(d.socket_path());
  raw.send(wire::StatsT{});
  auto r = raw.reply();
  CHECK(code_of(r) == Errc::protocol_error);
  CHECK(raw.closed_by_peer());
  (void)d.connect().ping();
}

TEST_CASE("a_peer_of_another_protocol_version_gets_the_version_mismatch_text_and_is_closed") {
  Daemon d;
  auto bytes = stats_frame();
  bytes[4] = std::byte{static_cast<unsigned char>(protocol::kVersion + 1)};
  RawSocket raw(d.socket_path());
  raw.send_bytes(bytes);
  auto f = raw.read_frame();
  REQUIRE(f.has_value());
  CHECK(f->first.type == protocol::kVersionMismatchType);
  CHECK(f->first.request_id == 5);
  const std::string text(reinterpret_cast<const char*>(f->second.data()), f->second.size());
  CHECK(text.find("version " + std::to_string(protocol::kVersion + 1)) != std::string::npos);
  CHECK(raw.closed_by_peer());
  (void)d.connect().ping();
}

// ---- metadata ----------------------------------------------------------------------------------

TEST_CASE("list_and_stat_describe_the_latest_sealed_versions") {
  Daemon d;
  auto c = d.connect();
  for (const char* n : {"cam/0", "cam/1", "lidar/0"}) {
    auto b = c.create(n, dtypes::kFloat32, {2, 3});
    b.seal();
  }
  Buffer unsealed = c.create("cam/2", dtypes::kFloat32, {2, 3});
  CHECK(c.list("cam/").size() == 2);
  CHECK(c.list("cam/", 1).size() == 1);
  CHECK(c.list().size() == 3);
  const auto st = c.stat("cam/0");
  CHECK(st.name == "cam/0");
  CHECK(st.dtype == dtypes::kFloat32);
  CHECK(st.shape == std::vector<std::int64_t>{2, 3});
  CHECK(st.strides == std::vector<std::int64_t>{3, 1});
  CHECK(st.nbytes == 24);
  CHECK(st.sealed);
  CHECK(st.owner_uid == ::getuid());
}

TEST_CASE("put_of_a_non_contiguous_view_stores_it_packed_in_c_order") {
  Daemon d;
  auto c = d.connect();
  // A 3x4 int32 matrix; its transpose (4x3, strides {1, 4}) is Fortran order
  // and kept as is; every other column (3x2, strides {4, 2}) is packed.
  std::vector<std::int32_t> m(12);
  for (int i = 0; i < 12; ++i) m[i] = i;
  HostView cols{m.data(), dtypes::kInt32, {3, 2}, {4, 2}};
  const auto info = c.put("cols", cols);
  CHECK(info.strides == std::vector<std::int64_t>{2, 1});
  auto o = c.get("cols");
  const auto* p = static_cast<const std::int32_t*>(o.data());
  CHECK(std::vector<std::int32_t>(p, p + 6) == std::vector<std::int32_t>{0, 2, 4, 6, 8, 10});
  HostView transposed{m.data(), dtypes::kInt32, {4, 3}, {1, 4}};
  CHECK(c.put("t", transposed).strides == std::vector<std::int64_t>{1, 4});
}

TEST_CASE("large_puts_copied_by_several_threads_arrive_whole_dense_fortran_and_packed") {
  Daemon d;
  Client::Options o{d.socket_path(), "copy-threads"};
  o.copy_threads = 4;
  auto c = Client::connect(o);
  // 6 MiB of int32 (above the 2 MiB parallel minimum), 1024 x 1536.
  const std::int64_t rows = 1024, cols = 1536;
  std::vector<std::int32_t> m(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<std::int32_t>(i * 7 + 1);
  const auto at = [&](std::int64_t r, std::int64_t k) { return m[static_cast<std::size_t>(r * cols + k)]; };

  c.put("dense", HostView{m.data(), dtypes::kInt32, {rows, cols}, {}});
  auto o1 = c.get("dense");
  CHECK(std::memcmp(o1.data(), m.data(), m.size() * 4) == 0);

  // The transpose is Fortran order: kept as is, one dense copy.
  CHECK(c.put("transposed", HostView{m.data(), dtypes::kInt32, {cols, rows}, {1, cols}}).strides ==
        std::vector<std::int64_t>{1, cols});
  auto o2 = c.get("transposed");
  CHECK(std::memcmp(o2.data(), m.data(), m.size() * 4) == 0);

  // Every other column: packed to C order, rows split between the threads.
  c.put("halves", HostView{m.data(), dtypes::kInt32, {rows, cols / 2}, {cols, 2}});
  auto o3 = c.get("halves");
  const auto* p = static_cast<const std::int32_t*>(o3.data());
  bool same = true;
  for (std::int64_t r = 0; r < rows && same; ++r)
    for (std::int64_t k = 0; k < cols / 2 && same; ++k) same = p[r * (cols / 2) + k] == at(r, 2 * k);
  CHECK(same);
}

TEST_CASE("large_puts_copied_by_several_threads_that_fail_lose_nothing_bad_name_bad_shape_full_pool") {
  Daemon d;
  Client::Options o{d.socket_path(), "copy-threads-failing"};
  o.copy_threads = 4;
  auto c = Client::connect(o);
  std::vector<std::uint8_t> big(48 * kMiB, 7);
  const HostView all{big.data(), dtypes::kUInt8, {static_cast<std::int64_t>(big.size())}, {}};
  CHECK(error_of([&] { c.put("bad//name", all); }) == Errc::invalid_name);
  CHECK(error_of([&] { c.put("negative", HostView{big.data(), dtypes::kUInt8, {-1, 1024}, {}}); }) ==
        Errc::invalid_argument);
  // 48 MiB fits the 64 MiB pool once; a second one while the first is held does not.
  c.put("one", all);
  Object held = c.get("one");
  const std::string why = message_of([&] { c.put("two", all); });
  CHECK(why.find("pool exhausted") != std::string::npos);
  const auto s = c.stats();
  CHECK(s.open_creates == 0);
  CHECK(s.objects == 1);
  CHECK(error_of([&] { (void)c.stat("two"); }) == Errc::not_found);
  // Once the space is back, the same put goes through whole.
  held.release();
  c.remove("one");
  big[big.size() - 1] = 9;
  c.put("two", all);
  auto two = c.get("two");
  CHECK(std::memcmp(two.data(), big.data(), big.size()) == 0);
}

TEST_CASE("a_put_whose_strides_do_not_match_its_shape_fails_with_invalid_argument_and_leaves_nothing") {
  Daemon d;
  auto c = d.connect();
  std::vector<std::int32_t> m(64, 1);
  const std::string what = message_of([&] { c.put("mismatch", HostView{m.data(), dtypes::kInt32, {8, 8}, {1}}); });
  CHECK(what.find("1 strides for 2 dimensions") != std::string::npos);
  CHECK(error_of([&] { (void)c.stat("mismatch"); }) == Errc::not_found);
}

}  // namespace

// ---- small puts in one round trip (PutBytes) ---------------------------------------

namespace {

wire::PutBytesT put_bytes_request(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
                                  std::vector<std::uint8_t> data) {
  wire::PutBytesT m;
  m.name = name;
  m.dtype = std::make_unique<wire::DType>(protocol::to_wire(dtype));
  m.shape = std::move(shape);
  m.data = std::move(data);
  return m;
}

/// Waits until `ready()` holds; false after 10 s (something hangs).
template <class Ready>
bool poll_until(Ready ready) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!ready() && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return ready();
}

std::vector<std::uint8_t> counting(std::size_t n) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(i * 13 + 5);
  return v;
}

}  // namespace

TEST_CASE("a_put_bytes_request_creates_fills_and_seals_in_one_round_trip") {
  Daemon d;
  auto c = d.connect();
  CHECK((c.daemon_info().features & protocol::kFeaturePutBytes) != 0);
  RawSocket raw(d.socket_path());
  raw.hello();
  auto r = request(raw, put_bytes_request("small/one", dtypes::kInt16, {3, 5}, counting(30)));
  REQUIRE(r->body.AsSealReply() != nullptr);
  const auto& desc = *r->body.AsSealReply()->object;
  CHECK(desc.sealed);
  CHECK(desc.nbytes == 30);
  CHECK(desc.shape == std::vector<std::int64_t>{3, 5});
  auto o = c.get("small/one");
  const auto* p = static_cast<const std::uint8_t*>(o.data());
  CHECK(std::vector<std::uint8_t>(p, p + 30) == counting(30));
  CHECK(o.info().version == desc.version);
  auto empty = request(raw, put_bytes_request("small/empty", dtypes::kFloat32, {4, 0}, {}));
  REQUIRE(empty->body.AsSealReply() != nullptr);
  CHECK(empty->body.AsSealReply()->object->nbytes == 0);
  CHECK(c.stats().open_creates == 0);
}

TEST_CASE("a_put_bytes_request_whose_data_does_not_fit_its_layout_fails_and_leaves_nothing") {
  Daemon d;
  auto c = d.connect();
  RawSocket raw(d.socket_path());
  raw.hello();
  for (std::size_t n : {std::size_t{0}, std::size_t{29}, std::size_t{31}, std::size_t{4096}}) {
    CAPTURE(n);
    auto r = request(raw, put_bytes_request("small/bad", dtypes::kInt16, {3, 5}, counting(n)));
    REQUIRE(r->body.AsErrorReply() != nullptr);
    CHECK(code_of(r) == Errc::invalid_argument);
    CHECK(r->body.AsErrorReply()->message ==
          "put 'small/bad': " + std::to_string(n) + " bytes of data for an object of 30 bytes (int16, 2 dimension(s))");
  }
  CHECK(code_of(request(raw, put_bytes_request("a/../b", dtypes::kUInt8, {1}, counting(1)))) == Errc::invalid_name);
  CHECK(code_of(request(raw, put_bytes_request("odd", DType{3, 64, 1}, {1}, counting(8)))) ==
        Errc::unsupported_dtype);
  CHECK(error_of([&] { (void)c.get("small/bad"); }) == Errc::not_found);
  const auto s = c.stats();
  CHECK(s.open_creates == 0);
  CHECK(s.pool_used_bytes == 0);
  CHECK(code_of(request(raw, put_bytes_request("small/ok", dtypes::kUInt8, {3}, counting(3)))) == Errc::ok);
}

TEST_CASE("a_put_bytes_request_in_a_full_pool_fails_with_pool_exhausted_and_leaves_nothing") {
  Daemon d;
  auto c = d.connect();
  std::vector<Buffer> held;  // open creates fill the pool
  for (std::int64_t size : {std::int64_t{kMiB}, std::int64_t{4096}})
    for (;;) {
      try {
        held.push_back(c.create("fill/" + std::to_string(held.size()), dtypes::kUInt8, {size}));
      } catch (const Exception& e) {
        REQUIRE(e.code() == Errc::pool_exhausted);
        break;
      }
    }
  const auto before = c.stats();
  RawSocket raw(d.socket_path());
  raw.hello();
  auto r = request(raw, put_bytes_request("small/nospace", dtypes::kUInt8, {4096}, counting(4096)));
  CHECK(code_of(r) == Errc::pool_exhausted);
  const auto after = c.stats();
  CHECK(after.open_creates == before.open_creates);
  CHECK(after.pool_used_bytes == before.pool_used_bytes);
  // Data of the wrong size is refused at once, not after waiting for space.
  auto wrong = put_bytes_request("small/wrong", dtypes::kUInt8, {4096}, counting(100));
  wrong.timeout_ms = 10000;
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(code_of(request(raw, std::move(wrong))) == Errc::invalid_argument);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  // A producer that hangs up while its put waits for space leaves nothing,
  // even once space comes back (below).
  const auto clients = c.stats().clients;
  {
    RawSocket gone(d.socket_path());
    gone.hello();
    auto ghost = put_bytes_request("small/ghost", dtypes::kUInt8, {4096}, counting(4096));
    ghost.timeout_ms = 60000;
    gone.send(std::move(ghost), 7);
    REQUIRE(poll_until([&] { return c.stats().clients == clients + 1; }));
  }
  REQUIRE(poll_until([&] { return c.stats().clients == clients; }));  // the daemon noticed and ended the session
  // Waiting for space: the request's bytes (read before the wait) still land
  // once another connection's creates are aborted.
  auto waiting = put_bytes_request("small/waited", dtypes::kUInt8, {4096}, counting(4096));
  waiting.timeout_ms = 10000;
  std::thread freer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    held.clear();  // aborted: the space comes back
  });
  auto waited = request(raw, std::move(waiting));
  freer.join();
  REQUIRE(waited->body.AsSealReply() != nullptr);
  auto o = c.get("small/waited");
  const auto* p = static_cast<const std::uint8_t*>(o.data());
  CHECK(std::vector<std::uint8_t>(p, p + 4096) == counting(4096));
  CHECK(error_of([&] { (void)c.get("small/ghost"); }) == Errc::not_found);
  CHECK(c.stats().open_creates == 0);
}

TEST_CASE("puts_at_and_just_past_the_one_round_trip_size_both_arrive_whole") {
  Daemon d;
  auto c = d.connect();
  for (std::size_t n : {std::size_t{protocol::kMaxPutBytes}, std::size_t{protocol::kMaxPutBytes} + 8}) {
    CAPTURE(n);
    std::vector<std::uint8_t> src(n);
    fill_pattern(src.data(), n, n);
    const auto info = c.put("edge", HostView{src.data(), dtypes::kFloat64, {static_cast<std::int64_t>(n / 8)}, {}});
    CHECK(info.nbytes == n);
    CHECK(checksum(c.get("edge").data(), n) == pattern_checksum(n, n));
  }
  CHECK(c.stats().open_creates == 0);
}
