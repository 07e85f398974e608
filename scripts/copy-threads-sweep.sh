#!/usr/bin/env bash
# The copy-threads sweep of docs/benchmarks.md: tshm_core_bench --quick with
# TENSORSHM_COPY_THREADS unset, then each count given (default 2 4 8 16); each
# run measures a 256 MiB put against the same put on one thread, in the same
# run, and prints that line. Usage:
#   scripts/copy-threads-sweep.sh [BUILD_DIR] [THREADS...]      (BUILD_DIR: build)
# On another machine (the H200 host of the GPU runs) copy a static build of
# bench/tshm_core_bench and daemon/tensorshmd into one BUILD_DIR layout.
set -euo pipefail
build=${1:-build}
shift || true
counts=("$@")
((${#counts[@]})) || counts=(2 4 8 16)
bench=$build/bench/tshm_core_bench
daemon=$build/daemon/tensorshmd
[[ -x $bench && -x $daemon ]] || { echo "copy-threads-sweep: build $bench and $daemon first" >&2; exit 2; }
echo "host: $(nproc) CPUs; $(date -u +%F) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for n in default "${counts[@]}"; do
  if [[ $n == default ]]; then
    line=$(env -u TENSORSHM_COPY_THREADS "$bench" --daemon "$daemon" --quick | grep 'put 256 MiB')
  else
    line=$(TENSORSHM_COPY_THREADS=$n "$bench" --daemon "$daemon" --quick | grep 'put 256 MiB')
  fi
  printf '%-8s %s\n' "$n" "$line"
done
