"""Seeded k-shot subsets and split files that pin them to a dataset.

A split file is JSON: the selected samples' relative paths and labels, the seed and shots, and
the dataset's identity. ``load_split`` maps the stored samples back onto the current source and
refuses a split that does not match it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.data.base import DataError, ImageSource
from vlmood.utils import atomic_write_json, sha256_json

SPLIT_FORMAT = "vlmood-split/1"


def few_shot_indices(
    labels: Sequence[int],
    shots: int,
    seed: int,
    classnames: Sequence[str] | None = None,
) -> list[int]:
    """``shots`` indices per class, drawn with ``numpy.random.default_rng(seed)``; sorted.

    Classes are visited in increasing label order and unlabelled samples (-1) are ignored, so the
    result depends only on ``labels``, ``shots`` and ``seed``. A class with fewer than ``shots``
    samples raises DataError naming it.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    arr = np.asarray(labels, dtype=np.int64)
    classes = np.unique(arr[arr >= 0])
    if classes.size == 0:
        raise DataError("few-shot sampling needs labelled samples; all labels are -1")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    short: list[str] = []
    for c in classes:
        idx = np.flatnonzero(arr == c)
        if idx.size < shots:
            cname = f" ({classnames[c]!r})" if classnames is not None and c < len(classnames) else ""
            short.append(f"class {int(c)}{cname} has {idx.size}")
            continue
        chosen.extend(int(i) for i in rng.choice(idx, size=shots, replace=False))
    if short:
        raise DataError(
            f"{shots}-shot sampling needs {shots} images per class, but "
            + "; ".join(short[:10])
            + (f"; and {len(short) - 10} more classes" if len(short) > 10 else "")
        )
    return sorted(chosen)


def _root_of(source: ImageSource) -> str:
    root = source.meta.get("root")
    if root:
        return str(root)
    paths = [s.path for s in source.samples]
    return os.path.commonpath(paths) if paths else ""


def _rel(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix() if root else path


def listing_hash(source: ImageSource) -> str:
    """sha256 of the source's (relative path, label) list: its identity across machines."""
    root = _root_of(source)
    return sha256_json([[_rel(s.path, root), s.label] for s in source.samples])


def save_split(
    path: str | os.PathLike,
    source: ImageSource,
    indices: Sequence[int],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a split file atomically (``meta`` usually holds ``seed`` and ``shots``)."""
    n = len(source)
    bad = [i for i in indices if not 0 <= int(i) < n]
    if bad:
        raise DataError(f"split indices out of range for {source.name} ({n} samples): {bad[:5]}")
    root = _root_of(source)
    meta = dict(meta or {})
    obj = {
        "format": SPLIT_FORMAT,
        "dataset": source.name,
        "seed": meta.pop("seed", None),
        "shots": meta.pop("shots", None),
        "n_source": n,
        "listing_sha256": listing_hash(source),
        "fingerprint": source.fingerprint("stat"),
        "meta": meta,
        "indices": [int(i) for i in indices],
        "samples": [
            {"path": _rel(source.samples[i].path, root), "label": source.samples[i].label} for i in indices
        ],
    }
    atomic_write_json(path, obj)


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """The raw split-file content (no check against a dataset)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {p.absolute()} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"split file {p}: invalid JSON ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != SPLIT_FORMAT or "samples" not in obj:
        raise DataError(f"split file {p}: not a {SPLIT_FORMAT} file")
    return obj


def load_split(path: str | os.PathLike, source: ImageSource) -> list[int]:
    """Indices into ``source`` of the samples a split file names, checked against it.

    Samples are matched by relative path; a missing file or a changed label raises DataError.
    If the dataset listing changed but every split sample is still there, the indices are
    remapped (and the result is the same samples).
    """
    obj = read_split(path)
    root = _root_of(source)
    where = {_rel(s.path, root): i for i, s in enumerate(source.samples)}
    out: list[int] = []
    missing: list[str] = []
    relabelled: list[str] = []
    for entry in obj["samples"]:
        i = where.get(entry["path"])
        if i is None:
            missing.append(entry["path"])
            continue
        if source.samples[i].label != entry["label"]:
            relabelled.append(f"{entry['path']} (split {entry['label']}, now {source.samples[i].label})")
        out.append(i)
    if missing or relabelled:
        parts = []
        if missing:
            parts.append(f"{len(missing)} files not in the dataset, e.g. {missing[0]}")
        if relabelled:
            parts.append(f"{len(relabelled)} labels differ, e.g. {relabelled[0]}")
        raise DataError(
            f"split file {path} does not match dataset {source.name} under {root}: "
            + "; ".join(parts)
            + ". Recreate the split for this dataset."
        )
    return sorted(out)
