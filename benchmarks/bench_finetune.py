"""Benchmark: full fine-tuning step time and peak memory, vlmood's engine vs a plain PyTorch loop.

The optimisation is FLYP's (``vlmood fit flyp``): both towers and the logit scale of open_clip
ViT-B-32 (random weights, ``open_clip.create_model(ARCH, pretrained=None)``: no download) train
with the symmetric CLIP loss on (image, class caption) pairs, AdamW (lr 1e-5, weight decay 0.1),
on random images at the model's resolution (16 classes, one caption each).

- **plain**: the loop one writes by hand: a DataLoader (shuffled, pinned on CUDA; the engine's
  data path), ``model.encode_image`` / ``model.encode_text`` (caption tokens on the device),
  normalise, ``logit_scale.clamp(max=ln 100).exp()``, the two cross-entropies, ``backward``,
  ``AdamW.step``, ``zero_grad``; no host sync anywhere; activation checkpointing through
  open_clip's ``model.set_grad_checkpointing(True)``.
- **vlmood**: :class:`vlmood.train.engine.Trainer` with FLYP's own loss
  (``create_method("flyp").loss_fn``) on ``FineTuneModule``, from ``load_model("open_clip:ARCH")``
  (the same random init), one epoch over a dataset of the same tensors (DataLoader, collate, the
  per-step NaN check, logging, lr schedule); checkpointing with ``TrainConfig(grad_checkpointing=True)``.
  The epoch-end checkpoint (``last.pt``: full parameters + AdamW state) comes after the timed steps
  and is reported on its own (``ckpt s``, and in the whole-run peak).

Every configuration runs in a fresh subprocess (a clean peak). Step time: the median, over
``--steps`` steps after ``--warmup`` steps, of the time between successive ends of
``optimizer.step`` (one whole loop iteration: data, forward, backward, step; with a CUDA
synchronise in that hook on the GPU, for both paths), and the same for the process CPU time
(less sensitive to other load on a shared machine). Memory: CPU: peak RSS over the timed steps
(``VmHWM`` reset by ``/proc/self/clear_refs`` after the warm-up); CUDA:
``torch.cuda.max_memory_allocated`` over the timed steps. Overhead = vlmood / plain - 1 (target
<= 5%). ``--profile DIR`` writes torch.profiler tables of the timed steps (CUDA and CPU time by
op) for each configuration.

On a GPU at ViT-B-32 sizes a bf16 step is bound by the host (the main-process DataLoader's
collate and pin of the batch, kernel launches): its GPU work is ~45 ms a step on an H200 against
~80-160 ms of wall time, so bf16 timings there vary by +-15% between runs of the same
configuration; fp32 steps are GPU-bound and stable.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_finetune.py      # 2 CPU threads, ~5-10 min
    PYTHONPATH=src .venv/bin/python benchmarks/bench_finetune.py --device cuda --precision bf16 \\
        --batch-size 128 --warmup 3 --steps 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402

CLASSES = 16


def caption(i: int) -> str:
    return f"a photo of a class{i} thing."  # FLYP's 'simple' template on made-up class names


def pixel_set(pixels, labels):
    """The images as a map-style dataset of {"pixels", "label"} samples (what vlmood's image
    datasets give), for the DataLoader of either path."""
    import torch

    class PixelSet(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"pixels": pixels[i], "label": labels[i]}

    return PixelSet()


# ---------------------------------------------------------------------------------------------- child
def child(args) -> dict:
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    path, ckpt = args.child_path, bool(args.child_ckpt)
    b, warm, timed = args.batch_size, args.warmup, args.steps
    n = (warm + timed) * b
    res: dict = {"path": path, "ckpt": ckpt, "loadavg_start": list(os.getloadavg())}

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    marks: list[tuple[float, float]] = []  # (wall, process cpu) at each optimizer.step end
    peaks: dict = {}

    prof = None
    if args.profile:  # torch.profiler over the timed steps (the figures then include its overhead)
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

        def write_tables(p):
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            name = f"profile_{path}_ckpt{'on' if ckpt else 'off'}_{args.precision}.txt"
            with open(os.path.join(args.profile, name), "w") as f:
                f.write(p.key_averages().table(sort_by=key, row_limit=25) + "\n")
                f.write(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")

        prof = profile(
            activities=acts,
            schedule=schedule(wait=warm - 1, warmup=1, active=timed, repeat=1),
            on_trace_ready=write_tables,
        )
        prof.start()

    def on_step(*_):
        sync()
        marks.append((time.perf_counter(), time.process_time()))
        if prof is not None:
            prof.step()
        if len(marks) == warm:  # the warm-up is over: peaks from here on
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            else:
                peaks["reset"] = reset_peak_rss()
        if len(marks) == warm + timed:
            peaks["steps"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()

    g = torch.Generator().manual_seed(0)
    size = 224
    t0 = time.perf_counter()
    if path == "plain":
        import open_clip

        torch.manual_seed(0)
        model = open_clip.create_model(args.arch, pretrained=None).to(device)
        size = (
            model.visual.image_size[0]
            if isinstance(model.visual.image_size, tuple)
            else model.visual.image_size
        )
        model.set_grad_checkpointing(ckpt)
        model.train()
        tokens = open_clip.get_tokenizer(args.arch)([caption(i) for i in range(CLASSES)]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=0.1)
        opt.register_step_post_hook(on_step)
        pixels = torch.randn(n, 3, size, size, generator=g)
        labels = torch.arange(n) % CLASSES
        # the engine's data path: a DataLoader (main process, default collate, pinned on CUDA)
        loader = torch.utils.data.DataLoader(
            pixel_set(pixels, labels),
            batch_size=b,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            drop_last=True,
            pin_memory=cuda,
        )
        if args.precision == "bf16":
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            autocast = torch.autocast(device.type, enabled=False)
        res["setup_s"] = time.perf_counter() - t0
        res["rss_setup_mb"] = rss_mb()
        t_run = time.perf_counter()
        for batch in loader:
            x = batch["pixels"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            t = tokens[y]
            with autocast:
                f = F.normalize(model.encode_image(x).float(), dim=-1)
                tx = F.normalize(model.encode_text(t).float(), dim=-1)
                s = model.logit_scale.clamp(max=math.log(100.0)).exp()
                logits = s * f @ tx.T
                target = torch.arange(len(y), device=device)
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        res["loss"] = float(loss.detach())
        res["run_s"] = time.perf_counter() - t_run
    elif path == "vlmood":
        from types import SimpleNamespace

        from vlmood.methods import create_method
        from vlmood.methods.finetune import FineTuneModule
        from vlmood.models import load_model
        from vlmood.train.engine import TrainConfig, Trainer

        model = load_model(f"open_clip:{args.arch}", device=device, precision=args.precision)
        size = model.torch_module.visual.image_size
        size = size[0] if isinstance(size, tuple) else size
        method = create_method("flyp")
        method.validate()
        loss_fn = method.loss_fn(
            model, SimpleNamespace(classnames=[f"class{i} thing" for i in range(CLASSES)])
        )
        module = FineTuneModule(model)
        module.backbone.requires_grad_(True)
        pixels = torch.randn(n, 3, size, size, generator=g)
        labels = torch.arange(n) % CLASSES

        cfg = TrainConfig(
            epochs=1,
            batch_size=b,
            lr=1e-5,
            optimizer="adamw",
            weight_decay=0.1,
            warmup_steps=0,
            precision=args.precision,
            grad_checkpointing=ckpt,
            log_every=10,
        )
        out = tempfile.mkdtemp(prefix="bench_finetune_", dir=args.tmp)
        trainer = Trainer(module, pixel_set(pixels, labels), loss_fn, cfg, out, device=device, progress=False)
        trainer.optimizer.register_step_post_hook(on_step)
        res["setup_s"] = time.perf_counter() - t0
        res["rss_setup_mb"] = rss_mb()
        t_run = time.perf_counter()
        hist = trainer.fit()
        res["run_s"] = time.perf_counter() - t_run
        res["ckpt_s"] = time.perf_counter() - t_run - (marks[-1][0] - t_run) if marks else None
        res["loss"] = hist[-1]["loss"]
        res["ckpt_mb"] = os.path.getsize(os.path.join(out, "last.pt")) / 2**20
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    else:
        raise SystemExit(f"unknown path {path!r}")

    if prof is not None:
        prof.stop()
    res["image_size"] = size
    wall = [marks[i][0] - marks[i - 1][0] for i in range(warm, warm + timed)]
    cpu = [marks[i][1] - marks[i - 1][1] for i in range(warm, warm + timed)]
    res["step_times_s"] = wall
    res["step_s"] = statistics.median(wall)
    res["step_cpu_s"] = statistics.median(cpu)
    res["peak_steps_mb"] = peaks.get("steps")
    res["peak_run_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    res["peak_method"] = (
        "torch.cuda.max_memory_allocated over the timed steps"
        if cuda
        else (
            "VmHWM over the timed steps (reset after warm-up)"
            if peaks.get("reset")
            else "ru_maxrss (whole run)"
        )
    )
    res["loadavg_end"] = list(os.getloadavg())
    return res


# ---------------------------------------------------------------------------------------------- parent
def run_child(args, path: str, ckpt: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-path", path, "--child-ckpt", str(int(ckpt))]
    for opt in ("arch", "device", "precision", "batch_size", "warmup", "steps", "threads"):
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.tmp:
        cmd += ["--tmp", args.tmp]
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        cmd += ["--profile", os.path.abspath(args.profile)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"path": path, "ckpt": ckpt, "error": f"timeout after {args.timeout} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or "").strip().splitlines()[-4:]
        return {"path": path, "ckpt": ckpt, "error": f"exit {p.returncode}: {' | '.join(tail)}"}
    res = json.loads(lines[-1])
    res["child_wall_s"] = time.perf_counter() - t0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch-size", type=int, default=8, help="the batch (2 CPU cores: 10-30 s a step)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--ckpt", default="off,on", help="activation checkpointing settings to run: off,on")
    ap.add_argument("--paths", default="plain,vlmood")
    ap.add_argument("--tmp", default=None, help="folder for vlmood's run directory (checkpoint)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every config this often (alternating order); keep the fastest",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument(
        "--profile", default=None, metavar="DIR", help="write torch.profiler tables of the timed steps to DIR"
    )
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    ap.add_argument("--child-ckpt", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (a step time is the time from the previous step's end)")

    if args.child_path:
        print(json.dumps(child(args)), flush=True)
        return 0

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    ckpts = [{"off": False, "on": True}[c.strip()] for c in args.ckpt.split(",") if c.strip()]
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    rows: dict[tuple[str, bool], dict] = {}
    for rep in range(args.repeat):  # repeats alternate the order; each config keeps its fastest run
        for ck in ckpts:
            for p in paths if rep % 2 == 0 else paths[::-1]:
                r = run_child(args, p, ck)
                brief = {k: r.get(k) for k in ("step_s", "step_cpu_s", "peak_steps_mb", "error") if k in r}
                print(f"# {p:6s} ckpt={'on' if ck else 'off':3s} {brief}", file=sys.stderr, flush=True)
                old = rows.get((p, ck))
                runs = (old or {}).get("repeat_step_s", []) + [r.get("step_s")]
                if old is None or (r.get("step_s") or math.inf) < (old.get("step_s") or math.inf):
                    rows[(p, ck)] = r
                rows[(p, ck)]["repeat_step_s"] = runs

    import torch

    some = next((r for r in rows.values() if "image_size" in r), {})
    unit = "MiB allocated" if args.device.startswith("cuda") else "MiB RSS"
    print(
        f"FLYP full fine-tune, open_clip {args.arch} (random weights, {some.get('image_size', '?')} px), "
        f"batch {args.batch_size}, AdamW; device {args.device}, precision {args.precision}, "
        f"threads {args.threads}; torch {torch.__version__}"
    )
    print(
        f"steps: {args.warmup} warm-up + {args.steps} timed (median; fastest of {args.repeat} runs); "
        f"load average at start "
        f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
    )
    cols = ["config", "step s", "step cpu s", f"peak {unit}", "ckpt s", "loss"]
    table = []
    for (p, ck), r in rows.items():
        name = f"{p} ckpt={'on' if ck else 'off'}"
        if r.get("error"):
            table.append([name, "error", "", "", "", ""])
            continue
        table.append(
            [
                name,
                f"{r['step_s']:.3f}",
                f"{r['step_cpu_s']:.3f}",
                f"{r['peak_steps_mb']:,.0f}" if r.get("peak_steps_mb") else "-",
                f"{r['ckpt_s']:.1f}" if r.get("ckpt_s") is not None else "-",
                f"{r['loss']:.4f}",
            ]
        )
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print(" | ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(c.rjust(w) for c, w in zip(t, widths)))
    print("ratios vlmood / plain (overhead target <= 5%):")
    for ck in ckpts:
        a, v = rows.get(("plain", ck), {}), rows.get(("vlmood", ck), {})
        if a.get("step_s") and v.get("step_s"):
            ratio, cpu = v["step_s"] / a["step_s"], v["step_cpu_s"] / a["step_cpu_s"]
            mem = (
                (v["peak_steps_mb"] / a["peak_steps_mb"])
                if a.get("peak_steps_mb") and v.get("peak_steps_mb")
                else None
            )
            print(
                f"  ckpt={'on' if ck else 'off':3s}: step {ratio:.3f}x ({(ratio - 1) * 100:+.1f}%), "
                f"cpu {cpu:.3f}x ({(cpu - 1) * 100:+.1f}%)" + (f", peak memory {mem:.3f}x" if mem else "")
            )
    for p in paths:
        off, on = rows.get((p, False), {}), rows.get((p, True), {})
        if off.get("step_s") and on.get("step_s") and off.get("peak_steps_mb") and on.get("peak_steps_mb"):
            print(
                f"checkpointing, {p}: step {on['step_s'] / off['step_s']:.2f}x, "
                f"peak memory {on['peak_steps_mb'] - off['peak_steps_mb']:+,.0f} {unit} "
                f"({on['peak_steps_mb'] / off['peak_steps_mb']:.2f}x)"
            )
    v = [r for (p, _), r in rows.items() if p == "vlmood" and r.get("ckpt_mb")]
    if v:
        print(
            f"vlmood epoch-end checkpoint: {v[0]['ckpt_mb']:,.0f} MiB written in {v[0]['ckpt_s']:.1f} s "
            f"(after the timed steps); whole-run peak {v[0]['peak_run_mb']:,.0f} {unit}"
        )
    print(f"peak: {some.get('peak_method', '?')}")
    for (p, ck), r in rows.items():
        if r.get("error"):
            print(f"{p} ckpt={'on' if ck else 'off'}: {r['error']}")
    load1 = os.getloadavg()
    print(
        f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; total {time.perf_counter() - t_all:.0f} s"
    )
    print(json.dumps({"bench": "finetune", "args": vars(args), "results": [r for r in rows.values()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
