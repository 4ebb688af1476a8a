"""Batched, cached, resumable and distributed feature extraction.

``extract_features`` encodes each image of a source once per (model, dataset, kind) and returns
memory-mapped arrays. Work is cut into fixed-size chunks (independent of the batch size), each
written atomically as soon as it is done, so an interrupted run resumes from its finished
chunks. Under ``torchrun`` chunks are dealt round-robin to the ranks; each finished chunk is
gathered to rank 0, the only writer, so no shared file system is needed and every rank ends
with the same cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vlmood import distributed as D
from vlmood.data.base import ImageSource
from vlmood.features.cache import (
    ImageEntry,
    TextCache,
    default_cache_root,
    image_cache_key,
    text_cache_key,
)
from vlmood.models.base import FEATURE_KINDS, VLM

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 2048


def default_num_workers() -> int:
    n = os.cpu_count() or 1
    return max(0, min(8, n - 1))


@dataclass
class FeatureSet:
    """Cached features of one image source. Arrays are memory maps over the cache files."""

    source: ImageSource
    arrays: dict[str, np.ndarray]
    valid: np.ndarray
    keys: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    encoded: int = 0  # images encoded by this call (0 = everything came from the cache)
    local: bool = True  # False on a non-zero rank that cannot see rank 0's cache (arrays empty)
    fingerprint: str | None = None  # the dataset fingerprint the cache keys were made from

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels, dtype=np.int64)

    @property
    def skipped(self) -> list[str]:
        return [self.source.samples[i].path for i in np.flatnonzero(~self.valid)]

    def get(self, kind: str) -> np.ndarray:
        """Features of the readable images only (memory map when nothing was skipped)."""
        arr = self.arrays[kind]
        return arr if bool(self.valid.all()) else arr[self.valid]

    def valid_labels(self) -> np.ndarray:
        return self.labels[self.valid]


def _chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _iter_chunks(
    model: VLM,
    loader: DataLoader,
    chunk_ids: Sequence[int],
    ranges: list[tuple[int, int]],
    kinds: Sequence[str],
) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
    """Run the model over the loader (ordered over whole chunks) and yield finished chunks."""
    queue = list(chunk_ids)
    buf: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    buf_valid: list[np.ndarray] = []
    filled = 0
    non_blocking = model.device.type == "cuda"
    for images, _idx, ok in loader:
        images = images.to(model.device, non_blocking=non_blocking)
        with torch.inference_mode():
            out = model.encode_image_features(images, kinds)
        ok_np = ok.numpy().astype(bool)
        batch = {}
        for k in kinds:
            arr = out[k].float().cpu().numpy()
            if not ok_np.all():
                arr[~ok_np] = 0.0
            batch[k] = arr
        pos = 0
        nb = len(ok_np)
        while pos < nb:
            cid = queue[0]
            need = ranges[cid][1] - ranges[cid][0] - filled
            take = min(need, nb - pos)
            for k in kinds:
                buf[k].append(batch[k][pos : pos + take])
            buf_valid.append(ok_np[pos : pos + take])
            filled += take
            pos += take
            if filled == ranges[cid][1] - ranges[cid][0]:
                yield cid, {k: np.concatenate(buf[k]) for k in kinds}, np.concatenate(buf_valid)
                queue.pop(0)
                buf = {k: [] for k in kinds}
                buf_valid = []
                filled = 0


def extract_features(
    model: VLM,
    source: ImageSource,
    kinds: Sequence[str] = ("image",),
    cache_root: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    skip_corrupt: bool = False,
    fingerprint: str = "stat",
    progress: bool = True,
) -> FeatureSet:
    """Encode ``source`` with ``model`` for each of ``kinds``, reusing and filling the cache.

    Returns a FeatureSet whose arrays are memory maps. Kinds: see ``vlmood.models.base``.
    Under torchrun every rank must call this; rank 0 writes the cache. Other ranks return the same
    arrays when they can see the cache (shared file system), else a FeatureSet with ``local=False``
    and no arrays.
    """
    from tqdm.auto import tqdm

    from vlmood.data.sources import ImageDataset

    for k in kinds:
        if k not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {k!r}; choose from {FEATURE_KINDS}")
    if len(source) == 0:
        raise ValueError(f"dataset {source.name!r} ({source.origin}) has no images")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    t0 = time.perf_counter()
    fp = source.fingerprint(fingerprint) if D.is_main() else None
    fp = D.broadcast_object(fp)
    model_key = model.identity.key_dict()
    meta = {
        "model": model.identity.to_dict(),
        "dataset": {"name": source.name, "origin": source.origin, "n": len(source), "fingerprint": fp},
        "skip_corrupt": skip_corrupt,
    }
    entries = {
        k: ImageEntry(root, image_cache_key(model_key, fp, k, skip_corrupt), k, meta=dict(meta))
        for k in kinds
    }
    todo = [k for k, e in entries.items() if not e.is_complete()] if D.is_main() else None
    todo = D.broadcast_object(todo)
    timings = {"fingerprint_s": time.perf_counter() - t0}
    encoded = 0
    if todo:
        ranges = _chunk_ranges(len(source), chunk_size)
        if D.is_main():
            for k in todo:
                entries[k].prepare(chunk_size)
            done = set.intersection(*(entries[k].finished_chunks() for k in todo))
            missing = [c for c in range(len(ranges)) if c not in done]
        else:
            missing = None
        missing = D.broadcast_object(missing)
        if len(missing) < len(ranges):
            log.info("%s: resuming extraction, %d of %d chunks left", source.name, len(missing), len(ranges))
        world, rank = D.world_size(), D.rank()
        mine = missing[rank::world]
        indices = [i for c in mine for i in range(*ranges[c])]
        dataset = ImageDataset(source, model.preprocess, skip_corrupt=skip_corrupt)
        workers = default_num_workers() if num_workers is None else num_workers
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=model.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        t1 = time.perf_counter()
        n_rounds = (len(missing) + world - 1) // world
        bar = tqdm(
            total=sum(r[1] - r[0] for r in (ranges[c] for c in missing)),
            desc=f"encode {source.name}",
            unit="img",
            disable=not (progress and D.is_main()),
            leave=False,
        )
        stream = _iter_chunks(model, loader, mine, ranges, todo) if indices else iter(())
        model.torch_module.eval()
        for _ in range(n_rounds):
            item = next(stream, None)
            gathered = D.gather_objects(item)
            if D.is_main():
                for got in gathered or []:
                    if got is None:
                        continue
                    cid, feats, valid = got
                    for k in todo:
                        entries[k].write_chunk(cid, feats[k], valid)
                    bar.update(len(valid))
        bar.close()
        encoded = len(indices)
        timings["encode_s"] = time.perf_counter() - t1
        if D.is_main():
            for k in todo:
                entries[k].assemble(len(source), chunk_size, {"encode_s": timings["encode_s"]})
        D.barrier()
    if not D.is_main() and not all(e.manifest_path.exists() for e in entries.values()):
        # rank 0 holds the cache and no shared file system shows it here: this rank gets no arrays
        return FeatureSet(
            source,
            {},
            np.ones(len(source), dtype=bool),
            {k: e.key for k, e in entries.items()},
            timings,
            encoded,
            local=False,
            fingerprint=fp,
        )
    arrays, valid = {}, None
    for k, e in entries.items():
        data, v, _ = e.load()
        arrays[k] = data
        valid = v if valid is None else (valid & v)
    assert valid is not None
    if not valid.all():
        bad = [source.samples[i].path for i in np.flatnonzero(~valid)][:5]
        log.warning("%s: skipped %d unreadable images (first: %s)", source.name, int((~valid).sum()), bad)
    timings["total_s"] = time.perf_counter() - t0
    return FeatureSet(
        source, arrays, valid, {k: e.key for k, e in entries.items()}, timings, encoded, fingerprint=fp
    )


def encode_texts(
    model: VLM, texts: Sequence[str], cache_root: str | os.PathLike | None = None, batch_size: int = 256
) -> np.ndarray:
    """Normalised text embeddings [N, D] of ``texts``, cached by model identity + exact strings."""
    texts = list(texts)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    cache = TextCache(root)
    key = text_cache_key(model.identity.key_dict(), texts)
    hit = cache.get(key, len(texts))
    if hit is not None:
        return hit
    with torch.inference_mode():
        emb = model.encode_text(texts, batch_size=batch_size).float().cpu().numpy()
    if D.is_main():
        cache.put(key, emb, {"n": len(texts), "model": model.identity.to_dict(), "first": texts[:3]})
    return emb


def class_text_features(
    model: VLM,
    classnames: Sequence[str],
    templates: Sequence[str],
    cache_root: str | os.PathLike | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Zero-shot classifier [K, D]: per class, the normalised mean of normalised template embeddings.

    All K x T prompts are encoded in large batches (not one class per forward).
    """
    if not classnames:
        raise ValueError("no class names given")
    if not templates:
        raise ValueError("no templates given")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(model, prompts, cache_root, batch_size).reshape(len(classnames), len(templates), -1)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def cache_info(fs: FeatureSet) -> dict[str, Any]:
    """What a result records about where its features came from."""
    return {
        "fingerprint": fs.fingerprint,
        "keys": fs.keys,
        "n": len(fs.source),
        "n_valid": int(fs.valid.sum()),
        "encoded_now": fs.encoded,
        "timings": fs.timings,
    }
