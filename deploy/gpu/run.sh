#!/usr/bin/env bash
# The GPU run: every check of the CUDA build in one command, from the repository root of a copy
# carrying target/gpu-dist.tar.xz (deploy/gpu/build.sh makes it; README.md here says how to run).
#
#   deploy/gpu/run.sh                 # writes under $OUT (default runs/gpu)
#
# Steps, in order of value, each capped by `timeout` and logged, none stopping the rest:
#   oracle  the PyTorch oracle tests on the GPU (every layer, the loss, the 132 gradients, the
#           BatchNorm buffers, the optimizer)
#   train   one `train` epoch on CPU (train-ref) and on the GPU (train-dev) from the same seed and
#           data: loss per step
#   bench   the training step (yolov5s Back, cut 4, 640 px, batch 8 and 64): ours, then PyTorch's
#   job     the whole job on the GPU at 640 px on generated data, as long as time is left
# Then $OUT/summary.md, $OUT/summary.json, $OUT/run.log, and $OUT/logs.tar.gz with every log.
#
# Environment: OUT, MISTNET_GPU_DEVICE (cuda:0; `cpu` tries the script on a machine without a
# GPU), MISTNET_GPU_DIST (the executables, default target/gpu-dist), MISTNET_GPU_BUDGET (seconds
# for all steps, 420), MISTNET_GPU_STEPS (which steps, "oracle train bench job").
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/runs/gpu}
DEVICE=${MISTNET_GPU_DEVICE:-cuda:0}
BUDGET=${MISTNET_GPU_BUDGET:-420}
STEPS=${MISTNET_GPU_STEPS:-oracle train bench job}
DIST=${MISTNET_GPU_DIST:-$ROOT/target/gpu-dist}
# At most 8 files come back from $OUT: run.log, summary.md, summary.json and logs.tar.gz.
WORK=${TMPDIR:-/tmp}/mistnet-gpu-run
LOGS=$WORK/logs
START=$(date +%s)
rm -rf "$WORK"
mkdir -p "$LOGS" "$OUT"
exec > >(tee "$OUT/run.log") 2>&1

if [ ! -x "$DIST/mistnet-cloud" ] && [ -f "$ROOT/target/gpu-dist.tar.xz" ]; then
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$ROOT/target/gpu-dist.tar.xz" "$ROOT/target"
fi
[ -x "$DIST/mistnet-cloud" ] || { echo "no $DIST/mistnet-cloud: run deploy/gpu/build.sh and carry target/gpu-dist.tar.xz"; exit 1; }
echo "build: $(cat "$DIST/COMMIT" 2>/dev/null); checkout: $(git rev-parse HEAD 2>/dev/null || echo unknown)"

# The CUDA libraries of the machine's PyTorch wheels (nvidia/cu13, nvidia/cudnn), as built against.
NV=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null ||
  python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"] + "/nvidia")')
export LD_LIBRARY_PATH=$NV/cu13/lib:$NV/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export RUST_BACKTRACE=1
nvidia-smi || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' || true
ldd "$DIST/mistnet-cloud" | grep -E 'cuda|cublas|curand|cudnn|not found' || true
CORES=$(nproc)

# step NAME CAP CMD...: runs CMD with at most CAP seconds (less if the budget is nearly spent),
# sampling the GPU's used memory, into $LOGS/NAME.log; one line per step in $LOGS/steps.tsv.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 10 ]; then
    printf '%s\tskipped\t0\t0\n' "$name" >>"$LOGS/steps.tsv"
    echo "== $name: skipped, budget spent"
    return
  fi
  echo "== $name (at most ${cap} s): $*"
  local sampler=
  if command -v nvidia-smi >/dev/null && [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$LOGS/$name.mem" 2>/dev/null &
    sampler=$!
  fi
  local t0 rc
  t0=$(date +%s.%N)
  timeout -k 10 "$cap" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  local wall peak
  wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
  peak=$(sort -n "$LOGS/$name.mem" 2>/dev/null | tail -1)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "${peak:-0}" >>"$LOGS/steps.tsv"
  echo "== $name: exit $rc, ${wall} s, GPU memory used at most ${peak:-?} MiB"
  tail -3 "$LOGS/$name.log"
}

want() { [[ " $STEPS " == *" $1 "* ]]; }

if want oracle; then
  # The test executables find the fixtures under CARGO_MANIFEST_DIR, as under `cargo test`.
  export MISTNET_TEST_DEVICE=$DEVICE
  CARGO_MANIFEST_DIR=$ROOT/shared step oracle-layers 120 "$DIST/yolov5_parity"
  CARGO_MANIFEST_DIR=$ROOT/cloud/train step oracle-loss 120 "$DIST/loss_parity"
  CARGO_MANIFEST_DIR=$ROOT/cloud/train step oracle-optimizer 60 "$DIST/optimizer_golden"
  unset MISTNET_TEST_DEVICE
fi

if want train; then
  # yolov5n at 128 px from the pretrained model the end-to-end tests use, the edges simulated
  # without noise: the same batches on both devices, so the per-step losses must agree to float
  # tolerance. On a CPU try-out the second run takes the GPU's path on the CPU (MISTNET_CANDLE_OPS=1).
  "$DIST/mistnet-cloud" synth --out "$WORK/data" --images 400 --imgsz 128 --seed 0 >"$LOGS/train-data.log" 2>&1
  for tag in ref dev; do
    if [ $tag = ref ]; then dev=cpu; else dev=$DEVICE; fi
    [ $tag = dev ] && [ "$DEVICE" = cpu ] && export MISTNET_CANDLE_OPS=1
    step "train-$tag" 150 "$DIST/mistnet-cloud" train --data "$WORK/data/private.yaml" \
      --weights "$ROOT/tests/fixtures/yolov5n-synth128-pretrained.safetensors" --cut 4 \
      --imgsz 128 --mechanism none --epochs 1 --batch 16 --seed 0 --device "$dev" --out "$WORK/train-$tag"
    unset MISTNET_CANDLE_OPS
  done
fi

if want bench; then
  # Ours and PyTorch's alternated on the same card, the same shapes and synthetic boxes.
  for bs in 8 64; do
    MISTNET_BENCH_DEVICE=$DEVICE MISTNET_BENCH_BATCH=$bs MISTNET_BENCH_ITERS=5 \
      step "bench-ours-b$bs" 120 "$DIST/train_step"
    step "bench-torch-b$bs" 90 python3 "$ROOT/tools/bench_train_step_torch.py" --device "${DEVICE%%:*}" \
      --batch "$bs" --iters 5
  done
fi

if want job; then
  # The whole job (data, pretraining, edges, training, centralized, val) at a real size, with
  # whatever time is left; the privacy attacks are left out.
  step job 3600 "$DIST/mistnet-cloud" job --out "$WORK/job" --model yolov5s --imgsz 640 --images 2000 \
    --edges 4 --pretrain-epochs 1 --epochs 1 --batch 16 --skip-privacy --threads "$CORES" --device "$DEVICE"
  cp "$WORK/job/summary.md" "$LOGS/job-summary.md" 2>/dev/null
  cp "$WORK/job/summary.json" "$LOGS/job-summary.json" 2>/dev/null
  for f in "$WORK"/job/logs/*.log; do [ -f "$f" ] && cp "$f" "$LOGS/job-$(basename "$f")"; done
fi

python3 "$ROOT/deploy/gpu/summarize.py" "$LOGS" "$OUT" "$DEVICE"
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
echo "total $(($(date +%s) - START)) s"
