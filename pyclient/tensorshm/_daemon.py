"""Starting tensorshmd from Python: :func:`local_daemon`, and the console
scripts ``tensorshmd`` and ``tensorshmctl`` that run the binaries the wheel
carries (``tensorshm/bin/``).

A daemon started here runs as this user on a socket in a private directory
(``$TMPDIR/tensorshm-XXXXXX/``, mode 0700), with the daemon's own defaults
for everything not passed. Its memory is memfd files that die with it, so
stopping it leaves ``/dev/shm`` and the file system as they were; the
directory is removed when it stops.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

from ._client import Client, default_socket_path
from ._errors import DaemonUnreachable, Error, InvalidArgument

_BIN = Path(__file__).resolve().parent / "bin"
_PR_SET_PDEATHSIG = 1
_LOG_TAIL = 4000


def bundled_binary(name: str) -> str | None:
    """Path of ``name`` (``"tensorshmd"`` or ``"tensorshmctl"``) as this
    installation carries it, or None when it carries none (a build without
    Boost has no daemon)."""
    p = _BIN / name
    return str(p) if os.access(p, os.X_OK) else None


def daemon_executable(executable: str | os.PathLike[str] | None = None) -> str:
    """The tensorshmd that :func:`local_daemon` runs: ``executable`` if given,
    else ``$TENSORSHMD``, else the one the package carries, else ``tensorshmd``
    on ``$PATH``."""
    for candidate in (executable, os.environ.get("TENSORSHMD") or None):
        if candidate is not None:
            path = os.fspath(candidate)
            if not os.access(path, os.X_OK):
                raise InvalidArgument(f"tensorshmd at {path!r} is not an executable file")
            return path
    found = bundled_binary("tensorshmd") or shutil.which("tensorshmd")
    if found is None:
        raise Error("no tensorshmd to start: this installation of tensorshm carries none (it was built without "
                    "Boost) and none is on $PATH; install a wheel of tensorshm, or the tensorshm .deb, or pass "
                    "executable= (or set $TENSORSHMD) to a built tensorshmd")
    return found


def _flag(key: str, value: Any) -> list[str]:
    if not key.isidentifier():
        raise InvalidArgument(f"local_daemon: {key!r} is not an option name")
    if isinstance(value, bool):
        value = int(value)
    if value is None:
        return []
    return [f"--{key.replace('_', '-')}", str(value)]


def _answers(socket: str) -> bool:
    try:
        with Client(socket, name="python:local_daemon") as c:
            c.ping()
        return True
    except DaemonUnreachable:
        return False


class LocalDaemon:
    """A tensorshmd this process started (or found running) for itself and its
    children: see :func:`local_daemon`. Stop it with :meth:`stop` or by
    leaving its ``with`` block."""

    def __init__(self, socket: str, proc: subprocess.Popen[bytes] | None, workdir: Path | None,
                 log_path: Path | None) -> None:
        self.socket_path = socket
        self._proc = proc
        self._workdir = workdir
        self.log_path = log_path
        """The daemon's log (None for a daemon found running)."""
        self._lock = threading.Lock()
        self._old_env: str | None = os.environ.get("TENSORSHM_SOCKET")
        self._stopped = False
        os.environ["TENSORSHM_SOCKET"] = socket
        atexit.register(self.stop)

    @property
    def pid(self) -> int | None:
        """The daemon's pid; None when it was found running rather than started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self) -> bool:
        """True when this object started the daemon (and will stop it)."""
        return self._proc is not None

    def running(self) -> bool:
        return not self._stopped and (self._proc is None or self._proc.poll() is None)

    def connect(self, **kwargs: Any) -> Client:
        """A client of this daemon (:func:`tensorshm.connect` with its socket)."""
        return Client(self.socket_path, **kwargs)

    def log(self) -> str:
        """What the daemon has logged so far ("" for one found running)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stops the daemon if this object started it (SIGTERM; SIGKILL after
        ``timeout`` seconds), removes its private directory and restores
        ``$TENSORSHM_SOCKET``. Returns the daemon's exit status (None for a
        daemon found running, which is left alone). Arrays already got stay
        readable. Idempotent."""
        with self._lock:
            if self._stopped:
                return self._proc.returncode if self._proc is not None else None
            self._stopped = True
            atexit.unregister(self.stop)
            if os.environ.get("TENSORSHM_SOCKET") == self.socket_path:
                if self._old_env is None:
                    os.environ.pop("TENSORSHM_SOCKET", None)
                else:
                    os.environ["TENSORSHM_SOCKET"] = self._old_env
            code = None
            if self._proc is not None:
                if self._proc.poll() is None:
                    self._proc.send_signal(signal.SIGTERM)
                    try:
                        self._proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._proc.kill()
                        self._proc.wait()
                code = self._proc.returncode
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            return code

    def __enter__(self) -> LocalDaemon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        how = f"pid {self.pid}" if self.started else "found running"
        state = "running" if self.running() else "stopped"
        return f"<tensorshm.LocalDaemon {self.socket_path} ({how}, {state})>"


def local_daemon(pool_size: int | str | None = None, socket: str | os.PathLike[str] | None = None, *,
                 use_running: bool = False, executable: str | os.PathLike[str] | None = None,
                 timeout: float = 30.0, **options: Any) -> LocalDaemon:
    """Starts a tensorshmd for this process and its children — the
    ``ray.init()`` of tensorshm::

        with tensorshm.local_daemon(pool_size="256M"):
            c = tensorshm.connect()          # no socket needed: the new daemon is the default
            c.put("x", np.arange(10))

    The daemon runs as this user on ``socket`` (default: a socket in a new
    private directory), with ``--pool-size pool_size`` (default: the
    daemon's, 1 GiB) and one ``--key value`` per keyword option
    (``segment_size="64M"``, ``max_connections=64``, ``cuda="off"``: any
    option of ``tensorshmd --help``, underscores for dashes; ``instance``
    defaults to ``local<pid>``). Until it stops,
    ``$TENSORSHM_SOCKET`` names its socket, so that :func:`tensorshm.connect`
    in this process and in every child started afterwards finds it.

    ``use_running=True``: when a daemon already answers on ``socket`` (or,
    with no ``socket``, on :func:`tensorshm.default_socket_path`), use it
    instead of starting one; it is left running at the end. Without it, a
    daemon already answering on ``socket`` is an error.

    ``executable``: the tensorshmd to run (default ``$TENSORSHMD``, else the
    one this package carries, else ``tensorshmd`` on ``$PATH``).

    Returns a :class:`LocalDaemon`, a context manager; it is stopped at the
    end of the ``with`` block, by :meth:`LocalDaemon.stop`, or when the
    interpreter exits. If this process is killed, the daemon gets SIGTERM
    from the kernel (when started from the main thread: Linux ties that
    signal to the starting thread). Raises :class:`tensorshm.Error` with the
    daemon's own message when it does not start within ``timeout`` seconds.
    """
    options.setdefault("instance", f"local{os.getpid()}")
    flags: list[str] = _flag("pool_size", pool_size)
    for key, value in options.items():
        flags += _flag(key, value)
    if use_running:
        candidate = os.fspath(socket) if socket is not None else default_socket_path()
        if _answers(candidate):
            return LocalDaemon(candidate, None, None, None)
    exe = daemon_executable(executable)
    workdir = Path(tempfile.mkdtemp(prefix="tensorshm-"))
    try:
        if socket is None:
            sock = str(workdir / "tensorshmd.sock")
        else:
            sock = os.fspath(socket)
            if _answers(sock):
                raise Error(f"a tensorshmd already answers on {sock}: pass use_running=True to use it, "
                            "or another socket")
        log_path = workdir / "tensorshmd.log"
        proc = _spawn([exe, "--socket", sock, *flags], log_path)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    d = LocalDaemon(sock, proc, workdir, log_path)
    try:
        _wait_ready(d, exe, timeout)
    except BaseException:
        d.stop()
        raise
    return d


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    # The daemon gets SIGTERM if this process dies; prctl is looked up before
    # the fork, so that the child only calls it.
    preexec = None
    if threading.current_thread() is threading.main_thread():
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        sigterm = int(signal.SIGTERM)

        def preexec() -> None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C meant for this program does not stop the
        # daemon before the program's own cleanup has used it.
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec, close_fds=True)


def _wait_ready(d: LocalDaemon, exe: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert d._proc is not None
    while True:
        code = d._proc.poll()
        if code is not None:
            raise Error(f"tensorshmd ({exe}) exited with status {code} at start:\n{d.log()[-_LOG_TAIL:]}")
        if _answers(d.socket_path):
            return
        if time.monotonic() > deadline:
            raise Error(f"tensorshmd ({exe}, pid {d.pid}) did not answer on {d.socket_path} within {timeout} s:\n"
                        f"{d.log()[-_LOG_TAIL:]}")
        time.sleep(0.02)


def _exec_bundled(name: str) -> None:
    path = bundled_binary(name)
    if path is None:
        sys.stderr.write(f"{name}: this installation of tensorshm carries no {name} binary (it was built without "
                         f"Boost); install a wheel of tensorshm or the tensorshm .deb\n")
        raise SystemExit(1)
    os.execv(path, [name, *sys.argv[1:]])


def tensorshmd_main() -> None:
    """Console script ``tensorshmd``: runs the daemon the package carries."""
    _exec_bundled("tensorshmd")


def tensorshmctl_main() -> None:
    """Console script ``tensorshmctl``: runs the tool the package carries."""
    _exec_bundled("tensorshmctl")
