"""The arrays every round-trip test hands over: each dtype, and the shape and
layout edge cases. Generated deterministically from the case name, so that the
producing and the consuming process build the same expected bytes.

Imported by the tests and by peer.py (the other process).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Callable, NamedTuple

import numpy as np

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the test environment installs it
    ml_dtypes = None

NATIVE_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]
ML_DTYPES = [
    "bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
]


def ml_dtypes_available() -> list[str]:
    """The ml_dtypes types the installed ml_dtypes has (0.4 lacks a few float8 kinds)."""
    if ml_dtypes is None:
        return []
    return [n for n in ML_DTYPES if hasattr(ml_dtypes, n)]


def np_dtype(name: str) -> np.dtype:
    if name in ML_DTYPES:
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def random_array(seed_name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Random bits of the dtype (NaN payloads, denormals and all), C order."""
    dt = np_dtype(dtype)
    rng = np.random.default_rng(zlib.crc32(seed_name.encode()))
    n = int(np.prod(shape, dtype=np.int64))
    if dt == np.bool_:
        return rng.integers(0, 2, size=n, dtype=np.uint8).astype(np.bool_).reshape(shape)
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


class Case(NamedTuple):
    name: str
    make: Callable[[], np.ndarray]   # the array to put (any layout)
    layout: str                      # what the consumer sees: "C" or "F"


def _f(seed: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.asfortranarray(random_array(seed, dtype, shape))


def _unaligned() -> np.ndarray:
    """int32 elements 5 bytes apart (a field of a packed record array)."""
    rec = np.zeros(6, dtype=np.dtype([("a", "u1"), ("b", "<i4")]))
    rec["b"] = random_array("ua", "int32", (6,))
    return rec["b"]


def all_cases() -> list[Case]:
    cases = []
    for dt in NATIVE_DTYPES + ml_dtypes_available():
        cases.append(Case(f"dtype-{dt}", lambda dt=dt: random_array(f"dtype-{dt}", dt, (7, 5)), "C"))
        cases.append(Case(f"dtype-{dt}-fortran", lambda dt=dt: _f(f"dtype-{dt}-f", dt, (4, 3, 2)), "F"))
    r = random_array
    cases += [
        Case("shape-0d", lambda: r("0d", "float64", ()), "C"),
        Case("shape-empty-1d", lambda: r("e1", "float32", (0,)), "C"),
        Case("shape-empty-middle", lambda: r("e3", "int16", (3, 0, 2)), "C"),
        Case("shape-32-dims", lambda: r("32d", "uint8", (2,) + (1,) * 30 + (3,)), "C"),
        Case("shape-one-element", lambda: r("one", "complex128", (1, 1)), "C"),
        Case("shape-3mib", lambda: r("big", "float32", (768, 1024)), "C"),
        Case("shape-bigger-than-a-pool-segment", lambda: r("huge", "uint8", (20 << 20,)), "C"),
        Case("packed-slice", lambda: r("sl", "float64", (8, 6))[::2, 1:], "C"),
        Case("packed-negative-strides", lambda: r("neg", "int32", (5, 4))[::-1, ::-1], "C"),
        Case("packed-broadcast", lambda: np.broadcast_to(r("bc", "float32", (1, 5)), (4, 5)), "C"),
        Case("packed-3d-transpose", lambda: r("tr", "int64", (2, 3, 4)).transpose(1, 0, 2), "C"),
        Case("packed-unaligned-strides", _unaligned, "C"),
    ]
    if "bfloat16" in ml_dtypes_available():
        cases.append(Case("packed-bfloat16-slice", lambda: r("bfs", "bfloat16", (6, 6))[:, ::2], "C"))
    return cases


def describe(arr: np.ndarray) -> dict:
    """What the other process compares: type, shape, layout and the exact bytes."""
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "c": bool(arr.flags.c_contiguous),
        "f": bool(arr.flags.f_contiguous),
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),  # logical (C) order
    }


def expected(case: Case) -> dict:
    """describe() of what the consumer must see: the same values, in C order
    unless the producer's array was Fortran-ordered."""
    src = case.make()
    return describe(np.array(src, order=case.layout, copy=True))


def mapping_of(address: int, nbytes: int) -> dict | None:
    """The /proc/self/maps line holding [address, address + nbytes), parsed."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address and address + nbytes <= hi:
                return {"perms": parts[1], "path": parts[5].strip() if len(parts) > 5 else ""}
    return None


def segment_check(arr: np.ndarray, instance: str) -> dict:
    """Where the array's memory lies: it must be a read-only shared mapping of
    one of this daemon instance's segments (empty arrays have no memory)."""
    if arr.nbytes == 0:
        return {"mapped": True, "read_only": True, "shared": True, "segment": True}
    m = mapping_of(arr.ctypes.data, arr.nbytes)
    if m is None:
        return {"mapped": False, "read_only": False, "shared": False, "segment": False}
    return {
        "mapped": True,
        "read_only": m["perms"][0] == "r" and m["perms"][1] == "-",
        "shared": m["perms"][3] == "s",
        "segment": f"tensorshm.{instance}." in m["path"],
    }
