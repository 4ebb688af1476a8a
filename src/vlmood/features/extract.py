"""Batched, cached, resumable and distributed feature extraction.

``extract_features`` encodes each image of a source once per (model, dataset, kind) and returns
memory-mapped arrays. Work is cut into fixed-size chunks (independent of the batch size), each
written atomically as soon as it is done, so an interrupted run resumes from its finished
chunks. Under ``torchrun`` chunks are dealt round-robin to the ranks; each finished chunk is
gathered to rank 0, the only writer, so no shared file system is needed and every rank ends
with the same cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from vlmood import distributed as D
from vlmood.data.base import ImageSource
from vlmood.features.cache import (
    BadChunksError,
    CacheError,
    ImageEntry,
    default_cache_root,
    image_cache_key,
)
from vlmood.features.options import DEFAULT_CHUNK, ExtractOptions  # noqa: F401  (DEFAULT_CHUNK re-exported)

# text encoding lives in vlmood.features.text; re-exported here for existing imports
from vlmood.features.text import class_text_features, encode_texts  # noqa: F401
from vlmood.models.base import FEATURE_KINDS, VLM

log = logging.getLogger(__name__)


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
    on_error: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
    """Run the model over the loader (ordered over whole chunks) and yield finished chunks.

    The loader yields ``(images, index, ok, error)`` (``ImageDataset(report_errors=True)``);
    ``on_error(index, message)`` is called for an image a worker could not decode (it raises)."""
    queue = list(chunk_ids)
    buf: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    buf_valid: list[np.ndarray] = []
    filled = 0
    non_blocking = model.device.type == "cuda"
    for images, idx, ok, err in loader:
        if on_error is not None and any(err):
            # a worker could not decode an image: raise the plain error here in the main process
            j = next(j for j, e in enumerate(err) if e)
            on_error(int(idx[j]), err[j])
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


def _encode_missing(
    model: VLM,
    source: ImageSource,
    entries: dict[str, ImageEntry],
    todo: Sequence[str],
    chunk_size: int,
    batch_size: int,
    num_workers: int | None,
    skip_corrupt: bool,
    progress: bool,
    first: bool = True,
) -> int:
    """Encode the chunks no entry in ``todo`` has finished (collective under torchrun; rank 0
    writes each chunk as it arrives). Returns the number of images this rank encoded."""
    from tqdm.auto import tqdm

    from vlmood.data.base import DataError
    from vlmood.data.sources import ImageDataset, open_image

    ranges = _chunk_ranges(len(source), chunk_size)
    if D.is_main():
        if first:
            for k in todo:
                entries[k].prepare(chunk_size)
        done = set.intersection(*(entries[k].finished_chunks() for k in todo))
        missing = [c for c in range(len(ranges)) if c not in done]
    else:
        missing = None
    missing = D.broadcast_object(missing)
    if not missing:
        return 0
    if len(missing) < len(ranges):
        log.info("%s: resuming extraction, %d of %d chunks left", source.name, len(missing), len(ranges))
    world, rank = D.world_size(), D.rank()
    mine = missing[rank::world]
    indices = [i for c in mine for i in range(*ranges[c])]
    dataset = ImageDataset(source, model.preprocess, skip_corrupt=skip_corrupt, report_errors=True)
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

    def corrupt(i: int, message: str) -> None:
        """Raise the plain CorruptImageError a single-process run gives (not a worker traceback)."""
        open_image(source.samples[i].path)
        raise DataError(message)  # readable again since the worker tried: report what it saw

    n_rounds = (len(missing) + world - 1) // world
    bar = tqdm(
        total=sum(r[1] - r[0] for r in (ranges[c] for c in missing)),
        desc=f"encode {source.name}",
        unit="img",
        disable=not (progress and D.is_main()),
        leave=False,
    )
    on_error = None if skip_corrupt else corrupt
    stream = _iter_chunks(model, loader, mine, ranges, todo, on_error) if indices else iter(())
    model.torch_module.eval()
    try:
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
    finally:
        bar.close()
    return len(indices)


def extract_features(
    model: VLM,
    source: ImageSource,
    kinds: Sequence[str] = ("image",),
    cache_root: str | os.PathLike | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    chunk_size: int | None = None,
    skip_corrupt: bool | None = None,
    fingerprint: str | None = None,
    progress: bool | None = None,
    *,
    options: ExtractOptions | None = None,
) -> FeatureSet:
    """Encode ``source`` with ``model`` for each of ``kinds``, reusing and filling the cache.

    ``options``: how (:class:`~vlmood.features.options.ExtractOptions`: cache root, batch size,
    workers, chunk size, corrupt-image policy, fingerprint, progress; default its defaults); a
    keyword argument given here (not None) overrides that field.

    Returns a FeatureSet whose arrays are memory maps. Kinds: see ``vlmood.models.base``.
    Under torchrun every rank must call this; rank 0 writes the cache. Other ranks return the same
    arrays when they can see the cache (shared file system), else a FeatureSet with ``local=False``
    and no arrays.

    Entries are filled under per-entry inter-process locks (two processes on the same data and
    cache: one encodes, the other waits and reads); damaged chunks are recomputed.
    """
    o = ExtractOptions.of(
        options,
        cache_root=cache_root,
        batch_size=batch_size,
        num_workers=num_workers,
        chunk_size=chunk_size,
        skip_corrupt=skip_corrupt,
        fingerprint=fingerprint,
        progress=progress,
    )
    skip_corrupt, chunk_size = o.skip_corrupt, o.chunk_size
    for k in kinds:
        if k not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {k!r}; choose from {FEATURE_KINDS}")
    if len(source) == 0:
        raise ValueError(f"dataset {source.name!r} ({source.origin}) has no images")
    root = Path(o.cache_root) if o.cache_root is not None else default_cache_root()
    t0 = time.perf_counter()
    fp = source.fingerprint(o.fingerprint) if D.is_main() else None
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
    timings = {"fingerprint_s": time.perf_counter() - t0}
    encoded = 0
    with contextlib.ExitStack() as locks:
        if D.is_main():
            todo = [k for k, e in entries.items() if e.check() is not None]
            # fill (or repair) entries only under their inter-process locks (taken in key order, so
            # two processes never wait on each other); a process that waited finds them complete
            for k in sorted(todo, key=lambda k: entries[k].key):
                locks.enter_context(entries[k].lock())
            todo = [k for k in todo if not entries[k].is_complete()]
        else:
            todo = None
        todo = D.broadcast_object(todo)
        if todo:
            t1 = time.perf_counter()
            for attempt in range(3):
                encoded += _encode_missing(
                    model,
                    source,
                    entries,
                    todo,
                    chunk_size,
                    o.batch_size,
                    o.num_workers,
                    skip_corrupt,
                    o.progress,
                    first=attempt == 0,
                )
                timings["encode_s"] = time.perf_counter() - t1
                bad = None
                if D.is_main():
                    try:
                        for k in todo:
                            entries[k].assemble(len(source), chunk_size, {"encode_s": timings["encode_s"]})
                    except BadChunksError as e:
                        bad = e.chunks  # deleted with a warning naming each file: recompute them
                bad = D.broadcast_object(bad)
                if not bad:
                    break
            else:
                raise CacheError(
                    f"feature chunks of {source.name} were damaged again after being recomputed 3 times "
                    f"(cache {root}); check the disk, or set --cache-dir/VLMOOD_CACHE elsewhere"
                )
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
