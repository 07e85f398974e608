"""Shared helpers of the operations tests: where the built binaries are, a
unique instance and temporary socket per daemon, a daemon started and always
stopped, and a NOTIFY_SOCKET listener that plays systemd's side of sd_notify.

CTest (tests/ops/CMakeLists.txt) sets TENSORSHMD, TENSORSHMCTL and
TENSORSHM_BUILD_DIR; run by hand, point them at a build directory."""
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from lifetime import die_with_parent  # noqa: E402
from skipped_run import pytest_sessionfinish  # noqa: E402,F401  (all skipped: exit 77, "skipped" in CTest)

REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")


def _built(var, rel):
    path = os.environ.get(var) or str(Path(os.environ.get("TENSORSHM_BUILD_DIR", REPO / "build")) / rel)
    if not Path(path).is_file():
        pytest.skip(f"{var}: {path} is not built (set {var} or TENSORSHM_BUILD_DIR)")
    return path


@pytest.fixture(scope="session")
def tensorshmd():
    return _built("TENSORSHMD", "daemon/tensorshmd")


@pytest.fixture(scope="session")
def tensorshmctl():
    return _built("TENSORSHMCTL", "ctl/tensorshmctl")


@pytest.fixture
def instance():
    """A unique instance name; asserts at teardown that its segments are gone."""
    name = "ops" + uuid.uuid4().hex[:10]
    yield name
    leftovers = sorted(p.name for p in SHM.glob(f"tensorshm.{name}.*"))
    for p in SHM.glob(f"tensorshm.{name}.*"):
        p.unlink()
    assert not leftovers, f"segments left in /dev/shm: {leftovers}"


def segments_of(instance, pid=None):
    """The instance's segments: the memory files tensorshmd `pid` holds open (as
    /proc/<pid>/fd paths, one per file, which stat() follows to the file), and
    any file of the instance in /dev/shm (tensorshm makes none there)."""
    out, seen = [], set()
    if pid is not None:
        fds = Path(f"/proc/{pid}/fd")
        try:
            entries = list(fds.iterdir())
        except (FileNotFoundError, ProcessLookupError):
            entries = []
        for e in entries:
            try:
                if os.readlink(e).startswith(f"/memfd:tensorshm.{instance}.") and e.stat().st_ino not in seen:
                    seen.add(e.stat().st_ino)
                    out.append(e)
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out + list(SHM.glob(f"tensorshm.{instance}.*"))


def wait_for(predicate, what, timeout=30.0):
    """Polls predicate until it is true; fails naming `what` after `timeout`
    seconds (a bound against hangs, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


class Daemon:
    """A tensorshmd child process whose stderr goes to a file."""

    def __init__(self, argv, log_path, env=None, preexec_fn=None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        def child():
            die_with_parent()
            if preexec_fn is not None:
                preexec_fn()

        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log, env=env, preexec_fn=child)
        self.signalled = False

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.log_path.read_text(errors="replace")

    def sigterm(self):
        """One SIGTERM, as systemd sends on stop (a second one is not sent)."""
        if not self.signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.signalled = True

    def terminate(self, timeout=60):
        """SIGTERM (once), then the exit status (SIGKILL if it does not stop in time)."""
        self.sigterm()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("tensorshmd did not stop within 60 s of SIGTERM")
        finally:
            self._log.close()


@pytest.fixture
def daemons():
    """Starts daemons with start(argv, ...); every one is stopped at teardown."""
    started = []

    class Starter:
        def start(self, argv, log_path, env=None, preexec_fn=None):
            d = Daemon(argv, log_path, env=env, preexec_fn=preexec_fn)
            started.append(d)
            return d

    yield Starter()
    for d in started:
        if d.proc.poll() is None:
            d.terminate()
        else:
            d._log.close()


class NotifyListener:
    """systemd's end of sd_notify(3): an AF_UNIX datagram socket that records
    each message with the sender's pid (SO_PASSCRED) and arrival time."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []  # (monotonic time, sender pid, {key: value})

    def receive(self, timeout):
        """The next message as (time, pid, fields), or None after timeout seconds."""
        self.sock.settimeout(timeout)
        try:
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("3i", payload[: struct.calcsize("3i")])
        fields = {}
        for line in data.decode().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value
        message = (time.monotonic(), pid, fields)
        self.messages.append(message)
        return message

    def wait_for(self, key, timeout=60.0, value=None):
        """Receives until a message carries `key` (with `value`, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.receive(max(0.01, deadline - time.monotonic()))
            if m and key in m[2] and (value is None or m[2][key] == value):
                return m
        pytest.fail(f"no {key}{'=' + value if value else ''} from the daemon within {timeout} s")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_listener(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def ctl(tensorshmctl, socket_path, *args, check=True):
    """Runs tensorshmctl against socket_path; returns the CompletedProcess."""
    return subprocess.run([tensorshmctl, "--socket", str(socket_path), *args], capture_output=True, text=True,
                          timeout=60, check=check)
