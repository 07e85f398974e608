"""Attacks of one local user on another, each one that worked before the daemon
and the client were hardened (docs/reliability.md, "Hostile clients"): every
client and the attacker's own daemon run under real throw-away uids
(conftest.py). The attacks of a single uid are in
tests/faults/test_hostile_clients.py.

  stale writable mapping  alice writes through the mapping of a segment she no
                          longer owns into bob's shared object, carol reads it
  socket hijack           mallory runs a daemon in alice's /tmp/tensorshm-<uid>/,
                          or anywhere alice is told to connect
  planted segment name    a name in /dev/shm stops a non-root daemon from starting
  silent connections      one uid's refused connections lock out another uid
  leases of readers       bob holding alice's old versions uses up her allowance
  writable descriptors    a reader gets a writable descriptor of a dedicated
                          segment, or reopens its read-only one writable through
                          /proc/self/fd (a memory file is made with mode 0777)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from harness import SHM, Peer, record, wait_until

MIB = 1 << 20


def test_a_stale_writable_mapping_cannot_reach_another_uids_object_in_the_same_segment(users, daemons, peers):
    tries = overwritten = 0
    for i in range(3):
        d = daemons(pool="16M", segment="16M").start()  # one pool segment: every class takes it in turn
        alice, bob, carol = (peers(d, users[u]) for u in ("alice", "bob", "carol"))
        mine = alice.ok(f"put alice/private{i} 100000 {i}")
        alice.ok(f"map {mine['segment']} 1")  # the writable mapping her creates use, kept
        alice.ok(f"delete alice/private{i}")  # the segment is empty again
        pub = bob.ok(f"put bob/public{i} 100000 {100 + i} everyone")
        scribbled = alice.ok(f"scribble {200 + i}")  # writes all over her old mapping
        assert scribbled["mappings"] == "1"
        seen = carol.ok(f"get bob/public{i}")
        tries += 1
        overwritten += seen["checksum"] != pub["checksum"]
        assert pub["segment"] != mine["segment"], "bob's object went into the file alice can still write"
        d.stop()
    record("a writer's kept mapping of a segment that later holds another uid's shared object (3 uids)",
           injected=tries, lost=overwritten, leaked=0)
    assert overwritten == 0, f"carol read alice's bytes in bob's object in {overwritten} of {tries} tries"


def test_a_daemon_of_another_user_in_the_per_user_socket_directory_is_never_trusted(users, daemons, peers):
    alice, mallory = users["alice"], users["bob"]
    own_dir = f"/tmp/tensorshm-{alice.uid}"
    shutil.rmtree(own_dir, ignore_errors=True)
    os.mkdir(own_dir, 0o755)  # made by mallory before alice's first start
    os.chown(own_dir, mallory.uid, mallory.gid)
    try:
        d = daemons(socket_path=f"{own_dir}/tensorshmd.sock",  # --socket-mode 0666: conftest.py
                    wrapper=["setpriv", f"--reuid={mallory.uid}", f"--regid={mallory.gid}", "--clear-groups"]).start()
        # Alice's client with no TENSORSHM_SOCKET and no XDG_RUNTIME_DIR: the
        # per-user socket is hers by name only.
        victim = peers(None, alice, env={"XDG_RUNTIME_DIR": None, "HOME": "/"})
        line = victim.read_line(timeout=10)  # refused at once; a client that connected says nothing
        assert line.startswith("err permission_denied") and own_dir in line, line
        assert victim.proc.wait(timeout=30) != 0
        # Told explicitly to use mallory's socket, the client still checks who
        # listens: a daemon of another user that is neither root nor the
        # service user is refused before anything is sent...
        told = peers(d, alice)
        line = told.read_line(timeout=10)
        assert line.startswith("err permission_denied") and f"runs as uid {mallory.uid}" in line, line
        assert d.stats()["puts"] == 0 and d.stats()["gets"] == 0
        # ...unless alice says she trusts that uid.
        trusting = peers(d, alice, env={"TENSORSHM_DAEMON_UID": str(mallory.uid)})
        trusting.ok("put mine 1000 1")
    finally:
        shutil.rmtree(own_dir, ignore_errors=True)
    record("another user's daemon in /tmp/tensorshm-<uid>/, and one named by TENSORSHM_SOCKET", injected=2,
           lost=0, leaked=0, refused=2)


def test_a_segment_name_planted_in_dev_shm_does_not_stop_a_daemon_run_by_another_user(users, daemons, peers):
    owner = users["carol"]
    d = daemons(wrapper=["setpriv", f"--reuid={owner.uid}", f"--regid={owner.gid}", "--clear-groups"])
    planted = [SHM / f"tensorshm.{d.instance}.p1", SHM / f"tensorshm.{d.instance}.lock"]
    for p in planted:
        p.write_bytes(b"root's")  # the daemon's user can neither remove nor open these
    try:
        os.chmod(d.tmp, 0o1777)  # room for the daemon's socket and lock (sticky, like /tmp)
        d.start()
        p = peers(d, owner)
        p.ok(f"put x {2 * MIB} 1")
        assert all(f.read_bytes() == b"root's" for f in planted)
    finally:
        for f in planted:
            f.unlink(missing_ok=True)
    d.stop()
    record("names planted in /dev/shm by root before a daemon of another user starts", injected=1, lost=0,
           leaked=0)


SILENT = """
import socket, sys, time
socks = [socket.socket(socket.AF_UNIX) for _ in range(int(sys.argv[2]))]
for s in socks:
    s.connect(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_one_uids_silent_connections_never_lock_out_another_uid(users, daemons, peers):
    d = daemons(args=["--max-connections", "8", "--max-connections-per-uid", "2"]).start()
    alice, bob = users["alice"], users["bob"]
    flood = subprocess.Popen(["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}", "--clear-groups",
                              sys.executable, "-c", SILENT, d.sock, "200"], stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "ready"
        # Alice's 198 refused connections were answered and closed at once:
        # none of them holds a slot. Bob connects and works.
        wait_until(lambda: d.stats()["clients"] <= 3, "alice's refused connections to be closed")
        b = peers(d, bob)
        b.ok("put bob/x 1000 1")
        b.ok("get bob/x")
    finally:
        flood.kill()
        flood.wait(timeout=30)
    record("200 silent connections of one uid, then another uid (--max-connections 8, per uid 2)", injected=200,
           lost=0, leaked=0)


def test_versions_a_reader_holds_do_not_use_up_the_owners_allowance(users, daemons, peers):
    d = daemons(args=["--max-objects-per-uid", "4"]).start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    refused_to_alice = 0
    bob_refused = 0
    for i in range(10):
        r = alice.cmd(f"put stream 4096 {i} everyone")
        refused_to_alice += r["status"] != "ok"
        h = bob.cmd("hold stream")  # bob keeps every version alive
        bob_refused += h["status"] != "ok"
        if h["status"] != "ok":
            assert h["code"] == "limit_exceeded" and "--max-objects-per-uid" in h["line"], h["line"]
    assert refused_to_alice == 0, f"alice's puts failed {refused_to_alice} times because bob held her versions"
    assert bob_refused == 6  # bob may hold 4: what he keeps alive counts for him
    bob.ok("release")
    assert alice.ok("stats")["versions"] == "1"
    record("a reader holding every version of another uid's object (--max-objects-per-uid 4)", injected=10,
           lost=0, leaked=0, owner_refused=refused_to_alice, reader_refused=bob_refused)


def test_a_reader_can_never_get_or_make_a_writable_descriptor(users, daemons, peers):
    d = daemons(pool="16M", segment="8M").start()
    alice, bob = peers(d, users["alice"]), peers(d, users["bob"])
    small = alice.ok("put pub/small 100000 1 everyone")
    alice.ok(f"put pub/big {12 * MIB} 2 everyone")  # a dedicated segment: its descriptor rides on the get reply
    refused = tried = 0
    for name in ("pub/small", "pub/big"):
        r = bob.ok(f"rawget {name}")
        if name == "pub/big":
            tried += 1
            refused += r["fd_mode"] == "ro"
            assert r["fd_mode"] == "ro", f"a get of a dedicated segment handed bob a {r['fd_mode']} descriptor"
            tried += 1
            refused += bob.ok("reopen")["reopen"].startswith("refused")
        held = bob.ok(f"hold {name}")
        assert held["readonly"] == "1"
        tried += 1
        refused += bob.ok("mprotect")["mprotect"] == "refused"
    bob.ok(f"map {small['segment']} 0")
    tried += 1
    refused += bob.ok("reopen")["reopen"].startswith("refused")  # through /proc/self/fd, as O_RDWR
    assert refused == tried, f"{tried - refused} of {tried} ways to write were open to a reader"
    record("reader: writable descriptor from a get of a dedicated segment, reopen through /proc/self/fd, "
           "mprotect (pool and dedicated)", injected=tried, lost=0, leaked=tried - refused)
