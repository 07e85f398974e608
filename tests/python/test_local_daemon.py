"""tensorshm.local_daemon(): a daemon started from Python for a program and
its children, stopped with it, leaving nothing behind. (The session's own
daemon, tests/python/conftest.py, is started the same way.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import tensorshm

from conftest import Daemon, _daemon_binary

EXE = _daemon_binary()
SMALL = dict(pretouch_threads=1, cuda="off")


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie child of this process counts as gone once reaped elsewhere.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_daemon_for_this_program_and_its_children_that_leaves_nothing_behind(daemon: Daemon) -> None:
    before = _shm()
    outer = os.environ["TENSORSHM_SOCKET"]
    with tensorshm.local_daemon("16M", executable=EXE, **SMALL) as d:
        assert d.started and d.running() and d.pid is not None
        sock = d.socket_path
        workdir = Path(sock).parent
        assert sock != outer and os.environ["TENSORSHM_SOCKET"] == sock
        assert oct(workdir.stat().st_mode & 0o777) == oct(0o700)
        with tensorshm.connect() as c:  # no socket: the new daemon is the default
            assert c.socket_path == sock
            assert (15 << 20) < c.stats().pool_bytes <= 16 << 20  # pool_size reached the daemon (less its headers)
            c.put("ld/x", np.arange(1000, dtype=np.float32))
            # A child started now finds it through the environment, and hands back an array.
            code = textwrap.dedent("""
                import numpy as np, tensorshm
                c = tensorshm.connect()
                x = c.get("ld/x")
                c.put("ld/y", x * 2)
                print(c.socket_path)
            """)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == sock
            y = c.get("ld/y")
            np.testing.assert_array_equal(y, np.arange(1000, dtype=np.float32) * 2)
        pid = d.pid
    assert d.stop() == 0  # exit status 0, and a second stop is harmless
    assert not d.running() and _gone(pid)
    assert os.environ["TENSORSHM_SOCKET"] == outer  # the session's daemon is the default again
    assert not workdir.exists()
    assert _shm() == before
    # The array got from it stays readable after the daemon is gone.
    assert y[999] == 1998.0


def test_options_reach_the_daemon_and_a_bad_one_fails_with_its_own_message(daemon: Daemon) -> None:
    with tensorshm.local_daemon("16M", executable=EXE, max_objects=2, **SMALL) as d:
        with d.connect() as c:
            c.put("a", np.zeros(4))
            c.put("b", np.zeros(4))
            with pytest.raises(tensorshm.LimitExceeded):
                c.put("c", np.zeros(4))
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("tensorshm-*"))
    with pytest.raises(tensorshm.Error, match=r"(?s)exited with status .*pool-size"):
        tensorshm.local_daemon("-1", executable=EXE, **SMALL)
    with pytest.raises(tensorshm.Error, match="no-such-option"):
        tensorshm.local_daemon("16M", executable=EXE, no_such_option=1, **SMALL)
    with pytest.raises(tensorshm.Error, match="/nonexistent/x.conf"):
        tensorshm.local_daemon("16M", executable=EXE, config="/nonexistent/x.conf")
    with pytest.raises(tensorshm.InvalidArgument, match="not an executable"):
        tensorshm.local_daemon("16M", executable="/nonexistent/tensorshmd")
    # Failed starts leave no directory and no daemon behind.
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("tensorshm-*")) == before


def test_a_running_daemon_is_used_only_when_asked(daemon: Daemon) -> None:
    with pytest.raises(tensorshm.Error, match="already answers"):
        tensorshm.local_daemon("16M", daemon.socket, executable=EXE, **SMALL)
    with tensorshm.local_daemon(socket=daemon.socket, use_running=True) as d:
        assert not d.started and d.pid is None
        assert d.socket_path == daemon.socket
    assert d.stop() is None
    with tensorshm.connect(daemon.socket) as c:  # left running
        c.ping()
    # With no socket, use_running looks at the default socket: here the
    # session's daemon ($TENSORSHM_SOCKET).
    with tensorshm.local_daemon(use_running=True) as d:
        assert not d.started and d.socket_path == daemon.socket


def test_the_daemon_dies_with_the_program_that_started_it(daemon: Daemon, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, time, tensorshm
        d = tensorshm.local_daemon("16M", executable={EXE!r}, pretouch_threads=1, cuda="off")
        print(d.pid, d.socket_path, flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    pid_s, sock = p.stdout.readline().split()
    pid = int(pid_s)
    os.kill(pid, 0)
    p.send_signal(signal.SIGKILL)  # no cleanup runs in the program
    p.wait()
    assert _gone(pid), "the daemon outlived the program that started it"
    assert not Path(sock).exists()  # it removed its socket on the way out


def test_a_normal_exit_without_stop_stops_it(daemon: Daemon) -> None:
    code = textwrap.dedent(f"""
        import tensorshm
        d = tensorshm.local_daemon("16M", executable={EXE!r}, pretouch_threads=1, cuda="off")
        print(d.pid, d.socket_path, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid_s, sock = out.stdout.split()
    assert _gone(int(pid_s))
    assert not Path(sock).parent.exists()
