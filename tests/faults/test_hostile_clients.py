"""Hostile clients of one uid: each test performs an attack that worked against
the daemon before it was hardened (docs/reliability.md, "Hostile clients"), and
checks that it now fails and costs nobody anything. Attacks that need another
uid are in tests/security/test_cross_uid_attacks.py.

  planted names     a symbolic link or a held lock where the old lock was, files
                    named like segments: the daemon starts and writes none of them
  ftruncate         a writer shrinks its segment: the daemon's next write would SIGBUS
  descriptors       a lingering TCP socket attached to a frame (or queued in a Unix
                    socket attached to one): its close would freeze the io thread
                    for the linger time
  silent sockets    refused connections held open, and connections that never
                    say Hello: they hold no slot
  large frames      8 MiB announced before Hello, or trickled after it: the
                    daemon would allocate it at once
  a byte, then bye  a waiting get, one more byte, a hang-up: the session would
                    live until the get's timeout
  layouts           a 1-byte object shaped [2^32]*3: numpy and torch consumers crash
  overflow          a timeout of 9.2e12 ms, 30 000 long names in one List reply,
                    negative config values, a flood of bad releases
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import time

import pytest

from harness import SHM, frame_header, frame_hex, peer_closed, raw_socket, record, tensorshmd, wait_until

MIB = 1 << 20
HELLO_REPLY, ERROR_REPLY, GET_REPLY = 2, 24, 9


def read_frame(s: socket.socket, timeout: float = 30) -> tuple[int, int, bytes]:
    """(type, request id, payload) of the next frame."""
    s.settimeout(timeout)
    head = s.recv(16, socket.MSG_WAITALL)
    assert len(head) == 16, f"no reply header (got {head!r})"
    _, _, type_, length, request_id = struct.unpack("<IHHII", head)
    body = s.recv(length, socket.MSG_WAITALL) if length else b""
    return type_, request_id, body


def hello(s: socket.socket) -> None:
    s.sendall(frame_hex("hello"))
    assert read_frame(s)[0] == HELLO_REPLY


# ---- names planted before the daemon starts -------------------------------------------


PLANTED = ["a link at the old lock", "a held lock file", "200 segment names"]


@pytest.mark.parametrize("what", PLANTED)
def test_names_planted_in_dev_shm_before_the_daemon_starts_neither_stop_nor_redirect_it(daemons, peers, workdir,
                                                                                          what):
    d = daemons(pool="16M", segment="8M")
    victim = workdir / "victim"
    victim.write_text("precious")
    lock = SHM / f"tensorshm.{d.instance}.lock"  # where the lock used to be
    planted = []
    holder = None
    if what == PLANTED[0]:
        lock.symlink_to(victim)  # a root daemon followed it, truncated the target and wrote its pid
        planted.append(lock)
    elif what == PLANTED[1]:
        lock.write_bytes(b"")
        holder = os.open(lock, os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another user's lock: "another tensorshmd (pid ?)"
        planted.append(lock)
    else:
        planted += [SHM / f"tensorshm.{d.instance}.d{i}" for i in range(3, 203)]  # large creates hit EEXIST
        planted.append(SHM / f"tensorshm.{d.instance}.p1")
        for p in planted:
            p.write_bytes(b"")
    failed = 0
    try:
        d.start()
        c = peers(d)
        for i in range(5):
            failed += c.cmd(f"put big/{i} {12 * MIB} {i}")["status"] != "ok"  # dedicated segments
        c.ok("put small 1000 1")
        assert failed == 0, f"{failed} of 5 large creates failed beside the planted files"
        assert victim.read_text() == "precious", "the daemon wrote through a planted link"
        assert all(p.is_symlink() or p.read_bytes() == b"" for p in planted)
    finally:
        if holder is not None:
            os.close(holder)
        for p in planted:
            p.unlink(missing_ok=True)
    d.stop()
    record(f"planted in /dev/shm before start: {what}", injected=1, lost=0, leaked=0, failed_creates=failed)


def test_a_link_planted_at_the_lock_beside_the_socket_is_refused_and_not_followed(daemons, workdir):
    victim = workdir / "victim2"
    victim.write_text("precious")
    d = daemons()
    os.symlink(victim, d.sock + ".lock")
    d.start(wait=False)
    assert d.exit_code() == 1
    log = d.log.read_text()
    assert "symbolic link" in log and ".lock" in log, log
    assert victim.read_text() == "precious"
    record("a symbolic link planted at <socket>.lock", injected=1, lost=0, leaked=0, clear_errors=1)


# ---- shrinking a segment under the daemon ---------------------------------------------


def test_a_writer_cannot_shrink_its_pool_segment_so_the_daemon_never_takes_a_sigbus(daemons, peers):
    d = daemons(pool="32M", segment="16M").start()
    bystander = peers(d)
    kept = bystander.ok("put bystander/kept 100000 7 everyone")  # another class: the other segment
    attacker = peers(d)
    mine = attacker.ok("put mine/a 100000 1")
    assert mine["segment"] != kept["segment"]
    attacker.ok(f"map {mine['segment']} 1")  # the writable descriptor a writer gets
    t = attacker.ok("truncate")
    # The daemon writes into that segment at the next create (its extent header).
    after = attacker.cmd("put mine/b 100000 2")
    alive = d.proc.poll() is None
    assert alive, f"tensorshmd died (exit {d.proc.returncode}) after a client truncated its segment"
    assert t["truncate"].startswith("refused"), t["line"]
    assert after["status"] == "ok", after["line"]
    assert bystander.ok("get bystander/kept")["checksum"] == kept["checksum"]
    record("a writer ftruncates its pool segment to 0, then puts", injected=1, lost=0, leaked=0,
           daemon_crashes=0 if alive else 1)


def test_a_writer_cannot_shrink_a_dedicated_segment_before_its_seal(daemons, peers):
    d = daemons(pool="16M", segment="8M").start()
    bystander = peers(d)
    kept = bystander.ok("put bystander/kept 100000 7")
    attacker = peers(d)
    r = attacker.ok(f"rawcreate big {12 * MIB}")  # a dedicated segment, its writable descriptor in the reply
    assert r["fds"] == "1", r["line"]
    t = attacker.ok("truncate")
    sealed = attacker.cmd("rawseal")  # the daemon writes the extent header at seal
    alive = d.proc.poll() is None
    assert alive, f"tensorshmd died (exit {d.proc.returncode}) at the seal of a truncated segment"
    assert t["truncate"].startswith("refused"), t["line"]
    assert sealed["status"] == "ok", sealed["line"]
    assert bystander.ok("get bystander/kept")["checksum"] == kept["checksum"]
    # Punching holes is allowed (the writer's own memory) and faults no one either.
    attacker.ok("punch")
    attacker.ok("put again 100000 3")
    assert d.proc.poll() is None
    record("a writer ftruncates a dedicated segment before its seal", injected=1, lost=0, leaked=0,
           daemon_crashes=0 if alive else 1)


def test_every_descriptor_a_reader_is_handed_is_read_only(daemons, peers):
    # The owner's own readers included: no path that hands out a descriptor
    # (MapSegment, a get of a dedicated segment) gives a reader one it could
    # map writable. Runs as any uid (tests/security repeats it across uids).
    d = daemons(pool="16M", segment="8M").start()
    owner, reader = peers(d), peers(d)
    small = owner.ok("put own/small 100000 1")
    created = owner.ok(f"rawcreate own/big {12 * MIB}")  # the writer's descriptor: read-write, as it must be
    assert created["fds"] == "1"
    owner.ok("rawseal")
    handed = {
        "get of a dedicated segment": reader.ok("rawget own/big")["fd_mode"],
        "MapSegment, read-only": reader.ok(f"map {small['segment']} 0")["fd_mode"],
        "get of a pool object": reader.ok("rawget own/small")["fd_mode"],  # none: its segment is mapped once
    }
    assert handed == {"get of a dedicated segment": "ro", "MapSegment, read-only": "ro",
                      "get of a pool object": "none"}, handed
    for name in ("own/small", "own/big"):
        assert reader.ok(f"hold {name}")["readonly"] == "1"
        assert reader.ok("mprotect")["mprotect"] == "refused"
    record("descriptors handed to a reader of the same uid (dedicated get, MapSegment), mprotect of its views",
           injected=4, lost=0, leaked=0)


# ---- descriptors sent to the daemon ------------------------------------------------------


def lingering_socket(linger_s: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    """A loopback TCP connection whose peer never reads, with SO_LINGER set and
    unsent data queued: its last close waits up to `linger_s` seconds."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fixed, small: no autotuning drains the sender
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, linger_s))
    c.setblocking(False)
    for _ in range(3):  # until the receiver's window is shut and the send buffer stays full
        try:
            while True:
                c.send(b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.02)
    return c, acc, srv


def send_with_fd(s: socket.socket, data: bytes, fd: int) -> None:
    s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def round_trip_seconds(p, name: str) -> float:
    # A daemon whose io thread waits out a linger does not answer: fail after
    # 5 s rather than wait with it.
    t0 = time.monotonic()
    p.ok(f"get {name}", timeout=5)
    p.ok("stats", timeout=5)
    return time.monotonic() - t0


def nest(fd: int, levels: int) -> tuple[int, list[socket.socket]]:
    """A Unix socket whose receive queue holds `fd`, itself in the queue of
    another, `levels` deep; returns the outermost and what to keep alive."""
    keep = []
    for _ in range(levels):
        a, b = socket.socketpair()
        send_with_fd(a, b"x", fd)
        keep += [a, b]
        fd = b.fileno()
    return fd, keep


WHEN = ["with its hello", "nested two Unix sockets deep", "still queued when the daemon drops the connection"]


@pytest.mark.parametrize("when", WHEN)
def test_a_lingering_descriptor_sent_to_the_daemon_never_freezes_it(daemons, peers, when):
    d = daemons(args=["--write-timeout-ms", "2000"]).start()
    bystander = peers(d)
    bystander.ok("put kept 4096 1")
    base_fds = d.fds_stable()
    stats = frame_hex("stats")
    c, acc, srv = lingering_socket(10)
    s = raw_socket(d)
    keep = []
    if when == WHEN[0]:
        send_with_fd(s, frame_hex("hello"), c.fileno())
    elif when == WHEN[1]:
        outer, keep = nest(c.fileno(), 2)
        send_with_fd(s, frame_hex("hello"), outer)
    else:
        # A reply that outgrows the socket: the daemon blocks writing it (and
        # reads nothing more) until the write timeout drops the connection,
        # with the descriptor still queued in it unread.
        bystander.ok("fill x/ 1500", timeout=120)
        hello(s)
        s.sendall(frame_hex("list", "x/"))
        time.sleep(0.2)  # well within the 2 s before the daemon drops the connection
        send_with_fd(s, stats, c.fileno())
    c.close()  # the daemon holds the last reference now
    for k in keep:
        k.close()
    worst = max(round_trip_seconds(bystander, "kept") for _ in range(5))
    if when == WHEN[2]:
        wait_until(lambda: "did not read its reply" in d.log.read_text(), "the daemon to drop the non-reader")
    closed = peer_closed(s, timeout=5)
    # The closer is not wedged either: clients that come and go (and are
    # dropped) leave no descriptor behind, and see their connection end.
    for _ in range(20):
        x = raw_socket(d)
        hello(x)
        x.close()
    dropped = raw_socket(d)
    dropped.sendall(b"\xff" * 64)
    dropped_closed = peer_closed(dropped, timeout=5)
    worst = max(worst, *(round_trip_seconds(bystander, "kept") for _ in range(5)))
    fds = d.fds_settled(base_fds)
    for x in (s, acc, srv, dropped):
        x.close()
    assert worst < 2.0, f"a bystander waited {worst:.1f} s: the daemon closed the lingering socket on its io thread"
    assert closed, "the connection that sent a descriptor stayed open"
    assert dropped_closed and fds == base_fds, f"the closer is stuck: {fds} descriptors, {base_fds} before"
    if when != WHEN[2]:
        assert "descriptor(s)" in d.log.read_text()
    record(f"a TCP socket lingering 10 s sent to the daemon ({when})", injected=1, lost=0, leaked=fds - base_fds,
           worst_bystander_round_trip_ms=round(worst * 1000, 1))


def test_a_descriptor_nested_too_deep_to_defuse_holds_only_its_own_uid(daemons, peers):
    # Six Unix sockets deep: past what the closer drains (four levels), so
    # the close of the lingering socket waits out its linger on a closer
    # thread. The daemon serves everyone meanwhile and refuses only that uid's
    # new connections until it is over. (Under heavy unix-socket traffic the
    # kernel's garbage collector may close the nested sockets itself, in its
    # own worker: then nothing blocks in the daemon at all, which the test
    # records and accepts.)
    d = daemons().start()
    bystander = peers(d)
    bystander.ok("put kept 4096 1")
    c, acc, srv = lingering_socket(15)
    outer, keep = nest(c.fileno(), 6)
    s = raw_socket(d)
    send_with_fd(s, frame_hex("hello"), outer)
    c.close()
    for k in keep:
        k.close()
    t0 = time.monotonic()
    refused = False
    worst = 0.0
    while time.monotonic() - t0 < 6 and not refused and "took" not in d.log.read_text():
        refused = "still closing" in refusal(d)
        worst = max(worst, round_trip_seconds(bystander, "kept"))
        time.sleep(0.1)
    if refused:
        wait_until(lambda: refusal(d) == "", "the close to end and the uid to be served again", timeout=60)
    took = time.monotonic() - t0
    blocked = "took" in d.log.read_text()  # the closer logs a close of more than a second when it ends
    worst = max(worst, *(round_trip_seconds(bystander, "kept") for _ in range(3)))
    for x in (s, acc, srv):
        x.close()
    assert worst < 2.0, f"a bystander waited {worst:.1f} s"
    assert refused or not blocked, "a close blocked a closer thread for over a second, yet the uid was not refused"
    record("a lingering TCP socket nested 6 Unix sockets deep (linger 15 s)", injected=1, lost=0, leaked=0,
           blocked_a_closer_thread=int(blocked), uid_refused_for_s=round(took, 1) if refused else 0,
           worst_bystander_round_trip_ms=round(worst * 1000, 1))


def refusal(d) -> str:
    """The refusal a new connection of this uid gets, or "" when it is served."""
    x = raw_socket(d)
    try:
        try:
            x.sendall(frame_hex("hello"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed already: its answer waits to be read
        type_, request_id, body = read_frame(x, timeout=10)
        return body.decode(errors="replace") if type_ == ERROR_REPLY else ""
    finally:
        x.close()


# ---- connections that hold slots --------------------------------------------------------


def test_refused_connections_are_answered_at_once_and_hold_no_slot(daemons, peers):
    d = daemons(args=["--max-connections", "8", "--max-connections-per-uid", "2", "--hello-timeout-ms", "500"]).start()
    silent = [raw_socket(d) for _ in range(200)]  # nothing sent, ever
    refused = 0
    for s in silent[2:]:
        type_, request_id, body = read_frame(s, timeout=10)  # the answer comes without asking
        refused += type_ == ERROR_REPLY and request_id == 0 and b"--max-connections-per-uid" in body
    assert refused == 198, refused
    assert all(peer_closed(s, timeout=10) for s in silent[2:])
    # The two accepted ones never say Hello: they are closed after hello-timeout-ms.
    assert all(peer_closed(s, timeout=10) for s in silent[:2])
    for s in silent:
        s.close()
    p = peers(d)  # this uid may connect again
    p.ok("stats")
    assert "did not say Hello within 500 ms" in d.log.read_text()
    record("200 silent connections of one uid (--max-connections-per-uid 2, --hello-timeout-ms 500)",
           injected=200, lost=0, leaked=0, refused_at_once=refused)


# ---- frames larger than their bytes -----------------------------------------------------


def test_frames_announcing_megabytes_cost_the_daemon_only_what_arrives(daemons):
    d = daemons().start()
    base = d.memory_kib()["RssAnon"]
    before = [raw_socket(d) for _ in range(10)]
    for s in before:  # 8 MiB announced before Hello: refused at the header
        s.sendall(frame_header(1, 8 * MIB) + b"x" * 100)
    after = [raw_socket(d) for _ in range(10)]
    for s in after:  # after Hello: 8 MiB announced, 1 KiB sent, then nothing
        hello(s)
        s.sendall(frame_header(16, 8 * MIB) + b"x" * 1024)
    time.sleep(0.5)
    grown = d.memory_kib()["RssAnon"] - base
    closed = sum(peer_closed(s, timeout=5) for s in before)
    for s in before + after:
        s.close()
    assert closed == 10, f"{10 - closed} connections announcing 8 MiB before Hello stayed open"
    assert grown < 8 * 1024, f"the daemon grew by {grown} KiB for 20 frames that sent 1 KiB each"
    assert "before saying Hello" in d.log.read_text()
    record("20 frames announcing 8 MiB (10 before Hello, 10 after), about 1 KiB sent each", injected=20, lost=0,
           leaked=0, daemon_rss_anon_growth_kib=grown)


# ---- a waiting request, a byte, a hang-up ---------------------------------------------


def test_a_client_that_sends_a_byte_during_a_wait_and_hangs_up_is_gone_at_once(daemons, peers):
    d = daemons(args=["--max-connections-per-uid", "3"]).start()
    for _ in range(2):
        s = raw_socket(d)
        hello(s)
        s.sendall(frame_hex("get", "never/there", "600000"))  # a get waiting 10 minutes
        time.sleep(0.2)
        s.sendall(b"\x00")  # one more byte: the start of a next request
        time.sleep(0.2)
        s.close()
    # Both sessions end now, not when their gets time out: this uid may use
    # all three of its connections again.
    wait_until(lambda: d.stats()["clients"] == 1, "the hung-up sessions to end", timeout=10)
    ps = [peers(d) for _ in range(2)]
    for p in ps:
        p.ok("stats")
    record("a get waiting 10 min, one more byte, a hang-up (twice, --max-connections-per-uid 3)", injected=2,
           lost=0, leaked=0)


# ---- layouts consumers cannot hold ------------------------------------------------------


def test_a_layout_numpy_and_torch_cannot_index_is_refused_at_put(daemons, peers):
    d = daemons().start()
    p = peers(d)
    big = 1 << 32
    r = p.cmd(f"layout bomb uint8 {big},{big},{big} 0,0,0")
    assert r["code"] == "invalid_argument" and "numpy and torch" in r["line"], r["line"]
    assert p.cmd("stat bomb")["code"] == "not_found"
    # A broadcast they can hold stays welcome: one byte seen as 1000 x 1000.
    ok = p.ok("layout fine uint8 1000,1000 0,0")
    assert ok["nbytes"] == "1"
    record("an object of 1 byte shaped [2^32]*3 (strides 0)", injected=1, lost=0, leaked=0, clear_errors=1)


# ---- overflow -------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", ["9223372036854", "9223372036854775807"])
def test_a_huge_timeout_waits_instead_of_failing_at_once(daemons, peers, timeout_ms):
    # In nanoseconds after now, either overflows the steady clock.
    d = daemons().start()
    s = raw_socket(d)
    hello(s)
    s.sendall(frame_hex("get", "later", timeout_ms))
    ready, _, _ = select.select([s], [], [], 1.0)
    assert not ready, f"answered at once: {read_frame(s)}"
    peers(d).ok("put later 1000 1")
    type_, _, _ = read_frame(s, timeout=10)
    assert type_ == GET_REPLY
    s.close()
    record(f"a get with timeout_ms = {timeout_ms}", injected=1, lost=0, leaked=0)


def test_a_listing_too_long_for_one_frame_comes_in_pages(daemons, peers):
    d = daemons(pool="200M", segment="200M", args=["--max-objects", "100000"]).start()
    p = peers(d)
    p.ok("fill n/ 30000", timeout=300)  # 30 000 names of 255 bytes: 11 MB of descriptions
    listed = len(d.names())  # tensorshmctl --json ls
    assert listed == 30000, listed
    assert p.ok("list n/")["names"].count(",") == 29999
    record("a listing of 30 000 names of 255 bytes (one frame holds 8 MiB)", injected=1, lost=0, leaked=0,
           listed=listed)


def test_a_flood_of_releases_of_unknown_objects_writes_a_few_log_lines(daemons):
    d = daemons().start()
    s = raw_socket(d)
    hello(s)
    release = frame_hex("release", "987654321")
    s.sendall(release * 50000)
    s.sendall(frame_hex("stats"))
    type_, _, _ = read_frame(s, timeout=60)
    assert type_ == 17  # StatsReply: all 50 000 were read
    s.close()
    wait_until(lambda: "more one-way releases" in d.log.read_text(), "the summary line of the session's end")
    lines = [l for l in d.log.read_text().splitlines() if "release" in l]
    assert len(lines) < 20, f"{len(lines)} log lines for 50 000 bad releases"
    record("50 000 one-way releases of unknown objects", injected=50000, lost=0, leaked=0, log_lines=len(lines))


@pytest.mark.parametrize("flag, value, says", [
    ("--pool-size", "-1", "pool-size: '-1' is not a size"),
    ("--max-connections", "-1", "max-connections: '-1' is not a whole number"),
    ("--max-objects", "-1", "max-objects: '-1'"),
    ("--write-timeout-ms", "-1", "write-timeout-ms: '-1'"),
    ("--max-bytes-per-uid", "-1", "max-bytes-per-uid: '-1'"),
    ("--housekeeping-ms", "0", "below the minimum of 10"),
    ("--shm-dir", "/tmp", "shm-dir: tensorshmd no longer places segments"),
])
def test_a_config_value_that_would_wrap_or_spin_stops_the_daemon_before_it_starts(workdir, flag, value, says):
    sock = str(workdir / "cfg.sock")
    r = subprocess.run([tensorshmd(), "--socket", sock, "--cuda", "off", flag, value], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert says in r.stderr, r.stderr
    assert not os.path.exists(sock)


def test_a_config_file_naming_another_config_file_is_refused(workdir):
    conf = workdir / "a.conf"
    conf.write_text(f"config = {workdir / 'b.conf'}\n")
    r = subprocess.run([tensorshmd(), "--config", str(conf), "--cuda", "off"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and re.search(r"config: a config file cannot name another", r.stderr), r.stderr
