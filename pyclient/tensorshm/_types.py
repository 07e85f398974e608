"""The records the daemon answers with: ObjectInfo, Stats, DaemonInfo,
SegmentInfo. Their field names and spellings are also what ``python -m
tensorshm --json`` and ``tensorshmctl --json`` print (ctl/output.cpp;
tests/python/test_ctl_json.py and test_cli.py keep them equal)."""

from __future__ import annotations

from typing import NamedTuple


class ObjectInfo(NamedTuple):
    """Metadata of one object version, as the daemon reports it."""

    name: str
    version: int
    dtype: str
    """Canonical name: "float32", "bfloat16", "float8_e4m3fn", ..."""
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    """In elements (DLPack style), not bytes as numpy's ``ndarray.strides``."""
    nbytes: int
    object_id: int
    owner_uid: int
    share: str
    """Who besides the owner may read it: "owner", "group" or "everyone"."""
    sealed: bool
    created_unix_ns: int
    leases: int
    """Leases held on this version when the daemon answered."""
    segment_id: int


class Stats(NamedTuple):
    """Daemon-wide counters (``tensorshmctl stats`` shows the same)."""

    pool_bytes: int
    pool_used_bytes: int
    dedicated_bytes: int
    segments: int
    objects: int
    versions: int
    open_creates: int
    leases: int
    clients: int
    puts: int
    gets: int
    copies: int
    bytes_copied: int
    cuda_devices: int
    uptime_s: float
    quarantined_bytes: int
    """Pool bytes a GPU copy that timed out may still write: never reused until the daemon restarts."""


class SegmentInfo(NamedTuple):
    id: int
    name: str
    size: int
    dedicated: bool


class DaemonInfo(NamedTuple):
    """What the daemon said when the client connected."""

    socket_path: str
    daemon_version: str
    instance: str
    protocol_version: int
    page_size: int
    cuda_devices: int
    segments: tuple[SegmentInfo, ...]
