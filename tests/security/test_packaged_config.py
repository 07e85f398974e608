"""The packaged service serves many users. tensorshmd runs with the config file
the package ships (systemd/tensorshmd.conf, as it is: its pool, segment size,
instance and limits) on a socket handed to it the way tensorshmd.socket hands
it over (systemd-socket-activate; the socket 0660 root:<the service's group>),
and three real uids, each a member of that group, use it at once: each puts and
gets objects of its own, and one object shared with everyone is read by the
other two. Only the socket's path differs from the installed service, so that
the test never meets a system instance.

With the file as issue 16 found it (segment-size = 1G beside pool-size = 1G:
the pool was one segment, and a segment holds objects of one owner and sharing
mode at a time) the second uid's put failed with pool_exhausted."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from harness import REPO, wait_until

CONF = REPO / "systemd" / "tensorshmd.conf"
KIB = 1 << 10


@pytest.fixture
def daemon_defaults() -> dict:
    """Nothing beyond the file: no socket mode, pool or segment flags."""
    return {}


@pytest.fixture
def service_group(users):
    """A group standing in for `tensorshm`, whose members may use the socket."""
    name = f"ts{os.getpid() % 100000}s"
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=60)
    try:
        yield int(subprocess.run(["getent", "group", name], check=True, capture_output=True, text=True,
                                 timeout=60).stdout.split(":")[2])
    finally:
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)


def test_the_service_with_the_shipped_config_file_serves_three_uids_at_once(users, service_group, daemons, peers,
                                                                           workdir):
    activator = shutil.which("systemd-socket-activate")
    if activator is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd): it passes the socket "
                    "as tensorshmd.socket does")
    sock = str(workdir / "tensorshmd.sock")
    # The daemon's instance is the file's ("default"); the harness's own name for
    # it stays unique, since other daemons of instance "default" may run on this
    # machine (and older ones left files in /dev/shm under that name).
    d = daemons(config=str(CONF), socket_path=sock, wrapper=[activator, "-l", sock]).start()
    # What tensorshmd.socket does with SocketMode=0660 and SocketGroup=tensorshm.
    os.chown(sock, 0, service_group)
    os.chmod(sock, 0o660)
    wait_until(lambda: " ready: " in d.log.read_text(errors="replace"), f"tensorshmd to be ready\n{d.log_tail()}")
    log = d.log.read_text(errors="replace")
    if "listening on the socket passed by the service manager" not in log:
        pytest.fail(f"tensorshmd did not take the socket it was passed (built without libsystemd?):\n{d.log_tail()}")
    # The daemon runs on the file's settings, unchanged.
    assert f"config: socket = {sock}" in log and "config: instance = default" in log, d.log_tail()

    who = {name: peers(d, users[name], groups=[service_group]) for name in ("alice", "bob", "carol")}
    put = {}
    for name, p in who.items():
        put[f"{name}/own"] = p.ok(f"put {name}/own {64 * KIB} {len(put) + 1}")
        put[f"{name}/own/2"] = p.ok(f"put {name}/own/2 {300 * KIB} {len(put) + 1}")
    put["alice/all"] = who["alice"].ok(f"put alice/all {128 * KIB} 9 everyone")
    for name, p in who.items():
        for obj in (f"{name}/own", f"{name}/own/2", "alice/all"):
            got = p.ok(f"get {obj}")
            assert (got["version"], got["checksum"]) == (put[obj]["version"], put[obj]["checksum"]), \
                f"{name}: get {obj}: {got['line']}"
        for other in who:
            if other != name:
                r = p.cmd(f"get {other}/own")
                assert r["status"] == "err" and r["code"] == "permission_denied", f"{name}: get {other}/own: {r['line']}"
    # Each uid's objects stay in segments of their own class: four classes, four pool segments.
    owners = {put[f"{n}/own"]["segment"] for n in who} | {put["alice/all"]["segment"]}
    assert len(owners) == 4, put
