#!/usr/bin/env bash
# On a GPU machine: does CUDA still work inside tensorshmd.service's sandbox?
# Builds hardening_probe (needs nvcc and systemd-analyze, so build it where
# those exist with `run_hardening_probe.sh build DIR`), then `run_hardening_probe.sh
# run DIR OUTDIR` runs it without a sandbox, with the unit's sandbox, and with
# MemoryDenyWriteExecute= and ProcSubset=pid added, each both as the producer's
# own user (root) and as another user (uid 65534, as tensorshmd's user would
# be). Results, one file per mode, go to OUTDIR; docs/operations.md ("NVIDIA
# devices") records them.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  build)
    dir=$2
    mkdir -p "$dir"
    python3 "$here/gen_syscall_allowlist.py" > "$dir/syscall_allowlist.h"
    "${NVCC:-/usr/local/cuda/bin/nvcc}" -O2 -std=c++17 -I"$dir" -o "$dir/hardening_probe" "$here/hardening_probe.cu"
    ;;
  run)
    dir=$2 out=$3
    mkdir -p "$out"
    {
      uname -a
      nvidia-smi -L 2>&1 || true
      ls -l /dev/nvidia* /dev/nvidia-caps 2>&1
      grep -i nvidia /proc/devices
      id; ulimit -l
      command -v strace || echo "no strace"
    } > "$out/machine.txt" 2>&1
    run_mode() {
      local name=$1; shift
      timeout 120 "$dir/hardening_probe" "$@" > "$out/$name.txt" 2>&1
      echo "rc=$?" >> "$out/$name.txt"
      echo "== $name: $(grep -E '^(OK|FAIL)' "$out/$name.txt" | head -3 | tr '\n' ' ') $(tail -1 "$out/$name.txt")"
    }
    run_mode baseline
    run_mode unit-same-user --sandbox --skip=uid
    run_mode unit-same-user-mdwe-proc-subset --sandbox --skip=uid --mdwe --proc-subset
    run_mode unit-other-user --sandbox
    run_mode unit-other-user-shared-event-file --sandbox --share-event-shm
    if command -v strace > /dev/null; then
      timeout 120 strace -f -qq -e trace=%file,socket -o "$out/strace-unit.txt" "$dir/hardening_probe" --sandbox \
        --skip=uid > /dev/null 2>&1
      grep -E 'O_WRONLY|O_RDWR|O_CREAT' "$out/strace-unit.txt" | grep -vE '/dev/(nvidia|shm|null)' | head -50 > "$out/strace-writes.txt"
      grep -E '"/proc/(driver|[a-z])' "$out/strace-unit.txt" | grep -v '/proc/self' | head -50 > "$out/strace-proc.txt"
    fi
    ;;
  *) echo "usage: $0 build DIR | run DIR OUTDIR" >&2; exit 2 ;;
esac
