"""The files in systemd/ are valid and say what they claim: the units pass
`systemd-analyze verify`, the service's exposure score is no worse than the
one docs/operations.md records, the sysusers.d and tmpfiles.d entries create
what the units rely on, and tensorshmd.conf names every option of
`tensorshmd --help` with its built-in default."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, segments_of, wait_for

SYSTEMD = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


def units_pointing_at(tensorshmd, directory):
    """Copies of the units whose ExecStart= names the built daemon, since
    verify checks that the binary exists (the installed units are verified as
    they are by test_package.py)."""
    service = (SYSTEMD / "tensorshmd.service").read_text()
    assert "ExecStart=/usr/bin/tensorshmd " in service
    (directory / "tensorshmd.service").write_text(service.replace("ExecStart=/usr/bin/tensorshmd ",
                                                                  f"ExecStart={tensorshmd} "))
    shutil.copy(SYSTEMD / "tensorshmd.socket", directory / "tensorshmd.socket")
    return directory / "tensorshmd.service", directory / "tensorshmd.socket"


@needs_analyze
def test_the_units_pass_systemd_analyze_verify(tensorshmd, tmp_path):
    service, sock = units_pointing_at(tensorshmd, tmp_path)
    r = subprocess.run([ANALYZE, "verify", "--man=no", str(service), str(sock)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@needs_analyze
def test_the_service_is_no_more_exposed_than_docs_operations_md_records(tensorshmd, tmp_path):
    service, _ = units_pointing_at(tensorshmd, tmp_path)
    r = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(service)], capture_output=True,
                       text=True, timeout=120)
    measured = re.search(r"Overall exposure level for tensorshmd\.service: (\d+\.\d+)", r.stdout)
    assert measured, r.stdout + r.stderr
    recorded = re.search(r"rates the service \*\*(\d+\.\d+) ", (REPO / "docs" / "operations.md").read_text())
    assert recorded, "docs/operations.md must record the exposure score as 'rates the service **N.N ...'"
    assert float(measured.group(1)) <= float(recorded.group(1)), r.stdout


def test_the_socket_unit_gives_the_group_tensorshm_read_write_access():
    text = (SYSTEMD / "tensorshmd.socket").read_text()
    assert re.search(r"^SocketMode=0660$", text, re.M)
    assert re.search(r"^SocketGroup=tensorshm$", text, re.M)
    # The path clients find by default as root, and the one the config file reports.
    assert re.search(r"^ListenStream=/run/tensorshm/tensorshmd.sock$", text, re.M)
    assert "socket = /run/tensorshm/tensorshmd.sock" in (SYSTEMD / "tensorshmd.conf").read_text()


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles are not installed")
def test_sysusers_and_tmpfiles_create_the_system_user_and_the_socket_directory(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "tensorshm.sysusers")], check=True,
                   capture_output=True, timeout=60)
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert "tensorshm" in passwd
    name, _, uid, gid, _, home, shell = passwd["tensorshm"]
    assert int(uid) < 1000, "a system user: logind's RemoveIPC= spares system users' shared memory"
    assert home == "/nonexistent" and shell.endswith("nologin")
    groups = {line.split(":")[0]: line.split(":")[2] for line in (root / "etc/group").read_text().splitlines()}
    assert groups["tensorshm"] == gid
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(SYSTEMD / "tensorshm.tmpfiles")],
                   check=True, capture_output=True, timeout=60)
    run_dir = root / "run" / "tensorshm"
    st = run_dir.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o755, int(uid), int(gid))


def help_options(tensorshmd):
    text = subprocess.run([tensorshmd, "--help"], capture_output=True, text=True, check=True, timeout=30).stdout
    # --help, --version and --config are for the command line only.
    return {m.group(1) for m in re.finditer(r"^\s+(?:-\w \[ )?--([a-z0-9-]+)", text, re.M)} - {"help", "version",
                                                                                               "config"}


def config_keys(path):
    keys = []
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(line.split("=", 1)[0].strip())
    return keys


def test_the_config_file_names_every_option_of_tensorshmd_help_once(tensorshmd):
    keys = config_keys(SYSTEMD / "tensorshmd.conf")
    assert len(keys) == len(set(keys)), "a key appears twice"
    options = help_options(tensorshmd)
    assert set(keys) == options, (f"missing from tensorshmd.conf: {sorted(options - set(keys))}; "
                                  f"not options of tensorshmd: {sorted(set(keys) - options)}")


def effective_configuration(tensorshmd, daemons, tmp_path, instance, *extra):
    """The configuration a daemon logs at start, with socket and instance
    given as flags (flags beat the file). The pool is the file's (or the
    built-in 1G): a smaller one given as a flag would also shrink segment-size
    to fit, hiding a wrong segment-size in the file (issue 16: 1G, one segment)."""
    log = tmp_path / f"{len(list(tmp_path.glob('*.log')))}.log"
    d = daemons.start([tensorshmd, *extra, "--socket", str(tmp_path / "s.sock"), "--instance", instance,
                       "--log-level", "info"], log)
    wait_for(lambda: "ready" in d.log() or d.proc.poll() is not None, "the daemon to start")
    assert d.terminate() == 0, d.log()
    # The daemon logs one "config: key = value" line per key.
    return "\n".join(line.split("config: ", 1)[1] for line in d.log().splitlines() if "config: " in line)


def test_the_config_file_states_exactly_the_built_in_defaults(tensorshmd, daemons, instance, tmp_path):
    with_file = effective_configuration(tensorshmd, daemons, tmp_path, instance, "--config",
                                        str(SYSTEMD / "tensorshmd.conf"))
    without = effective_configuration(tensorshmd, daemons, tmp_path, instance)
    assert with_file == without
    assert not segments_of(instance)


def test_the_daemon_refuses_a_config_file_with_an_unknown_key(tensorshmd, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text((SYSTEMD / "tensorshmd.conf").read_text() + "pool-sise = 2G\n")
    r = subprocess.run([tensorshmd, "--config", str(conf), "--socket", str(tmp_path / "s.sock")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "pool-sise" in r.stderr
