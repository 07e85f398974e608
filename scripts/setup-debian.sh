#!/usr/bin/env bash
# Installs everything tensorshm needs on Debian 12 (as root): the build tools
# and libraries from Debian, and a Python virtual environment in .venv made
# from Debian's /usr/bin/python3 with --system-site-packages, so that it sees
# Debian's python3-torch and python3-numpy (1.24) and takes the rest from PyPI.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libboost-dev libboost-program-options-dev doctest-dev libflatbuffers-dev flatbuffers-compiler libcli11-dev
  libsystemd-dev systemd
  python3 python3-dev python3-venv python3-numpy python3-torch libtorch-dev
  clang libclang-rt-14-dev
)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=/usr/bin/python3
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv from $PY (system site packages: Debian's torch and numpy)"
  "$PY" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import nanobind, scikit_build_core, pytest, ml_dtypes" 2>/dev/null ||
   [[ scripts/requirements-dev.txt -nt .venv/.requirements-stamp ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt
  touch .venv/.requirements-stamp
fi
# The sdist test (tests/dist) builds the sdist in a fresh venv with build
# isolation and no index: pip takes pyproject.toml's build requirements from
# this wheelhouse.
if [[ ! -f .venv/wheelhouse/.stamp || pyproject.toml -nt .venv/wheelhouse/.stamp ]]; then
  mapfile -t build_requires < <(.venv/bin/python -c \
    'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
  .venv/bin/python -m pip download -q --disable-pip-version-check -d .venv/wheelhouse "${build_requires[@]}"
  touch .venv/wheelhouse/.stamp
fi
echo "setup: done"
