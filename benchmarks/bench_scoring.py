"""Benchmark: every registered post-hoc score on 100k memory-mapped 512-d image embeddings.

Setup: 100,000 random unit-norm float32 image embeddings written to a .npy and opened with
``mmap_mode='r'``; 1,000 ID class embeddings; NegLabel mines 10,000 negatives (``max_negatives``)
from the packaged WordNet vocabulary with a synthetic ``encode_text`` returning random unit
vectors, ngroup=100; kNN and Mahalanobis use a 10,000-sample ID train bank (10 per class);
GL-MCM/L-MCM run on a smaller set (default 1,000 images x 196 patches, a ViT-B/16 grid).

Prints per-score seconds (NegLabel fit shown separately, with the synthetic encoder's own time
excluded), the total, and peak RSS (``ru_maxrss``). ``--baseline`` also times the bare float32
matmul that NegLabel cannot avoid (the floor for its scoring time).

    PYTHONPATH=src python benchmarks/bench_scoring.py [--n 100000] [--baseline]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from vlmood.scores import ScoreContext, create_score, list_scores


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_memmap(path: str, arr_fn, shape, chunk: int = 10_000) -> np.ndarray:
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for s in range(0, shape[0], chunk):
        e = min(shape[0], s + chunk)
        mm[s:e] = arr_fn(e - s)
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="image embeddings")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--negatives", type=int, default=10_000)
    ap.add_argument("--ngroup", type=int, default=100)
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--patch-images", type=int, default=1000)
    ap.add_argument("--patches", type=int, default=196)
    ap.add_argument("--baseline", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vlmood_bench_") as tmp:
        run(args, tmp)


def run(args: argparse.Namespace, tmp: str) -> None:
    rng = np.random.default_rng(0)
    d = args.dim
    image = write_memmap(os.path.join(tmp, "image.npy"), lambda m: unit_rows(rng, m, d), (args.n, d))
    patch_img = np.asarray(image[: args.patch_images])
    patch = write_memmap(
        os.path.join(tmp, "patch.npy"),
        lambda m: unit_rows(rng, m * args.patches, d).reshape(m, args.patches, d),
        (args.patch_images, args.patches, d),
        chunk=100,
    )
    text = unit_rows(rng, args.classes, d)
    train = unit_rows(rng, args.train, d)
    train_labels = np.arange(args.train) % args.classes

    enc_time = [0.0]
    enc_rng = np.random.default_rng(1)

    def encode_text(texts: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = unit_rows(enc_rng, len(texts), d)
        enc_time[0] += time.perf_counter() - t0
        return out

    ctx = ScoreContext(
        text_features=text,
        classnames=[f"class {i}" for i in range(args.classes)],
        encode_text=encode_text,
        train_features=train,
        train_labels=train_labels,
        logit_scale=100.0,
    )
    kwargs = {"neglabel": {"max_negatives": args.negatives, "ngroup": args.ngroup}}
    print(
        f"n={args.n} dim={d} classes={args.classes} negatives={args.negatives} ngroup={args.ngroup} "
        f"train={args.train} patch set={args.patch_images}x{args.patches}; threads: "
        f"OMP={os.environ.get('OMP_NUM_THREADS', '-')} cpus={os.cpu_count()}"
    )
    rows = []
    total = 0.0
    for name in list_scores():
        score = create_score(name, **kwargs.get(name, {}))
        enc_time[0] = 0.0
        t0 = time.perf_counter()
        score.fit(ctx)
        t_fit = time.perf_counter() - t0 - enc_time[0]
        t_enc = enc_time[0]
        t0 = time.perf_counter()
        if "patch" in score.requires:
            out = score.score(patch_img, patch)
            n = args.patch_images
        else:
            out = score.score(image)
            n = args.n
        t_score = time.perf_counter() - t0
        assert out.shape == (n,) and np.all(np.isfinite(out)), name
        total += t_fit + t_score
        extra = ""
        if name == "neglabel":
            a = score.artifacts()
            extra = f"  ({a['neglabel_num_negatives']} negatives, {a['neglabel_num_used']} used; synthetic encode {t_enc:.2f}s excluded)"
        rows.append((name, n, t_fit, t_score, extra))
        print(f"{name:12s} n={n:7d}  fit {t_fit:7.2f}s  score {t_score:7.2f}s{extra}", flush=True)
    print(f"TOTAL {total:.2f}s   peak RSS {peak_rss_mb():.0f} MB")

    if args.baseline:
        w = np.ascontiguousarray(np.concatenate([text, unit_rows(rng, args.negatives, d)]).T)
        t0 = time.perf_counter()
        for s in range(0, args.n, 8192):
            np.asarray(image[s : s + 8192]) @ w
        print(
            f"baseline: bare float32 matmul {args.n}x{d} @ {d}x{w.shape[1]}: {time.perf_counter() - t0:.2f}s"
        )


if __name__ == "__main__":
    main()
