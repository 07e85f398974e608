// The daemon's isolation rules, driven directly (no socket, no root needed
// except where a case says so): segments that no holder can resize or reopen
// writable, a pool segment that changes owner or sharing mode getting a fresh
// memory file, limits that count what a uid keeps alive, and the socket's
// directory and lock that no other user can plant. Part of
// tshm_daemon_unit_tests (daemon_unit_tests.cpp has the main).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "config.hpp"
#include "instance_lock.hpp"
#include "pool.hpp"
#include "registry.hpp"
#include "segment.hpp"
#include "temp_dir.hpp"
#include "tensorshm/segment_layout.h"

using namespace tensorshm;
using namespace tensorshm::daemon;

namespace {

constexpr std::uint64_t kMiB = 1u << 20;

std::string instance_name() {
  static int n = 0;
  return "iso" + std::to_string(::getpid()) + "x" + std::to_string(++n);
}

// A mapping of a segment as a client holds it: from a descriptor of its own
// (dup'ed, as SCM_RIGHTS would hand it over), kept after the daemon lets go.
struct ClientMapping {
  int fd = -1;
  std::byte* p = nullptr;
  std::size_t size = 0;
  ClientMapping(int from, std::size_t n, bool writable) : fd(::fcntl(from, F_DUPFD_CLOEXEC, 3)), size(n) {
    REQUIRE(fd >= 0);
    void* m = ::mmap(nullptr, n, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    REQUIRE(m != MAP_FAILED);
    p = static_cast<std::byte*>(m);
  }
  ~ClientMapping() {
    ::munmap(p, size);
    ::close(fd);
  }
  bool holds(const std::byte* needle, std::size_t n) const {
    return std::search(p, p + size, needle, needle + n) != p + size;
  }
};

// One pool segment of 1 MiB, so that every class shares it in turn.
struct OneSegment {
  Config config;
  std::unique_ptr<Pool> pool;
  std::unique_ptr<Registry> registry;
  Caller alice{1, 1000, 1000};
  Caller bob{2, 2000, 2000};
  Caller carol{3, 3000, 3000};
  explicit OneSegment(std::uint32_t max_objects_per_uid = 0) {
    config.instance = instance_name();
    config.pool_size = kMiB;
    config.segment_size = kMiB;
    config.pretouch_threads = 1;
    config.max_objects_per_uid = max_objects_per_uid;
    auto p = Pool::create(config);
    REQUIRE_MESSAGE(p.has_value(), p.error().message);
    pool = std::move(p).value();
    registry = std::make_unique<Registry>(*pool, config);
  }
  Object* put(const Caller& c, const std::string& name, std::uint8_t fill, Share share = Share::owner) {
    CreateParams p;
    p.name = name;
    p.dtype = dtypes::kUInt8;
    p.shape = {64 * 1024};
    p.share = share;
    auto o = registry->create(c, std::move(p));
    REQUIRE_MESSAGE(o.has_value(), o.error().message);
    std::memset(pool->segment((*o)->extent.segment_id)->base() + (*o)->data_offset, fill, (*o)->nbytes);
    auto s = registry->seal(c, (*o)->id);
    REQUIRE_MESSAGE(s.has_value(), s.error().message);
    return *s;
  }
  const std::byte* data(const Object& o) const { return pool->segment(o.extent.segment_id)->base() + o.data_offset; }
};

TEST_CASE("who_may_read_write_and_map_a_segment_of_each_reader_class") {
  const std::uint32_t alice = 1000, bob = 2000, root = 0, team = 100, other = 200;
  const ReaderClass owner{alice, 0, 0}, group{alice, 1, team}, everyone{alice, 2, 0};
  // Reading: the owner, root, the group of a group class, anyone for everyone.
  CHECK(owner.readable_by(alice, other));
  CHECK(owner.readable_by(root, other));
  CHECK_FALSE(owner.readable_by(bob, team));
  CHECK(group.readable_by(bob, team));
  CHECK_FALSE(group.readable_by(bob, other));
  CHECK(everyone.readable_by(bob, other));
  // Writing: the owner and root only, whatever the sharing.
  for (const ReaderClass& c : {owner, group, everyone}) {
    CHECK(c.writable_by(alice));
    CHECK(c.writable_by(root));
    CHECK_FALSE(c.writable_by(bob));
  }
  // Mapping: read-only as reading allows, writable as writing allows; an
  // unused segment only by root (it may next hold anybody's objects).
  CHECK(may_map(everyone, false, bob, other));
  CHECK_FALSE(may_map(everyone, true, bob, other));
  CHECK(may_map(group, false, bob, team));
  CHECK_FALSE(may_map(group, false, bob, other));
  CHECK_FALSE(may_map(owner, false, bob, team));
  CHECK(may_map(owner, true, alice, other));
  CHECK_FALSE(may_map(std::nullopt, false, alice, team));
  CHECK_FALSE(may_map(std::nullopt, true, bob, team));
  CHECK(may_map(std::nullopt, true, root, root));
}

TEST_CASE("a_segment_is_a_memory_file_no_holder_can_resize_and_only_the_daemons_uid_can_reopen") {
  Segment::Params p;
  p.name = "tensorshm." + instance_name() + ".p1";
  p.id = 1;
  p.size = kMiB;
  auto seg = Segment::create(p);
  REQUIRE_MESSAGE(seg.has_value(), seg.error().message);
  const int rw = (*seg)->rw_fd();
  // Sealed: a writer's ftruncate (to 0, as an attacker would, or larger) and
  // a growing fallocate are refused, so the daemon's writes cannot fault.
  CHECK((::fcntl(rw, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
        (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  CHECK(::ftruncate(rw, 0) == -1);
  CHECK(errno == EPERM);
  CHECK(::ftruncate(rw, 2 * kMiB) == -1);
  CHECK(::fallocate(rw, 0, 0, 2 * kMiB) == -1);
  CHECK(::fcntl(rw, F_ADD_SEALS, F_SEAL_WRITE) == -1);  // F_SEAL_SEAL: nobody adds seals either
  struct stat st{};
  REQUIRE(::fstat(rw, &st) == 0);
  CHECK(st.st_size == static_cast<off_t>(kMiB));
  // Mode 0600: another uid cannot reopen a read-only descriptor writable
  // through /proc/<pid>/fd (a memory file starts out 0777).
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_uid == ::geteuid());
  const int ro = (*seg)->ro_fd();
  CHECK((::fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY);
  CHECK(::mmap(nullptr, kMiB, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) == MAP_FAILED);
  CHECK(errno == EACCES);
  CHECK(::fcntl(ro, F_ADD_SEALS, F_SEAL_WRITE) == -1);
  // Not a name anyone can open: nothing in /dev/shm.
  CHECK_FALSE(std::filesystem::exists("/dev/shm/" + p.name));
  const auto* h = reinterpret_cast<const TshmSegmentHeader*>((*seg)->base());
  CHECK(h->magic == TSHM_SEGMENT_MAGIC);
}

TEST_CASE("a_pool_segment_that_changes_owner_gets_a_fresh_file_that_old_writers_and_readers_cannot_reach") {
  OneSegment f;
  Object* mine = f.put(f.alice, "alice/secret", 0xA1);
  const std::uint32_t first = mine->extent.segment_id;
  const Segment* seg = f.pool->segment(first);
  // What alice (the writer) and carol (a reader of a shared version) kept.
  ClientMapping alice_rw(seg->rw_fd(), seg->size(), true);
  ClientMapping old_ro(seg->ro_fd(), seg->size(), false);
  REQUIRE(f.registry->remove(f.alice, "alice/secret"));
  CHECK(f.pool->pool_used_bytes() == 0);

  Object* bobs = f.put(f.bob, "bob/public", 0xB2, Share::everyone);
  const std::uint32_t second = bobs->extent.segment_id;
  CHECK(second != first);
  CHECK(f.pool->segment(first) == nullptr);
  CHECK(f.pool->replaced_segments() == 1);
  // Alice writes all over her old mapping: bob's object does not change.
  std::memset(alice_rw.p + TSHM_HEADER_BYTES, 0x66, alice_rw.size - TSHM_HEADER_BYTES);
  const std::byte* b = f.data(*bobs);
  CHECK(std::all_of(b, b + bobs->nbytes, [](std::byte x) { return x == std::byte{0xB2}; }));
  // And neither old mapping shows bob's bytes (nor, after the retirement,
  // alice's: the old file's pages were freed).
  std::byte pattern[64];
  std::memset(pattern, 0xB2, sizeof pattern);
  CHECK_FALSE(old_ro.holds(pattern, sizeof pattern));
  std::byte secret[64];
  std::memset(secret, 0xA1, sizeof secret);
  ClientMapping fresh(f.pool->segment(second)->ro_fd(), f.pool->segment(second)->size(), false);
  CHECK_FALSE(fresh.holds(secret, sizeof secret));  // a fresh file: nothing of alice's
  CHECK(fresh.holds(pattern, sizeof pattern));
}

TEST_CASE("a_pool_segment_that_stays_with_its_class_keeps_its_file") {
  OneSegment f;
  const std::uint32_t first = f.put(f.alice, "a", 1)->extent.segment_id;
  REQUIRE(f.registry->remove(f.alice, "a"));
  CHECK(f.put(f.alice, "b", 2)->extent.segment_id == first);
  CHECK(f.pool->replaced_segments() == 0);
  // The same owner with another sharing mode is another class: a fresh file.
  REQUIRE(f.registry->remove(f.alice, "b"));
  CHECK(f.put(f.alice, "c", 3, Share::everyone)->extent.segment_id != first);
  CHECK(f.pool->replaced_segments() == 1);
}

TEST_CASE("an_unused_segment_that_needs_no_fresh_file_is_taken_before_one_that_does") {
  OneSegment f;  // re-made below with two segments
  f.config.pool_size = 2 * kMiB;
  f.registry.reset();
  f.pool.reset();
  auto p = Pool::create(f.config);
  REQUIRE(p.has_value());
  f.pool = std::move(p).value();
  f.registry = std::make_unique<Registry>(*f.pool, f.config);
  const std::uint32_t alices = f.put(f.alice, "a", 1)->extent.segment_id;
  REQUIRE(f.registry->remove(f.alice, "a"));
  // Bob takes the segment nobody used rather than make alice's over.
  const std::uint32_t bobs = f.put(f.bob, "b", 2)->extent.segment_id;
  CHECK(bobs != alices);
  CHECK(f.pool->replaced_segments() == 0);
  REQUIRE(f.registry->remove(f.bob, "b"));
  // And each gets its own back.
  CHECK(f.put(f.alice, "a", 3)->extent.segment_id == alices);
  CHECK(f.put(f.bob, "b", 4)->extent.segment_id == bobs);
  CHECK(f.pool->replaced_segments() == 0);
}

TEST_CASE("versions_a_reader_keeps_alive_count_for_the_reader_not_for_the_owner") {
  OneSegment f(/*max_objects_per_uid=*/3);
  // Bob holds every version alice puts; alice's allowance never runs out.
  int bob_leases = 0;
  for (int i = 0; i < 8; ++i) {
    Object* v = f.put(f.alice, "alice/stream", static_cast<std::uint8_t>(i), Share::everyone);
    auto r = f.registry->lease(f.bob, *v);
    if (i < 3) {
      REQUIRE_MESSAGE(r.has_value(), r.error().message);
      ++bob_leases;
    } else {
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().code == Errc::limit_exceeded);
      CHECK(r.error().message.find("--max-objects-per-uid") != std::string::npos);
      CHECK(r.error().message.find("uid 2000") != std::string::npos);
    }
  }
  CHECK(f.registry->usage(f.alice.uid).objects == 1);  // the latest only
  CHECK(f.registry->usage(f.bob.uid).objects == 3);
  CHECK(f.registry->versions() == 4);
  // Bob lets go: his count and the old versions go.
  for (std::uint64_t id = 1; id < 100; ++id)
    if (Object* o = f.registry->get(id); o != nullptr && o->leases > 0) {
      const std::uint32_t n = o->leases;
      for (std::uint32_t k = 0; k < n; ++k) REQUIRE(f.registry->unlease(f.bob, id));
    }
  CHECK(f.registry->usage(f.bob.uid).objects == 0);
  CHECK(f.registry->versions() == 1);
  // The owner's own lease on a superseded version still counts for her.
  Object* v = f.put(f.alice, "alice/stream", 9, Share::everyone);
  REQUIRE(f.registry->lease(f.alice, *v));
  (void)f.put(f.alice, "alice/stream", 10, Share::everyone);
  CHECK(f.registry->usage(f.alice.uid).objects == 2);
  // A release by a uid that holds no lease on it is refused.
  auto wrong = f.registry->unlease(f.bob, v->id);
  REQUIRE_FALSE(wrong.has_value());
  CHECK(wrong.error().code == Errc::not_open);
}

// ---- the socket's directory and the lock beside the socket --------------------

using tshm_test::TempDir;

TEST_CASE("the_socket_directory_is_made_private_or_refused_when_others_could_write_it") {
  TempDir t("tshm-iso");
  // Missing: made 0700 (0755 for a socket other users may use).
  REQUIRE(prepare_socket_directory(t.path + "/own/d.sock", 0600));
  struct stat st{};
  REQUIRE(::stat((t.path + "/own").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  REQUIRE(prepare_socket_directory(t.path + "/shared/d.sock", 0660));
  REQUIRE(::stat((t.path + "/shared").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0755);
  // Writable by others and not sticky: refused, naming the mode.
  ::mkdir((t.path + "/open").c_str(), 0700);
  ::chmod((t.path + "/open").c_str(), 0777);
  auto open = prepare_socket_directory(t.path + "/open/d.sock", 0600);
  REQUIRE_FALSE(open.has_value());
  CHECK(open.error().code == Errc::permission_denied);
  CHECK(open.error().message.find("0777") != std::string::npos);
  // Sticky, like /tmp: accepted.
  ::chmod((t.path + "/open").c_str(), 01777);
  CHECK(prepare_socket_directory(t.path + "/open/d.sock", 0600).has_value());
  // A symbolic link: refused.
  REQUIRE(::symlink((t.path + "/own").c_str(), (t.path + "/link").c_str()) == 0);
  auto link = prepare_socket_directory(t.path + "/link/d.sock", 0600);
  REQUIRE_FALSE(link.has_value());
  CHECK(link.error().message.find("symbolic link") != std::string::npos);
  if (::geteuid() == 0) {  // another user's directory needs chown
    ::mkdir((t.path + "/theirs").c_str(), 0700);
    REQUIRE(::chown((t.path + "/theirs").c_str(), 65534, 65534) == 0);
    auto theirs = prepare_socket_directory(t.path + "/theirs/d.sock", 0600);
    REQUIRE_FALSE(theirs.has_value());
    CHECK(theirs.error().message.find("belongs to uid 65534") != std::string::npos);
  }
}

TEST_CASE("the_lock_never_follows_a_planted_link_nor_takes_a_file_it_did_not_make") {
  TempDir t("tshm-iso");
  const std::string victim = t.path + "/victim";
  std::ofstream(victim) << "precious";
  // A symbolic link planted where the lock goes: refused, the target untouched.
  REQUIRE(::symlink(victim.c_str(), (t.path + "/d.sock.lock").c_str()) == 0);
  auto link = InstanceLock::acquire(t.path + "/d.sock.lock");
  REQUIRE_FALSE(link.has_value());
  CHECK(link.error().message.find("symbolic link") != std::string::npos);
  std::string content;
  std::getline(std::ifstream(victim), content);
  CHECK(content == "precious");
  // A hard link to another file: refused (it would truncate the file).
  REQUIRE(::link(victim.c_str(), (t.path + "/h.sock.lock").c_str()) == 0);
  auto hard = InstanceLock::acquire(t.path + "/h.sock.lock");
  REQUIRE_FALSE(hard.has_value());
  CHECK(hard.error().message.find("2 links") != std::string::npos);
  std::getline(std::ifstream(victim), content);
  CHECK(content == "precious");
  if (::geteuid() == 0) {  // a file of another user needs chown
    std::ofstream(t.path + "/o.sock.lock") << "";
    REQUIRE(::chown((t.path + "/o.sock.lock").c_str(), 65534, 65534) == 0);
    auto theirs = InstanceLock::acquire(t.path + "/o.sock.lock");
    REQUIRE_FALSE(theirs.has_value());
    CHECK(theirs.error().message.find("belongs to uid 65534") != std::string::npos);
  }
  // Our own lock: taken once; a second taker names the first's pid.
  {
    auto first = InstanceLock::acquire(t.path + "/ok.sock.lock");
    REQUIRE_MESSAGE(first.has_value(), first.error().message);
    auto second = InstanceLock::acquire(t.path + "/ok.sock.lock");
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().message.find("pid " + std::to_string(::getpid())) != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(t.path + "/ok.sock.lock"));  // removed on release
}

}  // namespace
