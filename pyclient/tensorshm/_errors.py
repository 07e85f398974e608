"""The exception hierarchy: one class per libtensorshm error code (``Errc``).

Each class also derives from the built-in exception a Python user would try
first (``LookupError`` for a missing name, ``TimeoutError``, ``ValueError`` for
bad names and arguments, ``ConnectionError`` for an unreachable daemon, ...),
so ``except TimeoutError`` works as well as ``except tensorshm.Timeout``.
"""

from __future__ import annotations

from . import _tensorshm


class Error(Exception):
    """Base class of every tensorshm failure.

    ``code`` is the stable lower-case name of the failure (``"not_found"``,
    ``"pool_exhausted"``, ...), the same name tensorshmctl and the daemon's log use.
    """

    code: str = "internal"


class NotFound(Error, LookupError):
    """No object of that name, or no version newer than the one asked for."""

    code = "not_found"


class Timeout(Error, TimeoutError):
    """A wait (for a name, a newer version or pool space) ran out."""

    code = "timeout"


class PoolExhausted(Error):
    """No room in the pool even after evicting unleased old versions.

    Release arrays you no longer need, delete names, pass ``timeout=`` to wait
    for space, or start the daemon with a larger ``--pool-size``.
    """

    code = "pool_exhausted"


class InvalidName(Error, ValueError):
    """The name is empty, too long, not printable ASCII, or contains ``..``."""

    code = "invalid_name"


class InvalidArgument(Error, ValueError):
    """A bad shape, strides, size, share mode or other argument."""

    code = "invalid_argument"


class UnsupportedDtype(Error, TypeError):
    """The element type cannot be stored (or, for bfloat16/float8 in numpy, read
    without the optional ``ml_dtypes`` package)."""

    code = "unsupported_dtype"


class ProtocolError(Error):
    """The daemon and this client disagree on the wire protocol or segment layout."""

    code = "protocol_error"


class VersionMismatch(ProtocolError):
    """The daemon speaks another protocol (or segment layout) version."""

    code = "version_mismatch"


class PermissionDenied(Error, PermissionError):
    """The object belongs to another user and is not shared with this one."""

    code = "permission_denied"


class NotOpen(Error):
    """Use of something already sealed, aborted or released, or of a closed client."""

    code = "not_open"


class LimitExceeded(Error):
    """A per-user or global limit of the daemon (objects, bytes, connections)."""

    code = "limit_exceeded"


class DaemonUnreachable(Error, ConnectionError):
    """tensorshmd does not answer on the socket tried, or the connection broke.
    The message names the socket, the cause (no socket: is the daemon running?;
    a socket no daemon listens on: it stopped or died; permission denied: the
    socket's or a directory's owner, group and mode) and the fix."""

    code = "daemon_unreachable"


class NoGpu(Error):
    """A GPU put where this build or the daemon has no CUDA support."""

    code = "no_gpu"


class CudaError(Error):
    """A CUDA call failed; the message names it."""

    code = "cuda_error"


class SystemCallError(Error, OSError):
    """A system call failed; the message names it and its errno."""

    code = "system_error"


class InternalError(Error):
    """A bug in tensorshm; please report it with the message."""

    code = "internal"


_BY_CODE: dict[str, type[Error]] = {
    cls.code: cls
    for cls in (
        NotFound, Timeout, PoolExhausted, InvalidName, InvalidArgument, UnsupportedDtype, ProtocolError,
        VersionMismatch, PermissionDenied, NotOpen, LimitExceeded, DaemonUnreachable, NoGpu, CudaError,
        SystemCallError, InternalError,
    )
}
_BY_CODE["ok"] = InternalError  # never raised; present so that every code has a class

_tensorshm.set_error_classes(_BY_CODE)
