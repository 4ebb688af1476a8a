"""Benchmark: zero-shot text classifier for ImageNet (1,000 classes x 80 CLIP templates).

Compares ``VLM.encode_text`` (all prompts, large batches) with the reference loop of CLIP's
zero-shot notebook / open_clip's ``build_zero_shot_classifier_legacy``: one forward per class with
that class's 80 prompts. Both build the same classifier (per-class mean of normalised prompt
embeddings, renormalised); the script checks that they agree. The baseline may be timed on a
subset of classes (``--baseline-classes``) and is reported per prompt.

    PYTHONPATH=src python benchmarks/bench_text.py                       # tiny-test model
    PYTHONPATH=src python benchmarks/bench_text.py --model open_clip:ViT-B-32 --classes 50
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
import torch.nn.functional as F


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classifier_batched(vlm, classnames, templates, batch_size):
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = vlm.encode_text(prompts, batch_size=batch_size)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def classifier_loop(vlm, tokenizer, classnames, templates):
    """One class per forward, plain open_clip (build_zero_shot_classifier_legacy)."""
    model = vlm.torch_module
    rows = []
    with torch.no_grad(), vlm.autocast():
        for c in classnames:
            tokens = tokenizer([t.format(c) for t in templates]).to(vlm.device)
            emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--model", default="tiny-test", help="model spec (default tiny-test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--classes", type=int, default=1000, help="number of ImageNet classes (<= 1000)")
    ap.add_argument("--baseline-classes", type=int, default=100, help="classes timed for the loop baseline")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats of the batched run (best is kept)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from vlmood.models import load_model

    classnames = list(IMAGENET_CLASSNAMES[: args.classes])
    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == 80
    device = torch.device(args.device)
    vlm = load_model(args.model, device=device, precision=args.precision)
    n_base = min(args.baseline_classes, len(classnames))
    import open_clip

    # the baseline uses open_clip's own tokenizer (vlmood's skips ftfy on plain ASCII)
    arch = vlm.identity.arch
    tokenizer = open_clip.get_tokenizer(arch) if arch in open_clip.list_models() else vlm.tokenize

    # warm-up (allocator, kernels, tokenizer caches)
    classifier_batched(vlm, classnames[:2], templates, args.batch_size)
    classifier_loop(vlm, tokenizer, classnames[:2], templates)

    best = float("inf")
    for _ in range(max(1, args.repeats)):
        sync(device)
        t0 = time.perf_counter()
        zs = classifier_batched(vlm, classnames, templates, args.batch_size)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    n_prompts = len(classnames) * len(templates)

    sync(device)
    t0 = time.perf_counter()
    ref = classifier_loop(vlm, tokenizer, classnames[:n_base], templates)
    sync(device)
    t_loop = time.perf_counter() - t0
    n_loop = n_base * len(templates)

    max_diff = (zs[:n_base] - ref).abs().max().item()
    rate_b = n_prompts / best
    rate_l = n_loop / t_loop
    print(f"model            {args.model} ({vlm.identity.arch}, {vlm.identity.weights}, {args.precision})")
    print(f"device           {device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(
        f"batched          {n_prompts} prompts ({len(classnames)} classes x 80) in {best:.2f} s: {rate_b:,.0f} prompts/s (batch {args.batch_size})"
    )
    print(
        f"loop baseline    {n_loop} prompts ({n_base} classes x 80, one forward per class) in {t_loop:.2f} s: {rate_l:,.0f} prompts/s"
    )
    print(f"speed-up         {rate_b / rate_l:.2f}x")
    print(f"max |diff|       {max_diff:.2e} (classifier rows, batched vs loop)")
    print(f"peak RSS         {peak_rss_mib():,.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA mem    {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
