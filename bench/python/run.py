"""Runs the comparison benchmark (issue 7) and writes docs/benchmarks.md and docs/benchmarks.png.

    .venv/bin/python bench/python/run.py [--quick] [--build-dir build]      (scripts/bench.sh calls this)

Every peer runs on this machine in this run, one after the other, each in its own processes (peers.py,
and build/bench/iceoryx/tshm_iceoryx_bench for the C++ peers). The run starts and stops its own
tensorshmd (temporary socket, unique instance) and, for iceoryx, its own RouDi. A peer that cannot run
is reported as "not run" with the reason; the run goes on. Results go to <build-dir>/bench-results.json
(full runs also to <build-dir>/bench-history/, for the report's spread across runs), then
bench/python/report.py turns them into the report.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS = [sys.executable, str(HERE / "peers.py")]

FULL = dict(sizes=[64, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30],
            budget_s=1.5, min_iters=5, max_iters=3000, fanout_s=8.0, objects=10000, clients=256,
            scale_iters=20000, pool="4G", segment="2G", timeout=420)
QUICK = dict(sizes=[64, 64 << 10, 16 << 20],
             budget_s=0.25, min_iters=3, max_iters=400, fanout_s=1.5, objects=1000, clients=32,
             scale_iters=2000, pool="256M", segment="128M", timeout=120)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = QUICK if args.quick else FULL
        self.build = Path(args.build_dir).resolve()
        self.rows: list[dict] = []
        self.not_run: list[dict] = []
        self.core_bench = ""
        self.t_start = time.monotonic()
        self.step_no = 0
        self.daemons = 0
        self.loads: list[float] = []  # 1-minute load average at each step
        self.tmp = Path(tempfile.mkdtemp(prefix="tshm-bench-"))

    # ---- progress and subprocesses ----------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        self.loads.append(os.getloadavg()[0])
        print(f"[{time.monotonic() - self.t_start:6.0f} s] {title}", file=sys.stderr, flush=True)

    def skip(self, what: str, why: str) -> None:
        print(f"    not run: {what}: {why}", file=sys.stderr, flush=True)
        self.not_run.append({"what": what, "why": why})

    def collect(self, what: str, cmd: list[str], timeout: float | None = None) -> bool:
        """Runs cmd, passes its indented stderr lines through as progress, keeps the JSON lines of its
        stdout (also those printed before a failure or a timeout)."""
        limit = timeout or self.cfg["timeout"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        out: list[str] = []
        err_tail: list[str] = []

        def pump_err() -> None:
            for line in proc.stderr:
                line = line.rstrip()
                if line.startswith("    "):
                    print(line, file=sys.stderr, flush=True)
                elif line:
                    err_tail.append(line)
                    del err_tail[:-20]

        def pump_out() -> None:
            out.extend(proc.stdout)

        pumps = [threading.Thread(target=f, daemon=True) for f in (pump_err, pump_out)]
        for t in pumps:
            t.start()
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in pumps:
            t.join(10)
        got = self.parse("".join(out))
        if proc.returncode == -signal.SIGKILL:
            self.skip(what, f"did not finish within {limit:.0f} s (the results it printed are kept)")
            return False
        if proc.returncode != 0:
            errs = [ln for ln in err_tail if "rror" in ln] or err_tail or [""]
            self.skip(what, f"exit status {proc.returncode}: {errs[-1].strip()[:300]}")
            return False
        if got == 0:
            self.skip(what, "produced no results")
            return False
        return True

    def parse(self, out: str) -> int:
        n = 0
        for line in out.splitlines():
            if line.startswith('{"peer"'):
                self.rows.append(json.loads(line))
                n += 1
        return n

    def sizes_arg(self) -> str:
        return ",".join(str(s) for s in self.cfg["sizes"])

    def budget_args(self) -> list[str]:
        c = self.cfg
        return ["--budget-s", str(c["budget_s"]), "--min-iters", str(c["min_iters"]), "--max-iters",
                str(c["max_iters"])]

    # ---- tensorshmd ----------------------------------------------------------

    def start_daemon(self, pool: str, segment: str) -> tuple[subprocess.Popen, str, str] | None:
        daemon = self.build / "daemon" / "tensorshmd"
        if not daemon.exists():
            self.skip("tensorshm", f"{daemon} not built")
            return None
        self.daemons += 1
        sock = str(self.tmp / f"tensorshmd{self.daemons}.sock")
        instance = f"bench{os.getpid()}x{self.daemons}"
        log = self.tmp / f"tensorshmd{self.daemons}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([str(daemon), "--socket", sock, "--instance", instance, "--pool-size", pool,
                                     "--segment-size", segment, "--log-level", "warning"],
                                    stdout=f, stderr=subprocess.STDOUT)
        import tensorshm
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.skip("tensorshm", f"tensorshmd exited with {proc.returncode}: {log.read_text()[-300:]}")
                return None
            try:
                tensorshm.connect(socket=sock).close()
                return proc, sock, instance
            except tensorshm.DaemonUnreachable:
                time.sleep(0.2)  # still reserving the pool
            except tensorshm.Error as e:
                self.stop_daemon(proc, instance)
                self.skip("tensorshm", f"cannot use the daemon just built: {e}")
                return None
        self.stop_daemon(proc, instance)
        self.skip("tensorshm", "tensorshmd did not become ready within 180 s")
        return None

    def stop_daemon(self, proc: subprocess.Popen, instance: str) -> None:
        terminate(proc, 60)
        left = sorted(Path("/dev/shm").glob(f"tensorshm.{instance}.*"))
        if left:
            print(f"    warning: tensorshmd left {[p.name for p in left]} in /dev/shm; removing them",
                  file=sys.stderr, flush=True)
            for p in left:
                p.unlink(missing_ok=True)

    # ---- the run ---------------------------------------------------------------

    def run(self) -> None:
        c = self.cfg
        cpp = self.build / "bench" / "iceoryx" / "tshm_iceoryx_bench"
        self.step(f"{'quick' if self.args.quick else 'full'} run; sizes {self.sizes_arg()}; results to "
                  f"{self.results_path()}")

        self.step("floors: Unix-socket ping-pong and memcpy (C, then Python)")
        if cpp.exists():
            self.collect("C floors", [str(cpp), "floors", "--sizes", self.sizes_arg(), *self.budget_args()])
        else:
            self.skip("C floors, iceoryx, tensorshm C++", f"{cpp} not built (needs Debian's libiceoryx-posh-dev)")
        self.collect("Python floors", PEERS + ["floors", "--sizes", self.sizes_arg(), *self.budget_args()])

        self.step(f"tensorshm: starting tensorshmd (pool {c['pool']}, segments {c['segment']})")
        try:
            import tensorshm  # noqa: F401
            have_py = True
        except ImportError as e:
            have_py = False
            self.skip("tensorshm (Python)", f"import tensorshm failed: {e}")
        d = self.start_daemon(c["pool"], c["segment"]) if (have_py or cpp.exists()) else None
        if d:
            proc, sock, instance = d
            try:
                for peer in ("tensorshm-put", "tensorshm-create"):
                    if have_py:
                        self.step(f"round trip: {peer} (Python)")
                        self.collect(peer, PEERS + ["roundtrip", "--peer", peer, "--socket", sock, "--sizes",
                                                    self.sizes_arg(), *self.budget_args()])
                    if cpp.exists():
                        self.step(f"round trip: {peer} (C++)")
                        self.collect(peer + "-cpp", [str(cpp), "roundtrip", "--peer", peer, "--socket", sock,
                                                     "--sizes", self.sizes_arg(), *self.budget_args()])
                if have_py:
                    self.step("the producer's calls alone: create + seal, put, get (no consumer)")
                    self.collect("create+seal alone", PEERS + ["createseal", "--socket", sock, "--sizes",
                                                               self.sizes_arg(), *self.budget_args()])
                    self.step("fan-out: tensorshm (create -> fill -> seal), 1 producer -> 4 consumers")
                    self.collect("fan-out tensorshm", PEERS + ["fanout", "--peer", "tensorshm-create", "--socket",
                                                               sock, "--seconds", str(c["fanout_s"])])
            finally:
                self.step("tensorshm: stopping tensorshmd")
                self.stop_daemon(proc, instance)
        # Scale on a daemon of its own with a small pool: 10,000 objects of 4 KiB fit in 80 MiB, and each
        # of the 256 clients then maps (and populates) 64 MiB segments, not the 2 GiB ones above.
        if have_py:
            self.step(f"scale: {c['objects']} objects, {c['clients']} clients (tensorshmd with a 256 MiB pool)")
            d = self.start_daemon("256M", "64M")
            if d:
                proc, sock, instance = d
                try:
                    self.collect("scale", PEERS + ["scale", "--socket", sock, "--objects", str(c["objects"]),
                                                   "--clients", str(c["clients"]), "--max-iters",
                                                   str(c["scale_iters"])])
                finally:
                    self.stop_daemon(proc, instance)

        for peer in ("mp-queue", "torch-mp-queue", "shm-pipe"):
            self.step(f"round trip: {peer}")
            self.collect(peer, PEERS + ["roundtrip", "--peer", peer, "--sizes", self.sizes_arg(),
                                        *self.budget_args()])
            self.step(f"fan-out: {peer}")
            self.collect(f"fan-out {peer}", PEERS + ["fanout", "--peer", peer, "--seconds", str(c["fanout_s"])])

        try:
            import ray  # noqa: F401
            self.step("round trip: ray (starts a local Ray instance)")
            self.collect("ray", PEERS + ["roundtrip", "--peer", "ray", "--sizes", self.sizes_arg(),
                                         *self.budget_args()])
            self.step("fan-out: ray")
            self.collect("fan-out ray", PEERS + ["fanout", "--peer", "ray", "--seconds", str(c["fanout_s"])])
        except ImportError as e:
            self.skip("ray", f"import ray failed ({e}); scripts/bench.sh installs it with pip")

        if cpp.exists():
            self.run_iceoryx(cpp)

        self.step(f"C++ core benchmark ({os.path.relpath(self.build, ROOT)}/bench/tshm_core_bench)")
        core = self.build / "bench" / "tshm_core_bench"
        if core.exists():
            try:
                r = subprocess.run([str(core)] + (["--quick"] if self.args.quick else []), capture_output=True,
                                   text=True, timeout=c["timeout"])
                self.core_bench = r.stdout.strip()
                for line in self.core_bench.splitlines():
                    print("    " + line, file=sys.stderr, flush=True)
                if r.returncode != 0:
                    self.skip("core benchmark", f"exit status {r.returncode}: {r.stderr.strip()[-300:]}")
            except subprocess.TimeoutExpired:
                self.skip("core benchmark", f"did not finish within {c['timeout']} s")
        else:
            self.skip("core benchmark", f"{core} not built")

    def run_iceoryx(self, cpp: Path) -> None:
        c = self.cfg
        roudi = shutil.which("iox-roudi")
        if not roudi:
            self.skip("iceoryx", "iox-roudi not found (Debian package: iceoryx)")
            return
        if subprocess.run(["pgrep", "-x", "iox-roudi"], capture_output=True).returncode == 0:
            self.skip("iceoryx", "another RouDi is already running on this machine")
            return
        self.step("iceoryx: starting RouDi")
        # RouDi's segments: its management segment and the payload segment named after the user.
        roudi_shm = [Path("/dev/shm/iceoryx_mgmt"), Path("/dev/shm", getpass.getuser())]
        before = {p for p in roudi_shm if p.exists()}
        cfg = self.tmp / "roudi.toml"
        cfg.write_text(roudi_config(c["sizes"], 8 << 20))
        log = open(self.tmp / "roudi.log", "w")
        proc = subprocess.Popen([roudi, "-c", str(cfg), "-l", "warning", "-m", "off"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while "RouDi is ready" not in (self.tmp / "roudi.log").read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.skip("iceoryx", "RouDi did not start: " + (self.tmp / "roudi.log").read_text()[-300:])
                    return
                time.sleep(0.1)
            self.step("round trip: iceoryx (C++ publish/subscribe)")
            self.collect("iceoryx", [str(cpp), "roundtrip", "--peer", "iceoryx", "--sizes", self.sizes_arg(),
                                     *self.budget_args()])
            self.step("fan-out: iceoryx")
            self.collect("fan-out iceoryx", [str(cpp), "fanout", "--peer", "iceoryx", "--seconds",
                                             str(c["fanout_s"])])
        finally:
            self.step("iceoryx: stopping RouDi")
            terminate(proc, 30)
            log.close()
            for p in roudi_shm:  # what this RouDi made and left behind
                if p.exists() and p not in before:
                    print(f"    removing {p} left by RouDi", file=sys.stderr, flush=True)
                    p.unlink(missing_ok=True)
            for p in ("/tmp/roudi", "/tmp/roudi.lock", "/tmp/iox-unique-roudi.lock"):
                if proc.returncode not in (0, None):
                    Path(p).unlink(missing_ok=True)

    # ---- output ----------------------------------------------------------------

    def results_path(self) -> Path:
        if self.args.results:
            return Path(self.args.results)
        return self.build / ("bench-results-quick.json" if self.args.quick else "bench-results.json")

    def environment(self, load_before: tuple) -> dict:
        def cmd(*a: str) -> str:
            try:
                return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
            except Exception:
                return ""

        def version(mod: str) -> str:
            try:
                return __import__(mod).__version__
            except Exception:
                return "not installed"

        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
        dirty = cmd("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
        return {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "quick": self.args.quick, "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "numpy": version("numpy"), "torch": version("torch"), "ray": version("ray"),
            "tensorshm_py": version("tensorshm"), "iceoryx": cmd("dpkg-query", "-W", "-f=${Version}", "iceoryx"),
            "commit": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") + (" + local changes" if dirty else ""),
            "load_before": load_before, "load_after": os.getloadavg(), "load_max": max(self.loads, default=0),
            "duration_s": round(time.monotonic() - self.t_start), "config": self.cfg,
        }

    def write(self, load_before: tuple) -> Path:
        res = {"env": self.environment(load_before), "rows": self.rows, "not_run": self.not_run,
               "core_bench": self.core_bench}
        path = self.results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
        return path


def terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after grace_s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def roudi_config(sizes: list[int], frame: int) -> str:
    """Mempools for every payload size of the run (+ the 8 MiB fan-out frames and the small control
    messages): chunk size = payload + room for iceoryx's chunk header, enough chunks for the chunks in
    flight (fewer of the big ones to keep /dev/shm use in check)."""
    want: dict[int, int] = {256: 64}
    for s in sizes:
        want[s] = max(want.get(s, 0), 16 if s <= 1 << 20 else 6 if s <= 64 << 20 else 3)
    want[frame] = max(want.get(frame, 0), 12)
    out = ["[general]", "version = 1", "", "[[segment]]", ""]
    for s in sorted(want):
        out += ["[[segment.mempool]]", f"size = {(s + 256 + 7) // 8 * 8}", f"count = {want[s]}", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 sizes, short budgets (< 2 minutes)")
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--results", default="", help="results JSON (default: <build-dir>/bench-results.json, "
                    "bench-results-quick.json for quick runs)")
    ap.add_argument("--out", default="", help="report (default: docs/benchmarks.md; quick runs: <build-dir>/"
                    "benchmarks-quick.md, so that a smoke run never overwrites the published numbers)")
    ap.add_argument("--png", default="", help="plot (default: next to --out, .png)")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()
    run = Run(args)
    interrupted = False
    try:
        run.run()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: writing what was measured", file=sys.stderr)
    finally:
        shutil.rmtree(run.tmp, ignore_errors=True)
    path = run.write(load_before)
    history = run.build / "bench-history"
    if not args.quick and not interrupted:
        history.mkdir(exist_ok=True)
        shutil.copy(path, history / time.strftime("%Y%m%d-%H%M%S.json"))
    print(f"[{time.monotonic() - run.t_start:6.0f} s] results: {path}", file=sys.stderr, flush=True)
    if args.no_report:
        return
    out = Path(args.out) if args.out else (run.build / "benchmarks-quick.md" if args.quick
                                           else ROOT / "docs" / "benchmarks.md")
    png = Path(args.png) if args.png else out.with_suffix(".png")
    subprocess.run([sys.executable, str(HERE / "report.py"), str(path), "--out", str(out), "--png", str(png),
                    "--history", str(history)], check=True)


if __name__ == "__main__":
    main()
