"""The two forms of the daemon's log lines: "<N>" sd-daemon priority prefixes
when stderr is the journal ($JOURNAL_STREAM names it: test_service_manager.py),
a UTC time to the millisecond and a level word anywhere else (a terminal, a
file, or a process that inherited $JOURNAL_STREAM with stderr elsewhere)."""
import re
from datetime import datetime, timedelta, timezone

from conftest import wait_for
from test_service_manager import daemon_argv, env_with

TERMINAL_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (debug|info|notice|warning|error) +\S")


def daemon_log_lines(tensorshmd, instance, daemons, tmp_path, env):
    """Starts a daemon with `env`, stops it once ready; its log lines."""
    d = daemons.start(daemon_argv(tensorshmd, tmp_path / "s.sock", instance), tmp_path / "log", env=env)
    wait_for(lambda: "ready" in d.log(), "the daemon to start")
    assert d.terminate() == 0
    return d.log().splitlines()


def test_log_lines_off_the_journal_carry_the_utc_time_and_a_level_word(tensorshmd, instance, daemons, tmp_path):
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    lines = daemon_log_lines(tensorshmd, instance, daemons, tmp_path, env_with())
    after = datetime.now(timezone.utc).replace(tzinfo=None)
    assert lines and all(TERMINAL_LINE.match(line) for line in lines), lines
    stamps = [datetime.fromisoformat(TERMINAL_LINE.match(line).group(1)) for line in lines]
    # UTC, in the order written, within the daemon's life (to the millisecond the stamp keeps).
    assert before - timedelta(milliseconds=1) <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    assert any(re.match(r"\S+ notice  tensorshmd \S+ ready", line) for line in lines), lines
    assert any(re.match(r"\S+ info    config: ", line) for line in lines), lines


def test_a_journal_stream_inherited_by_a_daemon_whose_stderr_is_elsewhere_is_not_the_journal(
        tensorshmd, instance, daemons, tmp_path):
    # systemd's JOURNAL_STREAM names the journal's stream; here stderr is a file, not that stream.
    other = (tmp_path / "not-stderr")
    other.touch()
    st = other.stat()
    lines = daemon_log_lines(tensorshmd, instance, daemons, tmp_path,
                             env_with(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
    assert lines and all(TERMINAL_LINE.match(line) for line in lines), lines
