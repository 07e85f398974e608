"""tensorshmd talks to systemd the way tensorshmd.service expects: readiness
only once the pool is usable, STATUS= lines, watchdog pings from the event loop,
STOPPING=1 on SIGTERM, and the listening socket inherited by socket activation.
Here a Python NOTIFY_SOCKET listener and systemd-socket-activate stand in for
a running systemd."""
import os
import re
import shutil
import socket
import time

import pytest

from conftest import ctl, segments_of, wait_for

POOL = 8 << 20


def daemon_argv(tensorshmd, sock, instance, *extra):
    return [tensorshmd, "--socket", str(sock), "--instance", instance, "--pool-size", "8M", "--segment-size", "4M",
            "--cuda", "off", *extra]


def env_with(**values):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
    env.update(values)
    return env


def with_watchdog_pid_of_itself(argv):
    """argv run so that WATCHDOG_PID is the daemon's own pid (sh execs it)."""
    return ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" "$@"', *argv]


def wait_status(listener, prefix, timeout=60.0):
    """Receives until a STATUS= line starts with prefix."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = listener.wait_for("STATUS", timeout=max(0.01, deadline - time.monotonic()))
        if m[2]["STATUS"].startswith(prefix):
            return m
    pytest.fail(f"no STATUS starting with {prefix!r}")


def test_ready_comes_only_once_the_pool_is_reserved_and_the_socket_listens(
        tensorshmd, tensorshmctl, instance, daemons, notify_listener, tmp_path):
    sock = tmp_path / "s.sock"
    d = daemons.start(daemon_argv(tensorshmd, sock, instance), tmp_path / "log",
                      env=env_with(NOTIFY_SOCKET=notify_listener.path))
    _, pid, fields = notify_listener.wait_for("READY")
    # Checked at the moment READY arrives: everything it promises is already true.
    assert fields["READY"] == "1"
    assert pid == d.pid, "READY must come from the daemon's main process (NotifyAccess=main)"
    assert sum(p.stat().st_size for p in segments_of(instance, d.pid)) >= POOL
    assert "reserved and pre-touched" in d.log()
    assert ctl(tensorshmctl, sock, "ping").returncode == 0
    # Start-up progress came first, and READY carries the first serving STATUS.
    earlier = [m[2] for m in notify_listener.messages[:-1]]
    assert any(m.get("STATUS", "").startswith("reserving") for m in earlier)
    assert not any("READY" in m for m in earlier)
    assert fields["STATUS"].startswith("serving 0 clients: 0 objects")
    assert d.terminate() == 0


def test_status_lines_follow_the_clients_and_the_pool(
        tensorshmd, instance, daemons, notify_listener, tmp_path):
    sock = tmp_path / "s.sock"
    daemons.start(daemon_argv(tensorshmd, sock, instance, "--housekeeping-ms", "50"), tmp_path / "log",
                  env=env_with(NOTIFY_SOCKET=notify_listener.path))
    notify_listener.wait_for("READY")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(sock))
        _, _, fields = wait_status(notify_listener, "serving 1 client:")
    assert re.fullmatch(r"serving 1 client: 0 objects, 0 B of 8\.0 MiB pool used \(0%\), 0 B in dedicated segments",
                        fields["STATUS"])
    wait_status(notify_listener, "serving 0 clients:")


def test_watchdog_pings_come_from_the_event_loop_well_within_the_interval(
        tensorshmd, instance, daemons, notify_listener, tmp_path):
    interval_s = 1.0
    d = daemons.start(with_watchdog_pid_of_itself(daemon_argv(tensorshmd, tmp_path / "s.sock", instance)),
                      tmp_path / "log",
                      env=env_with(NOTIFY_SOCKET=notify_listener.path, WATCHDOG_USEC=str(int(interval_s * 1e6))))
    ready_at, _, _ = notify_listener.wait_for("READY")
    assert "watchdog: WatchdogSec 1000 ms, pinging every 250 ms" in d.log()
    pings = [notify_listener.wait_for("WATCHDOG", value="1") for _ in range(8)]
    assert {pid for _, pid, _ in pings} == {d.pid}
    # Pings come from the event loop's own timer, a quarter interval apart:
    # counted, not timed (a busy machine may delay one, systemd tolerates a
    # whole interval), 8 pings in well under the 8 intervals a loop pinging
    # once per interval would need.
    times = [ready_at] + [t for t, _, _ in pings]
    assert times[-1] - times[0] < 6 * interval_s, f"8 pings took {times[-1] - times[0]:.1f} s"
    assert d.terminate() == 0


def test_watchdog_stays_off_when_WATCHDOG_PID_names_another_process(
        tensorshmd, instance, daemons, notify_listener, tmp_path):
    d = daemons.start(daemon_argv(tensorshmd, tmp_path / "s.sock", instance), tmp_path / "log",
                      env=env_with(NOTIFY_SOCKET=notify_listener.path, WATCHDOG_USEC="1000000",
                                   WATCHDOG_PID=str(os.getpid())))
    notify_listener.wait_for("READY")
    assert "watchdog:" not in d.log()
    assert d.terminate() == 0
    assert not any("WATCHDOG" in m[2] for m in notify_listener.messages)


def test_sigterm_sends_stopping_then_removes_every_segment(
        tensorshmd, instance, daemons, notify_listener, tmp_path):
    d = daemons.start(daemon_argv(tensorshmd, tmp_path / "s.sock", instance), tmp_path / "log",
                      env=env_with(NOTIFY_SOCKET=notify_listener.path))
    notify_listener.wait_for("READY")
    assert segments_of(instance, d.pid)
    d.sigterm()
    _, pid, fields = notify_listener.wait_for("STOPPING", value="1")
    assert pid == d.pid
    assert fields["STATUS"].startswith("stopping")
    assert d.terminate() == 0
    assert not segments_of(instance, d.pid)
    assert not (tmp_path / "s.sock").exists()


def test_a_socket_activated_daemon_serves_clients_on_the_inherited_socket(
        tensorshmd, tensorshmctl, instance, daemons, tmp_path):
    activator = shutil.which("systemd-socket-activate")
    if activator is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    inherited = tmp_path / "activated.sock"
    configured = tmp_path / "configured.sock"
    d = daemons.start([activator, "-l", str(inherited), *daemon_argv(tensorshmd, configured, instance)],
                      tmp_path / "log", env=env_with())
    wait_for(inherited.exists, "systemd-socket-activate to listen")
    # The first connection starts the daemon, which then answers on that socket.
    out = ctl(tensorshmctl, inherited, "ping").stdout
    assert "round trip" in out
    assert "listening on the socket passed by the service manager" in d.log()
    assert not configured.exists(), "the daemon must not bind its configured path when it inherits a socket"
    assert ctl(tensorshmctl, inherited, "--json", "stats").returncode == 0
    assert d.terminate() == 0
    assert not segments_of(instance)


def test_logs_carry_syslog_priorities_and_honour_log_level(tensorshmd, instance, daemons, notify_listener,
                                                           tmp_path):
    # As under systemd: $JOURNAL_STREAM names the file stderr is (tests/ops/test_cli.py has the other forms).
    log = tmp_path / "log"
    log.touch()
    st = log.stat()
    d = daemons.start(daemon_argv(tensorshmd, tmp_path / "s.sock", instance, "--log-level", "notice"), log,
                      env=env_with(NOTIFY_SOCKET=notify_listener.path, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
    notify_listener.wait_for("READY")
    assert d.terminate() == 0
    lines = d.log().splitlines()
    assert lines, "the daemon logged nothing"
    # journald reads "<N>" as the line's priority; notice is 5, nothing above it passes.
    assert all(re.match(r"<[0-5]>", line) for line in lines), lines
    assert any(line.startswith("<5>") and "ready" in line for line in lines)
