"""Per-uid limits: --max-objects-per-uid, --max-bytes-per-uid and
--max-connections-per-uid stop one user with a clear error that names the
limit, and leave the other users alone."""

from __future__ import annotations

from harness import record, wait_until

MIB = 1 << 20
LIMITS = ["--max-objects-per-uid", "4", "--max-bytes-per-uid", "8M", "--max-connections-per-uid", "3"]


def test_one_uid_over_its_object_limit_is_refused_and_the_other_uid_is_not(users, daemons, peers):
    d = daemons(args=LIMITS).start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    for i in range(4):
        alice.ok(f"put a/{i} 4096 {i}")
    r = alice.cmd("put a/4 4096 4")
    assert r["code"] == "limit_exceeded" and "--max-objects-per-uid" in r["line"], r["line"]
    for i in range(4):
        bob.ok(f"put b/{i} 4096 {i}")
    alice.ok("delete a/0")
    alice.ok("put a/4 4096 4")
    record("objects beyond --max-objects-per-uid 4 (another uid unaffected)", injected=1, lost=0, leaked=0,
           clear_errors=1)


def test_one_uid_over_its_byte_limit_is_refused_and_the_other_uid_is_not(users, daemons, peers):
    d = daemons(args=LIMITS).start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    alice.ok(f"put a/big {6 * MIB} 1")
    r = alice.cmd(f"put a/more {3 * MIB} 2")
    assert r["code"] == "limit_exceeded" and "--max-bytes-per-uid" in r["line"], r["line"]
    bob.ok(f"put b/big {6 * MIB} 1")
    alice.ok("delete a/big")
    alice.ok(f"put a/more {3 * MIB} 2")
    record("bytes beyond --max-bytes-per-uid 8M (another uid unaffected)", injected=1, lost=0, leaked=0,
           clear_errors=1)


def test_one_uid_over_its_connection_limit_is_refused_and_the_other_uid_is_not(users, daemons, peers):
    d = daemons(args=LIMITS).start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    r = alice.cmd("connections 5")  # alice has one already
    assert r["code"] == "limit_exceeded" and r["opened"] == "2", r["line"]
    assert "--max-connections-per-uid" in r["line"], r["line"]
    assert bob.ok("connections 2")["opened"] == "2"
    alice.ok("drop-connections")
    bob.ok("drop-connections")
    wait_until(lambda: d.stats()["clients"] == 3, "the dropped connections to close")  # alice, bob, tensorshmctl
    assert alice.ok("connections 2")["opened"] == "2"
    record("connections beyond --max-connections-per-uid 3 (another uid unaffected)", injected=3, lost=0,
           leaked=0, clear_errors=1)
