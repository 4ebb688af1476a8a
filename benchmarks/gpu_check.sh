#!/usr/bin/env bash
# GPU checks of full fine-tuning at scale, for one H100/H200 (about 5-6 minutes):
#   (a) benchmarks/bench_finetune.py on CUDA: FLYP on open_clip ViT-B-32 (random weights, no
#       download), vlmood's engine vs a plain PyTorch loop, fp32 and bf16, activation
#       checkpointing off and on: step time, the vlmood/plain ratio, peak allocated memory;
#   (b) benchmarks/gpu_dist_check.py under a 1-process torchrun with NCCL: the DDP and the FSDP
#       path of a short fine-tune of the tiny model against the same run without a process group,
#       and a stop after epoch 1 + resume from the gathered checkpoint. One GPU allows world size 1
#       only (NCCL refuses two ranks on one device); at world size 1 the engine wraps no DDP (no
#       other rank), so "ddp" checks the engine under an NCCL group and "fsdp" the whole FSDP2 path
#       over a mesh of one. The 2-rank equality is tests/test_finetune_scale.py (gloo, CPU);
#   (c) everything into $OUT: one log per part, summary.txt (exit status and time of each part),
#       versions.txt.
# A failed part is recorded and the next one runs; the exit status is 1 when any part failed.
# Needs torch with CUDA, torchvision, timm, transformers and open_clip_torch (+ ftfy) installed,
# e.g. `pip install --no-index --no-deps .whl/*.whl` first; no network is used.
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh          (default OUT: ./gpu_check_out)
set -x
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/vlmood_gpu_check.XXXXXX")"  # checkpoints: not into $OUT
fail=0
: > "$OUT/summary.txt"

part() {  # part NAME SECONDS CMD...: run CMD under a time limit, log it, record its exit status
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || fail=1
  return 0
}

{
  date -u
  uname -a
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "torchvision", "timm", "transformers", "open_clip", "numpy", "safetensors"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:  # report and go on: the parts that need it fail on their own
        print(name, "MISSING:", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("bf16 supported", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
try:
    from torch.distributed.fsdp import fully_shard  # noqa: F401
    print("FSDP2 fully_shard: yes")
except ImportError as e:
    print("FSDP2 fully_shard: no", e)
EOF
} 2>&1 | tee "$OUT/versions.txt"

# (a) step time and memory, vlmood vs plain (plain/vlmood x checkpointing off/on, one subprocess
# each); bf16 steps are host-bound at this size (DataLoader collate/pin + launches, ~45 ms of GPU
# work in ~80-160 ms) and vary +-15% between runs: each config runs twice, the faster counts
part bench_finetune_fp32 300 "$PY" benchmarks/bench_finetune.py --device cuda --precision fp32 \
  --batch-size 128 --warmup 3 --steps 10 --threads 0 --tmp "$SCRATCH"
part bench_finetune_bf16 360 "$PY" benchmarks/bench_finetune.py --device cuda --precision bf16 \
  --batch-size 128 --warmup 3 --steps 10 --threads 0 --repeat 2 --tmp "$SCRATCH"

# (b) DDP and FSDP under a 1-process NCCL torchrun (tiny model, short fine-tune, resume)
for run in ddp:fp32 fsdp:fp32 fsdp:bf16; do
  strategy=${run%%:*}
  prec=${run##*:}
  part "dist_${strategy}_${prec}" 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    benchmarks/gpu_dist_check.py --strategy "$strategy" --precision "$prec" --out "$SCRATCH/dist"
done

rm -rf "$SCRATCH"
set +x
echo "== summary ($OUT)"
cat "$OUT/summary.txt"
for f in "$OUT"/bench_finetune_*.log; do
  [ -f "$f" ] && { echo "== $f"; grep -v '^{' "$f" | grep -v '^#' | tail -n 16; }
done
for f in "$OUT"/dist_*.log; do
  [ -f "$f" ] && { echo "== $f"; grep '^{' "$f" | tail -n 1; }
done
exit $fail
