"""python -m tensorshm: the daemon and tensorshmctl's commands from Python,
--json with the fields and spellings of ObjectInfo, Stats and DaemonInfo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import tensorshm

from conftest import Daemon, _daemon_binary


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "tensorshm", *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert r.returncode == 0, f"python -m tensorshm {' '.join(args)}: {r.returncode}\n{r.stderr}"
    return r


def as_json_value(x: object) -> object:
    return json.loads(json.dumps(x))


def test_json_output_has_pythons_fields_and_values(client: tensorshm.Client, name: str) -> None:
    info = client.put(name, np.arange(12, dtype=np.float32).reshape(3, 4), share="everyone")
    stat = json.loads(cli("stat", "--json", name).stdout)
    assert stat == as_json_value(info._asdict())  # same names, same spellings ("everyone", "float32")
    assert stat["share"] == "everyone" and stat["dtype"] == "float32" and stat["shape"] == [3, 4]

    listed = json.loads(cli("ls", "--json", name).stdout)
    assert [o["name"] for o in listed] == [name]
    assert listed[0].keys() == set(tensorshm.ObjectInfo._fields)

    stats = json.loads(cli("stats", "--json").stdout)
    assert list(stats) == list(tensorshm.Stats._fields)
    assert stats["objects"] >= 1 and stats["puts"] >= 1

    ping = json.loads(cli("ping", "--json").stdout)
    d = client.daemon_info
    assert set(ping) == set(tensorshm.DaemonInfo._fields) | {"round_trip_s"}
    assert ping["instance"] == d.instance and ping["daemon_version"] == tensorshm.__version__
    assert ping["segments"][0].keys() == set(tensorshm.SegmentInfo._fields)

    assert json.loads(cli("rm", "--json", name).stdout) == {"removed": name}
    gone = cli("stat", "--json", name, ok=False)
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["error"] == "not_found" and name in gone.stderr


def test_text_output_and_prometheus(client: tensorshm.Client, name: str) -> None:
    client.put(name, np.zeros((2, 2), dtype=np.uint8))
    assert name in cli("ls", "test/").stdout
    text = cli("stat", name).stdout
    assert "uint8" in text and "[2, 2]" in text
    prom = cli("stats", "--prometheus").stdout
    metrics = {ln.split()[0]: float(ln.split()[1]) for ln in prom.splitlines() if not ln.startswith("#")}
    assert metrics["tensorshm_objects"] >= 1 and "tensorshm_puts_total" in metrics
    assert metrics.keys() == {ln.split()[2] for ln in prom.splitlines() if ln.startswith("# TYPE")}
    assert cli("rm", name).stdout.strip() == f"removed {name}"


def test_usage_errors_and_the_daemon_command(daemon: Daemon) -> None:
    both = cli("stats", "--json", "--prometheus", ok=False)
    assert both.returncode != 0 and "exclude" in both.stderr
    assert cli("ls", "--prometheus", ok=False).returncode == 2  # argparse: not an option of ls
    assert cli("--version").stdout.strip() == f"tensorshm {tensorshm.__version__}"
    # `daemon` runs tensorshmd with the arguments given (here its --help).
    env = {**os.environ, "TENSORSHMD": _daemon_binary()}
    r = subprocess.run([sys.executable, "-m", "tensorshm", "daemon", "--help"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and "--pool-size" in r.stdout
    bad = cli("stat", "--json", "no spaces allowed", ok=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "invalid_name"
    unreachable = subprocess.run([sys.executable, "-m", "tensorshm", "ping", "--socket", "/nonexistent/x.sock"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "/nonexistent/x.sock" in unreachable.stderr
