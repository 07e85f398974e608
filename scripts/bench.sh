#!/usr/bin/env bash
# The benchmark command (docs/benchmarks.md): installs what is missing, builds,
# and measures tensorshm against what users would use instead — multiprocessing
# queues, torch.multiprocessing, shared_memory by hand, Ray, iceoryx — and the
# physical floors, all on this machine in one run. Writes docs/benchmarks.md
# and docs/benchmarks.png (about 5 minutes after the build).
#
#   ./scripts/bench.sh            full run
#   ./scripts/bench.sh --quick    smoke run (< 2 minutes) into build/benchmarks-quick.md
#
# Other arguments go to bench/python/run.py (--help lists them); BUILD_DIR
# chooses the build directory (default build/).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

./scripts/setup-debian.sh
# iceoryx (the C++ shared-memory floor) from Debian; without it the iceoryx
# rows are reported as not run.
missing=()
for p in iceoryx libiceoryx-posh-dev libiceoryx-hoofs-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    echo "bench: iceoryx could not be installed; its rows will say 'not run'"
fi

BUILD_DIR=$BUILD_DIR ./scripts/build.sh >/dev/null
if [[ -f pyproject.toml ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
fi

# matplotlib for the plot, Ray as a peer. numpy stays Debian's: a newer numpy
# from PyPI would shadow it in .venv and break Debian's torch.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/python -c 'import numpy; print("numpy==" + numpy.__version__)' >"$constraints"
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c "$constraints" matplotlib
fi
if ! .venv/bin/python -c "import ray" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c "$constraints" ray ||
    echo "bench: pip install ray failed; Ray will be reported as not run"
fi

exec .venv/bin/python bench/python/run.py --build-dir "$BUILD_DIR" "$@"
