#!/usr/bin/env python3
"""GPU benchmarks for tensorshm, run by tests/gpu/run.sh on a GPU machine
against a running tensorshmd ($TENSORSHM_SOCKET or --socket).

1. Device-to-host into the pool, 4 KiB ... 1 GiB: ``c.put(name, cuda_tensor)``
   (event record, request, the daemon's copy into pinned shared memory, seal,
   reply) against a raw ``cudaMemcpyAsync`` into ``cudaHostAlloc`` memory
   (``pinned.copy_(src, non_blocking=True)`` + stream synchronize), median
   wall time of each, in this process. Goal: >= 90 % of raw at >= 64 MiB.
2. End-to-end handoff of a 256 MiB float32 CUDA tensor to another process
   that ends up holding a numpy array: tensorshm (put, then the consumer's
   zero-copy get) against ``t.cpu().numpy()`` copied into a
   ``multiprocessing.shared_memory`` block the consumer attaches (a fresh block
   per handoff, and, kinder to the baseline, one block reused). Goal: >= 3x.

Prints one line per measurement and a table; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _consumer(conn, socket_path: str) -> None:
    """The other process: gets what the producer says, checks two elements,
    answers. Imports only numpy and tensorshm (like a CPU-side consumer)."""
    import numpy as np
    from multiprocessing import resource_tracker, shared_memory

    import tensorshm

    c = tensorshm.connect(socket_path, name="bench-consumer")
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        if msg[0] == "tshm":
            arr = c.get(msg[1])
            ok = arr.dtype == np.float32 and arr.size == msg[2] and arr[0] == arr[-1]
            del arr
        else:  # "shm"
            shm = shared_memory.SharedMemory(name=msg[1])
            resource_tracker.unregister(shm._name, "shared_memory")  # the producer owns it
            arr = np.ndarray((msg[2],), dtype=np.float32, buffer=shm.buf)
            ok = arr[0] == arr[-1]
            del arr
            shm.close()
        conn.send(bool(ok))
    c.close()


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def d2h_sweep(c, torch, max_bytes: int, min_reps: int) -> list[dict]:
    src_all = torch.empty(max_bytes, dtype=torch.uint8, device="cuda").fill_(0x5A)
    pinned = torch.empty(max_bytes, dtype=torch.uint8, pin_memory=True)
    stream = torch.cuda.current_stream()
    torch.cuda.synchronize()
    rows = []
    n = 4096
    while n <= max_bytes:
        src, dst = src_all[:n], pinned[:n]
        reps = max(min_reps, min(200, (2 << 30) // n))
        dst.copy_(src, non_blocking=True)
        stream.synchronize()
        c.put("bench/py/d2h", src)  # warm-up: opens the IPC handle, maps nothing new
        raw, pool = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            stream.synchronize()
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.put("bench/py/d2h", src)
            pool.append(time.perf_counter() - t0)
        r, p = statistics.median(raw), statistics.median(pool)
        row = {"bytes": n, "reps": reps, "raw_s": r, "pool_s": p, "raw_GBps": n / r / 1e9, "pool_GBps": n / p / 1e9,
               "ratio": r / p}
        rows.append(row)
        print(f"d2h-py size={n} reps={reps} raw_us={r * 1e6:.1f} pool_us={p * 1e6:.1f} "
              f"raw_GBps={row['raw_GBps']:.2f} pool_GBps={row['pool_GBps']:.2f} ratio={row['ratio']:.3f}", flush=True)
        n *= 4
    c.delete("bench/py/d2h")
    del src_all, pinned
    torch.cuda.empty_cache()
    return rows


def handoff(c, torch, socket_path: str, nbytes: int, reps: int) -> dict:
    import multiprocessing as mp
    from multiprocessing import shared_memory

    import numpy as np

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    consumer = ctx.Process(target=_consumer, args=(child, socket_path), daemon=True)
    consumer.start()
    count = nbytes // 4
    t = torch.zeros(count, dtype=torch.float32, device="cuda")
    reused = shared_memory.SharedMemory(create=True, size=nbytes)

    def via_tensorshm() -> None:
        c.put("bench/handoff", t)
        parent.send(("tshm", "bench/handoff", count))
        assert parent.recv()

    def via_shm_fresh() -> None:
        a = t.cpu().numpy()
        shm = shared_memory.SharedMemory(create=True, size=a.nbytes)
        np.ndarray(a.shape, a.dtype, buffer=shm.buf)[:] = a
        parent.send(("shm", shm.name, count))
        assert parent.recv()
        shm.close()
        shm.unlink()

    def via_shm_reused() -> None:
        a = t.cpu().numpy()
        np.ndarray(a.shape, a.dtype, buffer=reused.buf)[:] = a
        parent.send(("shm", reused.name, count))
        assert parent.recv()

    times: dict[str, list[float]] = {"tensorshm": [], "shm_fresh": [], "shm_reused": []}
    fns = {"tensorshm": via_tensorshm, "shm_fresh": via_shm_fresh, "shm_reused": via_shm_reused}
    for i in range(reps + 2):  # two warm-ups: first mappings, first page faults
        for key, fn in fns.items():
            t.fill_(float(i))
            torch.cuda.synchronize()  # both sides start with the data ready
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[key].append(time.perf_counter() - t0)
    parent.send(("stop",))
    consumer.join(30)
    reused.close()
    reused.unlink()
    c.delete("bench/handoff")
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"bytes": nbytes, "reps": reps, **{f"{k}_s": v for k, v in med.items()},
           "speedup_vs_fresh": med["shm_fresh"] / med["tensorshm"],
           "speedup_vs_reused": med["shm_reused"] / med["tensorshm"]}
    print(f"handoff size={nbytes} tensorshm_ms={med['tensorshm'] * 1e3:.2f} shm_fresh_ms={med['shm_fresh'] * 1e3:.2f} "
          f"shm_reused_ms={med['shm_reused'] * 1e3:.2f} speedup_fresh={out['speedup_vs_fresh']:.2f} "
          f"speedup_reused={out['speedup_vs_reused']:.2f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default=os.environ.get("TENSORSHM_SOCKET"))
    ap.add_argument("--max-bytes", default="1G", help="largest D2H size (default 1G)")
    ap.add_argument("--handoff-bytes", default="256M")
    ap.add_argument("--reps", type=int, default=10, help="handoff repetitions (after 2 warm-ups)")
    ap.add_argument("--min-reps", type=int, default=5, help="fewest D2H repetitions per size")
    ap.add_argument("--skip-d2h", action="store_true")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()

    import torch

    import tensorshm

    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    c = tensorshm.connect(args.socket, name="gpu-bench")
    device = torch.cuda.get_device_name()
    print(f"device {device}; torch {torch.__version__}; daemon {c.daemon_info.daemon_version}, "
          f"{c.daemon_info.cuda_devices} GPU(s)", flush=True)
    results: dict = {"device": device, "torch": torch.__version__}
    if not args.skip_d2h:
        results["d2h"] = d2h_sweep(c, torch, parse_size(args.max_bytes), args.min_reps)
    results["handoff"] = handoff(c, torch, c.socket_path, parse_size(args.handoff_bytes), args.reps)

    print("\n| size | raw D2H GB/s | pool GB/s | pool/raw |")
    print("|---:|---:|---:|---:|")
    for r in results.get("d2h", []):
        print(f"| {human(r['bytes'])} | {r['raw_GBps']:.2f} | {r['pool_GBps']:.2f} | {r['ratio'] * 100:.0f} % |")
    h = results["handoff"]
    print(f"\nhandoff {human(h['bytes'])}: tensorshm {h['tensorshm_s'] * 1e3:.1f} ms, "
          f"t.cpu().numpy()+shared_memory {h['shm_fresh_s'] * 1e3:.1f} ms (fresh block) / "
          f"{h['shm_reused_s'] * 1e3:.1f} ms (reused block): {h['speedup_vs_fresh']:.2f}x / "
          f"{h['speedup_vs_reused']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
