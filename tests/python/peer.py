"""The other process of the cross-process tests.

    python peer.py COMMAND JSON-ARGS

connects to $TENSORSHM_SOCKET, does COMMAND and prints one JSON object on
stdout. Exceptions are reported as {"error": class name, "message": ...}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import cases
import tensorshm


def consume(c: tensorshm.Client, args: dict) -> dict:
    """Gets every case: its description, where its memory lies, and whether
    a second get of the same version shares the first one's address."""
    by_name = {k.name: k for k in cases.all_cases()}
    out = {}
    for case in args["cases"]:
        arr = c.get(f"{args['prefix']}/{case}", timeout=args.get("timeout", 0))
        again = c.get(f"{args['prefix']}/{case}")
        d = cases.describe(arr)
        d.update(cases.segment_check(arr, args["instance"]))
        d["same_address"] = arr.ctypes.data == again.ctypes.data
        d["writeable"] = bool(arr.flags.writeable)
        d["version"] = tensorshm.info(arr).version
        assert case in by_name
        out[case] = d
    return out


def produce(c: tensorshm.Client, args: dict) -> dict:
    by_name = {k.name: k for k in cases.all_cases()}
    return {case: c.put(f"{args['prefix']}/{case}", by_name[case].make()).version for case in args["cases"]}


def put_value(c: tensorshm.Client, args: dict) -> dict:
    """Puts np.full(n, value) after an optional pause (which lets the parent
    start waiting first; the test holds either way)."""
    time.sleep(args.get("delay", 0))
    info = c.put(args["name"], np.full(args.get("n", 4), args["value"], dtype=np.int64))
    return {"version": info.version}


def wait_newer(c: tensorshm.Client, args: dict) -> dict:
    """Blocks until a version newer than args['newer_than'] appears."""
    arr = c.get(args["name"], newer_than=args["newer_than"], timeout=60)
    return {"version": tensorshm.info(arr).version, "values": arr.tolist()}


def put_torch(c: tensorshm.Client, args: dict) -> dict:
    import torch

    g = torch.Generator().manual_seed(7)
    t = torch.randn(6, 5, generator=g).to(torch.bfloat16).t()  # Fortran-ordered bfloat16
    info = c.put(args["name"], t)
    return {"version": info.version, "strides": list(info.strides), "bytes": t.contiguous().view(torch.int16).tolist()}


def try_get(c: tensorshm.Client, args: dict) -> dict:
    c.get(args["name"])
    return {"ok": True}


COMMANDS = {"consume": consume, "produce": produce, "put_value": put_value, "wait_newer": wait_newer,
            "put_torch": put_torch, "try_get": try_get}


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        with tensorshm.connect() as c:
            out = COMMANDS[command](c, args)
    except tensorshm.Error as e:
        out = {"error": type(e).__name__, "message": str(e)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
