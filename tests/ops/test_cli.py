"""The operator's command lines: tensorshmctl's parser (each subcommand takes
its own options; a wrong command line is refused with exit status 2, the error
naming what is wrong and the usage on stderr) and --version of both binaries
(the number from CMake's project(), the one place it is written)."""
import json
import os
import re
import subprocess

import pytest

from conftest import REPO, ctl, wait_for
from test_service_manager import daemon_argv

USAGE_ERROR = 2


def project_version():
    """The version in the top-level CMakeLists.txt's project() call."""
    text = (REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(tensorshm VERSION (\d+\.\d+\.\d+)", text).group(1)


def run(argv, env=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_both_binaries_print_the_projects_version_and_exit_0(tensorshmd, tensorshmctl):
    version = project_version()
    daemon = run([tensorshmd, "--version"])
    assert daemon.returncode == 0, daemon.stderr
    assert daemon.stdout.startswith(f"tensorshmd {version} (") and "CUDA" in daemon.stdout, daemon.stdout
    tool = run([tensorshmctl, "--version"])
    assert (tool.returncode, tool.stdout) == (0, f"tensorshmctl {version}\n"), tool.stderr


@pytest.mark.parametrize("args, says", [
    (["--socket"], "--socket: 1 required PATH missing"),
    (["ls", "--prometheus"], "not expected: --prometheus"),
    (["--prometheus", "stats"], "not expected: --prometheus"),
    (["--bogus"], "unknown option '--bogus'"),
    (["--bogus", "ping"], "not expected: --bogus"),
    (["bogus"], "unknown command 'bogus'"),
    ([], "A subcommand is required"),
    (["stat"], "NAME is required"),
    (["rm", "a", "b"], "not expected: b"),
    (["ping", "extra"], "not expected: extra"),
    (["stats", "--json", "--prometheus"], "--json or --prometheus, not both"),
])
def test_a_wrong_command_line_is_refused_naming_the_problem_with_usage_on_stderr(tensorshmctl, tmp_path, args,
                                                                                  says):
    # Were the line accepted, the call would fail to connect (exit 1) instead.
    r = run([tensorshmctl, *args], env=dict(os.environ, TENSORSHM_SOCKET=str(tmp_path / "none.sock")))
    assert r.returncode == USAGE_ERROR, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert says in r.stderr and "Usage:" in r.stderr, r.stderr


def test_every_subcommand_works_with_its_options_before_or_after_it(tensorshmd, tensorshmctl, instance, daemons,
                                                                    tmp_path):
    sock = tmp_path / "s.sock"
    d = daemons.start(daemon_argv(tensorshmd, sock, instance), tmp_path / "log")
    wait_for(lambda: "ready" in d.log(), "the daemon to start")
    assert "round trip" in ctl(tensorshmctl, sock, "ping").stdout
    pinged = json.loads(ctl(tensorshmctl, sock, "ping", "--json").stdout)
    assert (pinged["instance"], pinged["socket_path"]) == (instance, str(sock))
    assert json.loads(ctl(tensorshmctl, sock, "--json", "ls").stdout) == []
    assert json.loads(ctl(tensorshmctl, sock, "ls", "some/prefix", "--json").stdout) == []
    after = subprocess.run([tensorshmctl, "stats", "--socket", str(sock), "--json"], capture_output=True, text=True,
                           timeout=60, check=True)
    assert json.loads(after.stdout)["segments"] == 2
    assert "# TYPE tensorshm_pool_bytes gauge" in ctl(tensorshmctl, sock, "stats", "--prometheus").stdout
    assert "uptime" in ctl(tensorshmctl, sock, "stats").stdout
    missing = ctl(tensorshmctl, sock, "--json", "stat", "no/such", check=False)
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"] == "not_found"
    assert ctl(tensorshmctl, sock, "rm", "no/such", check=False).returncode == 1
    assert d.terminate() == 0
