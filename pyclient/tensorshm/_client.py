"""Client, Object and the rest of the public API over the _tensorshm extension.

How a get stays zero-copy: the extension returns a ``Lease`` (a read lease on
one object version) that exposes the segment mapping through
``__array_interface__`` as read-only memory; ``numpy.asarray(lease)`` makes an
ndarray whose ``base`` is the lease, every view of that array keeps it alive in
turn, and the lease goes back to the daemon when the last of them is collected.
"""

from __future__ import annotations

import numbers
import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, List, Literal, Sequence, overload

import numpy as np

from . import _dtypes, _tensorshm
from ._errors import InvalidArgument, UnsupportedDtype
from ._types import DaemonInfo, ObjectInfo, SegmentInfo, Stats

if TYPE_CHECKING:  # pragma: no cover
    import torch

Share = Literal["owner", "group", "everyone"]
_SHARES = {"owner": 0, "group": 1, "everyone": 2}
_FOREVER = -1
# Timeouts beyond this many years wait forever: 10 years is 3.2e11 ms, far
# inside what a steady_clock deadline (int64 nanoseconds) can hold.
_FOREVER_AFTER_YEARS = 10
_FOREVER_AFTER_S = _FOREVER_AFTER_YEARS * 365 * 24 * 3600
_DLPACK_CPU = 1


def _info(t: tuple) -> ObjectInfo:
    return tuple.__new__(ObjectInfo, t)


def _timeout_ms(timeout: float | None) -> int:
    """A ``timeout=`` argument in milliseconds for the extension, -1 for "wait
    forever" (None, +inf, and finite values beyond _FOREVER_AFTER_YEARS, which
    would overflow the clock arithmetic of a deadline). Raises InvalidArgument
    for NaN, negative values, bools and non-numbers before anything is sent."""
    if timeout is None:
        return _FOREVER
    if (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
            or timeout != timeout or timeout < 0):  # NaN compares unequal to itself
        raise InvalidArgument(f"timeout must be a number of seconds >= 0, or None or float('inf') to wait "
                              f"forever; got {timeout!r} ({type(timeout).__name__})")
    if timeout > _FOREVER_AFTER_S:
        return _FOREVER
    return int(round(float(timeout) * 1000.0))


def _share(share: str) -> int:
    try:
        return _SHARES[share]
    except KeyError:
        raise InvalidArgument(f"share must be 'owner', 'group' or 'everyone', not {share!r}") from None


def _code(raw: Any) -> tuple[int, int]:
    return (raw.dtype_code, raw.dtype_bits)


def _ndarray(raw: Any) -> np.ndarray:
    """The ndarray over a Lease or Buffer (read-only for a Lease)."""
    arr = np.asarray(raw)
    code = _code(raw)
    if code in _dtypes._NUMPY:
        return arr
    # bfloat16 / float8: the interface says uintN; view the bits as ml_dtypes.
    return arr.view(_dtypes.to_numpy(code))


def _torch_tensor(raw: Any) -> torch.Tensor:
    import torch  # noqa: PLC0415 - torch is optional and slow to import
    from torch.utils.dlpack import from_dlpack  # noqa: PLC0415

    code = _code(raw)
    target = _dtypes.to_torch(torch, code)
    if code[0] == _dtypes._COMPLEX:
        return from_dlpack(raw.dlpack_capsule())
    # DLPack codes for bool, bfloat16, float8 and wide unsigned types vary in
    # support across torch releases: move the bits as intN and view them.
    t = from_dlpack(raw.dlpack_capsule(as_int=True))
    return t if t.dtype == target else t.view(target)


def _find_lease(x: Any) -> Any:
    if isinstance(x, Object):
        return x._lease
    seen = 0
    while x is not None and seen < 64:
        if isinstance(x, _tensorshm.Lease):
            return x
        x = getattr(x, "base", None)
        seen += 1
    return None


def info(x: np.ndarray | Object) -> ObjectInfo:
    """The ObjectInfo of the version an array from ``get()`` (or any view of it)
    or an Object shows, e.g. ``c.get(name, newer_than=tensorshm.info(arr).version)``."""
    lease = _find_lease(x)
    if lease is None:
        raise InvalidArgument("not an array from tensorshm Client.get() (nor a view of one)")
    return _info(lease.info)


class Object:
    """A leased object version from :meth:`Client.get_object`.

    Holds the read lease until :meth:`release`, the end of a ``with`` block, or
    garbage collection, whichever comes first (arrays and tensors made from it
    hold the lease too). Works as a DLPack producer: ``np.from_dlpack(obj)``,
    ``torch.from_dlpack(obj)``.
    """

    __slots__ = ("_lease", "__weakref__")

    def __init__(self, lease: Any) -> None:
        self._lease = lease

    @property
    def info(self) -> ObjectInfo:
        return _info(self._lease.info)

    @property
    def version(self) -> int:
        return int(self._lease.version)

    @property
    def nbytes(self) -> int:
        return int(self._lease.nbytes)

    @property
    def dtype(self) -> str:
        return _dtypes.name(_code(self._lease))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._lease.info[3])

    @property
    def released(self) -> bool:
        return not self._lease.valid

    def numpy(self) -> np.ndarray:
        """A read-only ndarray over the object (no copy); it holds the lease too."""
        return _ndarray(self._lease)

    def torch(self) -> torch.Tensor:
        """A torch CPU tensor over the object (no copy; do not write to it)."""
        return _torch_tensor(self._lease)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.numpy()
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def __dlpack__(self, *, stream: Any = None, max_version: tuple[int, int] | None = None,
                   dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> Any:
        """DLPack export (read-only CPU memory that shares the lease). A
        consumer that passes ``max_version >= (1, 0)`` gets a versioned capsule
        flagged read-only; older consumers get a legacy capsule and must not write."""
        if dl_device is not None and tuple(dl_device) != (_DLPACK_CPU, 0):
            raise BufferError(f"tensorshm objects live in host memory, not on DLPack device {dl_device}")
        if copy:
            raise BufferError("tensorshm exports its shared memory without copying; copy the result instead")
        versioned = max_version is not None and max_version[0] >= 1
        return self._lease.dlpack_capsule(versioned=versioned)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DLPACK_CPU, 0)

    def release(self) -> None:
        """Gives the lease back now, even while arrays over it exist: reading
        them afterwards is undefined (the memory may be reused)."""
        self._lease.release()

    def __enter__(self) -> Object:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        if not self._lease.valid:
            return "<tensorshm.Object released>"
        i = self.info
        return f"<tensorshm.Object {i.name!r} v{i.version} {i.dtype}{list(i.shape)}>"


class PutFuture:
    """The result of ``put(..., wait=False)``: a GPU put in flight (host puts
    complete before put() returns). Holds the source tensor until done."""

    __slots__ = ("_raw", "_info")

    def __init__(self, raw: Any = None, info: ObjectInfo | None = None) -> None:
        self._raw = raw
        self._info = info

    def done(self) -> bool:
        return self._info is not None or self._raw.ready()

    def result(self) -> ObjectInfo:
        """Waits until the daemon has the data (the source may be reused after)."""
        if self._info is None:
            self._info = _info(self._raw.get())
            self._raw = None
        return self._info


class Creation:
    """A pending :meth:`Client.create`: ``with`` it to get the writable array;
    the object is sealed when the block ends normally and aborted when it raises.
    ``info`` is the sealed object's ObjectInfo afterwards."""

    __slots__ = ("_buffer", "_array", "info")

    def __init__(self, buffer: Any) -> None:
        self._buffer = buffer
        self._array: np.ndarray | None = None
        self.info: ObjectInfo | None = None

    @property
    def array(self) -> np.ndarray:
        """The writable ndarray over the fresh object."""
        if self._array is None:
            self._array = _ndarray(self._buffer)
        return self._array

    def seal(self) -> ObjectInfo:
        """Publishes the object as the name's newest version; the array
        becomes read-only (views made earlier are not: do not write to them)."""
        self.info = _info(self._buffer.seal())
        self._freeze()
        return self.info

    def abort(self) -> None:
        self._buffer.abort()
        self._freeze()

    def _freeze(self) -> None:
        if self._array is not None:
            self._array.flags.writeable = False

    def __enter__(self) -> np.ndarray:
        return self.array

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.seal()
        else:
            self.abort()


def _torch_module(obj: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return torch
    return None


class Client:
    """One connection to tensorshmd. See :func:`connect`.

    A Client may be shared between threads; its calls take turns on the one
    connection (a waiting get() holds up the others: use one Client per thread
    for independent waits). The GIL is released while a call blocks. After
    ``os.fork()`` the child's first call opens a new connection; the child does
    not inherit the parent's leases (its arrays stay readable while the parent
    holds them).
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, name: str | None = None,
                 copy_threads: int | None = None) -> None:
        path = "" if socket is None else os.fspath(socket)
        if copy_threads is not None and (type(copy_threads) is not int or copy_threads < 1):
            raise InvalidArgument(f"copy_threads must be an int >= 1 or None, not {copy_threads!r}")
        self._c: Any = _tensorshm.Client(path, name if name is not None else _default_client_name(),
                                         -1 if copy_threads is None else min(copy_threads, 64))

    # ---- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Arrays already got stay valid (they hold their
        own reference to it) until they are collected."""
        self._c.close()

    @property
    def closed(self) -> bool:
        return bool(self._c.closed)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<tensorshm.Client closed>"
        d = self._c.daemon_info
        return f"<tensorshm.Client socket={d['socket_path']!r} instance={d['instance']!r}>"

    @property
    def daemon_info(self) -> DaemonInfo:
        d = dict(self._c.daemon_info)
        d["segments"] = tuple(SegmentInfo(**s) for s in d["segments"])
        return DaemonInfo(**d)

    @property
    def socket_path(self) -> str:
        return str(self._c.daemon_info["socket_path"])

    # ---- producing ----------------------------------------------------------

    @overload
    def put(self, name: str, obj: Any, *, dtype: Any = ..., share: Share = ..., timeout: float | None = ...,
            wait: Literal[True] = ...) -> ObjectInfo: ...

    @overload
    def put(self, name: str, obj: Any, *, dtype: Any = ..., share: Share = ..., timeout: float | None = ...,
            wait: Literal[False]) -> PutFuture: ...

    def put(self, name: str, obj: Any, *, dtype: Any = None, share: Share = "owner",
            timeout: float | None = 0.0, wait: bool = True) -> ObjectInfo | PutFuture:
        """Stores ``obj`` as the newest version of ``name`` and returns its ObjectInfo.

        ``obj``: a numpy array, a torch tensor (CPU or CUDA), anything with the
        buffer protocol, ``__array_interface__``, ``__cuda_array_interface__`` or
        ``__dlpack__``, or a nested sequence numpy understands. C- and
        Fortran-ordered inputs keep their layout; other strided inputs (slices,
        transposes of 3+ dims, broadcasts, negative strides) are packed into C
        order during the one copy.

        ``dtype``: store as this type (converted on the host, or on the GPU
        for CUDA tensors). ``share``: who else may read it. ``timeout``:
        seconds to wait for pool space when the pool is full (0: fail at once
        with PoolExhausted; None or ``float('inf')``: wait forever; values
        beyond 10 years wait forever). ``wait=False`` (GPU objects):
        return a PutFuture at once; the source tensor is kept alive until the
        daemon has copied it.
        """
        c = self._c
        tmo = _timeout_ms(timeout)
        sh = _share(share)
        torch = _torch_module(obj)
        if torch is not None:
            return self._put_torch(c, torch, name, obj, dtype, tmo, sh, wait)
        if not isinstance(obj, np.ndarray):
            if hasattr(obj, "__cuda_array_interface__"):
                return self._put_cai(c, name, obj, dtype, tmo, sh, wait)
            if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
                if dtype is not None:
                    obj = np.from_dlpack(obj)
                else:
                    return _as_future(c.put_dlpack(name, obj, tmo, sh, wait), wait)
            obj = np.asarray(obj)
        info = _info(_put_ndarray(c, name, obj, dtype, tmo, sh))
        return info if wait else PutFuture(info=info)

    def _put_torch(self, c: Any, torch: Any, name: str, t: Any, dtype: Any, tmo: int, sh: int,
                   wait: bool) -> ObjectInfo | PutFuture:
        if t.layout != torch.strided:
            raise InvalidArgument(f"{t.layout} tensors cannot be put; convert with .to_dense() first")
        if dtype is not None:
            t = t.to(_dtypes.to_torch(torch, _dtypes.parse(dtype)))
        # Lazily conjugated / negated views keep the unresolved data in memory.
        if hasattr(t, "resolve_conj"):
            t = t.resolve_conj().resolve_neg()
        code = _dtypes.from_torch(torch, t.dtype)
        shape, strides = tuple(t.shape), tuple(t.stride())
        if t.device.type == "cpu":
            info = _info(c.put_host(name, t.data_ptr(), code[0], code[1], shape, strides, tmo, sh))
            return info if wait else PutFuture(info=info)
        if t.device.type != "cuda":
            raise InvalidArgument(f"tensors on {t.device} cannot be put; move them to the CPU or a CUDA device")
        # The daemon copies the span a layout covers in one piece: pack views
        # with gaps (slices, broadcasts) on the device first, like host puts do.
        if not (t.is_contiguous() or t.permute(*range(t.dim() - 1, -1, -1)).is_contiguous()):  # C or F
            t = t.contiguous()
            strides = tuple(t.stride())
        stream = torch.cuda.current_stream(t.device).cuda_stream
        if wait:
            return _info(c.put_cuda(name, t.data_ptr(), code[0], code[1], shape, strides, stream, tmo, sh))
        return PutFuture(c.put_cuda_async(name, t.data_ptr(), code[0], code[1], shape, strides, stream, tmo, sh, t))

    def _put_cai(self, c: Any, name: str, obj: Any, dtype: Any, tmo: int, sh: int,
                 wait: bool) -> ObjectInfo | PutFuture:
        cai = obj.__cuda_array_interface__
        if dtype is not None:
            want = _dtypes.to_numpy(_dtypes.parse(dtype))
            if np.dtype(cai["typestr"]) != want:
                if not hasattr(obj, "astype"):
                    raise UnsupportedDtype(
                        f"cannot convert this {type(obj).__name__} to {want} on the device (it has no astype); "
                        "convert it before put()")
                obj = obj.astype(want)
                cai = obj.__cuda_array_interface__
        if cai.get("mask") is not None:
            raise InvalidArgument("masked CUDA arrays cannot be put")
        dt = np.dtype(cai["typestr"])
        if not dt.isnative:
            raise UnsupportedDtype(f"CUDA array of non-native byte order {dt.str!r}; convert it on the device first")
        code = _dtypes.from_numpy(dt)
        shape = tuple(int(d) for d in cai["shape"])
        strides: tuple[int, ...] = ()
        if cai.get("strides") is not None:
            item = dt.itemsize
            if any(s % item for s in cai["strides"]):
                raise InvalidArgument("CUDA array strides must be multiples of the item size")
            strides = tuple(int(s) // item for s in cai["strides"])
        ptr = int(cai["data"][0])
        # CAI v3: None = no synchronization needed, 1 = legacy default, 2 = per-thread default, else a cudaStream_t.
        stream = cai.get("stream") or 0
        if wait:
            return _info(c.put_cuda(name, ptr, code[0], code[1], shape, strides, stream, tmo, sh))
        return PutFuture(c.put_cuda_async(name, ptr, code[0], code[1], shape, strides, stream, tmo, sh, obj))

    def create(self, name: str, shape: int | Sequence[int], dtype: Any, *, order: Literal["C", "F"] = "C",
               strides: Sequence[int] | None = None, share: Share = "owner",
               timeout: float | None = 0.0) -> Creation:
        """A fresh object to write in place (no copy)::

            with c.create("camera/0", shape=(1080, 1920, 3), dtype="uint8") as buf:
                buf[...] = frame       # writable numpy.ndarray over shared memory

        The object becomes visible (sealed) when the block ends, and is
        discarded when the block raises. ``order="F"`` or ``strides=``
        (elements) choose the layout. Keep no reference to the array after the
        block: it becomes read-only there, and views made inside it would write
        into the now-immutable object. ``timeout``: seconds to wait for pool
        space when the pool is full (0: fail at once with PoolExhausted; None
        or ``float('inf')``: wait forever; values beyond 10 years wait forever).
        """
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        shape = tuple(int(d) for d in shape)
        code = _dtypes.parse(dtype)
        if strides is None:
            if order == "F":
                st, acc = [], 1
                for d in shape:
                    st.append(acc)
                    acc *= max(d, 1)
                strides = tuple(st)
            elif order != "C":
                raise InvalidArgument(f"order must be 'C' or 'F', not {order!r}")
        if code not in _dtypes._NUMPY:
            _dtypes.to_numpy(code)  # fail before creating when ml_dtypes is missing
        st_list = [] if strides is None else [int(s) for s in strides]
        buf = self._c.create(name, code[0], code[1], list(shape), st_list, _timeout_ms(timeout), _share(share))
        return Creation(buf)

    def forget_cuda(self, obj: Any) -> None:
        """Tells the daemon to close its mapping of the GPU allocation holding
        ``obj`` (a CUDA tensor, a ``__cuda_array_interface__`` object or a
        device pointer). Call it before freeing memory you have put from while
        this process lives on; otherwise the daemon keeps the allocation mapped
        until its cache evicts it or the connection ends."""
        if isinstance(obj, int):
            ptr = obj
        elif _torch_module(obj) is not None:
            ptr = obj.data_ptr()
        elif hasattr(obj, "__cuda_array_interface__"):
            ptr = int(obj.__cuda_array_interface__["data"][0])
        else:
            raise InvalidArgument(f"not a CUDA tensor or device pointer: {type(obj).__name__}")
        self._c.forget_cuda(ptr)

    # ---- consuming ----------------------------------------------------------

    def get(self, name: str, *, newer_than: int = 0, timeout: float | None = 0.0) -> np.ndarray:
        """The latest version of ``name`` as a read-only ndarray over the shared
        segment (no copy).

        ``newer_than``: return a version newer than this one (e.g. the
        ``version`` of an ObjectInfo or ``tensorshm.info(arr)``).
        ``timeout``: seconds to wait for the name to appear or for a newer
        version (0: answer at once, raising NotFound; None or
        ``float('inf')``: wait forever; values beyond 10 years wait forever).
        A wait that runs out raises Timeout. NaN, negative values, bools and
        non-numbers raise InvalidArgument, as in put() and create().
        The array holds a lease that keeps this version alive (even after newer
        puts or a delete) until it and every view of it are collected.
        """
        return _ndarray(self._c.get(name, newer_than, _timeout_ms(timeout)))

    def get_object(self, name: str, *, newer_than: int = 0, timeout: float | None = 0.0) -> Object:
        """Like :meth:`get`, as an :class:`Object` (info, explicit release,
        DLPack producer)."""
        return Object(self._c.get(name, newer_than, _timeout_ms(timeout)))

    def get_torch(self, name: str, *, newer_than: int = 0, timeout: float | None = 0.0) -> torch.Tensor:
        """Like :meth:`get`, as a torch CPU tensor over the same memory. Torch
        has no read-only tensors: do not write to it (the memory is mapped
        read-only, so a write kills the process with SIGSEGV)."""
        return _torch_tensor(self._c.get(name, newer_than, _timeout_ms(timeout)))

    # ---- names and daemon ---------------------------------------------------

    def delete(self, name: str) -> None:
        """Removes the name. Versions others hold leases on stay readable by them."""
        self._c.remove(name)

    def list(self, prefix: str = "", *, limit: int = 0) -> List[ObjectInfo]:
        """Latest versions of the names starting with ``prefix`` that this user may read."""
        return [_info(t) for t in self._c.list(prefix, limit)]

    def stat(self, name: str) -> ObjectInfo:
        return _info(self._c.stat(name))

    def stats(self) -> Stats:
        return Stats(**self._c.stats())

    def stats_prometheus(self) -> str:
        """:meth:`stats` in the Prometheus text exposition format (what
        ``tensorshmctl stats --prometheus`` prints)."""
        return str(self._c.stats_prometheus())

    def ping(self) -> float:
        """One round trip to the daemon; returns its duration in seconds."""
        return float(self._c.ping())


def _default_client_name() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"python:{argv0}"


def _as_future(r: Any, wait: bool) -> ObjectInfo | PutFuture:
    if isinstance(r, tuple):
        info = _info(r)
        return info if wait else PutFuture(info=info)
    return PutFuture(r)


def _put_ndarray(c: Any, name: str, arr: np.ndarray, dtype: Any, tmo: int, sh: int) -> tuple:
    if dtype is not None:
        code = _dtypes.parse(dtype)
        target = _dtypes.to_numpy(code)
        if arr.dtype != target:
            arr = arr.astype(target)
    dt = arr.dtype
    if not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
        dt = arr.dtype
    code = _dtypes.from_numpy(dt)
    item = dt.itemsize
    strides = arr.strides
    if any(s % item for s in strides):
        arr = np.ascontiguousarray(arr)
        strides = arr.strides
    data = arr.__array_interface__["data"][0]
    return c.put_host(name, data, code[0], code[1], arr.shape, [s // item for s in strides], tmo, sh)


def connect(socket: str | os.PathLike[str] | None = None, *, name: str | None = None,
            copy_threads: int | None = None) -> Client:
    """Connects to tensorshmd.

    ``socket``: the daemon's socket; by default ``$TENSORSHM_SOCKET``, else the
    daemon's own default (``$XDG_RUNTIME_DIR/tensorshm/tensorshmd.sock``,
    ``/run/tensorshm/tensorshmd.sock`` for root, ``/tmp/tensorshm-<uid>/...``),
    else the system service's socket (see :func:`default_socket_path`).
    ``name``: shown in the daemon's log. Raises DaemonUnreachable (naming the
    socket tried, the cause and the fix) or VersionMismatch. The Client
    is also a context manager that closes it. ``copy_threads``: puts of at
    least 2 MiB from host memory copy with up to this many threads, the
    caller's included; by default ``$TENSORSHM_COPY_THREADS``, else the CPUs
    this process may use (affinity and cgroup quota), at most 8; at most 64.
    The helper threads make the process multi-threaded: Python 3.12 and later
    warn at ``os.fork()`` after the first such put (use ``copy_threads=1`` in
    processes that fork, or the ``spawn``/``forkserver`` start methods).
    """
    return Client(socket, name=name, copy_threads=copy_threads)


def default_socket_path() -> str:
    """The socket :func:`connect` uses when given none."""
    return str(_tensorshm.default_socket_path())


def cuda_supported() -> bool:
    """True when this build of tensorshm can put GPU memory (it may still find
    no GPU, or a daemon without one, at run time)."""
    return bool(_tensorshm.cuda_supported())

