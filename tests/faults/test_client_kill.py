"""A client killed with SIGKILL at any point costs nobody else anything: the
daemon reclaims its leases and half-made objects as soon as the connection
ends, and a bystander's object (held by another client throughout) keeps its
version and its bytes."""

from __future__ import annotations

import random
import time

from harness import Daemon, Peer, record, wait_until

SEGMENT = 16 << 20
DEDICATED = 20 << 20  # above a pool segment: a segment of its own


def start_with_bystander(daemons, peers) -> tuple[Daemon, Peer, dict]:
    d = daemons(pool="64M", segment="16M").start()
    b = peers(d)
    put = b.ok("put bystander/x 100000 7")
    b.ok("hold bystander/x")
    return d, b, put


def bystander_unchanged(b: Peer, put: dict) -> bool:
    held = b.ok("check")
    now = b.ok("get bystander/x")
    return held["mismatches"] == "0" and now["version"] == put["version"] and now["checksum"] == put["checksum"]


def test_a_client_killed_mid_create_leaves_no_open_create_and_no_pool_bytes(daemons, peers):
    d, b, put = start_with_bystander(daemons, peers)
    base = d.quiet(clients=1, leases=1)
    files = d.segments()
    kills = leaked = 0
    for i in range(12):
        size = DEDICATED if i % 3 == 2 else 3_000_000
        victim = peers(d)
        victim.ok(f"create victim/{i} {size} {i}")
        assert d.stats()["open_creates"] == 1
        victim.kill9()
        kills += 1
        after = d.quiet(clients=1, leases=1)
        leaked += after["pool_used_bytes"] != base["pool_used_bytes"]
        leaked += after["dedicated_bytes"] != 0
        leaked += d.segments() != files
    assert leaked == 0
    assert not [n for n in d.names() if n.startswith("victim/")], "an unsealed create became visible"
    assert bystander_unchanged(b, put)
    record("client SIGKILL mid-create (3 MB or 20 MB dedicated, written, unsealed)", injected=kills,
           lost=0, leaked=leaked)


def test_a_client_killed_while_holding_leases_frees_the_versions_only_it_kept(daemons, peers):
    d, b, put = start_with_bystander(daemons, peers)
    base = d.quiet(clients=1, leases=1)
    writer = peers(d)
    kills = leaked = 0
    for i in range(10):
        writer.ok(f"put held/{i} 2000000 {i}")
        holder = peers(d)
        for _ in range(3):  # three leases on the same version
            holder.ok(f"hold held/{i}")
        writer.ok(f"put held/{i} 2000000 {i + 100}")  # the old version lives on through the leases only
        before = d.stats()
        assert before["versions"] == base["versions"] + i + 2
        holder.kill9()
        kills += 1
        after = d.quiet(clients=2, leases=1)
        leaked += after["versions"] != base["versions"] + i + 1
    newest = d.stats()
    for i in range(10):
        d.ctl("rm", f"held/{i}")
    end = d.quiet(clients=2, leases=1)
    leaked += end["pool_used_bytes"] != base["pool_used_bytes"]
    assert leaked == 0, f"versions or bytes kept after their holders died: {newest} -> {end}"
    assert bystander_unchanged(b, put)
    record("client SIGKILL holding 3 leases on a superseded 2 MB version", injected=kills, lost=0, leaked=leaked)


def test_a_client_killed_while_waiting_in_get_is_forgotten_and_puts_go_on(daemons, peers):
    d, b, put = start_with_bystander(daemons, peers)
    fds = d.fds_stable()
    rng = random.Random(5)
    kills = leaked = 0
    for i in range(12):
        waiter = peers(d)
        waiter.send(f"get wait/{i} 0 60000")
        assert waiter.read_line() == "waiting"
        time.sleep(rng.uniform(0, 0.05))  # somewhere before or inside the daemon's wait
        waiter.kill9()
        kills += 1
        d.quiet(clients=1, leases=1)
        leaked += d.fds_settled(fds) != fds
        b.ok(f"put wait/{i} 1000 {i}")
    assert leaked == 0
    assert bystander_unchanged(b, put)
    record("client SIGKILL while waiting in get (timeout 60 s)", injected=kills, lost=0, leaked=leaked)


def test_clients_killed_at_random_points_of_random_work_leave_nothing_behind(daemons, peers, workdir):
    d, b, put = start_with_bystander(daemons, peers)
    base = d.quiet(clients=1, leases=1)
    files = d.segments()
    fds = d.fds_stable()
    rng = random.Random(11)
    kills = 0
    logs = []
    for i in range(60):
        log = open(workdir / f"random-{i}.log", "wb")
        logs.append(workdir / f"random-{i}.log")
        victim = peers(d, args=["soak", "--seconds", "60", "--ops", "1000000", "--seed", str(i), "--names", "6",
                                "--prefix", "rand/", "--max-bytes", "400000", "--big-bytes", str(DEDICATED),
                                "--big-every", "7", "--wait-ms", "20"], stdout=log)
        log.close()
        time.sleep(rng.uniform(0, 0.4))
        victim.kill9()
        kills += 1
        d.quiet(clients=1, leases=1)
    mismatches = sum(p.read_text().count("MISMATCH") for p in logs)
    for name in d.names():
        if name.startswith("rand/"):
            d.ctl("rm", name)
    end = d.quiet(clients=1, leases=1)
    leaked = (end["pool_used_bytes"] != base["pool_used_bytes"]) + (end["dedicated_bytes"] != 0) + \
        (end["versions"] != base["versions"]) + (d.segments() != files) + (d.fds_settled(fds) != fds)
    assert mismatches == 0
    assert leaked == 0, f"after {kills} kills: {base} -> {end}"
    assert bystander_unchanged(b, put)
    record("client SIGKILL at a random point (0-400 ms) of random put/get/create/abort/delete/wait",
           injected=kills, lost=mismatches, leaked=leaked)
