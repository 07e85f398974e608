"""tensorshm: hand numpy arrays and torch tensors to other processes through
tensorshmd's shared memory, with no copy on the reading side.

    import tensorshm
    c = tensorshm.connect()                         # $TENSORSHM_SOCKET or the daemon's default socket
    info = c.put("camera/0", frame)                 # numpy, torch (CPU or CUDA), buffer, DLPack
    arr = c.get("camera/0", timeout=1.0)            # read-only numpy.ndarray over shared memory
    nxt = c.get("camera/0", newer_than=info.version, timeout=5.0)
    with c.create("camera/0", shape=(1080, 1920, 3), dtype="uint8") as buf:
        buf[...] = frame                            # written in place, sealed at the end of the block

    with tensorshm.local_daemon(pool_size="1G"):   # start a private daemon for this program
        ...

The API reference is docs/python.md.
"""

from __future__ import annotations

from . import _tensorshm
from ._client import (
    Client,
    Creation,
    Object,
    PutFuture,
    Share,
    connect,
    cuda_supported,
    default_socket_path,
    info,
)
from ._daemon import LocalDaemon, local_daemon
from ._types import DaemonInfo, ObjectInfo, SegmentInfo, Stats
from ._errors import (
    CudaError,
    DaemonUnreachable,
    Error,
    InternalError,
    InvalidArgument,
    InvalidName,
    LimitExceeded,
    NoGpu,
    NotFound,
    NotOpen,
    PermissionDenied,
    PoolExhausted,
    ProtocolError,
    SystemCallError,
    Timeout,
    UnsupportedDtype,
    VersionMismatch,
)

__version__: str = _tensorshm.__version__

__all__ = [
    "Client", "Creation", "DaemonInfo", "Object", "ObjectInfo", "PutFuture", "SegmentInfo", "Share", "Stats",
    "connect", "cuda_supported", "default_socket_path", "info", "LocalDaemon", "local_daemon",
    "Error", "NotFound", "Timeout", "PoolExhausted", "InvalidName", "InvalidArgument", "UnsupportedDtype",
    "ProtocolError", "VersionMismatch", "PermissionDenied", "NotOpen", "LimitExceeded", "DaemonUnreachable",
    "NoGpu", "CudaError", "SystemCallError", "InternalError",
]
