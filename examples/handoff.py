#!/usr/bin/env python3
"""One producer, two consumers: camera-sized frames handed over through tensorshmd.

The producer writes each frame in place into shared memory (Client.create) and
seals it; each consumer waits for the next version (get(newer_than=...)) and
reads it as a read-only numpy array mapped over the same memory: no copy on
either side after the producer's own writes. Consumers that fall behind skip to
the latest frame, as a video pipeline wants.

    ./scripts/run-daemon.sh &                      # or any running tensorshmd
    .venv/bin/python examples/handoff.py --frames 240 --fps 120

Each frame carries its index and the time it was sealed (CLOCK_MONOTONIC, the
same clock in every process), so the consumers can check what they got and
measure how long the handoff took.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

import numpy as np

import tensorshm

NAME = "examples/handoff/frame"


def stamp(frame: np.ndarray, index: int) -> None:
    """Writes the index and the seal time into the first 16 bytes."""
    head = frame.reshape(-1)[:16].view(np.int64)
    head[0] = index
    head[1] = time.monotonic_ns()


def read_stamp(frame: np.ndarray) -> tuple[int, int]:
    head = frame.reshape(-1)[:16].view(np.int64)
    return int(head[0]), int(head[1])


def consumer(who: str, socket: str | None, frames: int, ready, results) -> None:
    with tensorshm.connect(socket, name=who) as c:
        ready.set()
        version, got, bad, latencies = 0, 0, 0, []
        while True:
            arr = c.get(NAME, newer_than=version, timeout=10.0)
            now = time.monotonic_ns()
            version = tensorshm.info(arr).version
            index, sealed_at = read_stamp(arr)
            latencies.append((now - sealed_at) / 1e3)
            got += 1
            # Every pixel after the stamp holds index % 251: check a sample.
            if arr[-1, -1, -1] != index % 251 or arr[arr.shape[0] // 2, 7, 1] != index % 251:
                bad += 1
            if index == frames - 1:
                break
            del arr  # let the lease go before waiting for the next frame
        results.put((who, got, bad, latencies))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", help="tensorshmd's socket (default: $TENSORSHM_SOCKET or the daemon's default)")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--fps", type=float, default=120.0, help="frames per second to produce (0: as fast as possible)")
    ap.add_argument("--shape", default="1080x1920x3", help="frame shape, uint8 (default 1080x1920x3)")
    args = ap.parse_args()
    shape = tuple(int(x) for x in args.shape.split("x"))

    try:
        c = tensorshm.connect(args.socket, name="handoff-producer")
    except tensorshm.DaemonUnreachable as e:
        print(e, file=sys.stderr)
        return 1

    try:
        c.delete(NAME)  # a frame left by an earlier run is not one of ours
    except tensorshm.NotFound:
        pass

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    procs = [ctx.Process(target=consumer, args=(f"consumer-{i}", args.socket, args.frames, readies[i], results))
             for i in range(2)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait()

    frame_bytes = int(np.prod(shape))
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    t0 = time.perf_counter()
    write_s = 0.0
    with c:
        for i in range(args.frames):
            w0 = time.perf_counter()
            with c.create(NAME, shape=shape, dtype="uint8") as frame:  # written in place, sealed at the end
                frame[...] = i % 251
                stamp(frame, i)
            write_s += time.perf_counter() - w0
            if period:
                time.sleep(max(0.0, t0 + (i + 1) * period - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        reports = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        stats = c.stats()

    print(f"producer: {args.frames} frames of {shape} uint8 ({frame_bytes / 2**20:.1f} MiB) in {elapsed:.2f} s; "
          f"filling + sealing a frame took {write_s / args.frames * 1e3:.2f} ms on average")
    for who, got, bad, lat in sorted(reports):
        lat_sorted = sorted(lat)
        p99 = lat_sorted[min(len(lat_sorted) - 1, int(len(lat_sorted) * 0.99))]
        print(f"{who}: received {got} of {args.frames} frames ({args.frames - got} skipped as stale), "
              f"{bad} with wrong contents; seal-to-array latency median {statistics.median(lat):.0f} us, "
              f"p99 {p99:.0f} us; {got * frame_bytes / elapsed / 2**30:.2f} GiB/s of frames, no copies")
    print(f"daemon: {stats.puts} puts, {stats.gets} gets, {stats.leases} leases held now")
    return 0 if all(bad == 0 for _, _, bad, _ in reports) else 2


if __name__ == "__main__":
    sys.exit(main())
