#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs
# tensorshmd in the foreground on its embedded defaults (Ctrl-C stops it and
# removes its segments). Extra arguments go to tensorshmd.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
./scripts/build.sh >/dev/null
if [[ -f pyproject.toml ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
fi
exec build/daemon/tensorshmd "$@"
