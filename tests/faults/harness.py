"""What the fault and security tests share: a real tensorshmd on a temporary
socket, tshm_fault_peer clients driven line by line (and killed), the daemon's
stats, descriptors, memory and /dev/shm files, raw frames, and the figures that
docs/reliability.md reports.

Binaries come from $TENSORSHMD, $TENSORSHMCTL and $TSHM_FAULT_PEER (CTest sets
them) or from build/. Every daemon gets a unique --instance, so its segments are
the memory files tensorshm.<instance>.* it holds open (memfd: /proc/<pid>/fd
shows them as "/memfd:<name> (deleted)"; nothing of theirs is in /dev/shm), and
is stopped when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import sys as _sys

_sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from lifetime import die_with_parent  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHM = Path("/dev/shm")
_counter = 0


def binary(env: str, default: str) -> str:
    path = os.environ.get(env) or str(REPO / "build" / default)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is not built: run ./scripts/build.sh or set ${env}")
    return path


def tensorshmd() -> str:
    return binary("TENSORSHMD", "daemon/tensorshmd")


def tensorshmctl() -> str:
    return binary("TENSORSHMCTL", "ctl/tensorshmctl")


def fault_peer() -> str:
    return binary("TSHM_FAULT_PEER", "tests/faults/tshm_fault_peer")


def wait_until(pred: Callable[[], object], what: str, timeout: float = 20.0, every: float = 0.02):
    """Polls pred() until it returns something true; fails naming `what` when
    `timeout` seconds pass first (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for: {what}")
        time.sleep(every)


def parse(reply: str) -> dict[str, str]:
    """'ok version=3 checksum=ab' -> {'status': 'ok', 'version': '3', 'checksum': 'ab'}."""
    words = reply.split()
    out = {"status": words[0] if words else ""}
    if out["status"] == "err" and len(words) > 1:
        out["code"] = words[1]
    for w in words[1:]:
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


# ---- figures --------------------------------------------------------------------

RECORDED: list[dict] = []


def record(fault: str, injected: int, lost: int = 0, leaked: int = 0, **details) -> None:
    """One row of docs/reliability.md: what was injected, how often, what was
    lost or leaked. Appended to $TSHM_FIGURES (JSON lines) when set."""
    row = {"fault": fault, "injected": injected, "lost": lost, "leaked": leaked, **details}
    RECORDED.append(row)
    path = os.environ.get("TSHM_FIGURES")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


# ---- the daemon -----------------------------------------------------------------

def unique_instance(tag: str) -> str:
    global _counter
    _counter += 1
    return f"{tag}{os.getpid()}x{_counter}"


def shm_files(instance: str, pid: int | None = None) -> dict[str, int]:
    """{name: inode} of the instance's segments: the memory files process `pid`
    (its daemon) holds open, and any file of the instance in /dev/shm, where
    tensorshm makes none."""
    prefix = f"tensorshm.{instance}."
    out = {}
    if pid is not None:
        fds = Path(f"/proc/{pid}/fd")
        try:
            entries = list(os.scandir(fds))
        except (FileNotFoundError, ProcessLookupError):
            entries = []
        for e in entries:
            try:
                target = os.readlink(e.path)
                if not target.startswith("/memfd:"):
                    continue
                name = target[len("/memfd:"):].removesuffix(" (deleted)")
                if name.startswith(prefix):
                    out[name] = os.stat(e.path).st_ino
            except (FileNotFoundError, ProcessLookupError):
                pass
    for e in os.scandir(SHM):
        if e.name.startswith(prefix):
            try:
                out[e.name] = e.inode()
            except FileNotFoundError:
                pass
    return out


class Daemon:
    """One tensorshmd. `wrapper` runs before it (prlimit, unshare, setpriv,
    systemd-socket-activate). With `config` (a config file) the daemon reads it
    and gets only --socket and `args` besides: pool, segment size, instance and
    the rest are the file's, as a service started with that file has them."""

    def __init__(self, tmp: Path, *, tag: str = "flt", pool: str = "64M", segment: str = "16M",
                 args: Sequence[str] = (), wrapper: Sequence[str] = (), instance: str | None = None,
                 socket_path: str | None = None, config: str | None = None):
        self.tmp = Path(tmp)
        self.instance = instance or unique_instance(tag)
        self.sock = socket_path or str(self.tmp / f"{self.instance}.sock")
        self.log = self.tmp / f"{self.instance}.log"
        if config is not None:
            self.cmd = [*wrapper, tensorshmd(), "--config", config, "--socket", self.sock, *args]
        else:
            self.cmd = [*wrapper, tensorshmd(), "--socket", self.sock, "--instance", self.instance,
                        "--pool-size", pool, "--segment-size", segment, "--pretouch-threads", "1",
                        "--cuda", "off", *args]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- life cycle
    def start(self, wait: bool = True) -> "Daemon":
        with open(self.log, "ab") as out:
            out.write(f"==== start {self.starts + 1}: {' '.join(self.cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self.starts += 1
        if wait:
            wait_until(lambda: self._answers(), f"tensorshmd to listen on {self.sock}\n{self.log_tail()}", 60)
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tensorshmd exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(self.sock)
            return True
        except OSError:
            return False

    def exit_code(self, timeout: float = 60) -> int:
        """Waits for a daemon expected to exit on its own (start-up errors)."""
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM; it must exit 0 and leave no file of its instance in /dev/shm."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        assert rc == 0, f"tensorshmd exited with {rc} on SIGTERM:\n{self.log_tail()}"
        left = shm_files(self.instance)
        assert not left, f"tensorshmd left {sorted(left)} in /dev/shm"

    def segments(self) -> dict[str, int]:
        """{name: inode} of the segments (memory files) the running daemon holds."""
        return shm_files(self.instance, self.pid if self.proc is not None and self.proc.poll() is None else None)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        """Whatever happened: no daemon, no files of this instance left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for name in shm_files(self.instance):
            try:
                (SHM / name).unlink()
            except FileNotFoundError:
                pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- what it holds
    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fds_stable(self, quiet: float = 0.2, timeout: float = 10) -> int:
        """The descriptor count once it has not changed for `quiet` seconds (a
        connection that just ended, such as start()'s ping, may still be open in
        the daemon for a moment), or whatever it is after `timeout`."""
        deadline = time.monotonic() + timeout
        n, since = self.fd_count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            m = self.fd_count()
            if m != n:
                n, since = m, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return n

    def fds_settled(self, expected: int, timeout: float = 10) -> int:
        """The descriptor count once it equals `expected` (connections that just
        ended may still be open in the daemon), or whatever it is after `timeout`."""
        deadline = time.monotonic() + timeout
        while (n := self.fd_count()) != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return n

    def memory_kib(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile, RssShmem in KiB."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
        return out

    def ctl(self, *args: str, check: bool = True) -> str:
        # The test trusts the daemon it started, whoever it runs as.
        env = dict(os.environ, TENSORSHM_DAEMON_UID=str(os.stat(f"/proc/{self.pid}").st_uid))
        r = subprocess.run([tensorshmctl(), "--socket", self.sock, *args], capture_output=True, text=True, timeout=60,
                           env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"tensorshmctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def stats(self) -> dict:
        """The daemon's stats; `clients` counts tensorshmctl's own connection."""
        return json.loads(self.ctl("--json", "stats"))

    def names(self) -> list[str]:
        return [o["name"] for o in json.loads(self.ctl("--json", "ls"))]

    def delete_all(self) -> None:
        for n in self.names():
            self.ctl("rm", n)

    def quiet(self, clients: int = 0, leases: int = 0) -> dict:
        """Waits until only `clients` other clients, `leases` leases and no open
        create remain; returns the stats then."""
        def settled():
            s = self.stats()
            ok = s["leases"] == leases and s["open_creates"] == 0 and s["clients"] == clients + 1
            return s if ok else None
        return wait_until(settled, f"the daemon to drop the leases and open creates of gone clients: {self.stats()}")


# ---- clients --------------------------------------------------------------------

class Peer:
    """A tshm_fault_peer process in interactive mode (or any mode: `args`)."""

    def __init__(self, daemon: Daemon | None, *, args: Sequence[str] = (), user=None, stdout=subprocess.PIPE,
                 env: dict[str, str | None] | None = None, groups: Sequence[int] = (),
                 wrapper: Sequence[str] = (), socket_path: str | None = None):
        """`user`: None (this process's uid), a (uid, gid) pair, or anything with .uid and .gid;
        `groups`: its supplementary groups (none when empty). `daemon`: the daemon whose socket
        TENSORSHM_SOCKET names (None: left unset, so that the client finds its default socket),
        or `socket_path` instead of the daemon's (the path a container sees). `env`: more
        variables; None as a value removes one. `wrapper`: runs before setpriv and the peer
        (unshare, to put the peer in namespaces of its own)."""
        env_vars = dict(os.environ)
        env_vars.pop("TENSORSHM_SOCKET", None)
        if socket_path is not None or daemon is not None:
            env_vars["TENSORSHM_SOCKET"] = socket_path if socket_path is not None else daemon.sock
        for k, v in (env or {}).items():
            if v is None:
                env_vars.pop(k, None)
            else:
                env_vars[k] = v
        env = env_vars
        as_user = []
        if user is not None:
            uid, gid = (user.uid, user.gid) if hasattr(user, "uid") else user
            as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
                       f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]
        self.proc = subprocess.Popen([*wrapper, *as_user, fault_peer(), *args], stdin=subprocess.PIPE, stdout=stdout,
                                     stderr=subprocess.STDOUT if stdout == subprocess.PIPE else stdout, env=env,
                                     preexec_fn=die_with_parent)
        self._buf = b""

    def send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"tshm_fault_peer gave no answer within {timeout} s (got {self._buf!r})")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"tshm_fault_peer exited ({self.proc.wait()}) after {self._buf!r}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def cmd(self, line: str, timeout: float = 60) -> dict[str, str]:
        """Sends a command and returns its parsed reply ('waiting' lines skipped)."""
        self.send(line)
        while True:
            reply = self.read_line(timeout)
            if reply != "waiting":
                d = parse(reply)
                d["line"] = reply
                return d

    def ok(self, line: str, timeout: float = 60) -> dict[str, str]:
        d = self.cmd(line, timeout)
        assert d["status"] == "ok", f"'{line}' failed: {d['line']}"
        return d

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return self.proc.wait(timeout=60)


def frame_hex(kind: str, *args: str) -> bytes:
    """An encoded request frame (hello, stats, get NAME [TIMEOUT_MS], list PREFIX, release ID)."""
    out = subprocess.run([fault_peer(), "frame", kind, *args], capture_output=True, text=True,
                         check=True, timeout=30)
    return bytes.fromhex(out.stdout.strip())


def frame_header(type_: int, length: int, request_id: int = 1, version: int = 1) -> bytes:
    """A bare frame header (protocol.hpp): magic "TSHM", version, type, payload length, request id."""
    return struct.pack("<IHHII", 0x4D485354, version, type_, length, request_id)


def raw_socket(daemon: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.sock)
    return s


def peer_closed(s: socket.socket, timeout: float = 30) -> bool:
    """Reads (and discards) until the daemon closes the connection."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def segment_file_pattern(instance: str) -> re.Pattern:
    return re.compile(rf"^tensorshm\.{re.escape(instance)}\.(p\d+|d\d+|lock)$")


def sum_counts(lines: Iterable[str], key: str) -> int:
    return sum(int(parse(l).get(key, 0)) for l in lines)
