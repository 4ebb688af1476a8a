"""Benchmark: CoOp step time and peak memory at 10, 100 and 1,000 classes, vlmood vs plain.

One CoOp training step: a batch of 32 precomputed, normalised image features (random), the text
features of all K class prompts ("class 123 thing", 16 learned context tokens, class token at
the end) with the current context, ``coop_loss`` (CLIP logit scale x cosine, cross-entropy),
backward, and an SGD step on the context (CoOp's lr 0.002, momentum 0.9, weight decay 5e-4).
The model is frozen (``requires_grad`` off), as ``vlmood fit coop`` does.

- **plain**: the reference formulation, every class in one full-length forward,
  ``model.encode_text_embeddings(*learner.embed(arange(K)))`` (all 77 positions, no chunking).
- **vlmood**: what ``CoOp.fit`` runs, ``learner(auto_chunk(K, --chunk))``: prompts cut after the
  last end-of-text token and, above 256 prompts (or with ``--chunk N``), encoded in chunks of N
  under activation checkpointing (only the [N, D] outputs are kept for backward).
- **unchunked** (optional, ``--methods``): vlmood's truncated forward without chunking
  (``encode_prompts(..., chunk=0)``), to separate the effect of truncation from chunking.

Every (method, K) runs in a fresh subprocess. Memory is the step's *extra* memory:

- CPU: peak RSS during the steps (``VmHWM``, reset through ``/proc/self/clear_refs`` after the
  warm-up; ``ru_maxrss`` if that is not allowed) minus the RSS after model load and setup; and
  the torch-level peak of the CPU allocator over the (profiled) warm-up step, i.e. the maximum
  of the running sum of allocations minus frees recorded by ``torch.profiler(profile_memory=True)``.
  The child's address space is capped (``RLIMIT_AS`` = its size after setup + ``--mem-limit-gb``,
  never more than the machine's available memory minus 3 GiB), so a configuration that does not
  fit fails with "OOM at limit" instead of swapping or killing the machine; its figures are then
  extrapolated linearly from the smaller K of the same method and marked ``~``.
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` minus the allocation after setup.

Step time is the median of ``--steps`` steps after one warm-up step.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_coop_memory.py                    # ViT-B-32, 10/100/1000
    PYTHONPATH=src .venv/bin/python benchmarks/bench_coop_memory.py --model tiny-test  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# ---------------------------------------------------------------------------------------------- memory
from _memory import mem_available_mb, peak_rss_mb, reset_peak_rss, rss_mb, status_kb  # noqa: E402


def is_oom(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        s in msg
        for s in ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory")
    )


def torch_peak_from_profile(prof) -> float | None:
    """Maximum of the running sum of CPU allocator allocations minus frees (MiB) in a profile."""
    try:
        events = []

        def walk(nodes):
            for e in nodes:
                ef = e.extra_fields
                if type(ef).__name__ == "_ExtraFields_Allocation" and ef.device.type == "cpu":
                    events.append((e.start_time_ns, ef.alloc_size))
                walk(e.children)

        walk(prof.profiler.kineto_results.experimental_event_tree())
    except Exception:  # private profiler API: report nothing rather than fail the run
        return None
    run = peak = 0
    for _, size in sorted(events):
        run += size
        peak = max(peak, run)
    return peak / 2**20


# ---------------------------------------------------------------------------------------------- child


def child(args) -> dict:
    import torch
    import torch.nn.functional as F

    from vlmood.methods.coop import coop_loss
    from vlmood.methods.prompt import PromptLearner, auto_chunk, encode_prompts
    from vlmood.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    k, method = args.child_k, args.child_method
    res: dict = {"method": method, "classes": k, "loadavg_start": list(os.getloadavg())}

    model = load_model(args.model, device=device, precision="fp32")
    model.torch_module.requires_grad_(False)
    names = [f"class {i} thing" for i in range(k)]
    learner = PromptLearner(model, names, n_ctx=args.n_ctx, seed=0).to(device)
    opt = torch.optim.SGD([learner.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(args.batch_size, model.embed_dim, generator=g), dim=-1).to(device)
    labels = torch.randint(0, k, (args.batch_size,), generator=g).to(device)
    scale = model.logit_scale
    idx = torch.arange(k)
    chunk = auto_chunk(k, args.chunk)
    res["chunk"] = chunk if method == "vlmood" and 0 < chunk < k else 0  # effective: 0 = one pass
    res["prompt_tokens"] = int(learner.tokens.shape[1])
    res["prompt_tokens_used"] = int(model._pool_index(learner.tokens).max()) + 1

    if method == "plain":

        def text():
            return model.encode_text_embeddings(*learner.embed(idx))
    elif method == "vlmood":

        def text():
            return learner(chunk)
    elif method == "unchunked":

        def text():
            return encode_prompts(model, learner.embed, idx, chunk=0)
    else:
        raise SystemExit(f"unknown method {method!r}")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = coop_loss(img, text(), labels, scale)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # initialise thread pools / kernels on two prompts so that they count as setup, not step memory
    with torch.no_grad():
        encode_prompts(model, learner.embed, idx[:2], chunk=0)
    sync()
    import gc

    gc.collect()
    res["rss_setup_mb"] = rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    else:
        vm_kb = status_kb("VmSize") or 0
        avail = mem_available_mb()
        budget_mb = args.mem_limit_gb * 1024
        if avail is not None:
            budget_mb = min(budget_mb, avail - 3072)
        budget_mb = max(budget_mb, 256)
        limit = int(vm_kb * 1024 + budget_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        res["mem_limit_mb"] = round(budget_mb)

    times: list[float] = []
    cpu: list[float] = []
    try:
        # warm-up step (profiled on CPU for the torch-level allocator peak)
        if not cuda and args.torch_peak:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                t0 = time.perf_counter()
                step()
                res["warmup_s"] = time.perf_counter() - t0
            res["torch_peak_mb"] = torch_peak_from_profile(prof)
            del prof
        else:
            t0 = time.perf_counter()
            step()
            sync()
            res["warmup_s"] = time.perf_counter() - t0
        gc.collect()
        hwm_reset = reset_peak_rss()
        res["peak_rss_method"] = "VmHWM after clear_refs" if hwm_reset else "ru_maxrss (includes warm-up)"
        for _ in range(args.steps):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        res["oom"] = True
        res["error"] = str(e).splitlines()[0][:200]
        res["step_times_s"] = times
        return res
    res["oom"] = False
    res["step_times_s"] = times
    res["step_s"] = statistics.median(times)
    res["step_cpu_s"] = statistics.median(cpu)  # process CPU time (all threads) per step
    if cuda:
        res["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_alloc) / 2**20
        res["peak_method"] = "torch.cuda.max_memory_allocated - allocated after setup"
    else:
        res["peak_rss_mb"] = peak_rss_mb()
        res["peak_mb"] = res["peak_rss_mb"] - res["rss_setup_mb"]
        res["peak_method"] = "peak RSS during steps - RSS after setup"
    res["loadavg_end"] = list(os.getloadavg())
    return res


# ---------------------------------------------------------------------------------------------- parent


def run_child(args, method: str, k: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-method", method, "--child-k", str(k)]
    for opt in ("model", "device", "batch_size", "n_ctx", "steps", "threads", "mem_limit_gb"):
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.chunk is not None:
        cmd += ["--chunk", str(args.chunk)]
    if not args.torch_peak:
        cmd += ["--no-torch-peak"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "classes": k, "error": f"timeout after {args.timeout} s", "oom": False}
    wall = time.perf_counter() - t0
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or "").strip().splitlines()[-3:]
        why = f"exit {p.returncode}" if p.returncode >= 0 else f"killed by signal {-p.returncode}"
        return {
            "method": method,
            "classes": k,
            "error": f"{why}: {' | '.join(tail)}",
            "oom": p.returncode == -9,
        }
    res = json.loads(lines[-1])
    res["child_wall_s"] = wall
    return res


def extrapolate(rows: dict, method: str, k: int, key: str) -> float | None:
    """Linear fit through the two largest smaller K of ``method`` that have ``key``."""
    pts = sorted(
        (kk, r[key]) for (m, kk), r in rows.items() if m == method and kk < k and r.get(key) is not None
    )
    if len(pts) < 2:
        return None
    (k1, y1), (k2, y2) = pts[-2:]
    return y2 + (y2 - y1) / (k2 - k1) * (k - k2)


def fmt(r: dict | None, key: str, rows: dict, spec: str) -> tuple[str, float | None, bool]:
    if r is None:
        return "-", None, False
    v = r.get(key)
    if v is not None:
        return format(v, spec), v, False
    est = extrapolate(rows, r["method"], r["classes"], key)
    if est is not None:
        return "~" + format(est, spec), est, True
    return "OOM" if r.get("oom") else "n/a", None, False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="open_clip:ViT-B-32", help="model spec (random init needs no download)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", default="10,100,1000", help="comma-separated class counts")
    ap.add_argument("--methods", default="plain,vlmood", help="plain, vlmood, unchunked (comma-separated)")
    ap.add_argument("--chunk", type=int, default=None, help="vlmood text chunk (default: auto_chunk, 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="cap on a child's extra address space")
    ap.add_argument(
        "--max-plain-classes", type=int, default=0, help="skip plain above this K (0 = never skip)"
    )
    ap.add_argument("--bound-mb", type=float, default=None, help="stated bound for vlmood's 1,000-class peak")
    ap.add_argument(
        "--no-torch-peak", dest="torch_peak", action="store_false", help="skip the profiled warm-up"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument("--child-method", help=argparse.SUPPRESS)
    ap.add_argument("--child-k", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_method:
        print(json.dumps(child(args)), flush=True)
        return 0

    classes = [int(x) for x in args.classes.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    rows: dict[tuple[str, int], dict] = {}
    for k in classes:
        for m in methods:
            if m == "plain" and args.max_plain_classes and k > args.max_plain_classes:
                rows[(m, k)] = {"method": m, "classes": k, "skipped": True, "oom": False}
                continue
            r = run_child(args, m, k)
            rows[(m, k)] = r
            brief = {x: r.get(x) for x in ("step_s", "peak_mb", "torch_peak_mb", "oom", "error") if x in r}
            print(f"# {m:9s} K={k:5d} {brief}", file=sys.stderr, flush=True)

    first = next(iter(rows.values()))
    print(
        f"model {args.model}  device {args.device}  threads {args.threads}  batch {args.batch_size}  "
        f"n_ctx {args.n_ctx}  steps {args.steps} (+1 warm-up, median)"
    )
    print(
        f"prompt length: {first.get('prompt_tokens')} positions (plain), "
        f"{first.get('prompt_tokens_used')} after vlmood's end-of-text truncation"
    )
    print(
        f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (1/5/15 min; a lone run adds "
        f"~{args.threads}; per-child values in the JSON)"
    )
    cols = ["classes"]
    for m in methods:
        cols += [f"{m} step s", f"{m} peak MB", f"{m} torch MB"]
    has_ratio = "plain" in methods and "vlmood" in methods
    if has_ratio:
        cols += ["step ratio", "memory ratio"]
    table = []
    for k in classes:
        row = [str(k)]
        vals = {}
        for m in methods:
            r = rows.get((m, k))
            for key, spec in (("step_s", ".2f"), ("peak_mb", ",.0f"), ("torch_peak_mb", ",.0f")):
                s, v, est = fmt(r, key, rows, spec)
                if r is not None and r.get("skipped"):
                    s = "skipped"
                row.append(s)
                vals[(m, key)] = (v, est)
        if has_ratio:
            for key in ("step_s", "peak_mb"):
                (a, ea), (b, eb) = vals[("plain", key)], vals[("vlmood", key)]
                row.append((("~" if ea or eb else "") + f"{a / b:.2f}x") if a and b else "-")
        table.append(row)
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    print(" | ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in table:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(
        "ratios are plain / vlmood (> 1: vlmood is faster / smaller); ~ = linear extrapolation from smaller K"
    )
    for (m, k), r in rows.items():
        if r.get("oom"):
            lim = r.get("mem_limit_mb")
            where = (
                f"after {len(r.get('step_times_s', []))} timed steps"
                if r.get("step_times_s")
                else "in the warm-up"
            )
            print(f"{m} K={k}: OOM at limit {lim:,} MB extra address space {where} ({r.get('error', '')})")
        elif r.get("error"):
            print(f"{m} K={k}: {r['error']}")
    some = next((r for r in rows.values() if r.get("peak_method")), {})
    print(
        f"peak MB: {some.get('peak_method', '?')} ({some.get('peak_rss_method', '')}); torch MB: CPU allocator "
        "peak (running allocations - frees) over the profiled warm-up step"
    )
    v = rows.get(("vlmood", max(classes)))
    if v is not None and v.get("peak_mb") is not None:
        kmax = max(classes)
        how = (
            f"encodes chunks of {v['chunk']} prompts under activation checkpointing"
            if v["chunk"]
            else "encodes all prompts in one pass (no chunking at this K; auto_chunk chunks above 256)"
        )
        msg = f"memory bound: vlmood at {kmax} classes {how}; extra peak {v['peak_mb']:,.0f} MB"
        if args.bound_mb:
            ok = v["peak_mb"] <= args.bound_mb
            msg += (
                f" {'<=' if ok else '>'} stated bound {args.bound_mb:,.0f} MB ({'within' if ok else 'OVER'})"
            )
        print(msg)
    load1 = os.getloadavg()
    print(
        f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; total {time.perf_counter() - t_all:.0f} s"
    )
    summary = {
        "bench": "coop_memory",
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "n_ctx": args.n_ctx,
        "steps": args.steps,
        "chunk_option": args.chunk,
        "bound_mb": args.bound_mb,
        "loadavg_start": load0,
        "loadavg_end": load1,
        "results": list(rows.values()),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
