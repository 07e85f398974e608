"""The Debian package: `cpack -G DEB` in the build directory makes it, it
holds what an operator needs, and `dpkg -i` on this machine installs a daemon
that runs as the system user tensorshm and a client library that a CMake
project finds; `dpkg --purge` then leaves nothing behind. The test changes
this machine (as root) and undoes every change it made, also on failure."""
import glob
import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, ctl, segments_of, wait_for

BUILD = Path(os.environ.get("TENSORSHM_BUILD_DIR", REPO / "build"))
UNITDIR = "/lib/systemd/system"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a .deb needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("cpack") is None,
                       reason="needs dpkg and cpack (a Debian machine)"),
]

EXPECTED_FILES = {
    "./usr/bin/tensorshmd", "./usr/bin/tensorshmctl",
    "./usr/include/tensorshm/client.hpp",
    "./usr/lib/cmake/tensorshm/tensorshmConfig.cmake", "./usr/lib/cmake/tensorshm/tensorshmConfigVersion.cmake",
    "./usr/lib/cmake/tensorshm/tensorshmTargets.cmake",
    f".{UNITDIR}/tensorshmd.service", f".{UNITDIR}/tensorshmd.socket",
    "./usr/lib/sysusers.d/tensorshm.conf", "./usr/lib/tmpfiles.d/tensorshm.conf",
    "./etc/tensorshm/tensorshmd.conf", "./usr/share/doc/tensorshm/operations.md",
}


def run(*argv, **kw):
    """Runs argv; a failure shows its output."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def deb():
    """The package, built by CPack from the build directory."""
    if not (BUILD / "CPackConfig.cmake").is_file():
        pytest.skip(f"{BUILD} has no CPackConfig.cmake (set TENSORSHM_BUILD_DIR)")
    for old in glob.glob(str(BUILD / "tensorshm_*.deb")):
        os.unlink(old)
    run("cpack", "-G", "DEB", cwd=BUILD)
    debs = glob.glob(str(BUILD / "tensorshm_*.deb"))
    assert len(debs) == 1, debs
    yield debs[0]
    os.unlink(debs[0])


def exists(kind, name):
    try:
        (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def installed(deb):
    """dpkg -i the package; purge it (and remove the user it created) afterwards."""
    if subprocess.run(["dpkg", "-s", "tensorshm"], capture_output=True).returncode == 0:
        pytest.skip("a tensorshm package is already installed here; not touching it")
    user_before, group_before = exists("user", "tensorshm"), exists("group", "tensorshm")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run("dpkg", "-i", deb, env=env)
        yield deb
    finally:
        subprocess.run(["dpkg", "--purge", "tensorshm"], capture_output=True, env=env, timeout=600)
        if not user_before and exists("user", "tensorshm"):
            subprocess.run(["userdel", "tensorshm"], capture_output=True, timeout=60)
        if not group_before and exists("group", "tensorshm"):
            subprocess.run(["groupdel", "tensorshm"], capture_output=True, timeout=60)


def test_the_package_holds_binaries_library_headers_cmake_config_units_and_config(deb):
    listing = run("dpkg-deb", "-c", deb).stdout
    files = {line.split()[-1] for line in listing.splitlines()}
    assert EXPECTED_FILES <= files, f"missing: {sorted(EXPECTED_FILES - files)}"
    assert any(f.startswith("./usr/lib/") and f.endswith("/libtensorshm.a") for f in files)
    strays = [f for f in files if not f.startswith(("./usr/", "./etc/", "./lib/")) or f.startswith("./usr/local/")]
    assert not strays, f"files outside the system's directories: {strays}"
    info = run("dpkg-deb", "-I", deb).stdout
    assert "Package: tensorshm" in info
    assert "libsystemd0" in info, "the daemon links libsystemd: Depends must say so"
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert f" {script}" in info, f"control archive lacks {script}"
    assert run("dpkg-deb", "-I", deb, "conffiles").stdout.split() == ["/etc/tensorshm/tensorshmd.conf"]
    service = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO .{UNITDIR}/tensorshmd.service",
                             shell=True, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "ExecStart=/usr/bin/tensorshmd --config /etc/tensorshm/tensorshmd.conf" in service


def test_installing_creates_the_system_user_and_enables_the_socket(installed):
    user = pwd.getpwnam("tensorshm")
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin")
    st = os.stat("/run/tensorshm")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o755)
    # deb-systemd-helper's enablement works without a running systemd.
    assert os.path.islink("/etc/systemd/system/sockets.target.wants/tensorshmd.socket")
    assert os.access("/usr/bin/tensorshmd", os.X_OK) and os.access("/usr/bin/tensorshmctl", os.X_OK)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_installed_units_verify_as_they_are(installed):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", f"{UNITDIR}/tensorshmd.service",
                        f"{UNITDIR}/tensorshmd.socket"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_the_installed_daemon_serves_as_the_tensorshm_user(installed, instance, daemons, tmp_path, request):
    user = pwd.getpwnam("tensorshm")
    # pytest's tmp_path lies under a root-only directory: the daemon's user needs its own.
    run_dir = Path(tempfile.mkdtemp(prefix="tensorshm-pkg-"))
    request.addfinalizer(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    sock = run_dir / "tensorshmd.sock"
    d = daemons.start(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                       "/usr/bin/tensorshmd", "--config", "/etc/tensorshm/tensorshmd.conf", "--socket", str(sock),
                       "--instance", instance, "--pool-size", "4M", "--socket-mode", "0660",
                       "--socket-group", "tensorshm"], tmp_path / "log")
    wait_for(lambda: "ready" in d.log() or d.proc.poll() is not None, "the installed daemon to start")
    assert d.proc.poll() is None, d.log()
    st = os.stat(sock)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, user.pw_gid)
    segments = segments_of(instance, d.pid)
    assert segments and all(p.stat().st_uid == user.pw_uid for p in segments)
    assert "round trip" in ctl("/usr/bin/tensorshmctl", sock, "ping").stdout
    consumer = build_consumer(tmp_path / "consumer")
    out = run(str(consumer), str(sock)).stdout
    assert out.strip() == "read back 42 through tensorshm::Client", out
    assert d.terminate() == 0, d.log()


def build_consumer(src):
    """A CMake project using the installed package: find_package(tensorshm)."""
    src.mkdir()
    (src / "CMakeLists.txt").write_text(textwrap.dedent("""\
        cmake_minimum_required(VERSION 3.25)
        project(consumer CXX)
        set(CMAKE_CXX_STANDARD 20)
        find_package(tensorshm 0.1 REQUIRED)
        add_executable(consumer main.cpp)
        target_link_libraries(consumer PRIVATE tensorshm::tensorshm)
        """))
    (src / "main.cpp").write_text(textwrap.dedent("""\
        #include <cstdint>
        #include <cstdio>
        #include <tensorshm/client.hpp>
        int main(int, char** argv) {
          auto c = tensorshm::Client::connect({argv[1], "package-test"});
          auto buf = c.create("package/test", tensorshm::dtypes::kInt32, {4});
          static_cast<std::int32_t*>(buf.data())[3] = 42;
          buf.seal();
          auto obj = c.get("package/test");
          std::printf("read back %d through tensorshm::Client\\n", static_cast<const std::int32_t*>(obj.data())[3]);
        }
        """))
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run("cmake", "-S", str(src), "-B", str(src / "build"), *generator, "-DCMAKE_BUILD_TYPE=Release")
    run("cmake", "--build", str(src / "build"))
    return src / "build" / "consumer"


def test_purging_leaves_nothing_behind(installed):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run("dpkg", "--purge", "tensorshm", env=env)
    for path in ["/usr/bin/tensorshmd", "/usr/bin/tensorshmctl", f"{UNITDIR}/tensorshmd.service", "/etc/tensorshm",
                 "/run/tensorshm", "/usr/include/tensorshm", "/usr/lib/cmake/tensorshm",
                 "/etc/systemd/system/sockets.target.wants/tensorshmd.socket"]:
        assert not os.path.lexists(path), f"{path} survived the purge"
    assert subprocess.run(["dpkg", "-s", "tensorshm"], capture_output=True).returncode != 0
