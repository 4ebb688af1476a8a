#!/usr/bin/env bash
# Issue 11's figure: full fine-tuning on the default model (MODEL=vlmood-small) and emoji-ood:
# zero-shot vs FT, LP-FT, FLYP, CMA, WiSE-FT (alpha 0, 0.25, 0.5, 0.75, 1 between zero-shot and
# FT) and ARF, SEEDS seeds; ID accuracy, domain-shift accuracy per style, held-out-class accuracy,
# near/far FPR95/AUROC with MCM, NegLabel, energy and max-logit, and the modality gap, as mean ±
# std in OUT/study.md. A rerun resumes (finished adapters and evaluations are reused).
#
#   bash benchmarks/fig_finetune_emoji.sh                       # ROOT=~/vlmood-data SEEDS=0,1,2
#   METHODS=zero-shot,ft,wise-ft SEEDS=0 OUT=runs/ft-quick bash benchmarks/fig_finetune_emoji.sh
#
# Settings (one set for every method, so the rows compare): the train split is the ID classes in
# the two pretraining styles (Twitter + OpenMoji colour, 2 images per class, 514 images), all of it
# (--shots 2). 2 epochs of batch 32 (32 steps), AdamW lr 1e-4, weight decay 0.1, 5 warmup steps
# then cosine: FLYP's ImageNet recipe is 10 epochs of batch 512 at lr 1e-5 with 500 warmup steps,
# which on 514 images would be 10 steps, all of them warmup. FT's training loss is below 0.07
# after one epoch at this rate (the split is small), and on 2 CPU cores one epoch of the image
# tower (EfficientNet-Lite0 at 224 px, forward and backward) takes one to six minutes (shared
# cores), so 2 epochs. CMA's lambda is the paper's
# 0.001. ARF: captions built from the emoji metadata (`vlmood data captions`), anchors retrieved
# from the prepared OpenClipart + Tux Paint pairs by similarity to the class-name texts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-$HOME/vlmood-data}
OUT=${OUT:-runs/finetune-emoji}
METHODS=${METHODS:-zero-shot,ft,lp-ft,flyp,cma,wise-ft,arf}
SEEDS=${SEEDS:-0,1,2}
MODEL=${MODEL:-vlmood-small}
EPOCHS=${EPOCHS:-2}
LR=${LR:-1e-4}
args=(--set "epochs=$EPOCHS" --set "lr=$LR" --set batch_size=32 --set warmup_steps=5)
for m in ${METHODS//,/ }; do
  case $m in
    cma) args+=(--param "cma:lam=0.001") ;;
    wise-ft) args+=(--param "wise-ft:endpoint=ft" --param "wise-ft:alphas=0,0.25,0.5,0.75,1") ;;
    arf)
      CAPTIONS=${CAPTIONS:-$OUT/arf-captions.csv}
      mkdir -p "$OUT"
      [ -f "$CAPTIONS" ] || .venv/bin/vlmood data captions --root "$ROOT" --out "$CAPTIONS"
      args+=(--param "arf:captions=$CAPTIONS" --param "arf:captions_root=$ROOT"
             --param "arf:pool=$ROOT/openclipart/pairs.csv,$ROOT/tuxpaint/pairs.csv") ;;
  esac
done
exec .venv/bin/vlmood study --model "$MODEL" --benchmark emoji-ood --root "$ROOT" \
  --methods "$METHODS" --seeds "$SEEDS" --shots 2 \
  --scores mcm,energy,maxlogit --score neglabel \
  "${args[@]}" --out "$OUT" --no-progress
