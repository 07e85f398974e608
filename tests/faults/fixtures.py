"""The pytest fixtures the fault and security suites share (each conftest.py
imports them): `workdir`, a short temporary directory (socket paths must fit
sun_path) that other uids can reach; `daemons`, which starts real tensorshmd
processes with the suite's `daemon_defaults` and cleans up after each test
whatever happened; `peers`, which starts tshm_fault_peer clients (under another
uid when given a user) and kills any left at the end. The figures the tests
record are printed at the end of the run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

import harness


@pytest.fixture
def daemon_defaults() -> dict:
    """Keyword arguments every Daemon of the suite gets (a conftest overrides it)."""
    return {}


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="tshm-t-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemons(workdir, daemon_defaults):
    made: list[harness.Daemon] = []

    def make(**kw) -> harness.Daemon:
        merged = {**daemon_defaults, **kw}
        merged["args"] = [*daemon_defaults.get("args", ()), *kw.get("args", ())]
        d = harness.Daemon(workdir, **merged)
        made.append(d)
        return d

    yield make
    # Every daemon still running is stopped with SIGTERM: it must exit 0 (a
    # sanitizer build's LeakSanitizer checks it then) and leave nothing in
    # /dev/shm. cleanup() kills what a failed stop leaves.
    try:
        for d in made:
            d.stop()
    finally:
        for d in made:
            d.cleanup()


@pytest.fixture
def peers():
    made: list[harness.Peer] = []

    def make(daemon, user=None, **kw) -> harness.Peer:
        p = harness.Peer(daemon, user=user, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.proc.poll() is None:
            p.kill9()


def pytest_terminal_summary(terminalreporter):
    # Both suites' conftests import this hook: print once per run.
    if harness.RECORDED and not getattr(harness, "summarized", False):
        harness.summarized = True
        terminalreporter.section("reliability figures")
        for row in harness.RECORDED:
            terminalreporter.write_line(" ".join(f"{k}={v}" for k, v in row.items()))
