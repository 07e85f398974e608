"""`tensorshmctl --json` prints what Python's ObjectInfo, Stats and DaemonInfo
hold, under the same field names, in the same order, with the same spellings
(ctl/output.cpp writes them): whichever side gains or renames a field, these
tests fail until the other follows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tensorshm


@pytest.fixture(scope="module")
def ctl_binary() -> str:
    path = os.environ.get("TENSORSHMCTL") or str(Path(__file__).resolve().parents[2] / "build" / "ctl" / "tensorshmctl")
    if not os.access(path, os.X_OK):
        pytest.skip(f"tensorshmctl not built at {path} (set TENSORSHMCTL)")
    return path


@pytest.fixture
def ctl_json(ctl_binary, daemon):
    def run(*args: str):
        r = subprocess.run([ctl_binary, "--socket", daemon.socket, "--json", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return run


def as_json(info) -> dict:
    """A NamedTuple as JSON would carry it: tuples become lists."""
    return json.loads(json.dumps(info._asdict()))


def test_ls_and_stat_print_pythons_object_info_field_for_field(client, name, ctl_json):
    client.put(name + "/a", np.zeros((2, 3), dtype=np.float16), share="group")
    client.put(name + "/b", np.arange(5, dtype=np.int64)[::2], share="everyone")
    for obj in (name + "/a", name + "/b"):
        printed = ctl_json("stat", obj)
        assert list(printed) == list(tensorshm.ObjectInfo._fields)
        assert printed == as_json(client.stat(obj))
    listed = ctl_json("ls", name + "/")
    assert listed == [as_json(i) for i in client.list(name + "/")]
    assert [o["share"] for o in listed] == ["group", "everyone"]  # Python's words, not numbers
    assert [o["dtype"] for o in listed] == ["float16", "int64"]


def test_stats_prints_pythons_stats_fields_with_their_types(client, ctl_json):
    printed = ctl_json("stats")
    mine = client.stats()
    assert list(printed) == list(tensorshm.Stats._fields)
    for field, value in mine._asdict().items():
        assert type(printed[field]) is type(value), field  # noqa: E721  int stays int, uptime_s a float
    assert printed["pool_bytes"] == mine.pool_bytes and printed["segments"] == mine.segments


def test_ping_prints_pythons_daemon_info_and_the_round_trip(client, ctl_json):
    printed = ctl_json("ping")
    assert list(printed) == [*tensorshm.DaemonInfo._fields, "round_trip_s"]
    assert isinstance(printed.pop("round_trip_s"), float)
    mine = as_json(client.daemon_info)
    assert [list(s) for s in printed["segments"]] == [list(tensorshm.SegmentInfo._fields)] * len(printed["segments"])
    # The segments are those of each client's connect: compare what the daemon said about itself.
    printed.pop("segments"), mine.pop("segments")
    assert printed == mine
