#!/usr/bin/env bash
# Sanitizer and fuzzing runs (docs/reliability.md); scripts/test.sh runs `all`.
#
#   scripts/sanitizers.sh asan          ASan+UBSan (gcc, build-asan): the C++ tests (protocol,
#                                       daemon and client units, integration, engine) and the daemon they
#                                       start, then the fault and security suites against the
#                                       ASan daemon (the 256-client soak excepted: it runs
#                                       against the release build in the main test run)
#   scripts/sanitizers.sh tsan          TSan (gcc, build-tsan): the concurrency tests: the copy
#                                       engine (its worker threads), the client's copy helpers, the integration tests
#                                       (threads sharing a client, the daemon's pre-touch threads)
#   scripts/sanitizers.sh fuzz [SECS]   libFuzzer (clang, build-fuzz): each tests/fuzz target for SECS
#                                       seconds (default 30) from its committed corpus
#   scripts/sanitizers.sh all [SECS]    the three
#
# Each build directory is kept between runs and only the targets these tests
# need are built, so a second run costs little.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${JOBS:-$(nproc)}
COMMON=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENSORSHM_CUDA=OFF -DTENSORSHM_BENCH=OFF -DTENSORSHM_TESTS=ON)

# A sanitizer report fails the test that triggered it.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

# Builds `targets` that the project defines (others are skipped).
build_targets() {
  local dir=$1; shift
  local have=() t
  local all
  all=$(ninja -C "$dir" -t targets all 2>/dev/null)
  for t in "$@"; do
    grep -q "^$t:" <<<"$all" && have+=("$t")
  done
  echo "sanitizers: building ${have[*]} in $dir"
  ninja -C "$dir" -j "$JOBS" "${have[@]}"
}

run_asan() {
  cmake -S . -B build-asan "${COMMON[@]}" -DTENSORSHM_SANITIZE=address,undefined >/dev/null
  build_targets build-asan tensorshmd tensorshmctl tshm_test_peer tshm_fault_peer \
    tshm_protocol_tests tshm_daemon_unit_tests tshm_client_unit_tests tshm_integration_tests tshm_engine_tests \
    tshm_engine_cpu_only_tests
  ctest --test-dir build-asan --output-on-failure --timeout 600 -L 'protocol|unit|client|integration'
  ctest --test-dir build-asan --output-on-failure --timeout 600 -R '^engine:'
  ctest --test-dir build-asan --output-on-failure --timeout 600 -L 'fault|security' -E '^fault_soak$'
}

run_tsan() {
  cmake -S . -B build-tsan "${COMMON[@]}" -DTENSORSHM_SANITIZE=thread >/dev/null
  build_targets build-tsan tensorshmd tshm_test_peer tshm_integration_tests tshm_engine_tests tshm_client_unit_tests
  ctest --test-dir build-tsan --output-on-failure --timeout 600 -L 'client|integration'
  ctest --test-dir build-tsan --output-on-failure --timeout 600 -R '^engine:'
}

run_fuzz() {
  local seconds=${1:-30}
  if ! command -v clang++ >/dev/null; then
    # setup-debian.sh installs clang: a run without it would report a fuzz
    # run that never happened as passed.
    echo "sanitizers: clang++ not found; run scripts/setup-debian.sh (it installs clang) or TSHM_SANITIZERS=0" >&2
    return 1
  fi
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENSORSHM_CUDA=OFF \
    -DTENSORSHM_BENCH=OFF -DTENSORSHM_TESTS=ON -DTENSORSHM_FUZZ=ON -DTSHM_FUZZ_SECONDS="$seconds" >/dev/null
  build_targets build-fuzz tshm_fuzz_frames tshm_fuzz_shared
  ctest --test-dir build-fuzz --output-on-failure --timeout $((seconds + 300)) -R '^fuzz_'
}

case "${1:-all}" in
  asan) run_asan ;;
  tsan) run_tsan ;;
  fuzz) run_fuzz "${2:-30}" ;;
  all)
    run_asan
    run_tsan
    run_fuzz "${2:-30}"
    ;;
  *)
    echo "usage: $0 [asan|tsan|fuzz [SECONDS]|all [SECONDS]]" >&2
    exit 2
    ;;
esac
