"""Benchmark: the feature-space OOD attack, ``vlmood attack``'s path vs a plain PyTorch loop.

The optimisation is PLP's (methods.md §6.5): per OOD image a perturbation delta, Adam (lr 1e-3),
``--steps`` steps of -cos(phi(y + delta), phi(x)) + lambda_s x (mean dy^2 + mean dx^2), the
[0, 1] clamp after every step; phi = the pre-projection image feature; lambda_s 5e3 (smooth).

- **plain**: the loop one writes by hand over the same PNG files: PIL -> the model's resize /
  crop / ToTensor, targets' features under no_grad, ``delta = randn * 1e-3`` (one generator),
  Adam on delta, the model's own forward to the pre-projection feature (open_clip ViT with
  ``proj`` skipped, a timm trunk's pooled feature), ``(x - mean) / std`` inside, the loss summed
  over the batch, the clamp; then each image written as PNG.
- **vlmood**: :func:`vlmood.attacks.run.run_attack` (what ``vlmood attack --no-eval`` runs): per
  sample seeded starts, the part file per batch, the cosine before and after on the written
  8-bit pixels (three extra forwards a batch), the manifest, attack.json.

The two paths are checked to compute the same feature (max abs difference printed). Each path
runs in a fresh subprocess (a clean peak), alternating, ``--repeat`` times; the median wall time
gives images/s (on the CPU the process CPU time is reported too: it is less sensitive to other
jobs on a shared machine). Memory: CPU peak RSS (VmHWM, reset after the model is loaded); CUDA
``torch.cuda.max_memory_allocated``. Overhead = plain images/s / vlmood images/s - 1 (target <= 5%).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_attack.py                    # vlmood-tiny, 2 CPU threads
    PYTHONPATH=src .venv/bin/python benchmarks/bench_attack.py --model vlmood-small --steps 20
    PYTHONPATH=src python benchmarks/bench_attack.py --device cuda --model open_clip:ViT-B-16 \\
        --images 256 --batch 64 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _memory import peak_rss_mb, reset_peak_rss

SMOOTH = 5e3


def make_images(folder: str, n: int, size: int, seed: int) -> list[str]:
    """n smooth random RGB images (PNG): low-frequency noise upsampled, so PNG sizes are realistic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        p = os.path.join(folder, f"{i:05d}.png")
        img.save(p)
        paths.append(p)
    return paths


def plain_phi(model):
    """The raw module's pre-projection forward (normalised pixels -> [B, W])."""
    visual = model.torch_module.visual
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "forward_features"):
        return lambda x: trunk.forward_head(trunk.forward_features(x))
    if hasattr(visual, "proj") and hasattr(visual, "transformer"):
        proj = visual.proj

        def vit(x):
            visual.proj = None
            try:
                out = visual(x)
            finally:
                visual.proj = proj
            return out[0] if isinstance(out, tuple) else out

        return vit
    return lambda x: model.encode_image_features(x, ("preproj",))["preproj"]


def run_path(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    torch.manual_seed(0)
    from vlmood.attacks.feature import AttackConfig
    from vlmood.attacks.run import pixel_pipeline, run_attack
    from vlmood.data.base import ImageSample, ImageSource
    from vlmood.models import load_model

    dev = torch.device(args.device)
    model = load_model(args.model, device=args.device, precision=args.precision)
    size = model.identity.preprocess.image_size
    ood = make_images(os.path.join(args.data, "ood"), args.images, size, 1)
    tgt = make_images(os.path.join(args.data, "id"), args.images, size, 2)
    pipe = pixel_pipeline(model)
    out = tempfile.mkdtemp(prefix="bench_attack_", dir=args.scratch)
    module = model.torch_module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    phi = plain_phi(model)
    mean, std = pipe.mean.to(dev), pipe.std.to(dev)
    with torch.no_grad():
        x = torch.stack([pipe.to_pixels(Image.open(p).convert("RGB")) for p in ood[:2]]).to(dev)
        with model.autocast():
            a = phi((x - mean) / std).float()
        b = model.encode_image_features(pipe.normalize(x), ("preproj",))["preproj"].float()
        same = float((a - b).abs().max())
    reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.path == "vlmood":
        src = ImageSource("ood", [ImageSample(p, -1) for p in ood], kind="list")
        tset = ImageSource("id", [ImageSample(p, 0) for p in tgt], classnames=["c"], kind="list")
        cfg = AttackConfig(steps=args.steps, smooth=SMOOTH, batch_size=args.batch)
        run_attack(model, [("ood", src)], tset, out, cfg, progress=False)
    else:
        from vlmood.attacks.feature import smoothness  # the same 5 lines one would write by hand

        g = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(1)
        targets = rng.integers(0, len(tgt), size=len(ood))
        for lo in range(0, len(ood), args.batch):
            idx = range(lo, min(len(ood), lo + args.batch))
            y = torch.stack([pipe.to_pixels(Image.open(ood[i]).convert("RGB")) for i in idx]).to(dev)
            xt = torch.stack([pipe.to_pixels(Image.open(tgt[targets[i]]).convert("RGB")) for i in idx]).to(
                dev
            )
            with torch.no_grad(), model.autocast():
                t = phi((xt - mean) / std).float()
            delta = (torch.randn(y.shape, generator=g) * 1e-3).to(dev).requires_grad_(True)
            opt = torch.optim.Adam([delta], lr=1e-3)
            for _ in range(args.steps):
                opt.zero_grad(set_to_none=True)
                with model.autocast():
                    f = phi(((y + delta) - mean) / std).float()
                loss = (
                    -torch.nn.functional.cosine_similarity(f, t, dim=-1) + SMOOTH * smoothness(delta)
                ).sum()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.copy_((y + delta).clamp(0, 1) - y)
            adv = (
                ((y + delta).detach().clamp(0, 1) * 255)
                .round()
                .to(torch.uint8)
                .permute(0, 2, 3, 1)
                .cpu()
                .numpy()
            )
            for j, i in enumerate(idx):
                Image.fromarray(adv[j]).save(os.path.join(out, f"{i:06d}.png"))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {
        "path": args.path,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s": args.images / wall,
        "peak_mb": mem,
        "phi_max_diff": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vlmood-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--path", choices=["vlmood", "plain"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:  # a child: one timed run
        import torch

        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(run_path(args)))
        return
    scratch = tempfile.mkdtemp(prefix="bench_attack_")
    data = os.path.join(scratch, "data")
    runs: dict[str, list[dict]] = {"plain": [], "vlmood": []}
    base = [sys.executable, __file__, *sys.argv[1:]]  # the same options for every child
    for r in range(args.repeat):
        for path in ("plain", "vlmood") if r % 2 == 0 else ("vlmood", "plain"):
            cmd = [*base, "--path", path, "--data", data, "--scratch", scratch]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            )
            line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
            if res.returncode or not line:
                sys.exit(f"{path} failed:\n{res.stderr[-3000:]}")
            runs[path].append(json.loads(line[0][7:]))
            print(
                f"  {path:6s} run {r}: {runs[path][-1]['wall_s']:.2f} s, {runs[path][-1]['images_per_s']:.3f} images/s",
                flush=True,
            )
    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()}
    peak = {k: max(x["peak_mb"] for x in v) for k, v in runs.items()}
    ratio = med["vlmood"] / med["plain"]
    mem_kind = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"model {args.model}, {args.device} ({args.precision}, {args.threads} threads), {args.images} images, "
        f"batch {args.batch}, {args.steps} steps; phi paths differ by <= {runs['vlmood'][0]['phi_max_diff']:.2e}"
    )
    for k in ("plain", "vlmood"):
        print(
            f"{k:6s}: {args.images / med[k]:.3f} images/s (median of {args.repeat}), {mem_kind} {peak[k]:.0f} MiB"
        )
    print(f"vlmood / plain wall time: {ratio:.3f}x  (overhead {100 * (ratio - 1):+.1f}%, target <= +5%)")
    if not args.device.startswith("cuda"):  # process CPU time: less sensitive to other load on the machine
        print(f"vlmood / plain process CPU time: {cpu['vlmood'] / cpu['plain']:.3f}x")


if __name__ == "__main__":
    main()
