"""Extraction overhead: vlmood's cached extraction vs a plain open_clip loop over the same images.

Same model, batch size, DataLoader workers and torch threads. Prints images/s for both (cold
cache for vlmood), the ratio (target >= 0.95), the warm-cache re-run time and its speed-up over
the cold run (target >= 50x), and peak RSS.

    python benchmarks/bench_extraction.py --model open_clip:ViT-S-32 --n 768 --batch-size 64
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


def write_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> None:
    """Real photo crops (scikit-learn's sample images) saved as JPEG, as a decode-realistic input."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    (folder / "x").mkdir(parents=True, exist_ok=True)
    for j in range(n):
        ph = photos[j % len(photos)]
        c = int(rng.integers(160, 400))
        y = int(rng.integers(0, ph.shape[0] - c))
        x = int(rng.integers(0, ph.shape[1] - c))
        Image.fromarray(ph[y : y + c, x : x + c]).resize((size, size)).save(
            folder / "x" / f"{j:05d}.jpg", quality=90
        )


class PlainFiles(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def plain_loop(module, transform, paths, batch_size, workers) -> tuple[float, np.ndarray]:
    """The reference: DataLoader + model.encode_image + normalise, collected in memory."""
    loader = DataLoader(
        PlainFiles(paths, transform),
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    outs = []
    t = time.perf_counter()
    with torch.inference_mode():
        for x in loader:
            outs.append(torch.nn.functional.normalize(module.encode_image(x), dim=-1).numpy())
    return time.perf_counter() - t, np.concatenate(outs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="open_clip:ViT-S-32")
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternate plain/vlmood runs; best of each")
    args = ap.parse_args()

    from vlmood.data.sources import load_source
    from vlmood.features.extract import extract_features
    from vlmood.models import load_model

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vlmood-bench-"))
    try:
        write_images(work / "imgs", args.n)
        model = load_model(args.model, device="cpu", precision="fp32")
        src = load_source(str(work / "imgs"))
        paths = [s.path for s in src.samples]
        # warm-up (allocator, thread pools) on a few images, excluded from timings
        plain_loop(model.torch_module, model.preprocess, paths[: args.batch_size], args.batch_size, 0)
        plain_times, cold_times = [], []
        ref = ours = None
        for r in range(args.repeats):
            tp, ref = plain_loop(model.torch_module, model.preprocess, paths, args.batch_size, args.workers)
            plain_times.append(tp)
            cache = work / f"cache{r}"
            t = time.perf_counter()
            fs = extract_features(
                model,
                src,
                ("image",),
                cache_root=cache,
                batch_size=args.batch_size,
                num_workers=args.workers,
                progress=False,
            )
            cold_times.append(time.perf_counter() - t)
            ours = np.asarray(fs.arrays["image"])
        t = time.perf_counter()
        warm = extract_features(
            model,
            src,
            ("image",),
            cache_root=work / "cache0",
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=False,
        )
        warm_s = time.perf_counter() - t
        assert warm.encoded == 0
        max_diff = float(np.abs(ours - ref).max())
        plain_ips = args.n / min(plain_times)
        cold_ips = args.n / min(cold_times)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"model {args.model}  images {args.n}  batch {args.batch_size}  workers {args.workers}  "
            f"threads {args.threads}"
        )
        print(
            f"plain open_clip loop : {plain_ips:8.1f} images/s  (runs: {', '.join(f'{t:.2f}s' for t in plain_times)})"
        )
        print(
            f"vlmood cold cache    : {cold_ips:8.1f} images/s  (runs: {', '.join(f'{t:.2f}s' for t in cold_times)})"
        )
        print(f"ratio vlmood/plain   : {cold_ips / plain_ips:8.3f}   (target >= 0.95)")
        print(
            f"vlmood warm cache    : {warm_s * 1000:8.1f} ms     speed-up over cold: "
            f"{min(cold_times) / warm_s:.0f}x (target >= 50x)"
        )
        print(f"max |vlmood - plain| : {max_diff:.2e}")
        print(f"peak RSS             : {peak_mb:8.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
