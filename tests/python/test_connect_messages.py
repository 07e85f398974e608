"""What a connect leaves behind in words: the daemon logs each client at info
with its name, uid and pid."""

from __future__ import annotations

import os
import re

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
