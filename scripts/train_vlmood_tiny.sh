#!/usr/bin/env bash
# Reproduce vlmood-tiny: prepare the offline sources, pretrain, then evaluate on emoji-ood.
#   DATA  prepared-data root (default ~/vlmood-data)   OUT  run directory (default ~/vlmood-runs/tiny)
# About 45-60 minutes on 2 CPU cores (bf16 autocast). Seeded: the same command gives the same weights
# on the same software stack.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$HOME/vlmood-data}"
OUT="${OUT:-$HOME/vlmood-runs/tiny}"
VL=.venv/bin/vlmood
for src in emoji openclipart tuxpaint; do
  [ -f "$DATA/$src/vlmood_prepared.json" ] || $VL data prepare "$src" --out "$DATA/$src" --install
done
# Pretraining pairs: Twitter + OpenMoji-colour emoji (every Google, Fluent-3D and OpenMoji-black image and
# every image of a held-out class is excluded: emoji/splits/pretrain_exclude.txt), OpenClipart, Tux Paint.
$VL pretrain \
  --data "$DATA/emoji" "$DATA/openclipart" "$DATA/tuxpaint" \
  --exclude "$DATA/emoji/splits/pretrain_exclude.txt" \
  --model-config vlmood-tiny --text-tower minilm \
  --epochs 36 --batch-size 64 --lr 1e-3 --weight-decay 0.1 --warmup-steps 300 \
  --precision bf16 --seed 0 --workers 1 --device cpu \
  --out "$OUT" ${RESUME:+--resume}
echo "model: local-dir:$OUT/model"
