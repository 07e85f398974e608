"""What a connect leaves behind in words: the daemon logs each client at info
with its name, uid and pid; a client that cannot connect gets a
DaemonUnreachable that names the cause and the fix (the message comes from the
C++ client, tests/cpp/unreachable_tests.cpp has every cause, EACCES included)."""

from __future__ import annotations

import os
import re
import socket

import pytest

import tensorshm


def test_a_clients_connect_is_logged_at_info_with_its_name_uid_and_pid(daemon):
    name = f"log-probe-{os.getpid()}"
    with tensorshm.connect(daemon.socket, name=name) as c:
        c.ping()  # the daemon logs the line before it answers Hello
        lines = [line for line in daemon.log.read_text().splitlines() if f"client '{name}' connected" in line]
    assert len(lines) == 1, lines
    # Off the journal "<time> info    ...", in it "<6>...": info either way.
    assert re.search(rf"(^<6>| info +)client '{name}' connected: pid {os.getpid()}, uid {os.getuid()}, "
                     rf"gid {os.getgid()} \(session \d+\)$", lines[0]), lines[0]


def test_no_socket_raises_daemon_unreachable_asking_whether_the_daemon_runs(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(tensorshm.DaemonUnreachable) as e:
        tensorshm.connect(path)
    assert f"cannot reach tensorshmd at '{path}': no socket there" in str(e.value)
    assert "Is the daemon running?" in str(e.value) and "TENSORSHM_SOCKET" in str(e.value)
    assert isinstance(e.value, ConnectionError)


def test_a_socket_left_by_a_dead_daemon_raises_daemon_unreachable_saying_it_stopped(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # bound, never listening, then closed: the file stays
    s.close()
    with pytest.raises(tensorshm.DaemonUnreachable, match="no daemon listens on it.*has stopped or died"):
        tensorshm.connect(path)
