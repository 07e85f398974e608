"""Fixtures for the GPU tests: a reason to skip when there is no GPU (shown
with ``pytest -rs``), and a daemon: the one tests/gpu/run.sh started (when
TSHM_GPU_DAEMON_RUNNING=1 and TENSORSHM_SOCKET point at it) or one started
here on a temporary socket with a unique instance and stopped afterwards."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import pytest
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _no_gpu_reason() -> str | None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means no GPU tests
        return f"no GPU here: torch is not importable ({e})"
    if not torch.cuda.is_available():
        return (f"no GPU here: torch.cuda.is_available() is False (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); tests/gpu/run.sh runs these on a GPU machine")
    return None


NO_GPU = _no_gpu_reason()


def pytest_report_header(config: pytest.Config) -> str:
    return f"tensorshm GPU tests: {NO_GPU or 'CUDA device found'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if NO_GPU is None:
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        item.add_marker(skip)


def daemon_binary() -> str:
    candidates = [os.environ.get("TENSORSHMD", ""), str(ROOT / ".gpu-kit/bin/tensorshmd")]
    candidates += sorted(str(p) for p in ROOT.glob("build*/daemon/tensorshmd"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise RuntimeError("no tensorshmd: set TENSORSHMD, run tests/gpu/prepare.sh, or build the project")


def wait_for_socket(path: str, proc: subprocess.Popen, log: pathlib.Path) -> None:
    """Returns once tensorshmd `proc` accepts on `path`; raises with its log if it exits or never does."""
    deadline = time.monotonic() + 120  # pinning a large pool takes seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorshmd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tensorshmd did not listen on {path}:\n{log.read_text()}")


def stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if tensorshmd has not stopped within a minute."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def daemon_socket(tmp_path_factory: pytest.TempPathFactory):
    if NO_GPU:
        pytest.skip(NO_GPU)
    if os.environ.get("TSHM_GPU_DAEMON_RUNNING") == "1":
        yield os.environ["TENSORSHM_SOCKET"]
        return
    d = tmp_path_factory.mktemp("daemon")
    sock, log = str(d / "tshm.sock"), d / "daemon.log"
    args = [daemon_binary(), "--socket", sock, "--instance", f"gputest{os.getpid()}",
            "--pool-size", os.environ.get("TSHM_GPU_POOL_SIZE", "4G"), "--segment-size", "2G",
            "--pretouch-threads", "8"]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, proc, log)
        yield sock
    finally:
        stop_daemon(proc)
        print(f"\n---- tensorshmd log ({log}) ----\n{log.read_text()[-4000:]}")


@pytest.fixture
def client(daemon_socket: str):
    import tensorshm

    with tensorshm.connect(daemon_socket, name="gpu-tests") as c:
        yield c
