#!/usr/bin/env bash
# Issue 4's study figure: the default model (MODEL=vlmood-small; vlmood-tiny before) on emoji-ood, zero-shot vs CoOp, LoCoOp, linear probe and PLP,
# 3 seeds, every score; mean ± std in OUT/study.md. A rerun resumes (finished pieces are reused).
#
#   bash benchmarks/fig_study_emoji.sh            # ROOT=~/vlmood-data OUT=runs/study-emoji MODEL=vlmood-small
#   METHODS=zero-shot,cocoop SEEDS=0 OUT=runs/study-emoji-cocoop bash benchmarks/fig_study_emoji.sh
#
# Shots: the emoji train split holds 2 images per ID class (Twitter + OpenMoji colour), so 2-shot
# is all there is (16 shots would be refused: "more shots than images"). Prompt methods start from
# the words "a photo of a" (n_ctx 4, CoOp's word initialisation) and train 20 epochs of batch 32
# (CoOp's schedule is 50; on 2 CPU cores each step encodes all 257 class prompts through MiniLM,
# ~0.9 s), without class chunking (text_chunk=0: 257 prompts fit in memory, no recomputation).
# CoCoOp encodes 257 prompts per image (training and evaluation): 1 epoch by default here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-$HOME/vlmood-data}
OUT=${OUT:-runs/study-emoji}
METHODS=${METHODS:-zero-shot,coop,locoop,linear-probe,plp}
SEEDS=${SEEDS:-0,1,2}
MODEL=${MODEL:-vlmood-small}
args=()
for m in ${METHODS//,/ }; do
  case $m in
    coop|locoop|cocoop)
      args+=(--param "$m:ctx_init=a photo of a" --param "$m:text_chunk=0") ;;
  esac
  case $m in
    coop) args+=(--set "coop:epochs=20") ;;
    # LoCoOp's top-K is 200 of ImageNet's 1,000 classes (20 of ImageNet-100's): 20% of 257 = 51
    locoop) args+=(--set "locoop:epochs=20" --param "locoop:top_k=51") ;;
    # one epoch = 514 steps of batch 1; CoOp's 1-epoch constant warmup would take all of it
    cocoop) args+=(--set "cocoop:epochs=1" --set "cocoop:warmup_steps=20") ;;
  esac
done
exec .venv/bin/vlmood study --model "$MODEL" --benchmark emoji-ood --root "$ROOT" \
  --methods "$METHODS" --seeds "$SEEDS" --shots 2 \
  --scores mcm,msp,energy,maxlogit,l1 --score neglabel \
  "${args[@]}" --out "$OUT" --no-progress
