#!/usr/bin/env bash
# Build the GPU artifacts (`--features cuda`: candle's CUDA backend) on a machine with no
# GPU and no CUDA toolkit, from NVIDIA's PyPI wheels (see README.md here).
#
#   deploy/gpu/build.sh            # from the repository root
#
# Environment: MISTNET_GPU_CACHE (venv and link folder, default ~/.cache/mistnet-gpu),
# CARGO_TARGET_DIR (default target/), CUDA_COMPUTE_CAP (default 90: H100/H200). Writes the
# executables into target/gpu-dist/ and the archive a GPU run carries, target/gpu-dist.tar.xz.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=${MISTNET_GPU_CACHE:-$HOME/.cache/mistnet-gpu}
VENV=$CACHE/venv
LINKDIR=$CACHE/link
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DIST=$ROOT/target/gpu-dist

# CUDA 13.0.x, the versions torch 2.11 cu130 pins: the GPU machines' driver (580) rejects PTX from
# nvcc >= 13.1, and at run time the binaries load the libraries of that machine's torch wheels.
WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 nvidia-cudnn-cu13==9.19.0.56"
if [ "$(cat "$VENV/.wheels" 2>/dev/null)" != "$WHEELS" ]; then
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $WHEELS
  echo "$WHEELS" >"$VENV/.wheels"
fi
SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SP/nvidia/cu13

# Link folder: the wheels ship only libX.so.N, so unversioned symlinks, and a stub libcuda.so
# (soname libcuda.so.1) exporting the cu* symbols cudarc binds. The stub is for linking only; the
# driver's libcuda.so.1 replaces it at start-up on the GPU machine.
mkdir -p "$LINKDIR"
for l in cudart cublas cublasLt nvrtc; do ln -sf "$CU/lib/lib$l.so.13" "$LINKDIR/lib$l.so"; done
ln -sf "$CU/lib/libcurand.so.10" "$LINKDIR/libcurand.so"
ln -sf "$SP/nvidia/cudnn/lib/libcudnn.so.9" "$LINKDIR/libcudnn.so"
CUDARC=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
cargo fetch --locked -q
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC" | head -1)
grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" | sed 's/pub unsafe fn //; s/($//' | sort -u |
  awk '{ print "int " $1 "(void) { return 999; }" }' >"$LINKDIR/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKDIR/libcuda.so" "$LINKDIR/libcuda_stub.c"

export PATH=$CU/bin:$PATH # nvcc, called by candle-kernels' build (cudaforge) and cudarc
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINKDIR"
export CARGO_TARGET_DIR=$TARGET

# What the GPU run needs (deploy/gpu/run.sh): the binaries, the PyTorch oracle tests and the
# training-step bench, all in the `gpu` profile (release, stripped), in ONE cargo invocation: each
# other selection of packages and targets resolves other features for the build scripts' own
# dependencies, which rebuilds candle-kernels (half an hour of nvcc on 2 cores). mistnet-edge (the
# job's edge processes, on the CPU) gets `cuda` too only so that it shares that build.
JSON=$(mktemp)
trap 'rm -f "$JSON"' EXIT
cargo build --locked --profile gpu --message-format=json-render-diagnostics \
  -p mistnet-cloud -p mistnet-edge -p mistnet -p mistnet-train \
  --features mistnet-cloud/cuda,mistnet-edge/cuda,mistnet/cuda,mistnet-train/cuda \
  --bin mistnet-cloud --bin mistnet-edge --test yolov5_parity --test loss_parity --test optimizer_golden \
  --bench train_step >"$JSON"

rm -rf "$DIST"
mkdir -p "$DIST"
# Each executable under its target's name (test and bench executables carry a hash suffix).
python3 - "$JSON" "$DIST" <<'EOF'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        shutil.copy2(m["executable"], f"{sys.argv[2]}/{m['target']['name']}")
EOF
strip "$DIST"/*
git rev-parse HEAD >"$DIST/COMMIT"
# What travels: one archive. Each executable is ~75 MB, mostly candle's GPU kernels, which they share:
# a 512 MiB window (all of them) stores it once. Python's lzma unpacks it on the GPU machine.
tar -C "$ROOT/target" -cf - gpu-dist | xz -T1 --lzma2=preset=6,dict=512MiB >"$ROOT/target/gpu-dist.tar.xz"
ls -l "$DIST" "$ROOT/target/gpu-dist.tar.xz"
