#!/usr/bin/env bash
# The attack on one GPU (H100/H200): vlmood-small on emoji-ood, smooth and patchy, written as the
# datasets benchmarks/fig_attack_emoji.sh evaluates (copy them to runs/attack-emoji-gpu/{smooth,patchy}
# on the machine that has the data, then `OUT=runs/attack-emoji-gpu LIMIT=$LIMIT bash
# benchmarks/fig_attack_emoji.sh` resumes them: nothing left to attack, only the evaluation runs);
# then benchmarks/bench_attack.py on CUDA (vlmood vs a plain loop).
# The device has no network: .gpu/data.tar (the emoji-ood ID, train and OOD images, tar'ed with
# their mtimes, extracted at the same absolute root so the attack's identity matches) and
# .gpu/site.tar.gz (the efficientnet-lite0 weight package; the MiniLM text-tower package with its
# weights zeroed: the attacked feature is the image tower's, which never reads the text tower, and
# the package fits the 64 MiB transfer limit only that way) travel with the repo, plus .whl/ (open_clip).
#   OUT  where logs and tar parts go    LIMIT  images per kind (default 192)   DEVICE  default cuda
set -x
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_attack_out}"
LIMIT="${LIMIT:-192}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-250}"
DATA="${DATA:-/root/vlmood-data}"
mkdir -p "$OUT"
if [ -f .gpu/data.tar ] && [ ! -d "$DATA/emoji/splits" ]; then mkdir -p "$DATA" && tar -xf .gpu/data.tar -C "$DATA"; fi
if [ -f .gpu/site.tar.gz ]; then
  mkdir -p /tmp/site && tar -xzf .gpu/site.tar.gz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/versions.txt" 2>&1
$PY -c "import torch, timm, open_clip; print(torch.__version__, timm.__version__, open_clip.__version__)" >> "$OUT/versions.txt" 2>&1
SETS=train,google-objects,google-travel-places,google-activities,google-flags,google-symbols
SCRATCH="${SCRATCH:-/tmp/attack_gpu}"
for kind in smooth patchy; do
  $PY -m vlmood.cli attack --model vlmood-small --benchmark emoji-ood --root "$DATA" --sets "$SETS" \
    --preset "$kind" --limit "$LIMIT" --steps "$STEPS" --attack-batch 16 --device "$DEVICE" --precision fp32 \
    --no-eval --no-progress --out "$SCRATCH/$kind" 2>&1 | tail -40 > "$OUT/attack-$kind.log"
done
(cd "$SCRATCH" && tar -cf - smooth patchy) | split -b 15m - "$OUT/attack.tar.part-"
$PY benchmarks/bench_attack.py --device "$DEVICE" --model vlmood-small --images 128 --batch 16 --steps "$STEPS" \
  --repeat 2 2>&1 | tee "$OUT/bench.log"
ls -la "$OUT"
