"""Benchmark: PLP on 100,000 cached features x 1,000 classes, 100 epochs (wall time on 2 CPU cores).

Setup: synthetic cached features written as float32 ``.npy`` files (the feature cache's storage
type for ``image`` and ``preproj``) and opened with ``mmap_mode='r'``, as ``extract_features``
returns them. Class centres in the image-embedding space are the model's own PLP classifier
(``plp5`` templates over "class 123 thing" names); each sample has a latent class ``c``, its
``image`` feature is ``normalise(centre_c + noise)`` (so the zero-shot argmax, PLP's
pseudo-label, spreads over the classes and agrees with ``c`` only in part) and its ``preproj``
feature is ``P[c] + noise`` with random class means ``P`` of width ``--preproj-dim`` (default
768, a ViT-B pre-projection width; ``0`` = the model's own width). Labels are all -1
(unlabelled), as PLP expects.

- **vlmood**: ``fit_method("plp", model, TrainData(...), out, cfg=default_config(epochs=E))``:
  pseudo-label text encoding (5 templates x K classes, text cache in a fresh temp dir, so it is
  encoded), pseudo-labels, feature statistics, the engine (Adam lr 1e-3, wd 1e-3, batch 256,
  drop_last False, 10% warmup + cosine, per-epoch checkpoint and metrics), final train
  accuracy, adapter write. Per-epoch times come from the engine's ``metrics.jsonl``.
- **plain**: a minimal hand-written PyTorch loop on the same pseudo-labels: standardised
  features already in memory as one tensor, ``nn.Linear(W, K)``, Adam (same lr, weight decay),
  a random permutation per epoch, batch 256, the same number of optimiser steps.

Reports wall time, time per epoch, samples/s, the ratio vlmood/plain of the training loops,
peak RSS per phase (``VmHWM``, reset through ``/proc/self/clear_refs`` between phases) and the
load average (another process may share the CPUs).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_plp.py                                      # full run
    PYTHONPATH=src .venv/bin/python benchmarks/bench_plp.py --n 10000 --classes 100 --epochs 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _memory import peak_rss_mb, reset_peak_rss, status_kb  # noqa: E402  (sibling module)
from torch import nn


def write_features(work: Path, centres: np.ndarray, args, rng: np.random.Generator):
    """image [N, D] and preproj [N, W] float32 .npy files (written in chunks), opened as memory maps."""
    n, k = args.n, len(centres)
    d = centres.shape[1]
    w = args.preproj_dim
    latent = rng.integers(0, k, n)
    pmeans = rng.standard_normal((k, w)).astype(np.float32)
    img = np.lib.format.open_memmap(work / "image.npy", mode="w+", dtype=np.float32, shape=(n, d))
    pre = np.lib.format.open_memmap(work / "preproj.npy", mode="w+", dtype=np.float32, shape=(n, w))
    # noise on the unit sphere at a radius chosen from the centres' own spacing (see main)
    for s in range(0, n, 20_000):
        c = latent[s : s + 20_000]
        x = centres[c] + args.noise * rng.standard_normal((len(c), d)).astype(np.float32) / math.sqrt(d)
        img[s : s + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        pre[s : s + len(c)] = pmeans[c] + args.preproj_noise * rng.standard_normal((len(c), w)).astype(
            np.float32
        )
    img.flush()
    pre.flush()
    del img, pre
    image = np.load(work / "image.npy", mmap_mode="r")
    preproj = np.load(work / "preproj.npy", mmap_mode="r")
    return image, preproj, latent


def plain_loop(x: torch.Tensor, y: torch.Tensor, k: int, epochs: int, batch: int, lr: float, wd: float):
    """Minimal PyTorch loop: in-memory standardised features, Linear + CE + Adam, batch ``batch``."""
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], k)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=wd)
    n = len(x)
    epoch_s = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            i = perm[s : s + batch]
            loss = nn.functional.cross_entropy(head(x[i]), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_s.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float((head(x).argmax(1) == y).float().mean())
    return epoch_s, float(loss.detach()), acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-test", help="model for the pseudo-label text encoder")
    ap.add_argument("--n", type=int, default=100_000, help="cached training features")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--preproj-dim", type=int, default=768, help="pre-projection width (0 = the model's)")
    ap.add_argument("--noise", type=float, default=1.0, help="image noise, in units of the centre spacing")
    ap.add_argument("--preproj-noise", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--plain-epochs", type=int, default=None, help="epochs of the plain loop (default: --epochs)"
    )
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (features, adapter)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from vlmood.data.templates import load_templates
    from vlmood.methods import create_method, fit_method
    from vlmood.methods.base import TrainData
    from vlmood.methods.probe import pseudo_label_text, pseudo_labels
    from vlmood.models import load_model

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when killed
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vlmood-bench-plp-"))
    try:
        model = load_model(args.model, device="cpu", precision="fp32")
        if args.preproj_dim <= 0:
            args.preproj_dim = int(model.torch_module.visual.transformer.width)
        names = [f"class {i} thing" for i in range(args.classes)]
        templates, _ = load_templates("plp5")
        t0 = time.perf_counter()
        centres = pseudo_label_text(model, names, templates, cache_root=work / "setup-text-cache")
        text_s = time.perf_counter() - t0
        # scale the noise by the typical distance between a centre and its nearest other centre
        sims = centres @ centres.T
        np.fill_diagonal(sims, -np.inf)
        nn_dist = float(np.median(np.sqrt(np.maximum(2 - 2 * sims.max(1), 0))))
        rng = np.random.default_rng(0)
        args.noise *= nn_dist * math.sqrt(centres.shape[1]) / 2
        t0 = time.perf_counter()
        image, preproj, latent = write_features(work, centres, args, rng)
        write_s = time.perf_counter() - t0
        labels = np.full(args.n, -1, dtype=np.int64)
        data = TrainData(
            names,
            labels,
            {"image": image, "preproj": preproj},
            cache_root=work / "plp-text-cache",
        )
        method = create_method("plp")
        cfg = method.default_config(epochs=args.epochs, batch_size=args.batch_size)
        steps_per_epoch = (
            math.ceil(args.n / cfg.batch_size) if not cfg.drop_last else args.n // cfg.batch_size
        )

        # ---------------------------------------------------------------- vlmood
        hwm_ok = reset_peak_rss()
        rss_before = (status_kb("VmRSS") or 0) / 1024
        load_v = os.getloadavg()
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fit_method("plp", model, data, work / "adapter", cfg=cfg, device="cpu", progress=False)
        v_wall = time.perf_counter() - t0
        v_cpu = time.process_time() - c0
        v_peak = peak_rss_mb()
        rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
        v_epochs = [r["time_s"] for r in rows if r.get("kind") == "epoch"]
        info = json.loads((out / "adapter.json").read_text())
        m = info.get("metrics", {})
        pl = pseudo_labels(image, centres)
        pl_classes = int(np.unique(pl).size)
        pl_agree = float((pl == latent).mean())
        biggest = float(np.bincount(pl, minlength=args.classes).max() / args.n)

        # ---------------------------------------------------------------- plain
        p_epochs: list[float] = []
        p_loss = p_acc = None
        p_peak = p_wall = p_cpu = None
        load_p = None
        if not args.skip_plain:
            x = torch.from_numpy(np.array(preproj, dtype=np.float32))
            x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)
            y = torch.from_numpy(pl)
            reset_peak_rss()
            load_p = os.getloadavg()
            c0 = time.process_time()
            t0 = time.perf_counter()
            p_epochs, p_loss, p_acc = plain_loop(
                x, y, args.classes, args.plain_epochs or args.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay
            )
            p_wall = time.perf_counter() - t0
            p_cpu = time.process_time() - c0
            p_peak = peak_rss_mb()
        load1 = os.getloadavg()

        v_loop = sum(v_epochs)
        samples = args.n * args.epochs
        print(
            f"PLP  n={args.n:,}  classes={args.classes}  epochs={args.epochs}  batch={cfg.batch_size}  "
            f"({steps_per_epoch} steps/epoch, drop_last={cfg.drop_last})  threads={torch.get_num_threads()}  "
            f"torch={torch.__version__}"
        )
        print(
            f"features: image {image.shape[1]}-d + preproj {preproj.shape[1]}-d float32 memory maps "
            f"(written in {write_s:.1f} s); pseudo-label text model {args.model} ({model.embed_dim}-d, "
            f"{len(templates)} templates, {text_s:.1f} s in setup)"
        )
        print(
            f"pseudo-labels: {pl_classes} of {args.classes} classes used, largest class {biggest:.1%} of "
            f"samples, {pl_agree:.1%} agree with the latent class; head train accuracy on pseudo-labels "
            f"{m.get('train_accuracy_targets', float('nan')):.1%}"
        )
        print(
            f"load average: start {load0[0]:.2f}, before vlmood {load_v[0]:.2f}, "
            f"before plain {load_p[0] if load_p else float('nan'):.2f}, end {load1[0]:.2f} (1-min, 2 cores; "
            f"this run alone adds ~{torch.get_num_threads()})"
        )
        hdr = ["run", "wall s", "loop s", "s/epoch", "median s/epoch", "samples/s", "cpu s", "peak RSS MB"]
        table = [
            [
                "vlmood fit_method",
                f"{v_wall:.1f}",
                f"{v_loop:.1f}",
                f"{v_loop / len(v_epochs):.3f}",
                f"{statistics.median(v_epochs):.3f}",
                f"{samples / v_loop:,.0f}",
                f"{v_cpu:.0f}",
                f"{v_peak:,.0f}",
            ]
        ]
        if p_epochs:
            table.append(
                [
                    "plain PyTorch loop",
                    f"{p_wall:.1f}",
                    f"{sum(p_epochs):.1f}",
                    f"{sum(p_epochs) / len(p_epochs):.3f}",
                    f"{statistics.median(p_epochs):.3f}",
                    f"{args.n * len(p_epochs) / sum(p_epochs):,.0f}",
                    f"{p_cpu:.0f}",
                    f"{p_peak:,.0f}",
                ]
            )
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(hdr)]
        print(" | ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(hdr, widths))))
        print("-+-".join("-" * w for w in widths))
        for r in table:
            print(" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        print("samples/s = n x epochs / loop s; cpu s = process CPU time (both threads) of the phase")
        print(
            f"vlmood wall = engine loop {v_loop:.1f} s + {v_wall - v_loop:.1f} s outside the epochs (text "
            "encoding, pseudo-labels, feature statistics, final predictions, adapter write)"
        )
        if p_epochs:
            p_per = sum(p_epochs) / len(p_epochs)
            print(
                f"ratio vlmood/plain per epoch (training loops): {(v_loop / len(v_epochs)) / p_per:.2f}x; "
                f"vlmood total wall {v_wall:.1f} s vs plain loop x {args.epochs} epochs {p_per * args.epochs:.1f} s: "
                f"{v_wall / (p_per * args.epochs):.2f}x (plain: {len(p_epochs)} epochs, final loss {p_loss:.3f}, "
                f"train accuracy {p_acc:.1%})"
            )
        print(
            f"peak RSS per phase: {'VmHWM reset before each phase' if hwm_ok else 'ru_maxrss (whole process)'}; "
            f"RSS before vlmood {rss_before:,.0f} MB (memory maps count once touched)"
        )
        summary = {
            "bench": "plp",
            "model": args.model,
            "n": args.n,
            "classes": args.classes,
            "epochs": args.epochs,
            "batch_size": cfg.batch_size,
            "steps_per_epoch": steps_per_epoch,
            "image_dim": int(image.shape[1]),
            "preproj_dim": int(preproj.shape[1]),
            "threads": torch.get_num_threads(),
            "pseudo_label_classes": pl_classes,
            "pseudo_label_agreement": pl_agree,
            "text_setup_s": text_s,
            "vlmood": {
                "wall_s": v_wall,
                "loop_s": v_loop,
                "epoch_s": v_epochs,
                "cpu_s": v_cpu,
                "peak_rss_mb": v_peak,
                "train_s": m.get("train_s"),
                "train_accuracy_targets": m.get("train_accuracy_targets"),
                "last_loss": (m.get("last") or {}).get("loss"),
            },
            "plain": None
            if not p_epochs
            else {
                "wall_s": p_wall,
                "loop_s": sum(p_epochs),
                "epoch_s": p_epochs,
                "cpu_s": p_cpu,
                "peak_rss_mb": p_peak,
                "last_loss": p_loss,
                "train_accuracy": p_acc,
            },
            "loadavg": {"start": load0, "vlmood": load_v, "plain": load_p, "end": load1},
        }
        print(json.dumps(summary))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
