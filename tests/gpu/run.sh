#!/usr/bin/env bash
# The GPU proof in one call, on a bare GPU machine (x86-64, Python with torch,
# cupy, numpy, nanobind, scikit-build-core, cmake, ninja, nvcc; no Boost, no
# flatc, no network). Run tests/gpu/prepare.sh on the development machine
# first and carry .gpu-kit/ (prebuilt tensorshmd, tensorshmctl, the C++ GPU
# checks and the FlatBuffers headers).
#
#   tests/gpu/run.sh          (writes everything under $OUT, default /tmp/tshm-gpu-out)
#
# Steps, each logged with a ==== header, its commands traced (set -x) and a
# time limit, so that one run gives complete information even when a step
# fails (the script goes on to the next):
#   machine     GPU, driver, toolchain, /dev/shm, the kit's manifest
#   build       the Python extension (pip, against this machine's python and
#               torch) and the libtorch adapter check, both in the background
#               while the C++ checks run, awaited before the benchmarks
#   daemon      .gpu-kit/bin/tensorshmd on a temporary socket, pool pinned
#   cpp         tshm_gpu_check: put_cuda from C++ (dtypes, layouts, ordering
#               with no synchronize, async, 4 threads x 100, export errors)
#   bench-cpp   tshm_gpu_bench: D2H into the pool vs raw cudaMemcpyAsync, 4 KiB..1 GiB;
#               tshm_io_wake_bench: the daemon io thread's wake-up, asleep vs kept awake
#   bench-py    bench/gpu_bench.py: the same from Python, and the 256 MiB handoff
#               vs t.cpu().numpy() + multiprocessing.shared_memory
#   pytest      tests/gpu: every dtype/shape vs t.cpu().numpy(), a kernel right
#               before put, 4 producers x 100 puts, a producer killed mid-copy, CuPy,
#               a daemon running as nobody (the producer's event refused: fallback)
#   torch       tshm_torch_gpu_check: the libtorch adapter's CUDA path
#   stop        SIGTERM, exit status, /dev/shm left clean
# The last thing printed is a short summary table (also $OUT/summary.txt).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KIT=$ROOT/.gpu-kit
OUT=${OUT:-/tmp/tshm-gpu-out}
# TSHM_GPU_ONLY=bench: the machine, the daemon (logging each GPU copy's
# timings at debug level) and the C++ benchmark only, against the default
# daemon and again with --cuda-io-spin false, --cuda-wake-ahead false and
# --cuda-linger-us 20000 (about three minutes: give it timeout -k 5 240).
ONLY=${TSHM_GPU_ONLY:-}
# TSHM_GPU_CROWD=N with TSHM_GPU_ONLY=bench: N busy loops (N=$(nproc) takes
# every core) run beside the C++ benchmarks, to see how the polling threads
# fare on a host whose CPUs are all taken (docs/gpu.md, Open).
CROWD=${TSHM_GPU_CROWD:-0}
CROWD_PIDS=()
DAEMON_LOG_LEVEL=info
[[ $ONLY == bench ]] && DAEMON_LOG_LEVEL=debug
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
PY=${PYTHON:-python3}
JOBS=$(nproc)
WORK=$(mktemp -d /tmp/tshm-gpu.XXXXXX)
SUMMARY=()
note() { SUMMARY+=("$(printf '%-22s %s' "$1" "$2")"); }
section() { echo; echo "==== $1 ($(date +%T), ${SECONDS}s into the run)"; }

# ---- machine ------------------------------------------------------------------
section machine
set -x
nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv,noheader
uname -a
nproc; free -g | head -2
df -h /dev/shm
ulimit -l
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/shmem_enabled
$PY -c 'import sys, torch, numpy; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "numpy", numpy.__version__)'
$PY -c 'import cupy; print("cupy", cupy.__version__)'
command -v nvcc || ls /usr/local/cuda/bin/nvcc
cmake --version | head -1; ninja --version; g++ --version | head -1
cat "$KIT/MANIFEST"
ldd --version | head -1
set +x
glibc=$(ldd --version | head -1 | grep -oE '[0-9]+\.[0-9]+$')
if [[ $(printf '%s\n2.36\n' "$glibc" | sort -V | head -1) != 2.36 ]]; then
  echo "run.sh: glibc $glibc here; the kit's binaries need 2.36 or newer (they were built on Debian 12)" >&2
fi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
note machine "${GPU_NAME:-no GPU found by nvidia-smi}; $($PY -c 'import torch;print("torch",torch.__version__)' 2>&1 | tail -1)"
if [[ ! -x $KIT/bin/tensorshmd ]]; then
  echo "run.sh: $KIT/bin/tensorshmd is missing: run tests/gpu/prepare.sh on the development machine and carry .gpu-kit" >&2
  note kit "MISSING (.gpu-kit not carried?)"
  printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
  exit 1
fi
# The kit's binaries must come from the sources here: a kit built before the
# last change tests old code (prepare.sh records what it was built from).
if [[ -f $KIT/SOURCES.sha256 ]]; then
  if [[ $(xargs -d '\n' sha256sum < "$KIT/SOURCES" 2>/dev/null | sha256sum | cut -d' ' -f1) != "$(cat "$KIT/SOURCES.sha256")" ]]; then
    echo "run.sh: WARNING: .gpu-kit was built from other sources than this tree: rerun tests/gpu/prepare.sh" >&2
    note kit "STALE: built from other sources than this tree (rerun tests/gpu/prepare.sh)"
  fi
else
  note kit "no SOURCES record (built by an older prepare.sh): cannot tell whether it is current"
fi
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
export CUDACXX=${CUDACXX:-$(command -v nvcc)}

if [[ $ONLY != bench ]]; then
# ---- build (background) -----------------------------------------------------------
section "build (background): Python extension and libtorch adapter check"
PYDIR=$WORK/site
(
  set -x
  TENSORSHM_FLATBUFFERS_INCLUDE=$KIT/include TENSORSHM_CUDA=ON TENSORSHM_DAEMON=OFF CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
    CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" \
    timeout 420 $PY -m pip install -v --no-build-isolation --no-deps --no-index --target "$PYDIR" \
      --config-settings=build-dir="$WORK/pybuild" .
) > "$OUT/pip-build.log" 2>&1 &
PIP_PID=$!
(
  set -x
  TORCH_DIR=$($PY -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')/Torch
  timeout 200 cmake -S tests/gpu/torch_check -B "$WORK/torch-check" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DTorch_DIR="$TORCH_DIR" -DTENSORSHM_FLATBUFFERS_INCLUDE="$KIT/include" -DCMAKE_CUDA_ARCHITECTURES=90 &&
  timeout 400 ninja -C "$WORK/torch-check" -j "$JOBS" tshm_torch_gpu_check
) > "$OUT/torch-check-build.log" 2>&1 &
TORCH_PID=$!
fi

# ---- daemon -------------------------------------------------------------------------
section daemon
export TENSORSHM_SOCKET=$WORK/tshm.sock
INSTANCE=gpurun$$
shm_free=$(df -B1 --output=avail /dev/shm | tail -1)
if ((shm_free < 6 << 30)); then
  set -x
  mount -o remount,size=24G /dev/shm || true
  set +x
  shm_free=$(df -B1 --output=avail /dev/shm | tail -1)
fi
POOL_G=$((shm_free * 6 / 10 >> 30))
((POOL_G > 8)) && POOL_G=8
POOL_G=${TSHM_GPU_POOL_G:-$POOL_G}
BENCH_MAX=1G
((POOL_G < 4)) && BENCH_MAX=256M
echo "/dev/shm has $((shm_free >> 20)) MiB free: pool ${POOL_G}G, largest benchmark size $BENCH_MAX"
# start_daemon [extra flags]: starts tensorshmd (appending to daemon.log) and
# waits until it answers; sets DAEMON_PID and returns 1 if it did not start.
start_daemon() {
  set -x
  "$KIT/bin/tensorshmd" --socket "$TENSORSHM_SOCKET" --instance "$INSTANCE" --pool-size "${POOL_G}G" \
    --segment-size 2G --max-object-size 4G --pretouch-threads "$JOBS" \
    --cuda-copy-timeout-ms 10000 --log-level "$DAEMON_LOG_LEVEL" "$@" >> "$OUT/daemon.log" 2>&1 &
  DAEMON_PID=$!
  set +x
  for _ in $(seq 1 1200); do
    "$KIT/bin/tensorshmctl" ping >/dev/null 2>&1 && return 0
    kill -0 $DAEMON_PID 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
ready=0
start_daemon && ready=1
cat "$OUT/daemon.log"
if ((ready)); then
  "$KIT/bin/tensorshmctl" stats
  note daemon "ready at ${SECONDS}s: $(grep -o '[0-9]* GPU(s)' "$OUT/daemon.log" | tail -1); $(grep -o 'pinned [0-9]* of [0-9]* pool segment(s), [0-9]* bytes, in [0-9.]* ms' "$OUT/daemon.log" || echo 'no pinning logged')"
else
  note daemon "FAILED to start (see daemon.log)"
fi
export TSHM_GPU_DAEMON_RUNNING=1

# ---- C++ checks -----------------------------------------------------------------------
section "cpp: tshm_gpu_check"
set -x
timeout 180 "$KIT/bin/tshm_gpu_check" | tee "$WORK/gpu_check.txt"
set +x
note "C++ put_cuda checks" "$(tail -1 "$WORK/gpu_check.txt" 2>/dev/null || echo 'no output')"

# ---- background builds done ----------------------------------------------------------------
# The benchmarks need the machine's CPUs: with the two builds' compilers on
# every core, the daemon's and the client's polling threads lose their CPU
# for milliseconds (run 9 on an H200: 59 % at 64 MiB instead of 92 %).
if [[ -n ${PIP_PID:-} ]]; then
  section "build: waiting for the background builds before the benchmarks"
  wait $PIP_PID; pip_rc=$?
  wait $TORCH_PID; torch_rc=$?
  echo "pip rc $pip_rc, libtorch check build rc $torch_rc"
fi

if [[ $ONLY == bench ]] && ((CROWD > 0)); then
  for ((i = 0; i < CROWD; i++)); do
    timeout 900 sh -c 'while :; do :; done' &
    CROWD_PIDS+=($!)
  done
  note "crowd" "$CROWD busy loops beside the C++ benchmarks ($(nproc) CPUs)"
fi

# ---- C++ benchmark ----------------------------------------------------------------------
section "bench-cpp: tshm_gpu_bench (D2H into the pool vs raw cudaMemcpyAsync into cudaHostAlloc)"
# The daemon's CPU time (utime + stime, in clock ticks) over the benchmark:
# the engine thread spins near the predicted end of each copy.
daemon_ticks() { awk '{ print $14 + $15 }' "/proc/$DAEMON_PID/stat" 2>/dev/null || echo 0; }
ticks0=$(daemon_ticks); wall0=$SECONDS
set -x
timeout 180 "$KIT/bin/tshm_gpu_bench" "$(numfmt --from=iec "$BENCH_MAX")" | tee "$WORK/bench_cpp.txt"
set +x
note "daemon CPU in C++ bench" "$(awk -v t="$(( $(daemon_ticks) - ticks0 ))" -v hz="$(getconf CLK_TCK)" -v w="$((SECONDS - wall0))" 'BEGIN { printf "%.1f s CPU over %d s wall", t / hz, w }')"
# "size=N ... ratio=R" lines -> "4K 52%, 16K 60%, ..."
ratio_list() {
  awk -v min="${2:-0}" -v key="${3:-ratio}" '$1 == "'"$1"'" {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (v["size"] + 0 < min + 0) next
      n = v["size"]; u = "B"
      if (n >= 1073741824) { n /= 1073741824; u = "G" } else if (n >= 1048576) { n /= 1048576; u = "M" } else if (n >= 1024) { n /= 1024; u = "K" }
      if (!(key in v)) next
      printf "%s%d%s %.0f%%", sep, n, u, v[key] * 100; sep = ", "
    }'
}
ratios=$(ratio_list d2h < "$WORK/bench_cpp.txt")
note "D2H pool/raw (C++)" "${ratios:-no result} (goal >= 90% at >= 64 MiB)"
note "D2H pool/pinned shm" "$(ratio_list d2h $((16 << 20)) ratio_vs_shm < "$WORK/bench_cpp.txt") (same memory kind as the pool)"
note "D2H cold 4K-page dst" "$(ratio_list d2h $((16 << 20)) cold4k_vs_raw < "$WORK/bench_cpp.txt") of raw (destination moves each copy)"
note "D2H cold 2M-page dst" "$(ratio_list d2h $((16 << 20)) cold2m_vs_raw < "$WORK/bench_cpp.txt") of raw ($(grep -o '^cold2m: .*' "$WORK/bench_cpp.txt" | cut -c9-))"
note "D2H pool/raw, no spin" "$(ratio_list d2h 0 ratio_nospin < "$WORK/bench_cpp.txt") (reply awaited asleep in recv)"
note "D2H raw asleep/raw" "$(ratio_list d2h 0 raw_block_vs_raw < "$WORK/bench_cpp.txt") (cudaEventBlockingSync wait vs spin)"

# The io thread's wake-up on this host, asleep vs in a busy window (what
# cuda-io-spin saves per answer; CPU only, a few seconds).
set -x
timeout 60 "$KIT/bin/tshm_io_wake_bench" | tee "$WORK/io_wake.txt"
set +x
note "io thread wake-up" "$(grep -o 'wake-up saved: .*' "$WORK/io_wake.txt" || echo 'no result')"

if [[ $ONLY == bench ]]; then
  # Where a put's time goes, from the daemon's debug lines: the copy on the
  # GPU (issue to its end seen by the engine) and submit-to-answer, medians per size.
  copy_split=$(awk '/gpu copy: put .bench\/d2h/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                      n = v["bytes"]; c[n] = c[n] " " v["copy_us"] }
                    /gpu put answered: put .bench\/d2h/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                      n = v["bytes"]; a[n] = a[n] " " v["submit_to_answer_us"] }
                    function med(s,   k, x, i, j, t) { k = split(s, x, " "); for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (x[j] + 0 < x[i] + 0) { t = x[i]; x[i] = x[j]; x[j] = t }; return x[int((k + 1) / 2)] }
                    END { for (n in c) if (n + 0 >= 1048576) printf "%dM copy %.0f us, answer %.0f us; ", n / 1048576, med(c[n]), med(a[n]) }' "$OUT/daemon.log")
  note "daemon-side timings" "${copy_split:-none logged}"
  # The same benchmark against daemons that differ in one setting, to show
  # what each buys and at what CPU cost: the io thread asleep until each
  # answer (--cuda-io-spin false), both threads asleep until each put arrives
  # (--cuda-wake-ahead false), and both threads lingering awake after
  # each copy (--cuda-linger-us 20000: longer than the benchmark's gap between
  # two puts up to 64 MiB (about 9 ms), so that no put waits for a thread to wake up: the
  # most that avoiding wake-ups can give, and its CPU cost).
  bench_again() {  # bench_again TAG LABEL FLAGS...
    local tag=$1 label=$2; shift 2
    section "bench-cpp again, daemon with $*"
    kill -TERM $DAEMON_PID; wait $DAEMON_PID
    if start_daemon "$@"; then
      ticks0=$(daemon_ticks); wall0=$SECONDS
      timeout 180 "$KIT/bin/tshm_gpu_bench" "$(numfmt --from=iec "$BENCH_MAX")" | tee "$WORK/bench_cpp_$tag.txt"
      note "$label" "$(ratio_list d2h < "$WORK/bench_cpp_$tag.txt") (daemon CPU $(awk -v t="$(( $(daemon_ticks) - ticks0 ))" -v hz="$(getconf CLK_TCK)" -v w="$((SECONDS - wall0))" 'BEGIN { printf "%.1f s over %d s", t / hz, w }'))"
    else
      note "$label" "daemon did not start (see daemon.log)"
    fi
  }
  bench_again nospin "D2H, io spin off" --cuda-io-spin false
  bench_again noahead "D2H, wake-ahead off" --cuda-wake-ahead false
  bench_again linger "D2H, linger 20 ms" --cuda-linger-us 20000
  ((${#CROWD_PIDS[@]} > 0)) && kill "${CROWD_PIDS[@]}" 2>/dev/null
  section stop
  kill -TERM $DAEMON_PID; wait $DAEMON_PID
  note "daemon stop" "exit $?"
  printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
  exit 0
fi

# ---- Python extension --------------------------------------------------------------------
section "build: the Python extension"
tail -25 "$OUT/pip-build.log"
export PYTHONPATH=$PYDIR${PYTHONPATH:+:$PYTHONPATH}
set -x
$PY -c 'import tensorshm; print(tensorshm.__file__, "cuda_supported", tensorshm.cuda_supported())'
py_ok=$?
set +x
note "python extension" "$([[ $pip_rc == 0 && $py_ok == 0 ]] && echo "built and importable" || echo "FAILED (pip rc $pip_rc; see pip-build.log)")"

# ---- Python benchmark ----------------------------------------------------------------------
section "bench-py: bench/gpu_bench.py"
set -x
PYTHONUNBUFFERED=1 timeout 240 $PY bench/gpu_bench.py --max-bytes "$BENCH_MAX" --handoff-bytes 256M \
  --json "$OUT/bench.json" | tee "$WORK/bench_py.txt"
set +x
note "D2H pool/raw (Python)" "$(ratio_list d2h-py $((64 << 20)) < "$WORK/bench_py.txt") (>= 64 MiB)"
note "handoff 256 MiB" "$(grep '^handoff ' "$WORK/bench_py.txt" | sed 's/^handoff size=[0-9]* //' || echo 'no result') (goal >= 3x)"

# ---- pytest ---------------------------------------------------------------------------------
# The faults (producers SIGKILLed mid-put) run last, after the libtorch check,
# so that a fault that wedges GPU puts cannot hide what the other checks show.
FAULTS="killed_mid_copy or killed_at_random"
section "pytest: tests/gpu (without the faults)"
set -x
PYTHONUNBUFFERED=1 timeout 240 $PY -m pytest -v -rsP -p no:cacheprovider --junitxml="$OUT/pytest.xml" tests/gpu \
  -k "not ($FAULTS)" 2>&1 | tee "$WORK/pytest.txt"
set +x
note "pytest tests/gpu" "$(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$WORK/pytest.txt" | tail -1 | tr -d '=' || echo 'no result')"
other_user=$(grep -o 'FIGURES other-user: .*' "$WORK/pytest.txt" | sed 's/^FIGURES other-user: //')
note "daemon as nobody" "${other_user:-no result (skipped? see pytest.txt)}"

# ---- libtorch adapter ---------------------------------------------------------------------------
section "torch: libtorch adapter check"
tail -30 "$OUT/torch-check-build.log"
if ((torch_rc == 0)); then
  set -x
  timeout 120 "$WORK/torch-check/tshm_torch_gpu_check" | tee "$WORK/torch_check.txt"
  set +x
  note "torch adapter (C++)" "$(tail -1 "$WORK/torch_check.txt")"
else
  note "torch adapter (C++)" "BUILD FAILED (rc $torch_rc; see torch-check-build.log)"
fi

# ---- faults -----------------------------------------------------------------------------------
# What every daemon thread is doing: kernel wait channel and stack, and a
# backtrace when gdb exists. Called when the daemon stops answering.
diagnose() {
  echo "---- tensorshmd threads ($1)"
  for t in /proc/$DAEMON_PID/task/*; do
    echo "tid $(basename "$t") $(cat "$t/comm" 2>/dev/null) state=$(awk '{print $3}' "$t/stat" 2>/dev/null)" \
         "wchan=$(cat "$t/wchan" 2>/dev/null)"
    head -6 "$t/stack" 2>/dev/null | sed 's/^/    /'
  done
  if command -v gdb >/dev/null; then
    timeout 60 gdb -p $DAEMON_PID -batch -ex "thread apply all bt 12" 2>&1 | grep -E '^(Thread|#)' | head -120
  fi
  grep -E 'timed out|engine thread|stuck|quarantin' "$OUT/daemon.log" | tail -20
}
section "faults: producers SIGKILLed mid-put (tests/gpu -k '$FAULTS')"
set -x
PYTHONUNBUFFERED=1 timeout 200 $PY -m pytest -v -s -rs -p no:cacheprovider --junitxml="$OUT/pytest-faults.xml" \
  tests/gpu -k "$FAULTS" 2>&1 | tee "$WORK/pytest-faults.txt"
set +x
note "GPU faults (pytest)" "$(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$WORK/pytest-faults.txt" | tail -1 | tr -d '=' || echo 'no result')"
figures=$(grep -o 'FIGURES random-kill: .*' "$WORK/pytest-faults.txt" | sed 's/^FIGURES random-kill: //')
[[ -n $figures ]] && note "random kills" "$figures"
if ! timeout 10 "$KIT/bin/tensorshmctl" ping >/dev/null 2>&1 ||
   grep -qE 'timed out|stuck' "$OUT/daemon.log"; then
  diagnose "after the faults" | tee "$OUT/diagnosis.txt"
  note diagnosis "$(grep -m1 -o 'the engine thread [^;)]*' "$OUT/daemon.log" || echo 'see diagnosis.txt')"
fi

# ---- stop -------------------------------------------------------------------------------------
section stop
"$KIT/bin/tensorshmctl" stats || true
kill -TERM $DAEMON_PID 2>/dev/null
stopped=0
for _ in $(seq 1 300); do
  kill -0 $DAEMON_PID 2>/dev/null || { stopped=1; break; }
  sleep 0.1
done
if ((stopped)); then
  wait $DAEMON_PID; daemon_rc=$?
else
  echo "tensorshmd did not stop within 30 s of SIGTERM (a copy that never finishes?): SIGKILL"
  kill -KILL $DAEMON_PID; wait $DAEMON_PID; daemon_rc=killed
fi
tail -30 "$OUT/daemon.log"
left=$(ls /dev/shm | grep -c "^tensorshm\.$INSTANCE\." || true)
note "daemon stop" "exit $daemon_rc; $left segment file(s) left in /dev/shm"
rm -f /dev/shm/tensorshm."$INSTANCE".*
grep -E '^(<[34]>)' "$OUT/daemon.log" | head -20 > "$WORK/daemon_warnings.txt"
note "daemon warnings" "$(wc -l < "$WORK/daemon_warnings.txt") line(s) at warning level or worse (daemon.log)"

section "summary (also $OUT/summary.txt; full log $OUT/run.log)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
