"""`tensorshmctl stats --prometheus` prints the Prometheus text exposition
format (version 0.0.4) that node_exporter's textfile collector reads: checked
line by line against the format, and its numbers against the daemon's."""
import json
import math
import re
import socket

from conftest import ctl, wait_for

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABELS = r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")*,?)?\}'
SAMPLE = re.compile(rf"^({NAME})({LABELS})? (\S+)(?: (-?\d+))?$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_exposition(text):
    """Validates text as the exposition format; returns {metric family: (type, {sample name: value})}."""
    assert text.endswith("\n"), "the exposition must end with a line feed"
    families, current = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name), where
            families.setdefault(name, {"type": "untyped", "samples": {}, "help": 0})
            families[name]["help"] += 1
            assert families[name]["help"] == 1, f"second HELP for {name}: {where}"
            assert not families[name]["samples"], f"HELP after samples: {where}"
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4 and re.fullmatch(NAME, parts[2]) and parts[3] in TYPES, where
            fam = families.setdefault(parts[2], {"type": "untyped", "samples": {}, "help": 0})
            assert not fam["samples"] and fam.get("typed") is None, f"TYPE must come once, before samples: {where}"
            fam["type"], fam["typed"] = parts[3], True
            current = parts[2]
        elif line.startswith("#") or line == "":
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample: {where}"
            name, _, value, _ = m.groups()
            family = current if current and name.startswith(current) else name
            assert family in families, f"sample without HELP/TYPE: {where}"
            v = float(value)  # accepts NaN, +Inf, -Inf and exponents as the format does
            families[family]["samples"][name + (m.group(2) or "")] = v
    return {name: (f["type"], f["samples"]) for name, f in families.items()}


def test_stats_prometheus_is_valid_exposition_format_with_the_daemons_numbers(
        tensorshmd, tensorshmctl, instance, daemons, tmp_path):
    sock = tmp_path / "s.sock"
    d = daemons.start([tensorshmd, "--socket", str(sock), "--instance", instance, "--pool-size", "8M",
                       "--segment-size", "4M", "--cuda", "off"], tmp_path / "log")
    wait_for(lambda: "ready" in d.log(), "the daemon to start")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.connect(str(sock))
        families = parse_exposition(ctl(tensorshmctl, sock, "stats", "--prometheus").stdout)
        as_json = json.loads(ctl(tensorshmctl, sock, "--json", "stats").stdout)
    assert families, "no metrics"
    assert all(name.startswith("tensorshm_") for name in families)
    for name, (kind, samples) in families.items():
        assert samples, f"{name} has no sample"
        assert kind in ("counter", "gauge"), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
        assert all(math.isfinite(v) and v >= 0 for v in samples.values()), name
    for key in ("pool_bytes", "pool_used_bytes", "dedicated_bytes", "segments", "objects", "leases", "clients"):
        assert families[f"tensorshm_{key}"] == ("gauge", {f"tensorshm_{key}": as_json[key]}), key
    # Two 4 MiB segments, less their header pages; tensorshmctl's own connection and the one held above.
    assert 8 << 20 >= as_json["pool_bytes"] >= (8 << 20) - 2 * 65536 and as_json["segments"] == 2
    assert as_json["clients"] == 2
    assert d.terminate() == 0


def test_the_validator_rejects_what_prometheus_would_reject():
    for bad in ["# TYPE x gauge\nx 1",                       # no final line feed
                "# TYPE x meter\nx 1\n",                     # unknown type
                "# TYPE x gauge\nx one\n",                   # not a number
                "# TYPE x-y gauge\nx-y 1\n",                 # bad name
                "# TYPE x gauge\nx 1\n# TYPE x gauge\n"]:    # TYPE twice / after samples
        try:
            parse_exposition(bad)
        except (AssertionError, ValueError):
            continue
        raise AssertionError(f"accepted {bad!r}")
