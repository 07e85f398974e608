"""Fixtures of the security tests: three throw-away users made with useradd
for the module (alice and bob share a primary group, carol has her own), a
tensorshmd run by root with a socket every uid may connect to, and clients run
under those uids with setpriv (the other fixtures: tests/faults/fixtures.py).
Without root, useradd or setpriv the tests are skipped with the reason."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from fixtures import daemons, peers, pytest_terminal_summary, workdir  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)

TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "setpriv")


class User(NamedTuple):
    name: str
    uid: int
    gid: int


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("the security tests make throw-away users: they need root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")
    tag = f"ts{os.getpid() % 100000}"
    group = f"{tag}g"
    names = {"alice": f"{tag}a", "bob": f"{tag}b", "carol": f"{tag}c"}
    made: list[str] = []
    try:
        _run("groupadd", group)
        for who, name in names.items():
            primary = ["-g", group] if who in ("alice", "bob") else ["-U"]
            _run("useradd", "-M", "-s", "/usr/sbin/nologin", *primary, name)
            made.append(name)
        out = {}
        for who, name in names.items():
            pw = pwd.getpwnam(name)
            out[who] = User(name, pw.pw_uid, pw.pw_gid)
        assert out["alice"].gid == out["bob"].gid != out["carol"].gid
        yield out
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60)
        subprocess.run(["groupdel", group], capture_output=True, timeout=60)


@pytest.fixture
def daemon_defaults() -> dict:
    """Every uid may connect; the daemon runs as root."""
    return {"tag": "sec", "args": ["--socket-mode", "0666"]}
