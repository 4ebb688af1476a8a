"""Text encoding: cached, length-sorted, batched prompt embeddings and the zero-shot classifier.

``encode_texts`` hands all prompts to ``VLM.encode_text`` in one call, so a backend that sorts
prompts by token length (open_clip, Hugging Face CLIP) can cut every batch at its longest prompt
over the whole list rather than per small chunk; embeddings come back in the input order.
Encodings of at least :data:`PROGRESS_MIN` prompts log one line (count, model, batch size) and
show a progress bar (``progress=False`` silences the bar). Results are cached by model identity
+ the exact list of strings (:class:`vlmood.features.cache.TextCache`).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from vlmood import distributed as D
from vlmood.features.cache import TextCache, default_cache_root, text_cache_key
from vlmood.models.base import VLM

log = logging.getLogger(__name__)

#: encodings of at least this many prompts log a line and show a progress bar
PROGRESS_MIN = 2000
#: prompts per forward (sorted by token length, so batches carry almost no padding)
DEFAULT_TEXT_BATCH = 256


def model_name(model: VLM) -> str:
    """A short name for log lines: the user's spec string, else the architecture."""
    ident = getattr(model, "identity", None)
    return str(getattr(ident, "spec", "") or getattr(ident, "arch", "") or type(model).__name__)


def _accepts_progress(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _encode(
    model: VLM, texts: list[str], batch_size: int, update: Callable[[int], object] | None
) -> torch.Tensor:
    """``model.encode_text`` over all texts; per-batch progress when the backend reports it, else
    per slice of a few batches."""
    if update is None:
        return model.encode_text(texts, batch_size=batch_size)
    if _accepts_progress(model.encode_text):
        return model.encode_text(texts, batch_size=batch_size, progress=update)
    step = batch_size * 8
    parts = []
    for s in range(0, len(texts), step):
        parts.append(model.encode_text(texts[s : s + step], batch_size=batch_size))
        update(len(parts[-1]))
    return torch.cat(parts) if parts else model.encode_text([], batch_size=batch_size)


def encode_texts(
    model: VLM,
    texts: Sequence[str],
    cache_root: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_TEXT_BATCH,
    progress: bool = True,
    desc: str = "encode text",
) -> np.ndarray:
    """Normalised text embeddings [N, D] float32 of ``texts`` in their order, cached by model
    identity + exact strings."""
    from tqdm.auto import tqdm

    texts = list(texts)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    cache = TextCache(root)
    key = text_cache_key(model.identity.key_dict(), texts)
    hit = cache.get(key, len(texts))
    if hit is not None:
        if len(texts) >= PROGRESS_MIN:
            log.info("%s: %s prompts from the text cache", desc, f"{len(texts):,}")
        return hit
    big = len(texts) >= PROGRESS_MIN
    if big:
        log.info(
            "%s: encoding %s prompts with %s (batch %d, sorted by length)",
            desc,
            f"{len(texts):,}",
            model_name(model),
            batch_size,
        )
    bar = tqdm(
        total=len(texts),
        desc=desc,
        unit="prompt",
        disable=not (big and progress and D.is_main()),
        leave=False,
    )
    try:
        with torch.inference_mode():
            emb = _encode(model, texts, batch_size, bar.update if big else None).float().cpu().numpy()
    finally:
        bar.close()
    if D.is_main():
        cache.put(key, emb, {"n": len(texts), "model": model.identity.to_dict(), "first": texts[:3]})
    return emb


class TextEncoder:
    """``encode_text`` callable for :class:`vlmood.scores.ScoreContext`: list of prompts ->
    normalised [N, D] float32, through :func:`encode_texts` (cached, length-sorted, progress).

    Scores that encode many prompts (NegLabel) call it once with all of them, so the backend
    sorts over the whole list; ``name`` names the model in their log lines.
    """

    handles_progress = True

    def __init__(
        self,
        model: VLM,
        cache_root: str | os.PathLike | None = None,
        batch_size: int = DEFAULT_TEXT_BATCH,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.cache_root = cache_root
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        self.name = model_name(model)

    def __call__(self, texts: Sequence[str], desc: str = "encode text") -> np.ndarray:
        return encode_texts(self.model, texts, self.cache_root, self.batch_size, self.progress, desc)


def class_text_features(
    model: VLM,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_root: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_TEXT_BATCH,
    progress: bool = True,
) -> np.ndarray:
    """Zero-shot classifier [K, D]: per class, the normalised mean of normalised template embeddings.

    All K x T prompts are encoded in large batches (not one class per forward); K x T of at
    least :data:`PROGRESS_MIN` logs a line and shows a progress bar.
    """
    if not classnames:
        raise ValueError("no class names given")
    if not templates:
        raise ValueError("no templates given")
    from vlmood.data.templates import is_class_prompts, render_prompts

    per_class = render_prompts(classnames, templates)  # templates, or class-specific (CuPL) prompts
    shape = "class-specific prompts" if is_class_prompts(templates) else f"{len(templates)} templates"
    emb = encode_texts(
        model,
        [p for ps in per_class for p in ps],
        cache_root,
        batch_size,
        progress,
        desc=f"class prompts ({len(classnames):,} classes x {shape})",
    )
    bounds = np.cumsum([len(ps) for ps in per_class])[:-1]
    mean = np.stack([part.mean(axis=0) for part in np.split(emb, bounds)])
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
