#!/usr/bin/env bash
# PLP's feature-space OOD manipulation on emoji-ood with the default model (vlmood-small):
# AUROC of ID vs the original and vs the manipulated OOD images for KNN (bank with and without
# the targets), MCM, NegLabel and energy, for smooth (lambda_s 5e3) and patchy (0) perturbations.
#   DATA   prepared-data root (default ~/vlmood-data)    OUT  run folder (default runs/attack-emoji)
#   LIMIT  OOD images attacked per kind (default 32; seeded, from all five OOD sets)
#   DEVICE cpu | cuda (default cpu)                      MODEL default vlmood-small
#   EVAL_ONLY=1  only evaluate OUT/{smooth,patchy} (e.g. written on a GPU by benchmarks/gpu_attack.sh)
# Cost: about 28 s per image on 2 CPU cores at 224 px (250 Adam steps), so LIMIT=32 is ~30 min
# for both kinds; a killed run resumes per batch. The evaluation reuses the feature cache.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$HOME/vlmood-data}"
OUT="${OUT:-runs/attack-emoji}"
LIMIT="${LIMIT:-32}"
DEVICE="${DEVICE:-cpu}"
MODEL="${MODEL:-vlmood-small}"
for kind in smooth patchy; do
  .venv/bin/vlmood attack --model "$MODEL" --benchmark emoji-ood --root "$DATA" --preset "$kind" \
    --limit "$LIMIT" --device "$DEVICE" --precision fp32 --no-progress --out "$OUT/$kind" \
    ${EVAL_ONLY:+--eval-only}
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
res = {k: json.loads((out / k / "attack_results.json").read_text()) for k in ("smooth", "patchy")}
meta = {k: json.loads((out / k / "attack.json").read_text()) for k in res}
print("| score | AUROC original | AUROC smooth (drop) | AUROC patchy (drop) |")
print("|---|---|---|---|")
rows = {r["score"]: r for r in res["smooth"]["rows"]}
for r in res["patchy"]["rows"]:
    s = rows[r["score"]]
    print(f"| {r['score']} | {100*s['auroc_original']:.1f} | {100*s['auroc_manipulated']:.1f} ({100*s['auroc_drop']:+.1f}) "
          f"| {100*r['auroc_manipulated']:.1f} ({100*r['auroc_drop']:+.1f}) |")
for k, m in meta.items():
    s = m["summary"]
    print(f"{k}: {m['n_images']} images, cosine to target {s['cos_before_mean']:.3f} -> {s['cos_after_mean']:.3f}, "
          f"max |delta| {s['linf_max']:.3f}, {m.get('throughput', {}).get('images_per_s')} images/s")
PY
