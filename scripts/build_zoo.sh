#!/usr/bin/env bash
# Build the offline model zoo: members of the vlmood-small family (scripts/train_vlmood_small.sh's
# recipe) that differ in backbone, input resolution, head and training length, so that their ID
# accuracy differs clearly. With the packaged vlmood-tiny and vlmood-small they make the zoo that
# `vlmood zoo` evaluates (ID accuracy vs OOD detection across models, PLP's claim).
#   DATA   prepared-data root (default ~/vlmood-data; the emoji, openclipart, tuxpaint sources)
#   OUT    zoo folder (default ~/vlmood-runs/zoo): one run folder per member + zoo.txt (the model list)
#   CACHE  shared activation cache (default OUT/cache): members with the same trunk and size share it
#   ONLY   space-separated member names to build (default: all)
# Cost on 2 CPU cores: about 45 minutes cold (feature extraction at four sizes/trunks dominates),
# a few minutes with the activations cached. Each member is a deterministic function of its line below.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$HOME/vlmood-data}"
OUT="${OUT:-$HOME/vlmood-runs/zoo}"
CACHE="${CACHE:-$OUT/cache}"
VL=.venv/bin/vlmood
mkdir -p "$OUT" "$CACHE"
for src in emoji openclipart tuxpaint; do
  [ -f "$DATA/$src/vlmood_prepared.json" ] || $VL data prepare "$src" --out "$DATA/$src" --install
done
# name            backbone size epochs head
MEMBERS="
lite0-224-e1      lite0 224 1   mlp
lite0-224-e4      lite0 224 4   mlp
lite0-224-e16     lite0 224 16  mlp
lite0-224-linear  lite0 224 400 linear
lite0-128         lite0 128 400 mlp
lite0-96          lite0 96  400 mlp
lite0-64          lite0 64  400 mlp
lite1-128         lite1 128 400 mlp
"
list="$OUT/zoo.txt"
tmp="$list.tmp"
{
  echo "# vlmood zoo members: name=model spec (written by scripts/build_zoo.sh)"
  echo "vlmood-tiny=vlmood-tiny"
  echo "vlmood-small=vlmood-small"
} >"$tmp"
while read -r name backbone size epochs head; do
  [ -n "$name" ] || continue
  run="$OUT/$name"
  echo "local-dir:$run/model" | sed "s|^|$name=|" >>"$tmp"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  if [ -f "$run/model/model.safetensors" ]; then echo "$name: built"; continue; fi
  mkdir -p "$run"
  [ -e "$run/cache" ] || ln -s "$CACHE" "$run/cache"
  echo "$name: training ($backbone, ${size} px, $epochs epochs, $head head)"
  $VL pretrain --image-tower "$backbone" --image-size "$size" --head "$head" \
    --data "$DATA/emoji" "$DATA/openclipart" "$DATA/tuxpaint" \
    --exclude "$DATA/emoji/splits/pretrain_exclude.txt" \
    --epochs "$epochs" --batch-size 512 --lr 3e-3 --weight-decay 0.1 --seed 0 \
    --device cpu --no-progress --out "$run"
done <<<"$MEMBERS"
mv "$tmp" "$list"
echo "zoo list: $list"
echo "evaluate: vlmood zoo --models $list --benchmark emoji-ood --root $DATA --out RUN"
