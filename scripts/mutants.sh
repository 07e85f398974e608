#!/usr/bin/env bash
# Do the tests catch what they claim? Applies each mutant below (one deliberate
# bug in the product) to a scratch copy of this tree, one at a time, builds it,
# runs the tests, and reports which tests failed (caught it) and how long the
# first of them took. A mutant no test catches is a hole in the suite.
#
#   scripts/mutants.sh [SCRATCH_DIR] [MUTANT...]     (SCRATCH_DIR: /tmp/tshm-mutants; all mutants)
#
# The tests run: every C++ test (labels protocol, unit, client, integration),
# the fault suite's hostile-client attacks, and, when run as root, the
# cross-uid attacks (tests marked "(root)" need root: they make users). The
# table goes to SCRATCH_DIR/mutants.md; docs/reliability.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRATCH=${1:-/tmp/tshm-mutants}
shift || true
ONLY=("$@")

# name # file # exact text # replacement # what it breaks   ('#' separates: the code has '|')
MUTANTS=$(cat <<'EOF'
reader-gets-writable-dedicated#daemon/session.cpp#fd = seg->ro_fd();#fd = seg->rw_fd();#a get of a dedicated segment hands the reader its read-write descriptor
notify-name-noop#daemon/waiters.hpp#for (auto it = lo; it != hi; ++it) it->second->cancel();#(void)lo; (void)hi;#a put wakes no get waiting for the name (waits end at their deadline)
notify-space-noop#daemon/waiters.hpp#for (Timer* t : space_) t->cancel();#(void)space_;#freed space wakes no create waiting for it
writable-by-anyone#daemon/pool.hpp#{ return uid == 0 || uid == owner_uid; }#{ (void)uid; return true; }#any uid may write (map writable) any class
no-fresh-file-on-class-change#daemon/pool.cpp#last != last_class_.end() && !(last->second == cls)) {#false && last != last_class_.end()) {#a segment changes owner without a fresh memory file
unused-segment-mappable#daemon/pool.hpp#if (!cls) return uid == 0;#if (!cls) return true;#any uid may map an unused pool segment
no-seals#daemon/segment.cpp#F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL#F_SEAL_SEAL#a writer can truncate its segment under the daemon
memfd-mode-0777#daemon/segment.cpp#::fchmod(s->rw_fd_, 0600)#::fchmod(s->rw_fd_, 0777)#a reader can reopen its read-only descriptor writable
descriptors-closed-on-io-thread#daemon/session.cpp#for (int fd : fds_) server_.closer().close(fd, cred_.uid);#for (int fd : fds_) io::close_fd(fd);#a descriptor a client sent is closed on the io thread
no-hello-bound#daemon/session.cpp#if (!said_hello_ && h.length > kMaxPayloadBeforeHello) {#if (false) {#a frame before Hello may announce 8 MiB
client-trusts-any-daemon#libclient/src/connection.cpp#if (trusted_daemon_uid(cred->uid, me, options_.daemon_uid)) return ok_status();#return ok_status();#a client talks to a daemon of any uid
EOF
)

echo "mutants: copying the tree to $SCRATCH/src"
mkdir -p "$SCRATCH"
rm -rf "$SCRATCH/src"
mkdir -p "$SCRATCH/src"
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - -f - | tar -x -C "$SCRATCH/src"
cd "$SCRATCH/src"
git init -q && git add -A && git -c user.email=m@x -c user.name=mutants commit -qm base
BUILD=$SCRATCH/build
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENSORSHM_CUDA=OFF -DTENSORSHM_TORCH=OFF \
  -DTENSORSHM_BENCH=OFF -DTENSORSHM_TESTS=ON -DTENSORSHM_DAEMON=ON -DPython_EXECUTABLE="$REPO/.venv/bin/python" \
  -DTSHM_FAULTS_PYTHON="$REPO/.venv/bin/python" -DTENSORSHM_VENV_PYTHON=/nonexistent >/dev/null

TESTS=(-L 'protocol|unit|client|integration' )
SUITES='fault_hostile_clients'
[[ $(id -u) == 0 ]] && SUITES+='|security_cross_uid_attacks|security_two_users'

run_tests() {  # prints "name seconds" of each failed test, fastest first
  local log=$1
  rm -f "$log".*.xml
  { ctest --test-dir "$BUILD" -j2 --timeout 300 --output-on-failure "${TESTS[@]}" --output-junit "$log.cpp.xml"
    ctest --test-dir "$BUILD" --timeout 600 --output-on-failure -R "^($SUITES)\$" --output-junit "$log.suites.xml"; } >"$log" 2>&1 || true
  python3 - "$log".*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
failed = []
for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.get("status") in ("fail", "failed") or case.find("failure") is not None or case.find("error") is not None:
            failed.append((float(case.get("time") or 0), case.get("name")))
for t, name in sorted(failed):
    print(f"{name}\t{t:.1f}")
PY
}

echo "mutants: building the unmutated tree"
ninja -C "$BUILD" >"$SCRATCH/build.log" 2>&1
echo "mutants: the unmutated tree must pass"
base=$(run_tests "$SCRATCH/base.log")
if [[ -n $base ]]; then echo "mutants: the unmutated tree fails: $base (see $SCRATCH/base.log)" >&2; exit 1; fi

table=$SCRATCH/mutants.md
{
  echo "| mutant | what it breaks | caught by (seconds) |"
  echo "|---|---|---|"
} >"$table"
survived=0
while IFS='#' read -r name file from to what; do
  [[ -z $name ]] && continue
  if ((${#ONLY[@]})) && [[ ! " ${ONLY[*]} " == *" $name "* ]]; then continue; fi
  git checkout -q -- .
  if ! python3 - "$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1:]
s = open(path).read()
if s.count(old) != 1:
    sys.exit(f"{path}: the text to mutate occurs {s.count(old)} times")
open(path, "w").write(s.replace(old, new))
PY
  then
    echo "| $name | $what | **stale: the text is not in $file** |" >>"$table"
    continue
  fi
  echo "mutants: $name ($file)"
  if ! ninja -C "$BUILD" >"$SCRATCH/$name.build.log" 2>&1; then
    echo "| $name | $what | did not build |" >>"$table"
    continue
  fi
  caught=$(run_tests "$SCRATCH/$name.log" | awk -F'\t' '{r=$1; if (r ~ /^security_/) r=r"` (root) (" $2 ")"; else r=r"` (" $2 ")"; printf "%s`%s", sep, r; sep=", "}')
  if [[ -z $caught ]]; then
    survived=$((survived + 1))
    caught="**survived**"
  fi
  echo "| $name | $what | $caught |" >>"$table"
  echo "  -> $caught"
done <<<"$MUTANTS"
git checkout -q -- .
ninja -C "$BUILD" >/dev/null 2>&1 || true
echo
cat "$table"
echo
echo "mutants: $survived survived (table: $table)"
exit $((survived > 0))
