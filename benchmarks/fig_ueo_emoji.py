"""UEO on an unlabeled emoji domain-shift split with unknown classes mixed in: before vs after.

Target data (transductive, as in the UEO paper): the Fluent 3D drawings of the 257 ID classes
(known, a style vlmood-tiny never saw) plus the Fluent 3D drawings of the 28 held-out classes
(unknown, label -1): the "open" prior-knowledge setting. UEO trains on these images without
labels (prompt context initialised "a photo of a" + the visual tower's normalisation affine
parameters); before = the zero-shot model with that same initial prompt. Metrics (UEO's):
``gacc`` accuracy on known-class images, ``pacc`` mean per-class accuracy, ``auroc`` known vs
unknown with MCM (T = 1). Mean and std over seeds.

Command (the figure in the closing note of issue 4):

    .venv/bin/python benchmarks/fig_ueo_emoji.py --root ~/vlmood-data --epochs 20 --seeds 0,1,2

Prints a table and one JSON line; writes ``--out``/ueo_emoji.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def target_source(root: Path):
    from vlmood.data.base import ImageSample, ImageSource
    from vlmood.data.sources import image_list

    splits = root / "emoji" / "splits"
    names = [x.strip() for x in (splits / "id_classes.txt").read_text().splitlines() if x.strip()]
    known = image_list(splits / "fluent-3d_id.txt", root / "emoji", names)
    unknown = image_list(splits / "fluent-3d_heldout.txt", root / "emoji")
    samples = list(known.samples) + [ImageSample(s.path, -1, s.caption) for s in unknown.samples]
    return ImageSource(
        name="fluent-3d-open",
        samples=samples,
        classnames=names,
        kind="list",
        origin=str(splits / "fluent-3d_id.txt") + "+" + str(splits / "fluent-3d_heldout.txt"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.expanduser("~/vlmood-data"))
    ap.add_argument("--model", default="vlmood-tiny")
    ap.add_argument("--epochs", type=int, default=20, help="UEO trains 50 epochs on DomainNet-size data")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--lr", type=float, default=None, help="default: UEO's SGD lr 1e-4")
    ap.add_argument("--out", default="runs/ueo-emoji")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vlmood.features.extract import extract_features
    from vlmood.methods import create_method, fit_method, load_adapter
    from vlmood.methods.prompt import PromptLearner
    from vlmood.methods.ueo import ueo_metrics
    from vlmood.models import load_model

    src = target_source(Path(args.root))
    labels = np.asarray(src.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # before: zero-shot with UEO's initial prompt ("a photo of a" + class name)
    base = load_model(args.model)
    with torch.no_grad():
        text0 = PromptLearner(base, src.classnames, ctx_init="a photo of a").text_features(0, False)
    feats = extract_features(base, src, ["image"], cache_root=args.cache_dir, progress=False).get("image")
    before = ueo_metrics(np.asarray(feats) @ text0.numpy().T, labels)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = create_method("ueo").default_config(epochs=args.epochs, seed=seed)
        if args.lr is not None:
            cfg.lr = args.lr
        ad_dir = out / f"seed{seed}"
        resume = (ad_dir / "train" / "last.pt").is_file() and not (ad_dir / "adapter.json").is_file()
        if not (ad_dir / "adapter.json").is_file():
            t = time.perf_counter()
            fit_method(
                "ueo", base, src, ad_dir, cfg=cfg, cache_root=args.cache_dir, progress=False, resume=resume
            )
            print(f"seed {seed}: trained in {time.perf_counter() - t:.0f} s", flush=True)
        model = load_model(args.model)  # the adapter rewrites the visual norms of the model it loads onto
        ad = load_adapter(ad_dir, model)
        f = extract_features(model, src, ["image"], cache_root=args.cache_dir, progress=False).get("image")
        rows.append(ueo_metrics(np.asarray(f) @ ad.text_features().T, labels))

    def ms(key):
        a = np.array([r[key] for r in rows], dtype=np.float64)
        return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0

    n_known, n_unknown = int((labels >= 0).sum()), int((labels < 0).sum())
    print(f"\nUEO on {src.name}: {n_known} known-class images (257 classes) + {n_unknown} unknown")
    print(f"model {args.model}, {args.epochs} epochs, seeds {args.seeds}\n")
    print(f"{'':<8}{'gacc %':>16}{'pacc %':>16}{'AUROC %':>16}")
    print(f"{'before':<8}" + "".join(f"{100 * before[k]:>16.2f}" for k in ("gacc", "pacc", "auroc")))
    print(
        f"{'after':<8}"
        + "".join(f"{100 * ms(k)[0]:>9.2f} ± {100 * ms(k)[1]:<4.2f}" for k in ("gacc", "pacc", "auroc"))
    )
    result = {
        "figure": "ueo_emoji",
        "model": args.model,
        "target": src.name,
        "n_known": n_known,
        "n_unknown": n_unknown,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "before": before,
        "after": {k: {"mean": ms(k)[0], "std": ms(k)[1]} for k in ("gacc", "pacc", "auroc")},
        "after_per_seed": rows,
        "wall_s": time.perf_counter() - t0,
        "loadavg": os.getloadavg(),
    }
    (out / "ueo_emoji.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
