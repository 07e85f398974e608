"""One real tensorshmd per test session, on a temporary socket, started by
tensorshm.local_daemon.

The daemon binary comes from $TENSORSHMD (CTest sets it) or build/daemon/tensorshmd.
It runs with a unique --instance; at the end it is stopped with SIGTERM, must exit 0
and leave nothing in /dev/shm or beside its socket.
$TENSORSHM_SOCKET points at it for the whole session, so that tensorshm.connect()
and every child process (tests/python/peer.py) find it without arguments.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

import tensorshm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
POOL = "96M"
SEGMENT = "16M"  # objects above this get a dedicated segment


class Daemon(NamedTuple):
    socket: str
    instance: str
    local: tensorshm.LocalDaemon
    log: Path


def _daemon_binary() -> str:
    path = os.environ.get("TENSORSHMD") or str(REPO / "build" / "daemon" / "tensorshmd")
    if not os.access(path, os.X_OK):
        pytest.exit(f"tensorshmd not found at {path}: build it (./scripts/build.sh) or set TENSORSHMD", 2)
    return path


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    # tensorshm.local_daemon starts it, as a user's program would, but on a
    # socket in a directory another user can reach (the permission test).
    tmp = Path(tempfile.mkdtemp(prefix="tensorshm-pytest-"))
    tmp.chmod(0o711)
    instance = f"pytest{os.getpid()}"
    sock = str(tmp / "tensorshmd.sock")
    try:
        local = tensorshm.local_daemon(POOL, sock, executable=_daemon_binary(), instance=instance,
                                       segment_size=SEGMENT, pretouch_threads=1, socket_mode="0666", cuda="off")
    except tensorshm.Error as e:
        pytest.exit(str(e), 2)
    assert os.environ["TENSORSHM_SOCKET"] == sock
    assert local.log_path is not None
    try:
        yield Daemon(sock, instance, local, local.log_path)
    finally:
        log = local.log()
        rc = local.stop(timeout=30)
        left = glob.glob(f"/dev/shm/tensorshm.{instance}.*")
        for f in left:
            os.unlink(f)
        assert rc == 0, f"tensorshmd exited with {rc}:\n{log}"
        assert not left, f"tensorshmd left segments behind: {left}"
        assert not [p.name for p in tmp.iterdir()], "the daemon left files beside its socket"
        tmp.rmdir()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[tensorshm.Client]:
    with tensorshm.connect(daemon.socket) as c:
        yield c


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test (valid: printable, no spaces, no '..')."""
    base = re.sub(r"[^A-Za-z0-9_/-]+", "_", request.node.name)[:120]
    return f"test/{base}"


class Peer:
    """Runs tests/python/peer.py in a fresh interpreter (the other process)."""

    @staticmethod
    def _argv(command: str, args: dict) -> list[str]:
        return [sys.executable, str(HERE / "peer.py"), command, json.dumps(args)]

    def run(self, command: str, **args: object) -> dict:
        r = subprocess.run(self._argv(command, args), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"peer {command} failed ({r.returncode}):\n{r.stderr}"
        return json.loads(r.stdout)

    def start(self, command: str, **args: object) -> subprocess.Popen:
        return subprocess.Popen(self._argv(command, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    @staticmethod
    def result(p: subprocess.Popen) -> dict:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"peer failed ({p.returncode}):\n{err}"
        return json.loads(out)


@pytest.fixture
def peer(daemon: Daemon) -> Peer:
    return Peer()
