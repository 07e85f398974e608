"""One real tensorshmd per test session, on a temporary socket.

The daemon binary comes from $TENSORSHMD (CTest sets it) or build/daemon/tensorshmd.
It runs with a unique --instance, so its segments are /dev/shm/tensorshm.<instance>.*;
at the end it is stopped with SIGTERM and must leave none of them behind.
$TENSORSHM_SOCKET points at it for the whole session, so that tensorshm.connect()
and every child process (tests/python/peer.py) find it without arguments.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

import tensorshm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from lifetime import die_with_parent  # noqa: E402
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
POOL = "96M"
SEGMENT = "16M"  # objects above this get a dedicated segment


class Daemon(NamedTuple):
    socket: str
    instance: str
    proc: subprocess.Popen
    log: Path


def _daemon_binary() -> str:
    path = os.environ.get("TENSORSHMD") or str(REPO / "build" / "daemon" / "tensorshmd")
    if not os.access(path, os.X_OK):
        pytest.exit(f"tensorshmd not found at {path}: build it (./scripts/build.sh) or set TENSORSHMD", 2)
    return path


def _wait_ready(d: Daemon) -> None:
    deadline = time.monotonic() + 30
    while True:
        if d.proc.poll() is not None:
            pytest.exit(f"tensorshmd exited with {d.proc.returncode}:\n{d.log.read_text()}", 2)
        try:
            with tensorshm.connect(d.socket) as c:
                c.ping()
            return
        except tensorshm.DaemonUnreachable:
            if time.monotonic() > deadline:
                pytest.exit(f"tensorshmd did not answer on {d.socket}:\n{d.log.read_text()}", 2)
            time.sleep(0.05)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="tensorshm-pytest-"))
    tmp.chmod(0o711)  # the permission test's other user must reach the socket
    instance = f"pytest{os.getpid()}"
    sock = str(tmp / "tensorshmd.sock")
    log = tmp / "tensorshmd.log"
    cmd = [_daemon_binary(), "--socket", sock, "--instance", instance, "--pool-size", POOL,
           "--segment-size", SEGMENT, "--pretouch-threads", "1", "--socket-mode", "0666", "--cuda", "off"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    d = Daemon(sock, instance, proc, log)
    old_env = os.environ.get("TENSORSHM_SOCKET")
    os.environ["TENSORSHM_SOCKET"] = sock
    try:
        _wait_ready(d)
        yield d
    finally:
        if old_env is None:
            os.environ.pop("TENSORSHM_SOCKET", None)
        else:
            os.environ["TENSORSHM_SOCKET"] = old_env
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        left = glob.glob(f"/dev/shm/tensorshm.{instance}.*")
        for f in left:
            os.unlink(f)
        assert rc == 0, f"tensorshmd exited with {rc}:\n{log.read_text()}"
        assert not left, f"tensorshmd left segments behind: {left}"
        for f in tmp.iterdir():
            f.unlink()
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
