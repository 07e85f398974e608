"""The Python distributions as a user gets them: scripts/dist.sh builds the
sdist and the manylinux wheel; each is then copied alone into an empty
directory, installed into a fresh venv with no repository in sight, and used:
the bundled daemon started by tensorshm.local_daemon(), an array handed from
one process to another, the console scripts run.

Building takes a few minutes (the wheel from the sdist, then the sdist again
in the fresh venv). $TSHM_DIST_DIR: where the distributions are built
(CTest: the build directory)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
import tarfile
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "common"))
from skipped_run import pytest_sessionfinish  # noqa: E402,F401

WHEELHOUSE = REPO / ".venv" / "wheelhouse"  # pyproject.toml's build requirements (scripts/setup-debian.sh)
GLIBC_ONLY = re.compile(r"^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|lib(c|m|dl|rt|pthread)\.so\.\d+)$")

# Run by the fresh venv's python, in an empty directory: the bundled daemon,
# a child process that puts, this one that gets.
HANDOFF = r'''
import json, os, subprocess, sys
import numpy as np, tensorshm
from tensorshm._daemon import daemon_executable
shm = sorted(f for f in os.listdir("/dev/shm") if "tensorshm" in f)
with tensorshm.local_daemon(pool_size="32M", pretouch_threads=1) as d:
    put = ("import numpy as np, tensorshm; tensorshm.connect().put('frame', "
           "np.arange(1 << 20, dtype=np.uint32).reshape(1024, 1024))")
    subprocess.run([sys.executable, "-c", put], check=True)
    a = tensorshm.connect().get("frame")
    ctl = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tensorshmctl"), "ls"],
                         capture_output=True, text=True, check=True).stdout
    cli = subprocess.run([sys.executable, "-m", "tensorshm", "stat", "--json", "frame"],
                         capture_output=True, text=True, check=True).stdout
    socket = d.socket_path
print(json.dumps({
    "package": tensorshm.__file__, "version": tensorshm.__version__, "daemon": daemon_executable(),
    "prefix": sys.prefix, "equal": bool((a.ravel() == np.arange(1 << 20, dtype=np.uint32)).all()),
    "shape": list(a.shape), "writeable": bool(a.flags.writeable), "ctl_ls": ctl, "cli_stat": json.loads(cli),
    "socket_left": os.path.exists(socket),
    "shm_same": sorted(f for f in os.listdir("/dev/shm") if "tensorshm" in f) == shm,
}))
'''


class Dists(NamedTuple):
    sdist: Path
    wheel: Path


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dists]:
    out = Path(os.environ.get("TSHM_DIST_DIR") or tmp_path_factory.mktemp("dist"))
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([str(REPO / "scripts" / "dist.sh")], env={**os.environ, "DIST_DIR": str(out)},
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"scripts/dist.sh failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    sdists, wheels = list(out.glob("tensorshm-*.tar.gz")), list(out.glob("tensorshm-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"dist.sh made {sorted(p.name for p in out.iterdir())}"
    yield Dists(sdists[0], wheels[0])


def clean_env(home: Path, venv: Path | None = None) -> dict[str, str]:
    """No repository in sight: no PYTHONPATH, no TENSORSHMD, no socket."""
    path = "/usr/bin:/bin"
    if venv is not None:
        path = f"{venv / 'bin'}:{path}"
    return {"PATH": path, "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8"}


def fresh_venv(where: Path) -> Path:
    # Debian's python with its system packages (numpy), as a user's would be.
    venv = where / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   env=clean_env(where))
    return venv


def install_and_hand_off(tmp: Path, dist: Path, *pip_args: str) -> dict:
    empty = tmp / "empty"
    empty.mkdir()
    shutil.copy(dist, empty)
    venv = fresh_venv(tmp)
    env = clean_env(tmp, venv)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                          "--no-index", *pip_args, dist.name], cwd=empty, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert pip.returncode == 0, f"pip install {dist.name}:\n{pip.stdout[-4000:]}\n{pip.stderr[-4000:]}"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", HANDOFF], cwd=empty, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"the hand-off failed:\n{r.stdout}\n{r.stderr}"
    got = json.loads(r.stdout)
    version = subprocess.run([str(venv / "bin" / "tensorshmd"), "--version"], cwd=empty, env=env,
                             capture_output=True, text=True, timeout=60)
    got["tensorshmd_version"] = version.stdout.strip() if version.returncode == 0 else version.stderr
    got["venv"] = str(venv)
    return got


def check_hand_off(got: dict) -> None:
    assert got["package"].startswith(got["venv"]), f"tensorshm imported from {got['package']}"
    assert got["daemon"].startswith(got["venv"]), f"local_daemon ran {got['daemon']}, not the bundled one"
    assert got["equal"] and got["shape"] == [1024, 1024] and not got["writeable"]
    assert "frame" in got["ctl_ls"] and got["cli_stat"]["shape"] == [1024, 1024]
    assert got["cli_stat"]["dtype"] == "uint32" and got["cli_stat"]["share"] == "owner"
    assert not got["socket_left"] and got["shm_same"]
    assert got["tensorshmd_version"].startswith(f"tensorshmd {got['version']}"), got["tensorshmd_version"]


def test_the_wheel_is_manylinux_and_carries_the_daemon(dists: Dists, tmp_path: Path) -> None:
    assert re.search(r"-manylinux_2_\d+_x86_64\.whl$", dists.wheel.name), dists.wheel.name
    with zipfile.ZipFile(dists.wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path)
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for must in ("tensorshm/bin/tensorshmd", "tensorshm/bin/tensorshmctl", "tensorshm/py.typed",
                 "tensorshm/_tensorshm.pyi", "tensorshm/__main__.py"):
        assert must in names, f"the wheel lacks {must}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(re.match(r"tensorshm/_tensorshm\..*\.so$", n) for n in names)
    assert "Provides-Extra: ml-dtypes" in meta and "Provides-Extra: torch" in meta  # names normalized (PEP 685)
    # Only glibc is left to the machine: libstdc++, libgcc and cudart are inside.
    for f in [tmp_path / "tensorshm/bin/tensorshmd", tmp_path / "tensorshm/bin/tensorshmctl",
              *tmp_path.glob("tensorshm/_tensorshm.*.so")]:
        ldd = subprocess.run(["ldd", str(f)], capture_output=True, text=True, check=True).stdout
        needed = [ln.split()[0] for ln in ldd.splitlines() if ln.strip()]
        assert all(GLIBC_ONLY.match(n) for n in needed), f"{f.name} needs {needed}"


def test_the_sdist_carries_what_a_build_needs_and_no_tests(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for must in ("pyproject.toml", "CMakeLists.txt", "LICENSE", "protocol/include/tensorshm/tensorshm_generated.h",
                 "third_party/flatbuffers/include/flatbuffers/flatbuffers.h", "daemon/main.cpp",
                 "libclient/src/client.cpp", "pyclient/tensorshm/__init__.py", "pyclient/src/module.cpp"):
        assert must in names, f"the sdist lacks {must}"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "build"))]


def test_the_wheel_alone_installs_in_a_fresh_venv_and_hands_an_array_between_processes(
        dists: Dists, tmp_path: Path) -> None:
    check_hand_off(install_and_hand_off(tmp_path, dists.wheel))


def test_the_sdist_alone_builds_in_a_fresh_venv_and_hands_an_array_between_processes(
        dists: Dists, tmp_path: Path) -> None:
    if not WHEELHOUSE.is_dir():
        pytest.skip(f"no {WHEELHOUSE} with the build requirements (./scripts/setup-debian.sh makes it)")
    # Build isolation, as pip does for a user, with the requirements from the
    # wheelhouse (the test machine is offline); cmake, ninja and the compiler
    # are the system's.
    check_hand_off(install_and_hand_off(tmp_path, dists.sdist, "--find-links", str(WHEELHOUSE)))
