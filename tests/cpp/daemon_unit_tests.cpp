// The daemon's internals, driven directly: the extent allocator, the pool of
// real (small) shared-memory segments, the registry of names, versions and
// leases on top of it, and the configuration from flags, file and
// environment. No socket, no event loop.
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
