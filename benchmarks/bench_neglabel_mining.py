"""Benchmark: encoding NegLabel's candidate vocabulary (WordNet nouns + adjectives) in words/s.

Compares, in one run on the same model and words,

- **vlmood**: ``vlmood.features.text.encode_texts`` (what NegLabel mining calls through
  ``TextEncoder``): every prompt in one call, sorted by token length, each batch cut at its
  longest prompt, ``torch.inference_mode``, embeddings back in the input order (a fresh text
  cache, so nothing is read from disk);
- **plain loop**: the obvious implementation: fixed-size batches of the words in their original
  order, tokenized to the full context length, ``model.encode_text`` under ``torch.no_grad``.

Both encode the same prompts (nouns ``"the nice {}"``, adjectives ``"This is a {} photo"``); the
script checks that the embeddings agree and prints the speed-up and the peak RSS of each phase.
The two paths are timed alternately ``--repeats`` times and the best time of each is kept (on a
shared machine, other processes slow single runs).

    PYTHONPATH=src python benchmarks/bench_neglabel_mining.py                     # 5,000 words
    PYTHONPATH=src python benchmarks/bench_neglabel_mining.py --words 0           # all words
    PYTHONPATH=src python benchmarks/bench_neglabel_mining.py --model tiny-test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402


def sample_prompts(n: int, seed: int) -> list[str]:
    from vlmood.scores.neglabel import load_wordnet_vocabulary

    voc = load_wordnet_vocabulary()
    prompts = [f"the nice {w}" for w in voc["noun"]] + [f"This is a {w} photo" for w in voc["adj"]]
    if n and n < len(prompts):
        idx = np.random.default_rng(seed).choice(len(prompts), n, replace=False)
        prompts = [prompts[i] for i in idx]  # random order, as a vocabulary would come
    return prompts


def plain_loop(vlm, prompts: list[str], batch_size: int) -> np.ndarray:
    """Fixed batches in the given order, full padding: tokenizer -> model.encode_text."""
    model = vlm.torch_module
    out = []
    with torch.no_grad(), vlm.autocast():
        for s in range(0, len(prompts), batch_size):
            tokens = vlm.tokenize(prompts[s : s + batch_size]).to(vlm.device)
            out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def timed(fn, *args):
    reset_peak_rss()
    base = rss_mb()
    t0 = time.perf_counter()
    res = fn(*args)
    return res, time.perf_counter() - t0, peak_rss_mb(), base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vlmood-tiny", help="model spec (default vlmood-tiny)")
    ap.add_argument("--words", type=int, default=5000, help="random sample of the vocabulary (0 = all)")
    ap.add_argument("--baseline-words", type=int, default=0, help="words timed for the plain loop (0 = same)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256, help="batch size of both paths")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each path (best kept)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from vlmood.features.text import encode_texts
    from vlmood.models import load_model

    vlm = load_model(args.model, device="cpu")
    vlm.torch_module.eval()
    prompts = sample_prompts(args.words, args.seed)
    n_base = min(args.baseline_words or len(prompts), len(prompts))

    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (allocator, kernels, tokenizer caches) on words outside the timed runs' order
        encode_texts(vlm, prompts[:64], Path(tmp) / "warm", args.batch_size, progress=False)
        plain_loop(vlm, prompts[:64], args.batch_size)

        t_new = t_ref = float("inf")
        peak_new = peak_ref = 0.0
        for r in range(max(1, args.repeats)):
            new, t, peak, base_new = timed(
                encode_texts, vlm, prompts, Path(tmp) / f"cache{r}", args.batch_size, False
            )
            t_new, peak_new = min(t_new, t), max(peak_new, peak)
            ref, t, peak, base_ref = timed(plain_loop, vlm, prompts[:n_base], args.batch_size)
            t_ref, peak_ref = min(t_ref, t), max(peak_ref, peak)
            print(
                f"  run {r + 1}: best so far vlmood {len(prompts) / t_new:,.0f}, plain {n_base / t_ref:,.0f} words/s"
            )

    max_diff = float(np.abs(new[:n_base] - ref).max())
    rate_new, rate_ref = len(prompts) / t_new, n_base / t_ref
    tokens = vlm.tokenize(prompts[: min(len(prompts), 20000)])
    pad = getattr(vlm.torch_module, "text", None)
    pad_id = getattr(getattr(pad, "config", None), "pad_token_id", 0)
    mean_len = float((tokens != pad_id).sum(1).float().mean())
    print(f"model        {args.model} ({vlm.identity.arch}, {vlm.identity.weights[:40]})")
    print(f"machine      threads={torch.get_num_threads()} torch={torch.__version__}")
    print(
        f"words        {len(prompts):,} (seed {args.seed}); mean {mean_len:.1f} tokens of context {tokens.shape[1]}"
    )
    print(
        f"vlmood       {len(prompts):,} prompts in {t_new:.2f} s: {rate_new:,.0f} words/s "
        f"(batch {args.batch_size}, length-sorted); peak RSS {peak_new:,.0f} MiB (from {base_new:,.0f})"
    )
    print(
        f"plain loop   {n_base:,} prompts in {t_ref:.2f} s: {rate_ref:,.0f} words/s "
        f"(batch {args.batch_size}, original order, full padding); peak RSS {peak_ref:,.0f} MiB "
        f"(from {base_ref:,.0f})"
    )
    print(f"speed-up     {rate_new / rate_ref:.2f}x (best of {max(1, args.repeats)} alternating runs each)")
    print(f"max |diff|   {max_diff:.2e} (normalised embeddings, vlmood vs plain loop)")


if __name__ == "__main__":
    main()
