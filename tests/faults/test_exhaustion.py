"""Running out: of pool space (a clear error at once, or a bounded wait that
ends when space comes back), of the configured object and connection limits
(a clear error naming the limit), of memory for the segments (a clear start-up
or allocation error, never a SIGBUS or the OOM killer) and of descriptors (the
daemon backs off and recovers)."""

from __future__ import annotations

import os
import shutil
import signal
import socket

import pytest

from harness import Daemon, frame_hex, parse, raw_socket, record, wait_until

MIB = 1 << 20


def test_a_full_pool_fails_clearly_or_waits_until_space_is_freed(daemons, peers):
    d = daemons(pool="8M", segment="8M").start()
    filler = peers(d)
    n = 0
    while True:
        r = filler.cmd(f"put fill/{n} {MIB} {n}")
        if r["status"] != "ok":
            break
        n += 1
    assert r["code"] == "pool_exhausted", r["line"]
    assert "pool exhausted" in r["line"] and "--pool-size" in r["line"], r["line"]
    assert n >= 6

    waiter = peers(d)
    timed_out = waiter.cmd(f"put late {MIB} 1 owner 300")
    assert timed_out["code"] == "timeout" and "300 ms" in timed_out["line"], timed_out["line"]

    waiter.send(f"put late {MIB} 1 owner 60000")
    wait_until(lambda: d.stats()["clients"] == 3, "the waiter to connect")
    filler.ok("delete fill/0")  # frees one extent: the waiting put takes it
    r = parse(waiter.read_line(60))
    assert r["status"] == "ok", r
    for i in range(1, n):
        filler.ok(f"delete fill/{i}")
    filler.ok("delete late")
    end = d.quiet(clients=2)
    assert end["pool_used_bytes"] == 0
    record("pool full: put with no wait, a 300 ms wait, a wait ended by a delete", injected=3, lost=0,
           leaked=end["pool_used_bytes"], clear_errors=2)


def test_more_objects_than_max_objects_is_a_clear_error_until_one_goes(daemons, peers):
    d = daemons(args=["--max-objects", "8"]).start()
    p = peers(d)
    for i in range(8):
        p.ok(f"put obj/{i} 1000 {i}")
    r = p.cmd("put obj/8 1000 8")
    assert r["code"] == "limit_exceeded" and "--max-objects" in r["line"], r["line"]
    p.ok("delete obj/0")
    p.ok("put obj/8 1000 8")
    record("objects beyond --max-objects 8", injected=1, lost=0, leaked=0, clear_errors=1)


def test_more_connections_than_max_connections_is_a_clear_error_until_one_closes(daemons, peers):
    d = daemons(args=["--max-connections", "4"]).start()
    p = peers(d)  # one connection
    r = p.cmd("connections 10")
    assert r["code"] == "limit_exceeded" and r["opened"] == "3", r["line"]
    assert "--max-connections" in r["line"], r["line"]
    p.ok("drop-connections")
    wait_until(lambda: d.stats()["clients"] == 2, "the dropped connections to close")
    assert p.ok("connections 2")["opened"] == "2"
    record("connections beyond --max-connections 4", injected=7, lost=0, leaked=0, clear_errors=1)


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def test_a_pool_larger_than_the_available_memory_is_a_clear_start_up_error(daemons):
    # Segments are memory files, limited by memory alone (not by /dev/shm):
    # a pool the host cannot hold is refused before any of it is reserved.
    too_big = 2 * mem_available() // MIB
    d = daemons(pool=f"{too_big}M", segment="1G").start(wait=False)
    rc = d.exit_code()
    log = d.log.read_text()
    assert rc == 1, f"expected a clean failure, got {rc} (a signal is negative):\n{log}"
    assert "bytes are available to tensorshmd" in log and "--pool-size" in log, log
    record("pool larger than the host's available memory", injected=1, lost=0, leaked=0, clear_errors=1, signals=0)


def test_an_object_larger_than_the_available_memory_is_a_clear_error_and_the_daemon_serves_on(daemons, peers):
    d = daemons(pool="4M", segment="4M", args=["--max-object-size", "1T"]).start()
    p = peers(d)
    r = p.cmd(f"put huge {2 * mem_available()} 1")  # a dedicated segment bigger than the host's memory
    assert r["code"] == "pool_exhausted" and "available to tensorshmd" in r["line"], r["line"]
    p.ok(f"put small {MIB} 1")
    p.ok(f"put medium {12 * MIB} 2")  # a dedicated segment that fits
    p.ok("hold medium")
    assert p.ok("check")["mismatches"] == "0"
    assert d.proc.poll() is None
    record("dedicated segment larger than the host's available memory", injected=1, lost=0, leaked=0,
           clear_errors=1, signals=0)


def memory_cgroup(limit: int):
    """A wrapper that runs a command in a fresh memory cgroup limited to
    `limit` bytes (v2 or v1), and the cgroup's folder; None when this host does
    not let the test make one (not root, no writable memory controller)."""
    if os.geteuid() != 0:
        return None
    for root, limit_file in (("/sys/fs/cgroup", "memory.max"), ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
        if not os.path.exists(f"{root}/{limit_file}") and not os.path.exists(f"{root}/cgroup.procs"):
            continue
        group = f"{root}/tshm-test-{os.getpid()}"
        try:
            os.mkdir(group)
            with open(f"{group}/{limit_file}", "w") as f:
                f.write(str(limit))
        except OSError:
            shutil.rmtree(group, ignore_errors=True)
            try:
                os.rmdir(group)
            except OSError:
                pass
            continue
        return ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"], group
    return None


def test_a_dedicated_segment_beyond_the_memory_cgroups_limit_is_a_clear_error(daemons, peers):
    made = memory_cgroup(96 * MIB)
    if made is None:
        pytest.skip("this host does not let the test make a memory cgroup (needs root and a writable "
                    "memory controller)")
    wrapper, group = made
    try:
        d = daemons(pool="16M", segment="16M", wrapper=wrapper).start()
        p = peers(d)
        r = p.cmd(f"put huge {200 * MIB} 1")
        assert r["code"] == "pool_exhausted" and "available to tensorshmd" in r["line"], r["line"]
        p.ok(f"put medium {24 * MIB} 2")  # fits under the limit
        p.ok("hold medium")
        assert p.ok("check")["mismatches"] == "0"
        assert d.proc.poll() is None
        d.stop()
        record("dedicated segment (200 MiB) beyond the daemon's memory cgroup (96 MiB)", injected=1, lost=0,
               leaked=0, clear_errors=1, signals=0)
    finally:
        for _ in range(50):
            try:
                os.rmdir(group)
                break
            except OSError:
                import time
                time.sleep(0.1)


def test_a_daemon_at_its_descriptor_limit_backs_off_and_recovers(daemons, peers):
    limit = 48
    d = daemons(pool="16M", segment="16M", wrapper=["prlimit", f"--nofile={limit}:{limit}"]).start()
    p = peers(d)  # connected before the flood
    hello = frame_hex("hello")
    socks = []
    for _ in range(limit + 20):
        s = raw_socket(d)  # the kernel queues connections the daemon cannot accept
        s.sendall(hello)
        socks.append(s)
    wait_until(lambda: d.fd_count() >= limit - 1, "the daemon to use up its descriptors")
    # With no descriptor left, a dedicated segment cannot be made: a clear error, no crash.
    r = p.cmd(f"put big {20 * MIB} 1")
    assert r["status"] == "err" and r["code"] in ("system_error", "pool_exhausted"), r["line"]
    assert "Too many open files" in r["line"] or "EMFILE" in r["line"] or "errno 24" in r["line"], r["line"]
    assert d.proc.poll() is None
    for s in socks[:40]:
        s.close()
    # The queued connections are accepted once descriptors come back: each gets its HelloReply.
    answered = 0
    for s in socks[40:]:
        s.settimeout(60)
        head = s.recv(16, socket.MSG_WAITALL)
        answered += len(head) == 16 and int.from_bytes(head[6:8], "little") == 2  # HelloReply
    for s in socks[40:]:
        s.close()
    assert answered == len(socks) - 40
    wait_until(lambda: d.stats()["clients"] == 2, "the flood's connections to close")
    p.ok(f"put big {20 * MIB} 1")
    assert d.proc.poll() is None
    record(f"daemon at RLIMIT_NOFILE={limit}: {len(socks)} connections + a dedicated segment", injected=len(socks),
           lost=0, leaked=0, late_but_served=answered)
