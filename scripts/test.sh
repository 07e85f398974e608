#!/usr/bin/env bash
# The README's second command: installs what is missing, builds everything
# with warnings as errors, installs the Python package into .venv the way a
# user would, and runs every test (C++ doctest and pytest, through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
# Every part is configured explicitly (a reused build dir keeps old cache values):
# the CUDA engine compiles and links here when nvcc exists (AUTO), the libtorch
# adapter against Debian's libtorch.
./scripts/build.sh -DTENSORSHM_WERROR=ON -DTENSORSHM_TESTS=ON -DTENSORSHM_BENCH=ON \
  -DTENSORSHM_CUDA=AUTO -DTENSORSHM_TORCH=ON -DTENSORSHM_DAEMON=ON
if [[ -f pyproject.toml ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation .
fi
ctest --test-dir build --output-on-failure --timeout 900 --no-tests=error
# Sanitizers and fuzzing (docs/reliability.md): the C++ tests under ASan+UBSan
# and TSan, the fault and security suites against an ASan daemon, and a bounded
# fuzz run. TSHM_SANITIZERS=0 skips them; TSHM_FUZZ_SECONDS sizes the fuzz run.
if [[ ${TSHM_SANITIZERS:-1} != 0 ]]; then
  ./scripts/sanitizers.sh all "${TSHM_FUZZ_SECONDS:-30}"
fi
