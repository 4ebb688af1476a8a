#!/usr/bin/env bash
# ID accuracy vs OOD detection across the offline zoo (PLP's R² claim) on emoji-ood:
# builds the zoo (scripts/build_zoo.sh: 8 members of the vlmood-small family) and evaluates it with
# vlmood-tiny and vlmood-small: MCM, KNN, NegLabel, energy; zoo.json, zoo.md, scatter-<score>.png.
#   DATA  prepared-data root (default ~/vlmood-data)   ZOO  zoo folder (default ~/vlmood-runs/zoo)
#   OUT   run folder (default runs/zoo-emoji)
# Cost on 2 CPU cores: the build ~45 min cold; the evaluation ~25 min (NegLabel's 140k candidates
# are encoded once for the whole family: they share the locked MiniLM text transformer).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$HOME/vlmood-data}"
ZOO="${ZOO:-$HOME/vlmood-runs/zoo}"
OUT="${OUT:-runs/zoo-emoji}"
DATA="$DATA" OUT="$ZOO" bash scripts/build_zoo.sh
.venv/bin/vlmood zoo --models "$ZOO/zoo.txt" --benchmark emoji-ood --root "$DATA" \
  --sets train,google-objects,google-travel-places,google-activities,google-flags,google-symbols \
  --scores mcm,knn,neglabel,energy --device cpu --no-progress --out "$OUT"
