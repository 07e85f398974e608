"""Python peers of the comparison benchmark (issue 7); bench/python/run.py drives them.

One invocation measures one peer and prints one JSON object per line on stdout (progress on stderr):

    peers.py roundtrip --peer NAME --sizes 64,4096,... [--socket PATH]
    peers.py fanout    --peer NAME --seconds 10 --consumers 4 --frame 8388608 [--socket PATH]
    peers.py createseal --socket PATH --sizes ...     (create + seal, put, get alone; no consumer)
    peers.py scale     --socket PATH --objects 10000 --clients 256
    peers.py floors    --sizes ...

Round trip: the producer holds its data in a private, populated uint8 array ``src`` and stamps the
iteration number into its first 8 bytes; it hands the array off the way a user of the peer would; the
consumer touches what it received (one byte per 4 KiB page and the last byte, so that lazily mapped
memory pays its page faults) and acknowledges with the stamp. The acknowledgement travels over a
socketpair for every peer (Ray: the actor call's return value), so every peer pays the same for it.

Fan-out: one producer, N consumers, every frame delivered to every consumer with at most about two
frames in flight per consumer (the producer waits otherwise). The producer stamps the monotonic clock
before it fills a frame; a consumer records the time from there to having touched the frame.

Peers: tensorshm-put, tensorshm-create, mp-queue, torch-mp-queue, shm-pipe, ray.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import tempfile
import time
from typing import Callable

import numpy as np

PAGE = 4096
STOP = 2**64 - 1
CTX = mp.get_context("fork")


# ---------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def percentile(v: list[float], p: float) -> float:
    if not v:
        return 0.0
    s = sorted(v)
    return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]


def touch(a: np.ndarray) -> int:
    """Reads one byte per page and the last byte of a 1-D uint8 array."""
    return int(a[::PAGE].sum()) + int(a[-1])


def get_stamp(a: np.ndarray) -> int:
    return int(a[:8].view("<u8")[0])


def set_stamp(a: np.ndarray, s: int, offset: int = 0) -> None:
    a[offset:offset + 8].view("<u8")[0] = s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the acknowledgement socket")
        buf += chunk
    return buf


def send_u64(sock: socket.socket, v: int) -> None:
    sock.sendall(v.to_bytes(8, "little"))


def recv_u64(sock: socket.socket) -> int:
    return int.from_bytes(recv_exact(sock, 8), "little")


class Budget:
    """Warm-up, then iterations until the time budget is spent and min_iters ran, or max_iters ran."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.budget_s, self.min_iters, self.max_iters = args.budget_s, args.min_iters, args.max_iters

    def measure(self, peer: str, size: int, one: Callable[[], float], extra: Callable[[], dict] | None = None) -> None:
        for _ in range(1 if size >= 256 << 20 else 2):
            one()
        t: list[float] = []
        start = time.perf_counter()
        least = min(self.min_iters, 3) if size >= 256 << 20 else self.min_iters  # the big ones take seconds
        while len(t) < self.max_iters and (len(t) < least or time.perf_counter() - start < self.budget_s):
            t.append(one() * 1e6)
        row = {"peer": peer, "size": size, "median_us": percentile(t, 0.5), "p99_us": percentile(t, 0.99),
               "iters": len(t)}
        if extra:
            row.update(extra())
        emit(row)
        log(f"    {peer:18} {size_label(size):>8}  {row['median_us']:10.1f} us median  ({len(t)} iterations)")


def connect_tensorshm(sock: str):
    import tensorshm
    return tensorshm.connect(socket=sock)


# ---------------------------------------------------------------- round trip

# Each peer: a consumer loop run in a forked child, and a producer "send(src, stamp)" that returns once
# the consumer has acknowledged. run_roundtrip() times send() per size.


def rt_tensorshm(args, name: str):
    import tensorshm

    def consumer(ack: socket.socket) -> None:
        c = connect_tensorshm(args.socket)
        last = 0
        while True:
            a = c.get(name, newer_than=last, timeout=60.0)
            last = tensorshm.info(a).version
            s = get_stamp(a)
            touch(a)
            del a  # gives the lease back
            send_u64(ack, s)
            if s == STOP:
                return

    state: dict = {}

    def producer_setup() -> None:
        state["c"] = connect_tensorshm(args.socket)
        state["create_seal"] = []

    def send(src: np.ndarray, s: int, ack: socket.socket) -> None:
        c = state["c"]
        if args.peer == "tensorshm-put":
            set_stamp(src, s)
            c.put(name, src)
        else:
            t0 = time.perf_counter()
            with c.create(name, shape=src.shape, dtype="uint8") as buf:
                t1 = time.perf_counter()
                buf[...] = src  # the fill: the producer writes its data in place
                set_stamp(buf, s)
                t2 = time.perf_counter()
            state["create_seal"].append((t1 - t0 + time.perf_counter() - t2) * 1e6)
        if recv_u64(ack) != s:
            raise RuntimeError("wrong acknowledgement")

    def extra() -> dict:
        cs, state["create_seal"] = state["create_seal"], []
        return {"create_seal_us": percentile(cs, 0.5)} if args.peer == "tensorshm-create" else {}

    def teardown() -> None:
        state["c"].delete(name)

    return consumer, producer_setup, send, extra, teardown


def rt_mp_queue(args, torch_mp: bool):
    if torch_mp:
        import torch
        import torch.multiprocessing as tmp
        q = tmp.get_context("fork").Queue()
    else:
        q = CTX.Queue()

    def consumer(ack: socket.socket) -> None:
        while True:
            x = q.get()
            a = x.numpy() if torch_mp else x
            s = get_stamp(a)
            touch(a)
            del a, x
            send_u64(ack, s)
            if s == STOP:
                return

    def send(src: np.ndarray, s: int, ack: socket.socket) -> None:
        set_stamp(src, s)
        if torch_mp:
            # A fresh CPU tensor over the producer's data; share_memory_() copies it into a new shared
            # segment (what q.put would do in its feeder thread, done here so the copy is timed in order).
            q.put(torch.from_numpy(src).share_memory_())
        else:
            q.put(src)  # pickled (copied) by the queue's feeder thread, unpickled (copied) by the consumer
        if recv_u64(ack) != s:
            raise RuntimeError("wrong acknowledgement")

    return consumer, None, send, None, None


def rt_shm_pipe(args):
    from multiprocessing import resource_tracker, shared_memory
    resource_tracker.ensure_running()  # one tracker for both processes (fork), started before the fork
    meta_r, meta_w = CTX.Pipe(duplex=False)

    def consumer(ack: socket.socket) -> None:
        while True:
            shm_name, n = meta_r.recv()
            shm = shared_memory.SharedMemory(name=shm_name)
            a = np.ndarray((n,), np.uint8, buffer=shm.buf)
            s = get_stamp(a)
            touch(a)
            del a
            shm.close()
            send_u64(ack, s)
            if s == STOP:
                return

    def send(src: np.ndarray, s: int, ack: socket.socket) -> None:
        shm = shared_memory.SharedMemory(create=True, size=src.nbytes)
        a = np.ndarray(src.shape, np.uint8, buffer=shm.buf)
        a[...] = src
        set_stamp(a, s)
        del a
        meta_w.send((shm.name, src.nbytes))
        if recv_u64(ack) != s:
            raise RuntimeError("wrong acknowledgement")
        shm.close()
        shm.unlink()

    return consumer, None, send, None, None


def time_sizes(args, peer: str, sizes: list[int], send: Callable[[np.ndarray, int], None],
               extra: Callable[[], dict] | None = None) -> None:
    """Times send(src, stamp) -- hand off, wait for the acknowledgement -- for each size."""
    budget = Budget(args)
    stamp = 0
    for n in sizes:
        src = np.full(n, 5, np.uint8)

        def one() -> float:
            nonlocal stamp
            stamp += 1
            t0 = time.perf_counter()
            send(src, stamp)
            return time.perf_counter() - t0

        budget.measure(peer, n, one, extra)
        src = None  # freed before the next size is allocated


def run_roundtrip(args) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.peer == "ray":
        return run_roundtrip_ray(args, sizes)
    name = f"bench/rt/{os.getpid()}"
    if args.peer.startswith("tensorshm"):
        consumer, setup, send, extra, teardown = rt_tensorshm(args, name)
    elif args.peer in ("mp-queue", "torch-mp-queue"):
        consumer, setup, send, extra, teardown = rt_mp_queue(args, args.peer == "torch-mp-queue")
    elif args.peer == "shm-pipe":
        consumer, setup, send, extra, teardown = rt_shm_pipe(args)
    else:
        raise SystemExit(f"unknown peer {args.peer}")
    prod_sock, cons_sock = socket.socketpair()
    child = CTX.Process(target=consumer, args=(cons_sock,), daemon=True)
    child.start()
    cons_sock.close()
    if setup:
        setup()
    time_sizes(args, args.peer, sizes, lambda src, s: send(src, s, prod_sock), extra)
    send(np.zeros(64, np.uint8), STOP, prod_sock)
    child.join(30)
    if teardown:
        teardown()


def start_ray(args, store_bytes: int):
    import ray
    tmp = tempfile.mkdtemp(prefix="tshm-ray-")
    ray.init(num_cpus=1, object_store_memory=store_bytes, include_dashboard=False, log_to_driver=False,
             _temp_dir=tmp, configure_logging=False)
    return ray, tmp


def stop_ray(ray, tmp: str) -> None:
    import shutil
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def run_roundtrip_ray(args, sizes: list[int]) -> None:
    ray, tmp = start_ray(args, max(3 * max(sizes), 256 << 20))

    @ray.remote(num_cpus=0)
    class Consumer:
        def touch(self, a: np.ndarray) -> int:  # a: read-only, zero-copy view of the object store
            s = get_stamp(a)
            touch(a)
            return s

    try:
        actor = Consumer.remote()
        ray.get(actor.touch.remote(np.zeros(64, np.uint8)))

        def send(src: np.ndarray, s: int) -> None:
            set_stamp(src, s)
            if ray.get(actor.touch.remote(ray.put(src))) != s:
                raise RuntimeError("wrong acknowledgement")

        time_sizes(args, "ray", sizes, send)
    finally:
        stop_ray(ray, tmp)


def run_createseal(args) -> None:
    """The producer's calls alone (no consumer): create + seal with no fill, what the create path costs
    by itself; put, the copy included; and a get of what was put."""
    c = connect_tensorshm(args.socket)
    name = f"bench/cs/{os.getpid()}"
    budget = Budget(args)
    for n in [int(x) for x in args.sizes.split(",")]:
        def create_seal() -> float:
            t0 = time.perf_counter()
            with c.create(name, shape=(n,), dtype="uint8"):
                pass
            return time.perf_counter() - t0

        budget.measure("tensorshm-createseal", n, create_seal)
        src = np.full(n, 5, np.uint8)
        private = np.zeros(n, np.uint8)

        def create_seal_after_private_fill() -> float:
            private[...] = src  # the same amount of writing as a fill, into private memory, not timed
            return create_seal()

        # A control: does a fill slow down the create and seal that follow it even when it does not touch
        # the object (caches and TLB evicted)?
        budget.measure("tensorshm-createseal-after-fill", n, create_seal_after_private_fill)
        private = None

        def put() -> float:
            t0 = time.perf_counter()
            c.put(name, src)
            return time.perf_counter() - t0

        budget.measure("tensorshm-put-alone", n, put)
        src = None

        def get() -> float:
            t0 = time.perf_counter()
            a = c.get(name)
            dt = time.perf_counter() - t0
            del a
            return dt

        budget.measure("tensorshm-get-alone", n, get)
    c.delete(name)


# ---------------------------------------------------------------- fan-out

# Frame layout: bytes 0..7 the producer's monotonic_ns before the fill (STOP ends the run), bytes 8..15
# 1 when the frame counts (after the warm-up), else 0.


def fanout_result(args, peer: str, elapsed: float, produced: int, per_consumer: list[list[float]]) -> None:
    all_lat = [x for lat in per_consumer for x in lat]
    fps = sum(len(lat) for lat in per_consumer) / len(per_consumer) / elapsed
    emit({"peer": peer, "workload": "fanout", "frame": args.frame, "consumers": args.consumers,
          "seconds": elapsed, "frames_produced": produced, "frames_per_s": fps,
          "p50_us": percentile(all_lat, 0.5), "p99_us": percentile(all_lat, 0.99)})
    log(f"    {peer} fan-out: {fps:.1f} frames/s per consumer, p99 {percentile(all_lat, 0.99):.0f} us")


def consumer_record(a: np.ndarray, lat: list[float]) -> bool:
    """Touches one frame; records its latency when it counts. False at the stop frame."""
    t0 = get_stamp(a)
    if t0 == STOP:
        return False
    counts = int(a[8:16].view("<u8")[0])
    touch(a)
    if counts:
        lat.append((time.monotonic_ns() - t0) / 1e3)
    return True


class FanoutClock:
    """Warm-up of 0.5 s, then args.seconds measured."""

    def __init__(self, args) -> None:
        self.start = time.perf_counter()
        self.measure_from = self.start + 0.5
        self.end = self.measure_from + args.seconds
        self.produced = 0

    def running(self) -> bool:
        return time.perf_counter() < self.end

    def counts(self) -> int:
        c = 1 if time.perf_counter() >= self.measure_from else 0
        self.produced += c
        return c

    def elapsed(self) -> float:
        return time.perf_counter() - self.measure_from


def run_fanout(args) -> None:
    if args.peer == "ray":
        return run_fanout_ray(args)
    n, k = args.frame, args.consumers
    src = np.full(n, 9, np.uint8)
    results = CTX.SimpleQueue()
    socks = [socket.socketpair() for _ in range(k)]
    name = f"bench/fan/{os.getpid()}"

    if args.peer == "tensorshm-create":
        import tensorshm

        def consumer(i: int) -> None:
            c = connect_tensorshm(args.socket)
            sock, lat, last = socks[i][1], [], 0
            while True:
                a = c.get(name, newer_than=last, timeout=60.0)
                last = tensorshm.info(a).version
                send_u64(sock, last)  # receipt: this consumer holds the version, the next may be sealed
                if not consumer_record(a, lat):
                    break
                del a
            results.put(lat)

        c = connect_tensorshm(args.socket)

        def produce(clock: FanoutClock) -> None:
            prev = 0
            while clock.running():
                t0 = time.monotonic_ns()
                creation = c.create(name, shape=(n,), dtype="uint8")
                buf = creation.array
                buf[...] = src
                set_stamp(buf, t0)
                set_stamp(buf, clock.counts(), 8)
                del buf
                if prev:
                    for s, _ in socks:
                        if recv_u64(s) != prev:
                            raise RuntimeError("receipt of the wrong version")
                prev = creation.seal().version
            for s, _ in socks:
                recv_u64(s)
            with c.create(name, shape=(64,), dtype="uint8") as buf:
                set_stamp(buf, STOP)

    elif args.peer in ("mp-queue", "torch-mp-queue"):
        torch_mp = args.peer == "torch-mp-queue"
        if torch_mp:
            import torch
            import torch.multiprocessing as tmp
            queues = [tmp.get_context("fork").Queue(maxsize=2) for _ in range(k)]
        else:
            queues = [CTX.Queue(maxsize=2) for _ in range(k)]

        def consumer(i: int) -> None:
            lat: list[float] = []
            while True:
                x = queues[i].get()
                a = x.numpy() if torch_mp else x
                more = consumer_record(a, lat)
                del a, x
                if not more:
                    break
            results.put(lat)

        def produce(clock: FanoutClock) -> None:
            while True:
                running = clock.running()
                t0 = time.monotonic_ns() if running else STOP
                counts = clock.counts() if running else 0
                if torch_mp:
                    set_stamp(src, t0)
                    set_stamp(src, counts, 8)
                    frame = torch.from_numpy(src).share_memory_()  # the fill: one copy into fresh shared memory
                else:
                    frame = src.copy()  # the fill: a fresh frame (the queues pickle it later, in a thread)
                    set_stamp(frame, t0)
                    set_stamp(frame, counts, 8)
                for q in queues:
                    q.put(frame)  # blocks while that consumer has 2 frames queued
                if not running:
                    return

    elif args.peer == "shm-pipe":
        from multiprocessing import resource_tracker, shared_memory
        from multiprocessing.connection import wait
        resource_tracker.ensure_running()
        pipes = [CTX.Pipe() for _ in range(k)]

        def consumer(i: int) -> None:
            conn, lat = pipes[i][1], []
            while True:
                shm_name = conn.recv()
                shm = shared_memory.SharedMemory(name=shm_name)
                a = np.ndarray((n,), np.uint8, buffer=shm.buf)
                more = consumer_record(a, lat)
                del a
                shm.close()
                conn.send(shm_name)
                if not more:
                    break
            results.put(lat)

        def produce(clock: FanoutClock) -> None:
            in_flight: dict[str, list] = {}  # name -> [shm, acks still missing]
            order: list[str] = []

            def collect(block: bool) -> None:
                ready = wait([p[0] for p in pipes], timeout=None if block else 0)
                for conn in ready:
                    nm = conn.recv()
                    in_flight[nm][1] -= 1
                    if in_flight[nm][1] == 0:
                        shm = in_flight.pop(nm)[0]
                        shm.close()
                        shm.unlink()
                        order.remove(nm)

            while True:
                running = clock.running()
                while len(order) >= 2:  # at most two frames in flight
                    collect(True)
                shm = shared_memory.SharedMemory(create=True, size=n)
                a = np.ndarray((n,), np.uint8, buffer=shm.buf)
                t0 = time.monotonic_ns() if running else STOP
                a[...] = src
                set_stamp(a, t0)
                set_stamp(a, clock.counts() if running else 0, 8)
                del a
                in_flight[shm.name] = [shm, k]
                order.append(shm.name)
                for p in pipes:
                    p[0].send(shm.name)
                collect(False)
                if not running:
                    break
            while order:
                collect(True)
    else:
        raise SystemExit(f"fan-out: unknown peer {args.peer}")

    kids = [CTX.Process(target=consumer, args=(i,), daemon=True) for i in range(k)]
    for p in kids:
        p.start()
    time.sleep(0.3)
    clock = FanoutClock(args)
    produce(clock)
    elapsed = min(clock.elapsed(), args.seconds)
    per_consumer = [results.get() for _ in range(k)]
    for p in kids:
        p.join(30)
    if args.peer.startswith("tensorshm"):
        c.delete(name)
    fanout_result(args, args.peer, elapsed, clock.produced, per_consumer)


def run_fanout_ray(args) -> None:
    n, k = args.frame, args.consumers
    ray, tmp = start_ray(args, max(16 * n, 256 << 20))

    @ray.remote(num_cpus=0)
    class Consumer:
        def __init__(self) -> None:
            self.lat: list[float] = []

        def take(self, a: np.ndarray) -> None:
            consumer_record(a, self.lat)

        def result(self) -> list[float]:
            return self.lat

    try:
        actors = [Consumer.remote() for _ in range(k)]
        ray.get([a.result.remote() for a in actors])
        src = np.full(n, 9, np.uint8)
        pending: list[list] = []
        clock = FanoutClock(args)
        while clock.running():
            if len(pending) >= 2:  # at most two frames in flight
                ray.get(pending.pop(0))
            set_stamp(src, time.monotonic_ns())
            set_stamp(src, clock.counts(), 8)
            ref = ray.put(src)  # the fill: one copy into the object store
            pending.append([a.take.remote(ref) for a in actors])
            del ref
        for p in pending:
            ray.get(p)
        elapsed = min(clock.elapsed(), args.seconds)
        per_consumer = ray.get([a.result.remote() for a in actors])
        fanout_result(args, "ray", elapsed, clock.produced, per_consumer)
    finally:
        stop_ray(ray, tmp)


# ---------------------------------------------------------------- scale


def run_scale(args) -> None:
    """get latency of a 4 KiB object with 1 object and 1 client, then with args.objects live objects and
    args.clients more connected clients (each holding a lease), against the same daemon."""
    c = connect_tensorshm(args.socket)
    small = np.full(4096, 1, np.uint8)
    prefix = f"bench/scale/{os.getpid()}"
    c.put(f"{prefix}/one", small)
    iters = args.max_iters

    def get_latency(names: list[str]) -> list[float]:
        for nm in names[:200]:
            del_ = c.get(nm)
            del del_
        t = []
        for i in range(iters):
            nm = names[i % len(names)]
            t0 = time.perf_counter()
            a = c.get(nm)
            t.append((time.perf_counter() - t0) * 1e6)
            del a
        return t

    def row(case: str, objects: int, clients: int, t: list[float]) -> dict:
        r = {"peer": "tensorshm", "workload": "scale", "case": case, "objects": objects, "clients": clients,
             "median_us": percentile(t, 0.5), "p99_us": percentile(t, 0.99), "iters": len(t)}
        emit(r)
        log(f"    scale {case:28} {r['median_us']:8.1f} us median, p99 {r['p99_us']:.1f} us")
        return r

    row("1 object, 1 client", 1, 1, get_latency([f"{prefix}/one"]))

    ready_r, ready_w = CTX.Pipe(duplex=False)
    stop_r, stop_w = CTX.Pipe(duplex=False)

    def holder() -> None:
        h = connect_tensorshm(args.socket)
        t0 = time.perf_counter()
        for i in range(args.objects):
            h.put(f"{prefix}/obj/{i:06d}", small)
        log(f"    scale: {args.objects} objects put in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        clients = [connect_tensorshm(args.socket) for _ in range(args.clients)]
        leases = [cl.get(f"{prefix}/obj/{i:06d}") for i, cl in enumerate(clients)]
        log(f"    scale: {args.clients} clients connected and got (mapping the segment) in "
            f"{time.perf_counter() - t0:.1f} s")
        ready_w.send(len(leases))
        stop_r.recv()
        del leases
        for i in range(args.objects):
            h.delete(f"{prefix}/obj/{i:06d}")

    p = CTX.Process(target=holder, daemon=True)
    p.start()
    ready_r.recv()
    st = c.stats()
    log(f"    scale: daemon reports {st.objects} objects, {st.clients} clients, {st.leases} leases")
    names = [f"{prefix}/obj/{i:06d}" for i in range(args.objects)]
    random.Random(1).shuffle(names)
    row(f"{args.objects:,} objects, {args.clients + 1} clients (random names)", args.objects, args.clients + 1,
        get_latency(names))
    row(f"{args.objects:,} objects, {args.clients + 1} clients (the one name)", args.objects, args.clients + 1,
        get_latency([f"{prefix}/one"]))
    # A control: 16 of the names in turn. Same lookups in the same crowded daemon as the random case, but a
    # working set that stays in the caches.
    row(f"{args.objects:,} objects, {args.clients + 1} clients (16 names in turn)", args.objects, args.clients + 1,
        get_latency(names[:16]))
    stop_w.send(1)
    p.join(120)
    # The idle case once more, now that the crowd is gone: the two idle figures bracket the crowded ones,
    # so that a drift of the machine's speed during the test does not pass for an effect of the crowd.
    row("1 object, 1 client (again, after)", 1, 1, get_latency([f"{prefix}/one"]))
    c.delete(f"{prefix}/one")


# ---------------------------------------------------------------- floors


def run_floors(args) -> None:
    a, b = socket.socketpair()

    def echo() -> None:
        a.close()
        try:
            while True:
                b.sendall(recv_exact(b, 64))
        except EOFError:
            pass

    p = CTX.Process(target=echo, daemon=True)
    p.start()
    b.close()
    msg = bytes(64)
    budget = Budget(argparse.Namespace(budget_s=args.budget_s, min_iters=1000, max_iters=100000))

    def one() -> float:
        t0 = time.perf_counter()
        a.sendall(msg)
        recv_exact(a, 64)
        return time.perf_counter() - t0

    budget.measure("socket-pingpong-py", 64, one)
    a.close()
    p.join(10)
    budget = Budget(args)
    for n in [int(x) for x in args.sizes.split(",")]:
        src, dst = np.full(n, 3, np.uint8), np.zeros(n, np.uint8)

        def one() -> float:
            t0 = time.perf_counter()
            np.copyto(dst, src)
            return time.perf_counter() - t0

        budget.measure("memcpy-py", n, one)
        src = dst = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["roundtrip", "createseal", "fanout", "scale", "floors"])
    ap.add_argument("--peer", default="")
    ap.add_argument("--socket", default="")
    ap.add_argument("--sizes", default="64,4096,65536,1048576")
    ap.add_argument("--budget-s", type=float, default=2.0)
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--frame", type=int, default=8 << 20)
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=256)
    args = ap.parse_args()
    {"roundtrip": run_roundtrip, "createseal": run_createseal, "fanout": run_fanout, "scale": run_scale, "floors": run_floors}[args.mode](args)


if __name__ == "__main__":
    main()
