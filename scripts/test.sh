#!/usr/bin/env bash
# The README's second command: installs what is missing, builds everything
# with warnings as errors, installs the Python package into .venv the way a
# user would, and runs every test (C++ doctest and pytest, through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
./scripts/build.sh -DTENSORSHM_WERROR=ON
if [[ -f pyclient/pyproject.toml ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation ./pyclient
fi
ctest --test-dir build --output-on-failure --timeout 900
