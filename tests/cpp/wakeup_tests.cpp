// Waits end because of the event they wait for, not because of their
// deadline: the daemon re-checks every waiter at its deadline anyway, so a test
// that only checks the outcome passes even when the wake-up never comes. Each
// case here waits with a timeout of kWait and must be released well within
// kWoken of the event. Part of tshm_integration_tests (integration_tests.cpp
// has the main); the C++ client is used because it sends each wait whole (the
// Python client cuts long waits into 200 ms slices, which would hide a missing
// wake-up).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "daemon_fixture.hpp"
#include "test_data.hpp"

using namespace tensorshm;
using namespace tshm_test;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;
// Far apart: a woken waiter returns in milliseconds; a missed wake-up only at
// kWait. kWoken leaves a loaded 2-CPU machine room for scheduling.
constexpr auto kWait = 8s;
constexpr auto kWoken = 3s;

void put_bytes(Client& c, const std::string& name, std::size_t n) {
  auto b = c.create(name, dtypes::kUInt8, {static_cast<std::int64_t>(n)});
  fill_pattern(b.data(), n, 1);
  (void)b.seal();
}

// Runs `wait` on a thread, does `event` once the wait is parked in the daemon,
// and returns how long after the event the wait returned.
template <class Wait, class Event>
Clock::duration released_after(Daemon& d, Wait wait, Event event) {
  std::atomic<bool> done = false;
  Clock::time_point returned{};
  std::thread waiter([&] {
    wait();
    returned = Clock::now();
    done = true;
  });
  // Parked: give the request time to reach the daemon (it waits kWait, so
  // being early costs nothing but makes the check weaker, never wrong).
  std::this_thread::sleep_for(200ms);
  REQUIRE_FALSE(done.load());
  const auto at = Clock::now();
  event();
  waiter.join();
  (void)d;
  return returned - at;
}

TEST_CASE("a_get_waiting_for_a_name_is_woken_by_the_put_not_by_its_deadline") {
  Daemon d;
  auto waiting = d.connect("waiter");
  auto producer = d.connect("producer");
  Object got;
  const auto after = released_after(
      d, [&] { got = waiting.get("later", GetOptions{0, std::chrono::duration_cast<std::chrono::milliseconds>(kWait)}); },
      [&] { put_bytes(producer, "later", 4096); });
  CHECK(got.valid());
  CHECK_MESSAGE(after < kWoken, "the get came back ", std::chrono::duration_cast<std::chrono::milliseconds>(after).count(),
                " ms after the put: woken by its deadline, not by the put");
}

TEST_CASE("a_get_waiting_for_a_newer_version_is_woken_by_the_put_not_by_its_deadline") {
  Daemon d;
  auto waiting = d.connect("waiter");
  auto producer = d.connect("producer");
  put_bytes(producer, "stream", 4096);
  const std::uint64_t v1 = producer.stat("stream").version;
  Object got;
  const auto after = released_after(
      d,
      [&] { got = waiting.get("stream", GetOptions{v1, std::chrono::duration_cast<std::chrono::milliseconds>(kWait)}); },
      [&] { put_bytes(producer, "stream", 4096); });
  CHECK(got.version() > v1);
  CHECK_MESSAGE(after < kWoken, "woken ", std::chrono::duration_cast<std::chrono::milliseconds>(after).count(),
                " ms after the put");
}

TEST_CASE("a_create_waiting_for_space_is_woken_by_the_delete_that_frees_it_not_by_its_deadline") {
  Daemon d(Daemon::Options{{"--pool-size", "16M", "--segment-size", "16M"}});
  auto waiting = d.connect("waiter");
  auto owner = d.connect("owner");
  put_bytes(owner, "filler", 12u << 20);
  bool created = false;
  const auto after = released_after(
      d,
      [&] {
        CreateOptions o;
        o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(kWait);
        auto b = waiting.create("needs/room", dtypes::kUInt8, {12 << 20}, o);
        created = b.open();
      },
      [&] { owner.remove("filler"); });
  CHECK(created);
  CHECK_MESSAGE(after < kWoken, "woken ", std::chrono::duration_cast<std::chrono::milliseconds>(after).count(),
                " ms after the delete");
}

}  // namespace
