"""Hostile or broken peers on a raw socket: garbage, partial frames, frames cut
by a disconnect, a peer that never reads its replies, a flood of connections.
The daemon drops the offender (or serves it once its frame is whole), never
blocks the others, and does not grow."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import time

from harness import frame_hex, peer_closed, raw_socket, record, wait_until

MAGIC = 0x4D485354


def header(type_: int, length: int, version: int = 1, request_id: int = 9) -> bytes:
    return struct.pack("<IHHII", MAGIC, version, type_, length, request_id)


def read_frame(s: socket.socket, timeout: float = 30) -> tuple[int, bytes]:
    s.settimeout(timeout)
    head = s.recv(16, socket.MSG_WAITALL)
    assert len(head) == 16, f"no reply header (got {head!r})"
    _, _, type_, length, _ = struct.unpack("<IHHII", head)
    body = s.recv(length, socket.MSG_WAITALL) if length else b""
    return type_, body


def hello(s: socket.socket) -> None:
    s.sendall(frame_hex("hello"))
    assert read_frame(s)[0] == 2  # HelloReply


def test_garbage_of_every_kind_closes_only_the_offending_connection(daemons, peers):
    d = daemons().start()
    p = peers(d)
    put = p.ok("put keep 100000 3")
    rng = random.Random(3)
    hello_frame = frame_hex("hello")
    cases = [
        os.urandom(1 << 20),                                  # noise
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                  # the wrong protocol
        header(1, 16 * 1024 * 1024) + b"x" * 64,              # a length over the 8 MiB limit
        header(1, 32) + os.urandom(32),                        # a payload that is not a FlatBuffer
        header(3, len(hello_frame) - 16) + hello_frame[16:],  # a Hello payload under another type
        header(0, 0),                                          # type 0, empty
        header(77, 8) + b"\0" * 8,                             # an unknown type
    ]
    for _ in range(40):  # valid frames with bytes flipped
        f = bytearray(hello_frame)
        for _ in range(rng.randint(1, 6)):
            f[rng.randrange(16, len(f))] ^= 1 << rng.randrange(8)
        cases.append(bytes(f) + b"\xff" * 64)
    closed = 0
    for c in cases:
        s = raw_socket(d)
        try:
            s.sendall(c)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed += peer_closed(s)
        s.close()
    assert closed == len(cases)
    got = p.ok("get keep")
    assert got["checksum"] == put["checksum"]
    d.quiet(clients=1)
    assert d.proc.poll() is None
    record("garbage on a raw socket (noise, HTTP, oversized length, bad payloads, flipped bits)",
           injected=len(cases), lost=0, leaked=0, connections_closed=closed)


def test_a_frame_sent_byte_by_byte_is_served_and_a_stalled_one_blocks_nobody(daemons, peers):
    d = daemons().start()
    p = peers(d)
    stalled = raw_socket(d)
    stalled.sendall(frame_hex("hello")[:10])  # half a header, then nothing
    slow = raw_socket(d)
    for b in frame_hex("hello"):
        slow.sendall(bytes([b]))
        time.sleep(0.001)
    assert read_frame(slow)[0] == 2
    for i in range(20):  # the others are served meanwhile
        p.ok(f"put other/{i} 1000 {i}")
        p.ok(f"get other/{i}")
    slow.sendall(frame_hex("stats"))
    assert read_frame(slow)[0] == 17  # StatsReply
    stalled.close()
    slow.close()
    d.quiet(clients=1)
    record("partial frames: one stalled mid-header, one sent a byte at a time", injected=2, lost=0, leaked=0)


def test_a_peer_leaving_mid_frame_loses_its_lease_like_any_other_disconnect(daemons, peers):
    d = daemons().start()
    p = peers(d)
    p.ok("put leased 100000 1")
    cuts = 0
    for cut in (1, 8, 15, 16, 17, 30):
        s = raw_socket(d)
        hello(s)
        s.sendall(frame_hex("get", "leased"))
        assert read_frame(s)[0] == 9  # GetReply: a lease is held
        assert d.stats()["leases"] == 1
        s.sendall(frame_hex("get", "leased")[:cut])
        s.close()
        cuts += 1
        d.quiet(clients=1)
    record("disconnect mid-frame while holding a lease (cut after 1..30 bytes)", injected=cuts, lost=0, leaked=0)


def test_a_peer_that_never_reads_its_replies_is_dropped_and_the_daemon_does_not_grow(daemons, peers):
    d = daemons(args=["--write-timeout-ms", "500"]).start()
    p = peers(d)
    long = "x" * 200
    for i in range(300):  # a List of these is a reply of about 100 KB
        p.ok(f"put {long}/{i:04d} 64 {i}")
    before = d.memory_kib()
    s = raw_socket(d)
    hello(s)
    s.setblocking(False)
    request = frame_hex("list", "x")
    sent = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            s.send(request)
            sent += 1
        except BlockingIOError:
            # Our side is full too: the daemon stopped reading from us.
            _, writable, _ = select.select([], [s], [], 2)
            if not writable:
                break
        except (BrokenPipeError, ConnectionResetError):
            break
    # The daemon serves the others meanwhile, then drops the non-reader.
    p.ok("get " + long + "/0001")
    wait_until(lambda: d.stats()["clients"] == 2, "the daemon to drop the peer that does not read")
    assert "did not read its reply" in d.log.read_text()
    after = d.memory_kib()
    grown = after["RssAnon"] - before["RssAnon"]
    s.close()
    assert grown < 16 * 1024, f"the daemon grew by {grown} KiB for one peer that does not read"
    record("peer that never reads its replies (--write-timeout-ms 500)", injected=1, lost=0, leaked=0,
           requests_sent=sent, daemon_rss_anon_growth_kib=grown)


def test_a_flood_of_connections_is_refused_past_the_limit_and_leaves_no_descriptor(daemons, peers):
    d = daemons(args=["--max-connections", "256"]).start()
    p = peers(d)
    p.ok("stats")  # connected
    fds = d.fds_stable()
    hello_frame = frame_hex("hello")
    socks = []
    for _ in range(1000):
        s = raw_socket(d)
        s.sendall(hello_frame)
        socks.append(s)
    accepted = refused = 0
    for s in socks:
        type_, _ = read_frame(s, timeout=60)
        accepted += type_ == 2
        refused += type_ == 24  # ErrorReply: limit_exceeded
    for s in socks:
        s.close()
    assert accepted == 255 and refused == 745, (accepted, refused)
    d.quiet(clients=1)
    end_fds = d.fds_settled(fds)
    assert end_fds == fds
    p.ok("put after 1000 1")
    record("flood of 1000 connections (--max-connections 256)", injected=1000, lost=0, leaked=end_fds - fds,
           accepted=accepted, refused=refused)


def test_other_protocol_versions_and_a_first_message_other_than_hello_are_refused_clearly(daemons):
    d = daemons().start()
    f = frame_hex("hello")
    s = raw_socket(d)
    s.sendall(f[:4] + struct.pack("<H", 2) + f[6:])
    type_, text = read_frame(s)
    assert type_ == 0xFFFF and b"version 2" in text and b"version 1" in text, text
    assert peer_closed(s)
    s = raw_socket(d)
    s.sendall(frame_hex("stats"))
    type_, body = read_frame(s)
    assert type_ == 24 and b"Hello" in body
    assert peer_closed(s)
    record("protocol version 2 and a Stats before Hello", injected=2, lost=0, leaked=0, clear_errors=2)
