#!/usr/bin/env bash
# Configures and builds tensorshm into build/ (extra cmake arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
  -DPython_EXECUTABLE="$PWD/.venv/bin/python" "$@"
cmake --build "$BUILD_DIR" -j "$(nproc)"
