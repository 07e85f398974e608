"""Clients in containers, the daemon on the host (docs/operations.md,
"Containers"). A container is built here as Docker builds one, with unshare:
new PID, mount, IPC, network and UTS namespaces, its own /proc, a fresh tmpfs
in which the host's socket directory appears through a bind mount (`docker run
-v <dir>:<dir>`), the host's path to it hidden, and a /dev/shm of its own (or
the host's, bind-mounted); the client in it runs as a user of its own
(`docker run --user`). Segments travel as descriptors over the socket, so the
socket directory is all the container needs; the tests show it for both kinds
of /dev/shm.

A container in a user namespace (`unshare --user --map-root-user`, as rootless
Docker or userns-remap makes one) sees the host's root, the daemon's uid, as
the overflow uid (65534): the client refuses that daemon until
TENSORSHM_DAEMON_UID names it, and the daemon sees the client as its uid on the
host, whatever it is called inside."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness import wait_until

KIB = 1 << 10
NAMESPACES = ("pid", "mnt", "ipc", "net", "uts")


def container_wrapper(ctr: Path, host_run: Path, shm: str, unshare_flags: list[str]) -> list[str]:
    """unshare + a script that builds the container's mounts and execs its arguments."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed (Debian package util-linux)")
    dev_shm = {"private": "mount -t tmpfs -o size=1m,mode=1777 shm /dev/shm",
               "host": "mount --bind /dev/shm /dev/shm"}[shm]
    script = f"""set -e
mount -t tmpfs -o mode=0755 container {ctr}
mkdir {ctr}/run
mount --bind {host_run} {ctr}/run
mount -t tmpfs -o mode=0755 hidden {host_run}
{dev_shm}
exec "$@"
"""
    return ["unshare", *unshare_flags, "--fork", "--mount-proc", "--mount", "--ipc", "--net", "--uts",
            "sh", "-c", script, "sh"]


def inner_pid(peer) -> int:
    """The process unshare forked into the new namespaces (the peer, after exec)."""
    def child():
        try:
            kids = Path(f"/proc/{peer.proc.pid}/task/{peer.proc.pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(kids[0]) if kids else None
    return wait_until(child, "unshare to fork the container's first process")


def namespaces_of(pid) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES}


@pytest.fixture
def layout(workdir):
    """The host's socket directory (root's, 0755, as /run/tensorshm) and an
    empty directory where each container mounts its own root."""
    host_run = workdir / "run"
    host_run.mkdir(mode=0o755)
    ctr = workdir / "ctr"
    ctr.mkdir(mode=0o755)
    return host_run, ctr


@pytest.mark.parametrize("shm", ["private", "host"])
def test_a_client_in_other_pid_and_mount_namespaces_puts_and_gets_through_a_bind_mounted_socket_directory(
        users, daemons, peers, layout, shm):
    host_run, ctr = layout
    d = daemons(socket_path=str(host_run / "tensorshmd.sock")).start()
    alice, bob = users["alice"], users["bob"]
    inside = peers(None, alice, socket_path=f"{ctr}/run/tensorshmd.sock",
                   wrapper=container_wrapper(ctr, host_run, shm, ["--pid"]))
    # The first reply proves the client connected from inside; then check where it runs.
    mine = inside.ok(f"put ctr/own {64 * KIB} 1")
    pid = inner_pid(inside)
    theirs, ours = namespaces_of(pid), namespaces_of("self")
    assert all(theirs[ns] != ours[ns] for ns in NAMESPACES), (theirs, ours)
    assert not Path(f"/proc/{pid}/root{host_run}/tensorshmd.sock").exists(), \
        "the container still sees the host's path to the socket"
    same_shm = os.stat(f"/proc/{pid}/root/dev/shm").st_dev == os.stat("/dev/shm").st_dev
    assert same_shm == (shm == "host"), f"the container's /dev/shm is not the {shm} one"
    shared = inside.ok(f"put ctr/all {200 * KIB} 2 everyone")
    assert inside.ok("get ctr/own")["checksum"] == mine["checksum"]

    # Host processes: the same uid reads its own object, another uid the shared one.
    host_alice, host_bob = peers(d, alice), peers(d, bob)
    got = host_alice.ok("get ctr/own")
    assert (got["version"], got["checksum"]) == (mine["version"], mine["checksum"])
    got = host_bob.ok("get ctr/all")
    assert (got["version"], got["checksum"]) == (shared["version"], shared["checksum"])
    assert host_bob.cmd("get ctr/own")["code"] == "permission_denied"

    # And the other way: what a host process put, the container reads.
    host = host_bob.ok(f"put host/all {300 * KIB} 3 everyone")
    got = inside.ok("get host/all")
    assert (got["version"], got["checksum"]) == (host["version"], host["checksum"])
    assert inside.cmd("get host/none")["code"] == "not_found"
    assert inside.close() == 0


def test_a_client_in_a_user_namespace_trusts_the_daemon_only_when_told_its_overflow_uid_and_acts_as_its_host_uid(
        users, daemons, peers, layout):
    host_run, ctr = layout
    d = daemons(socket_path=str(host_run / "tensorshmd.sock")).start()
    alice, bob = users["alice"], users["bob"]
    overflow = int(Path("/proc/sys/kernel/overflowuid").read_text())
    # alice makes the user namespace herself, as rootless Docker does: root inside is alice outside.
    as_alice = ["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}", "--clear-groups"]
    wrapper = [*as_alice, *container_wrapper(ctr, host_run, "private", ["--user", "--map-root-user", "--pid"])]
    sock = f"{ctr}/run/tensorshmd.sock"

    refused = peers(None, socket_path=sock, wrapper=wrapper)
    line = refused.read_line()
    if "unshare:" in line and ("Operation not permitted" in line or "Permission denied" in line):
        pytest.skip(f"this kernel does not let an unprivileged user make a user namespace: {line}")
    # The daemon runs as root on the host, which is no uid inside: the client sees the overflow uid.
    assert line.startswith("err permission_denied") and f"uid {overflow}" in line, line
    assert refused.proc.wait(timeout=60) != 0

    inside = peers(None, socket_path=sock, wrapper=wrapper, env={"TENSORSHM_DAEMON_UID": str(overflow)})
    mine = inside.ok(f"put userns/own {64 * KIB} 4")
    # Inside it is root (uid 0); the daemon saw alice's host uid: her host processes read
    # the object, bob's do not.
    assert Path(f"/proc/{inner_pid(inside)}/uid_map").read_text().split()[:2] == ["0", str(alice.uid)]
    got = peers(d, alice).ok("get userns/own")
    assert (got["version"], got["checksum"]) == (mine["version"], mine["checksum"])
    host_bob = peers(d, bob)
    assert host_bob.cmd("get userns/own")["code"] == "permission_denied"
    host = host_bob.ok(f"put host/all {100 * KIB} 5 everyone")
    got = inside.ok("get host/all")
    assert (got["version"], got["checksum"]) == (host["version"], host["checksum"])
    assert inside.close() == 0
