"""Other users: a client of another uid cannot get, stat, list, overwrite,
delete or map a user's objects unless the owner shared them; a reader only
ever receives read-only mappings; segments are never readable by anyone but
the daemon; object names never become file names. Every client here runs under
a real throw-away uid (conftest.py)."""

from __future__ import annotations

import os
import re
import stat

import pytest

from harness import SHM, record

MIB = 1 << 20


def test_another_uid_can_neither_get_stat_list_overwrite_nor_delete_an_unshared_object(users, daemons, peers):
    d = daemons().start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    put = alice.ok("put alice/private 100000 1")
    attempts = {
        "get alice/private": "permission_denied",
        "hold alice/private": "permission_denied",
        "stat alice/private": "permission_denied",
        "put alice/private 100000 2": "permission_denied",
        "create alice/private 100000 2": "permission_denied",
        "delete alice/private": "permission_denied",
    }
    refused = 0
    for cmd, code in attempts.items():
        r = bob.cmd(cmd)
        assert r["status"] == "err" and r["code"] == code, f"bob: {cmd}: {r['line']}"
        refused += 1
    assert "alice/private" not in bob.ok("list")["names"].split(",")
    refused += 1
    now = alice.ok("get alice/private")
    assert now["version"] == put["version"] and now["checksum"] == put["checksum"]
    record("another uid: get, hold, stat, put, create, delete, list of an unshared object",
           injected=len(attempts) + 1, lost=0, leaked=0, refused=refused)


def segments(d) -> list[int]:
    return sorted(int(m.group(1)) for n in d.segments() if (m := re.search(r"\.[pd](\d+)$", n)))


def test_another_uid_cannot_map_any_segment_holding_objects_it_may_not_read(users, daemons, peers):
    d = daemons(pool="32M", segment="8M").start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    small = alice.ok("put alice/small 100000 1")
    big = alice.ok(f"put alice/big {20 * MIB} 2")  # a dedicated segment
    assert small["segment"] != big["segment"]
    tried = refused = 0
    for seg in segments(d):  # pool segments, used or not, and the dedicated one
        for writable in (0, 1):
            r = bob.cmd(f"map {seg} {writable}")
            tried += 1
            refused += r["status"] == "err" and r["code"] == "permission_denied"
    assert refused == tried, f"bob was handed {tried - refused} of {tried} segment descriptors"
    record("another uid: MapSegment (read and write) of every segment of an owner's unshared objects",
           injected=tried, lost=0, leaked=tried - refused)


def test_a_reader_of_a_shared_object_receives_only_a_read_only_mapping(users, daemons, peers):
    d = daemons().start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    put = alice.ok("put pub/all 100000 3 everyone")
    held = bob.ok("hold pub/all")
    assert held["checksum"] == put["checksum"] and held["readonly"] == "1"
    assert bob.ok("mprotect")["mprotect"] == "refused", "bob made his view of alice's object writable"
    ro = bob.ok(f"map {put['segment']} 0")
    assert ro["fd_mode"] == "ro" and ro["mmap_write"].startswith("refused"), ro["line"]
    rw = bob.cmd(f"map {put['segment']} 1")
    assert rw["code"] == "permission_denied", rw["line"]
    assert bob.cmd("delete pub/all")["code"] == "permission_denied"
    assert bob.cmd("put pub/all 100000 4 everyone")["code"] == "permission_denied"
    # The owner's own readers get read-only mappings too.
    alice2 = peers(d, users["alice"])
    assert alice2.ok("hold pub/all")["readonly"] == "1"
    assert alice2.ok("mprotect")["mprotect"] == "refused"
    assert bob.ok("check")["mismatches"] == "0"
    record("reader of a shared object: mprotect(PROT_WRITE), mmap(PROT_WRITE) of its descriptor, writable "
           "MapSegment, delete, overwrite", injected=5, lost=0, leaked=0)


def test_group_sharing_reaches_the_owners_group_and_nobody_else(users, daemons, peers):
    d = daemons().start()
    alice, bob, carol = (peers(d, users[u]) for u in ("alice", "bob", "carol"))
    put = alice.ok("put team/x 100000 5 group")
    got = bob.ok("get team/x")
    assert got["checksum"] == put["checksum"] and got["readonly"] == "1"
    assert bob.ok(f"map {put['segment']} 0")["fd_mode"] == "ro"
    assert carol.cmd("get team/x")["code"] == "permission_denied"
    assert carol.cmd("stat team/x")["code"] == "permission_denied"
    assert carol.cmd(f"map {put['segment']} 0")["code"] == "permission_denied"
    assert "team/x" not in carol.ok("list")["names"].split(",")
    record("group-shared object: read by the group, refused to another group (get, stat, map, list)",
           injected=4, lost=0, leaked=0)


def test_a_segment_another_uid_once_mapped_never_receives_objects_it_may_not_read(users, daemons, peers):
    d = daemons(pool="16M", segment="4M").start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    pub = alice.ok("put pub/once 100000 1 everyone")
    assert bob.ok(f"map {pub['segment']} 0")["fd_mode"] == "ro"  # bob keeps this mapping
    alice.ok("delete pub/once")  # the segment is empty again, but bob can still read it
    secrets = []
    for i in range(12):  # enough to fill every other segment and want bob's
        r = alice.cmd(f"put secret/{i} 1000000 {1000 + i}")
        if r["status"] != "ok":
            assert r["code"] == "pool_exhausted", r["line"]
            break
        assert r["segment"] != pub["segment"], "a private object went into a segment bob has mapped"
        secrets.append(1000 + i)
    found = sum(bob.ok(f"scan {seed}")["found"] == "1" for seed in secrets)
    assert found == 0
    record("private objects after another uid mapped a shared segment (scan of its kept mapping)",
           injected=len(secrets), lost=0, leaked=found)


def test_the_bytes_of_a_deleted_object_never_reach_another_uids_mapping(users, daemons, peers):
    leaks = tries = 0
    for i in range(3):
        # One pool segment, so that whatever comes next lands where the secret was.
        d = daemons(pool="4M", segment="4M").start()
        alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
        alice.ok(f"put pad/{i} 16 {i}")  # first in the segment: where bob's object will land
        secret = alice.ok(f"put secret/{i} 1000000 {500 + i}")
        alice.ok(f"delete pad/{i}")
        alice.ok(f"delete secret/{i}")
        # The segment is empty again: a shared object of bob's goes there, in
        # a fresh memory file (a new segment id) that never held alice's bytes.
        pub = bob.ok(f"put bob/pub{i} 16 {900 + i} everyone")
        assert pub["segment"] != secret["segment"], "a segment changed owner without a fresh memory file"
        assert d.segments() and len(d.segments()) == 1, d.segments()  # the pool's one segment, replaced
        tries += 1
        bob.ok(f"map {pub['segment']} 0")  # bob may read bob's object: the map must work, or the scan proves nothing
        leaks += bob.ok(f"scan {500 + i}")["found"] == "1"
        d.stop()
    record("bytes of another uid's deleted private object in a reused pool segment (scan of a reader's mapping)",
           injected=tries, lost=0, leaked=leaks)
    assert leaks == 0, f"bob read the bytes of alice's deleted object in {leaks} of {tries} tries"


def test_segments_are_memory_files_that_other_uids_can_neither_name_nor_open(users, daemons, peers):
    d = daemons(pool="16M", segment="8M").start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    alice.ok("put pub/a 100000 1 everyone")
    alice.ok(f"put alice/big {12 * MIB} 2")
    files = d.segments()
    assert any(".d" in n for n in files) and any(".p" in n for n in files), files
    assert not [n for n in os.listdir(SHM) if n.startswith(f"tensorshm.{d.instance}.")], "a segment has a name"
    # Each segment the daemon holds: mode 0600, its own; other uids cannot
    # open it through the daemon's descriptors (/proc/<pid>/fd).
    fd_dir = f"/proc/{d.pid}/fd"
    paths = [f"{fd_dir}/{n}" for n in os.listdir(fd_dir)
             if os.readlink(f"{fd_dir}/{n}").startswith(f"/memfd:tensorshm.{d.instance}.")]
    open_for_others = []
    for path in paths:
        st = os.stat(path)
        assert st.st_uid == os.geteuid(), f"{path} is owned by uid {st.st_uid}"
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            open_for_others.append(f"{os.readlink(path)} {stat.filemode(st.st_mode)}")
    opened = 0
    for path in paths:
        for who in (bob, alice):
            r = who.ok(f"open-shm {path}")
            opened += r["read"] == "allowed" or r["write"] == "allowed"
    assert not open_for_others, f"readable or writable by others: {open_for_others}"
    assert opened == 0
    record("segments (memory files): mode, and open(2) through the daemon's descriptors by other uids",
           injected=2 * len(paths), lost=0, leaked=opened + len(open_for_others))


def test_object_names_never_become_file_names(users, daemons, peers):
    d = daemons().start()
    alice = peers(d, users["alice"])
    before_shm = set(os.listdir(SHM))
    before_dir = set(os.listdir(d.tmp))
    valid = ["etc/passwd", "lock", "p1", f"tensorshm.{d.instance}.p99", "a/b/c/d", "x" * 255]
    invalid = ["../../etc/shadow", "a/../b", "/abs", "trailing/", "two//slashes", "with space", "\u03a9", ""]
    for n in valid:
        alice.ok(f"put {n} 4096 1")
    refused = 0
    for n in invalid:
        if not n or " " in n:
            continue  # not expressible as one word of the peer's command line
        r = alice.cmd(f"put {n} 4096 1")
        refused += r["status"] == "err" and r["code"] == "invalid_name"
    assert refused == len([n for n in invalid if n and " " not in n])
    pattern = re.compile(rf"^tensorshm\.{re.escape(d.instance)}\.(p\d+|d\d+|lock)$")
    new_shm = set(os.listdir(SHM)) - before_shm  # other instances may come and go meanwhile
    ours = [n for n in new_shm if n.startswith(f"tensorshm.{d.instance}.")]
    assert all(pattern.match(n) for n in ours), sorted(ours)
    assert f"tensorshm.{d.instance}.p99" not in new_shm
    assert not [n for n in new_shm if "passwd" in n or "x" * 64 in n or n in ("lock", "p1", "a", "etc")]
    assert set(os.listdir(d.tmp)) == before_dir
    record("object names that look like paths or segment names", injected=len(valid) + refused, lost=0,
           leaked=0, invalid_names_refused=refused)


def test_a_share_value_outside_the_schema_never_widens_access(users, daemons, peers):
    d = daemons().start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    r = alice.cmd("put odd/7 4096 1 7")
    if r["status"] == "err":
        assert r["code"] == "invalid_argument", r["line"]
    else:
        assert bob.cmd("get odd/7")["code"] == "permission_denied"
        assert bob.cmd(f"map {r['segment']} 0")["code"] == "permission_denied"
    record("share value 7 (not in the schema)", injected=1, lost=0, leaked=0,
           refused_at_create=int(r["status"] == "err"))
