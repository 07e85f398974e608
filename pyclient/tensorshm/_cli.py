"""``python -m tensorshm``: the daemon and the tensorshmctl commands from
Python. ``--json`` prints the fields of :class:`ObjectInfo`, :class:`Stats` and
:class:`DaemonInfo` under their Python names and spellings (``tensorshmctl
--json`` prints the same)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NamedTuple, Sequence

from . import _tensorshm
from ._client import Client
from ._daemon import daemon_executable
from ._errors import Error
from ._types import ObjectInfo

_USAGE_ERROR = 2


def _plain(x: Any) -> Any:
    """NamedTuples as dicts, tuples as lists, recursively: the JSON shape."""
    if isinstance(x, tuple) and hasattr(x, "_asdict"):
        return {k: _plain(v) for k, v in x._asdict().items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x


def as_json(x: NamedTuple | Sequence[NamedTuple] | dict[str, Any]) -> str:
    return json.dumps(_plain(x))


def _human(n: int) -> str:
    v, units = float(n), ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.0f} {units[i]}" if i == 0 else f"{v:.1f} {units[i]}"


def _shape(s: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


def _print_info(i: ObjectInfo) -> None:
    for k, v in i._asdict().items():
        print(f"{k:<16}{_shape(v) if isinstance(v, tuple) else v}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tensorshm",
                                description="tensorshm: start the daemon, or ask it what it holds.")
    p.add_argument("--version", action="version", version=f"tensorshm {_tensorshm.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--socket", metavar="PATH", help="the daemon's socket (default: $TENSORSHM_SOCKET, else "
                                                        "the default socket)")
        if json_flag:
            c.add_argument("--json", action="store_true", help="print JSON (Python's field names)")
        return c

    # Handled before parsing (main): listed here for --help.
    sub.add_parser("daemon", help="run tensorshmd in the foreground (what follows goes to it: "
                                  "python -m tensorshm daemon --help)", add_help=False)
    command("ping", "the daemon's version, instance and socket, and one round trip")
    ls = command("ls", "objects whose names start with PREFIX (latest versions this user may read)")
    ls.add_argument("prefix", nargs="?", default="")
    st = command("stat", "one object's latest version")
    st.add_argument("name")
    s = command("stats", "the daemon's counters")
    s.add_argument("--prometheus", action="store_true", help="in the Prometheus text exposition format")
    rm = command("rm", "delete objects (readers keep the versions they hold)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    return p


def _run(a: argparse.Namespace) -> int:
    with Client(a.socket, name="python:tensorshm-cli") as c:
        if a.command == "ping":
            d = c.daemon_info
            rt = c.ping()
            if a.json:
                print(as_json({**_plain(d), "round_trip_s": rt}))
            else:
                print(f"tensorshmd {d.daemon_version} (instance '{d.instance}', {d.cuda_devices} GPU(s)) on "
                      f"{d.socket_path}: round trip {rt * 1e6:.1f} us")
        elif a.command == "ls":
            objs = c.list(a.prefix)
            if a.json:
                print(as_json(objs))
            else:
                for i in objs:
                    print(f"{i.name}  v{i.version}  {i.dtype}{_shape(i.shape)}  {_human(i.nbytes)}  "
                          f"share={i.share}  uid={i.owner_uid}  leases={i.leases}")
        elif a.command == "stat":
            i = c.stat(a.name)
            print(as_json(i)) if a.json else _print_info(i)
        elif a.command == "stats":
            if a.prometheus and a.json:
                raise SystemExit("python -m tensorshm stats: --json and --prometheus exclude each other")
            if a.prometheus:
                sys.stdout.write(c.stats_prometheus())
            else:
                st = c.stats()
                print(as_json(st)) if a.json else [print(f"{k:<20}{v}") for k, v in st._asdict().items()]
        elif a.command == "rm":
            for n in a.names:
                c.delete(n)
                print(as_json({"removed": n})) if a.json else print(f"removed {n}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["daemon"]:  # everything after it is tensorshmd's, --help included
        exe = daemon_executable()
        os.execv(exe, ["tensorshmd", *args[1:]])
    a = _parser().parse_args(args)
    try:
        return _run(a)
    except Error as e:
        if getattr(a, "json", False):
            print(json.dumps({"error": e.code, "message": str(e)}))
        print(f"python -m tensorshm {a.command}: {e}", file=sys.stderr)
        return 1
