#!/usr/bin/env bash
# Run HERE (the development machine, which has Boost, flatc and the CUDA
# toolkit but no GPU) before tests/gpu/run.sh is run on a GPU machine. The GPU
# machine has no Boost, no FlatBuffers and no network, so this builds what
# needs them and puts it in .gpu-kit/ (git-ignored; the device tool carries it):
#
#   .gpu-kit/bin/tensorshmd, tensorshmctl      CUDA on, static cudart, static
#                                              libstdc++/libgcc, no libsystemd (so
#                                              no units: TENSORSHM_INSTALL_SYSTEMD=OFF)
#   .gpu-kit/bin/tshm_gpu_check, tshm_gpu_bench  the C++ GPU checks (put_cuda)
#   .gpu-kit/bin/tshm_io_wake_bench            the daemon io thread's wake-up, asleep vs kept awake
#   .gpu-kit/include/flatbuffers/              headers for building the Python
#                                              extension and libclient there
#   .gpu-kit/include/doctest/                  (not needed by run.sh; for manual builds)
#   .gpu-kit/MANIFEST                          what was built, from which commit
#   .gpu-kit/SOURCES, SOURCES.sha256           the files it was built from and their hash:
#                                              run.sh says so when the tree it runs in differs
#
# It refuses to finish when a binary needs a shared library beyond glibc.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
KIT=$ROOT/.gpu-kit
BUILD=${BUILD_DIR:-$ROOT/build-gpu-kit}
JOBS=${JOBS:-2}

command -v nvcc >/dev/null || { echo "prepare.sh: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }

set -x
cmake -S "$ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DTENSORSHM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80;90" \
  -DTENSORSHM_TESTS=ON -DTENSORSHM_BENCH=ON -DTENSORSHM_TORCH=OFF -DTENSORSHM_PYTHON=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON -DTENSORSHM_INSTALL_SYSTEMD=OFF \
  -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc"
ninja -C "$BUILD" -j "$JOBS" tensorshmd tensorshmctl tshm_gpu_check tshm_gpu_bench tshm_io_wake_bench
set +x

rm -rf "$KIT"
mkdir -p "$KIT/bin" "$KIT/include"
cp "$BUILD/daemon/tensorshmd" "$BUILD/ctl/tensorshmctl" "$BUILD/tests/gpu/tshm_gpu_check" \
   "$BUILD/tests/gpu/tshm_gpu_bench" "$BUILD/bench/tshm_io_wake_bench" "$KIT/bin/"
cp -r /usr/include/flatbuffers "$KIT/include/"
[[ -d /usr/include/doctest ]] && cp -r /usr/include/doctest "$KIT/include/"

# Only glibc (and the loader) may remain dynamic: the GPU machine's libraries
# are unknown. libcuda is dlopened by cudart at run time, as it should be.
bad=0
for b in "$KIT"/bin/*; do
  extra=$(ldd "$b" | awk '{print $1}' |
          grep -vE '^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so)' || true)
  if [[ -n $extra ]]; then
    echo "prepare.sh: $b needs shared libraries the GPU machine may lack: $extra" >&2
    bad=1
  fi
done
((bad == 0)) || exit 1

{
  echo "built $(date -u +%FT%TZ) on $(uname -n) from $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "flatbuffers headers: $(grep -m1 -E 'define FLATBUFFERS_VERSION_MINOR' /usr/include/flatbuffers/base.h)"
  for b in "$KIT"/bin/*; do echo "$(basename "$b"): $(stat -c %s "$b") bytes; $(ldd "$b" | awk '{print $1}' | tr '\n' ' ')"; done
} > "$KIT/MANIFEST"
git ls-files CMakeLists.txt cmake protocol daemon libclient ctl bench tests/gpu tests/cpp > "$KIT/SOURCES"
xargs -d '\n' sha256sum < "$KIT/SOURCES" | sha256sum | cut -d' ' -f1 > "$KIT/SOURCES.sha256"
cat "$KIT/MANIFEST"
du -sh "$KIT"
echo "prepare.sh: done. On the GPU machine: tests/gpu/run.sh (carry .gpu-kit)"
