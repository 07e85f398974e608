// The daemon's internals, driven directly: the extent allocator, the pool of
// real (small) segments, and the registry of names, versions and leases on
// top of it. No socket, no event loop. (The configuration:
// config_unit_tests.cpp; the isolation rules: isolation_unit_tests.cpp.)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "extent_allocator.hpp"
#include "pool.hpp"
#include "registry.hpp"
#include "segment.hpp"
#include "tensorshm/paths.hpp"
#include "tensorshm/segment_layout.h"
#include "test_data.hpp"

using namespace tensorshm;
using namespace tensorshm::daemon;
using tshm_test::shm_files_of;

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kMiB = 1u << 20;

// ---- ExtentAllocator ----------------------------------------------------------

TEST_CASE("a_fresh_allocator_offers_its_whole_range") {
  ExtentAllocator a(kPage, 16 * kPage, kPage);
  CHECK(a.capacity() == 16 * kPage);
  CHECK(a.free_bytes() == 16 * kPage);
  CHECK(a.largest_free() == 16 * kPage);
  CHECK(a.allocate(1) == kPage);  // the first range starts at `begin`
}

TEST_CASE("allocations_are_rounded_up_to_whole_pages") {
  ExtentAllocator a(0, 16 * kPage, kPage);
  CHECK(a.allocate(1) == 0);
  CHECK(a.allocate(0) == kPage);  // even an empty object takes a page
  CHECK(a.allocate(kPage + 1) == 2 * kPage);
  CHECK(a.free_bytes() == 12 * kPage);
}

TEST_CASE("an_allocation_splits_a_larger_free_range") {
  ExtentAllocator a(0, 16 * kPage, kPage);
  CHECK(a.allocate(3 * kPage) == 0);
  CHECK(a.largest_free() == 13 * kPage);
  CHECK(a.free_bytes() == 13 * kPage);
}

TEST_CASE("the_allocator_picks_the_smallest_free_range_that_fits") {
  ExtentAllocator a(0, 16 * kPage, kPage);
  // Carve holes of 3 pages at 0 and of 2 pages at 4 pages, separated by used pages.
  const auto h3 = *a.allocate(3 * kPage);
  (void)*a.allocate(kPage);
  const auto h2 = *a.allocate(2 * kPage);
  (void)*a.allocate(kPage);
  a.free(h3, 3 * kPage);
  a.free(h2, 2 * kPage);
  CHECK(a.allocate(2 * kPage) == h2);  // best fit, not first fit
  CHECK(a.allocate(3 * kPage) == h3);
}

TEST_CASE("freed_neighbours_coalesce_into_one_range") {
  ExtentAllocator a(kPage, 12 * kPage, kPage);
  const auto x = *a.allocate(4 * kPage);
  const auto y = *a.allocate(4 * kPage);
  const auto z = *a.allocate(4 * kPage);
  CHECK(a.free_bytes() == 0);
  a.free(x, 4 * kPage);
  a.free(z, 4 * kPage);
  CHECK(a.largest_free() == 4 * kPage);
  a.free(y, 4 * kPage);  // joins both neighbours
  CHECK(a.largest_free() == 12 * kPage);
  CHECK(a.allocate(12 * kPage) == kPage);
}

TEST_CASE("an_exhausted_allocator_returns_nothing_until_space_is_freed") {
  ExtentAllocator a(0, 4 * kPage, kPage);
  const auto x = *a.allocate(2 * kPage);
  (void)*a.allocate(2 * kPage);
  CHECK_FALSE(a.allocate(1).has_value());
  a.free(x, 2 * kPage);
  CHECK_FALSE(a.allocate(3 * kPage).has_value());
  CHECK(a.allocate(2 * kPage) == x);
}

// ---- Pool and Registry on real segments ----------------------------------------

std::string unique_instance() {
  static int n = 0;
  return "ut" + std::to_string(::getpid()) + "x" + std::to_string(++n);
}


Config small_config() {
  Config c;
  c.instance = unique_instance();
  c.pool_size = 4 * kMiB;
  c.segment_size = 1 * kMiB;
  c.pretouch_threads = 1;
  return c;
}

// A pool of four 1 MiB segments and a registry on it; on destruction the
// pool's segments (memory files) must be closed.
struct RegistryFixture {
  Config config = small_config();
  std::unique_ptr<Pool> pool;
  std::unique_ptr<Registry> registry;
  Caller alice{1, 1000, 1000};
  Caller alice_again{2, 1000, 1000};  // same uid, another connection
  Caller bob{3, 2000, 2000};
  Caller bob_in_alices_group{4, 2000, 1000};
  Caller root{5, 0, 0};

  RegistryFixture() { start(); }
  ~RegistryFixture() {
    registry.reset();
    pool.reset();
    CHECK(shm_files_of(config.instance).empty());
  }
  void start() {
    auto p = Pool::create(config);
    REQUIRE_MESSAGE(p.has_value(), p.error().message);
    pool = std::move(p).value();
    registry = std::make_unique<Registry>(*pool, config);
  }
  // Rebuilds pool and registry after a change of config.
  void restart() {
    registry.reset();
    pool.reset();
    start();
  }

  Result<Object*> create(const Caller& c, const std::string& name, std::int64_t bytes = 100,
                         Share share = Share::owner) {
    CreateParams p;
    p.name = name;
    p.dtype = dtypes::kUInt8;
    p.shape = {bytes};
    p.share = share;
    return registry->create(c, std::move(p));
  }
  // create + seal; returns the sealed object.
  Object* put(const Caller& c, const std::string& name, std::int64_t bytes = 100, Share share = Share::owner) {
    auto o = create(c, name, bytes, share);
    REQUIRE_MESSAGE(o.has_value(), o.error().message);
    auto s = registry->seal(c, (*o)->id);
    REQUIRE_MESSAGE(s.has_value(), s.error().message);
    return *s;
  }
  // Bytes of data whose extent (header page included) fills one pool segment.
  std::int64_t whole_segment_bytes() const {
    return static_cast<std::int64_t>(config.segment_size - 2 * TSHM_HEADER_BYTES);
  }
};

TEST_CASE("a_pool_reserves_its_segments_as_memory_files_and_closes_them_when_destroyed") {
  Config c = small_config();
  {
    auto pool = Pool::create(c);
    REQUIRE_MESSAGE(pool.has_value(), pool.error().message);
    CHECK((*pool)->pool_segments().size() == 4);
    CHECK(shm_files_of(c.instance).size() == 4);
    CHECK((*pool)->pool_bytes() == 4 * (kMiB - TSHM_HEADER_BYTES));
    CHECK((*pool)->pool_used_bytes() == 0);
    const auto* h = reinterpret_cast<const TshmSegmentHeader*>((*pool)->pool_segments()[0]->base());
    CHECK(h->magic == TSHM_SEGMENT_MAGIC);
    CHECK(h->major == TSHM_LAYOUT_MAJOR);
    CHECK(h->size == kMiB);
    CHECK(std::string(h->instance) == c.instance);
  }
  CHECK(shm_files_of(c.instance).empty());
}

TEST_CASE("a_pool_larger_than_the_available_memory_fails_at_start_naming_the_sizes_and_the_fix") {
  Config c = small_config();
  c.pool_size = std::uint64_t{1} << 50;  // a petabyte
  auto pool = Pool::create(c);
  REQUIRE_FALSE(pool.has_value());
  CHECK(pool.error().code == Errc::pool_exhausted);
  CHECK(pool.error().message.find("--pool-size") != std::string::npos);
  CHECK(shm_files_of(c.instance).empty());
}

TEST_CASE("an_object_larger_than_a_pool_segment_gets_a_dedicated_segment_removed_with_it") {
  RegistryFixture f;
  const std::uint64_t before = f.pool->segment_count();
  Object* o = f.put(f.alice, "big", 2 * kMiB);
  const Segment* seg = f.pool->segment(o->extent.segment_id);
  REQUIRE(seg != nullptr);
  CHECK(seg->dedicated());
  CHECK(f.pool->segment_count() == before + 1);
  CHECK(f.pool->dedicated_bytes() >= 2 * kMiB);
  CHECK(f.pool->pool_used_bytes() == 0);
  CHECK(shm_files_of(f.config.instance).size() == before + 1);
  REQUIRE(f.registry->remove(f.alice, "big"));
  CHECK(f.pool->segment_count() == before);
  CHECK(f.pool->dedicated_bytes() == 0);
  CHECK(shm_files_of(f.config.instance).size() == before);
}

TEST_CASE("a_created_object_is_invisible_until_sealed") {
  RegistryFixture f;
  auto o = f.create(f.alice, "frame");
  REQUIRE(o.has_value());
  CHECK(f.registry->open_creates() == 1);
  CHECK(f.registry->versions() == 0);
  auto missing = f.registry->find(f.alice, "frame", 0);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Errc::not_found);

  auto sealed = f.registry->seal(f.alice, (*o)->id);
  REQUIRE(sealed.has_value());
  CHECK((*sealed)->version >= 1);
  CHECK(f.registry->open_creates() == 0);
  CHECK(f.registry->versions() == 1);
  CHECK(f.registry->names() == 1);
  auto found = f.registry->find(f.alice, "frame", 0);
  REQUIRE(found.has_value());
  CHECK((*found)->id == (*o)->id);
}

TEST_CASE("a_share_value_outside_owner_group_everyone_fails_with_invalid_argument_and_allocates_nothing") {
  RegistryFixture f;
  auto o = f.create(f.alice, "odd", 100, static_cast<Share>(7));
  REQUIRE_FALSE(o.has_value());
  CHECK(o.error().code == Errc::invalid_argument);
  CHECK(f.pool->pool_used_bytes() == 0);
}

TEST_CASE("create_and_seal_write_the_extent_header") {
  RegistryFixture f;
  CreateParams p;
  p.name = "grid";
  p.dtype = dtypes::kFloat32;
  p.shape = {3, 5};
  auto o = f.registry->create(f.alice, p);
  REQUIRE(o.has_value());
  const auto* h = reinterpret_cast<const TshmExtentHeader*>(f.pool->address((*o)->extent));
  CHECK(h->magic == TSHM_EXTENT_MAGIC);
  CHECK(h->state == kTshmExtentWriting);
  CHECK((*o)->data_offset == (*o)->extent.offset + TSHM_HEADER_BYTES);
  REQUIRE(f.registry->seal(f.alice, (*o)->id));
  CHECK(h->state == kTshmExtentSealed);
  CHECK(h->object_version == (*o)->version);
  CHECK(h->generation == (*o)->generation);
  CHECK(h->byte_offset == TSHM_HEADER_BYTES);
  CHECK(h->nbytes == 60);
  CHECK(h->dtype_code == 2);
  CHECK(h->dtype_bits == 32);
  CHECK(h->ndim == 2);
  CHECK(h->shape[0] == 3);
  CHECK(h->shape[1] == 5);
  CHECK(h->strides[0] == 5);
  CHECK(h->strides[1] == 1);
  CHECK(h->owner_uid == 1000);
  CHECK(std::string(h->name, h->name_len) == "grid");
}

TEST_CASE("seal_and_abort_of_something_not_open_on_this_connection_fail_with_not_open") {
  RegistryFixture f;
  auto o = f.create(f.alice, "x");
  REQUIRE(o.has_value());
  const auto id = (*o)->id;
  for (const Caller* other : {&f.alice_again, &f.bob, &f.root}) {
    auto s = f.registry->seal(*other, id);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error().code == Errc::not_open);
    auto a = f.registry->abort(*other, id);
    REQUIRE_FALSE(a.has_value());
    CHECK(a.error().code == Errc::not_open);
  }
  REQUIRE(f.registry->seal(f.alice, id));
  auto twice = f.registry->seal(f.alice, id);
  REQUIRE_FALSE(twice.has_value());
  CHECK(twice.error().code == Errc::not_open);
  auto late_abort = f.registry->abort(f.alice, id);
  REQUIRE_FALSE(late_abort.has_value());
  CHECK(late_abort.error().code == Errc::not_open);
  auto unknown = f.registry->seal(f.alice, 987654);
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code == Errc::not_open);
}

TEST_CASE("abort_gives_the_extent_back_to_the_pool") {
  RegistryFixture f;
  auto o = f.create(f.alice, "x", 300000);
  REQUIRE(o.has_value());
  const std::uint64_t id = (*o)->id;
  CHECK(f.pool->pool_used_bytes() > 300000);
  REQUIRE(f.registry->abort(f.alice, id));
  CHECK(f.pool->pool_used_bytes() == 0);
  CHECK(f.registry->open_creates() == 0);
  CHECK(f.registry->get(id) == nullptr);
}

TEST_CASE("each_seal_makes_a_newer_version_and_frees_the_unleased_old_one_at_once") {
  RegistryFixture f;
  Object* v1 = f.put(f.alice, "x", 5000);
  const std::uint64_t id1 = v1->id, ver1 = v1->version;
  const std::uint64_t used_one = f.pool->pool_used_bytes();
  Object* v2 = f.put(f.alice, "x", 5000);
  CHECK(v2->version > ver1);
  CHECK(f.registry->versions() == 1);
  CHECK(f.registry->get(id1) == nullptr);
  CHECK(f.pool->pool_used_bytes() == used_one);
  auto newer = f.registry->find(f.alice, "x", ver1);
  REQUIRE(newer.has_value());
  CHECK((*newer)->version == v2->version);
  auto none = f.registry->find(f.alice, "x", v2->version);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().code == Errc::not_found);
}

TEST_CASE("a_lease_keeps_an_old_version_until_it_is_given_back") {
  RegistryFixture f;
  Object* v1 = f.put(f.alice, "x", 5000);
  const std::uint64_t id1 = v1->id;
  REQUIRE(f.registry->lease(f.alice, *v1));
  CHECK(f.registry->leases() == 1);
  (void)f.put(f.alice, "x", 5000);
  CHECK(f.registry->versions() == 2);
  CHECK(f.registry->names() == 1);
  REQUIRE(f.registry->get(id1) != nullptr);
  const std::uint64_t used_two = f.pool->pool_used_bytes();
  REQUIRE(f.registry->unlease(f.alice, id1));
  CHECK(f.registry->leases() == 0);
  CHECK(f.registry->versions() == 1);
  CHECK(f.registry->get(id1) == nullptr);
  CHECK(f.pool->pool_used_bytes() < used_two);
}

TEST_CASE("unlease_of_an_object_without_leases_fails_with_not_open") {
  RegistryFixture f;
  Object* v = f.put(f.alice, "x");
  auto r = f.registry->unlease(f.alice, v->id);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Errc::not_open);
  auto unknown = f.registry->unlease(f.alice, 424242);
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code == Errc::not_open);
}

TEST_CASE("remove_hides_a_name_while_leased_versions_stay_until_released") {
  RegistryFixture f;
  Object* v = f.put(f.alice, "x", 5000);
  const std::uint64_t id = v->id;
  REQUIRE(f.registry->lease(f.alice, *v));
  REQUIRE(f.registry->remove(f.alice, "x"));
  CHECK(f.registry->names() == 0);
  auto gone = f.registry->find(f.alice, "x", 0);
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Errc::not_found);
  CHECK(f.registry->versions() == 1);
  CHECK(f.registry->get(id) != nullptr);
  REQUIRE(f.registry->unlease(f.alice, id));
  CHECK(f.registry->versions() == 0);
  CHECK(f.pool->pool_used_bytes() == 0);
}

TEST_CASE("remove_of_an_unknown_or_invalid_name_fails_with_a_clear_code") {
  RegistryFixture f;
  auto unknown = f.registry->remove(f.alice, "nothing/here");
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code == Errc::not_found);
  auto invalid = f.registry->remove(f.alice, "a/../b");
  REQUIRE_FALSE(invalid.has_value());
  CHECK(invalid.error().code == Errc::invalid_name);
}

TEST_CASE("only_the_owner_or_root_may_put_to_or_delete_a_name") {
  RegistryFixture f;
  (void)f.put(f.alice, "mine");
  auto steal = f.create(f.bob, "mine");
  REQUIRE_FALSE(steal.has_value());
  CHECK(steal.error().code == Errc::permission_denied);
  auto del = f.registry->remove(f.bob, "mine");
  REQUIRE_FALSE(del.has_value());
  CHECK(del.error().code == Errc::permission_denied);
  (void)f.put(f.root, "mine");
  REQUIRE(f.registry->remove(f.root, "mine"));
}

TEST_CASE("objects_are_readable_by_others_only_as_far_as_they_are_shared") {
  RegistryFixture f;
  (void)f.put(f.alice, "private");
  (void)f.put(f.alice, "team", 100, Share::group);
  (void)f.put(f.alice, "public", 100, Share::everyone);
  auto denied = f.registry->find(f.bob, "private", 0);
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code == Errc::permission_denied);
  CHECK_FALSE(f.registry->find(f.bob, "team", 0).has_value());
  CHECK(f.registry->find(f.bob_in_alices_group, "team", 0).has_value());
  CHECK(f.registry->find(f.bob, "public", 0).has_value());
  CHECK(f.registry->find(f.root, "private", 0).has_value());
  CHECK(f.registry->list(f.bob, "", "", 0, nullptr).size() == 1);
  CHECK(f.registry->list(f.alice, "", "", 0, nullptr).size() == 3);
}

TEST_CASE("list_returns_sealed_latest_versions_by_prefix_up_to_a_limit") {
  RegistryFixture f;
  (void)f.put(f.alice, "cam/0");
  (void)f.put(f.alice, "cam/1");
  (void)f.put(f.alice, "cam/2");
  (void)f.put(f.alice, "lidar/0");
  auto open = f.create(f.alice, "cam/3");
  REQUIRE(open.has_value());
  bool truncated = true;
  auto all = f.registry->list(f.alice, "cam/", "", 0, &truncated);
  CHECK(all.size() == 3);
  CHECK_FALSE(truncated);
  auto some = f.registry->list(f.alice, "cam/", "", 2, &truncated);
  CHECK(some.size() == 2);
  CHECK(truncated);
  CHECK(some[0]->name == "cam/0");
  auto rest = f.registry->list(f.alice, "cam/", "cam/0", 0, &truncated);  // the next page
  REQUIRE(rest.size() == 2);
  CHECK(rest[0]->name == "cam/1");
  CHECK(rest[1]->name == "cam/2");
  CHECK(f.registry->list(f.alice, "cam/", "cam/2", 0, &truncated).empty());
  CHECK(f.registry->list(f.alice, "cam/", "a", 0, &truncated).size() == 3);  // before the prefix: from its start
}

TEST_CASE("create_refuses_bad_names_dtypes_and_shapes_naming_the_object") {
  RegistryFixture f;
  auto bad_name = f.create(f.alice, "a b");
  REQUIRE_FALSE(bad_name.has_value());
  CHECK(bad_name.error().code == Errc::invalid_name);

  CreateParams p;
  p.name = "weird";
  p.dtype = DType{3, 64, 1};
  p.shape = {4};
  auto bad_dtype = f.registry->create(f.alice, p);
  REQUIRE_FALSE(bad_dtype.has_value());
  CHECK(bad_dtype.error().code == Errc::unsupported_dtype);
  CHECK(bad_dtype.error().message.find("'weird'") != std::string::npos);

  p.dtype = dtypes::kFloat32;
  p.shape = {4, -4};
  auto negative = f.registry->create(f.alice, p);
  REQUIRE_FALSE(negative.has_value());
  CHECK(negative.error().code == Errc::invalid_argument);

  p.shape = {std::int64_t{1} << 62};
  auto too_big = f.registry->create(f.alice, p);
  REQUIRE_FALSE(too_big.has_value());
  CHECK(too_big.error().code == Errc::invalid_argument);
  CHECK(f.registry->open_creates() == 0);
  CHECK(f.pool->pool_used_bytes() == 0);
}

TEST_CASE("per_uid_and_global_limits_fail_with_limit_exceeded") {
  RegistryFixture f;
  f.config.max_objects_per_uid = 2;
  f.restart();
  (void)f.put(f.alice, "a");
  (void)f.put(f.alice, "b");
  auto third = f.create(f.alice, "c");
  REQUIRE_FALSE(third.has_value());
  CHECK(third.error().code == Errc::limit_exceeded);
  CHECK(f.create(f.bob, "c").has_value());  // another uid has its own count

  f.config.max_objects_per_uid = 0;
  f.config.max_bytes_per_uid = 3 * kPage;  // header page + 2 data pages
  f.restart();
  CHECK(f.create(f.alice, "fits", 2 * kPage).has_value());
  auto over = f.create(f.alice, "over", 1);
  REQUIRE_FALSE(over.has_value());
  CHECK(over.error().code == Errc::limit_exceeded);

  f.config.max_bytes_per_uid = 0;
  f.config.max_objects = 1;
  f.restart();
  CHECK(f.create(f.alice, "one").has_value());
  auto two = f.create(f.bob, "two");
  REQUIRE_FALSE(two.has_value());
  CHECK(two.error().code == Errc::limit_exceeded);
}

TEST_CASE("a_full_pool_fails_with_pool_exhausted_and_recovers_when_space_is_freed") {
  RegistryFixture f;
  int freed = 0;
  f.registry->on_space_freed = [&] { ++freed; };
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 4; ++i) {
    auto o = f.create(f.alice, "fill/" + std::to_string(i), f.whole_segment_bytes());
    REQUIRE_MESSAGE(o.has_value(), o.error().message);
    ids.push_back((*o)->id);
  }
  CHECK(f.pool->pool_used_bytes() == f.pool->pool_bytes());
  auto full = f.create(f.alice, "one/more", 1);
  REQUIRE_FALSE(full.has_value());
  CHECK(full.error().code == Errc::pool_exhausted);
  CHECK(full.error().message.find("'one/more'") != std::string::npos);

  REQUIRE(f.registry->abort(f.alice, ids[2]));
  CHECK(freed == 1);
  CHECK(f.create(f.alice, "one/more", f.whole_segment_bytes()).has_value());
}

TEST_CASE("an_old_unleased_version_makes_room_for_its_successor_only_after_the_seal") {
  RegistryFixture f;
  for (int i = 0; i < 4; ++i) (void)f.put(f.alice, "slot/" + std::to_string(i), f.whole_segment_bytes());
  // The old version is still the latest while the new one is written.
  auto next = f.create(f.alice, "slot/0", 1);
  REQUIRE_FALSE(next.has_value());
  CHECK(next.error().code == Errc::pool_exhausted);
  // Deleting frees the unleased version at once: the put then fits.
  REQUIRE(f.registry->remove(f.alice, "slot/0"));
  CHECK(f.create(f.alice, "slot/0", f.whole_segment_bytes()).has_value());
}

TEST_CASE("seal_announces_the_name_to_waiters") {
  RegistryFixture f;
  std::vector<std::string> published;
  f.registry->on_published = [&](const std::string& n) { published.push_back(n); };
  (void)f.put(f.alice, "news");
  auto o = f.create(f.alice, "draft");
  REQUIRE(o.has_value());
  REQUIRE(f.registry->abort(f.alice, (*o)->id));
  CHECK(published == std::vector<std::string>{"news"});
}

}  // namespace
