"""Content-addressed on-disk cache of image and text embeddings.

Layout of one entry (one model x dataset x feature kind)::

    <cache_root>/images/<key>/manifest.json   # written last: its presence means "complete"
    <cache_root>/images/<key>/data.npy        # [N, ...] array, opened as a memory map
    <cache_root>/images/<key>/valid.npy       # [N] bool, False for skipped corrupt images
    <cache_root>/images/<key>/chunks/*.npz    # only while an extraction is unfinished

The key is sha256 over the model identity (architecture, weights hash or tag, precision,
QuickGELU, preprocessing), the dataset identity (file list + sizes + mtimes, or content hashes,
plus labels), the feature kind, the corrupt-image policy and the cache format version. A changed
key means a new entry: stale features are never reused. An entry whose files do not match
its manifest (truncated, wrong shape, wrong key) is rebuilt with a warning.

Text embeddings (class names x templates, or any list of strings) live under
``<cache_root>/text/<key>.npy`` with a JSON manifest beside them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.errors import RunError
from vlmood.utils import atomic_path, atomic_write_json, sha256_json

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STORE_DTYPES = {"image": np.float32, "preproj": np.float32, "patch": np.float16}


def default_cache_root() -> Path:
    """``$VLMOOD_CACHE`` or ``~/.cache/vlmood``."""
    env = os.environ.get("VLMOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vlmood"


class CacheError(RunError):
    """A cache entry is unusable (truncated, mismatched); it will be rebuilt."""


def image_cache_key(
    model_key: dict[str, Any], dataset_fingerprint: str, kind: str, skip_corrupt: bool
) -> str:
    return sha256_json(
        {
            "format": CACHE_FORMAT,
            "model": model_key,
            "dataset": dataset_fingerprint,
            "kind": kind,
            "skip_corrupt": bool(skip_corrupt),
        }
    )


def text_cache_key(model_key: dict[str, Any], texts: list[str]) -> str:
    return sha256_json({"format": CACHE_FORMAT, "model": model_key, "texts": texts})


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


@dataclass
class ImageEntry:
    """One (model, dataset, kind) entry of the image-feature cache."""

    root: Path
    key: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "images" / self.key

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def chunk_dir(self) -> Path:
        return self.dir / "chunks"

    def chunk_path(self, chunk_id: int) -> Path:
        return self.chunk_dir / f"{chunk_id:06d}.npz"

    # -- reading ---------------------------------------------------------------------------
    def is_complete(self) -> bool:
        """True when a valid, complete entry exists. A broken one is removed with a warning."""
        if not self.manifest_path.exists():
            return False
        try:
            self._validate()
            return True
        except CacheError as e:
            log.warning("feature cache entry %s is unusable (%s); rebuilding it", self.dir, e)
            self.clear()
            return False

    def _validate(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"unreadable manifest: {e}") from e
        if manifest.get("key") != self.key or manifest.get("format") != CACHE_FORMAT:
            raise CacheError("manifest key or format does not match")
        data_path, valid_path = self.dir / "data.npy", self.dir / "valid.npy"
        for p, expected in (
            (data_path, manifest.get("data_bytes")),
            (valid_path, manifest.get("valid_bytes")),
        ):
            if not p.exists():
                raise CacheError(f"missing {p.name}")
            if p.stat().st_size != expected:
                raise CacheError(
                    f"{p.name} has {p.stat().st_size} bytes, manifest says {expected} (truncated?)"
                )
        try:
            arr = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CacheError(f"data.npy unreadable: {e}") from e
        if list(arr.shape) != manifest["shape"] or str(arr.dtype) != manifest["dtype"]:
            raise CacheError(f"data.npy has shape {arr.shape} {arr.dtype}, manifest says {manifest['shape']}")
        return manifest

    def load(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(memory-mapped data [N, ...], valid mask [N], manifest)."""
        manifest = self._validate()
        data = np.load(self.dir / "data.npy", mmap_mode="r", allow_pickle=False)
        valid = np.load(self.dir / "valid.npy", allow_pickle=False)
        return data, valid, manifest

    def finished_chunks(self) -> set[int]:
        if not self.chunk_dir.exists():
            return set()
        done = set()
        for p in self.chunk_dir.glob("*.npz"):
            try:
                done.add(int(p.stem))
            except ValueError:
                continue
        return done

    def read_chunk(self, chunk_id: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.chunk_path(chunk_id), allow_pickle=False) as z:
            return z["feats"], z["valid"]

    # -- writing ---------------------------------------------------------------------------
    def write_chunk(self, chunk_id: int, feats: np.ndarray, valid: np.ndarray) -> None:
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        store = STORE_DTYPES.get(self.kind, np.float32)
        _save_npz_atomic(self.chunk_path(chunk_id), feats=np.asarray(feats, dtype=store), valid=valid)

    def assemble(self, n: int, chunk_size: int, manifest_extra: dict[str, Any]) -> None:
        """Concatenate finished chunks into data.npy (memory-mapped writes), then the manifest."""
        n_chunks = (n + chunk_size - 1) // chunk_size
        missing = set(range(n_chunks)) - self.finished_chunks()
        if missing:
            raise CacheError(f"cannot assemble {self.dir}: chunks {sorted(missing)[:5]} missing")
        first, _ = self.read_chunk(0)
        shape = (n, *first.shape[1:])
        data_path, valid_path = self.dir / "data.npy", self.dir / "valid.npy"
        valid_all = np.zeros(n, dtype=bool)
        with atomic_path(data_path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=shape)
            for c in range(n_chunks):
                feats, valid = self.read_chunk(c)
                s = c * chunk_size
                if feats.shape[0] != min(chunk_size, n - s):
                    raise CacheError(f"chunk {c} of {self.dir} has {feats.shape[0]} rows")
                out[s : s + feats.shape[0]] = feats
                valid_all[s : s + feats.shape[0]] = valid
            out.flush()
            del out
        _save_npy_atomic(valid_path, valid_all)
        manifest = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "kind": self.kind,
            "shape": list(shape),
            "dtype": str(first.dtype),
            "data_bytes": data_path.stat().st_size,
            "valid_bytes": valid_path.stat().st_size,
            "n_valid": int(valid_all.sum()),
            "chunk_size": chunk_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.meta,
            **manifest_extra,
        }
        atomic_write_json(self.manifest_path, manifest)
        shutil.rmtree(self.chunk_dir, ignore_errors=True)

    def prepare(self, chunk_size: int) -> None:
        """Start or resume an extraction: drop chunks written with another chunk size."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / "partial.json"
        state = {"key": self.key, "chunk_size": chunk_size}
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old != state:
                log.warning("discarding partial extraction in %s (written with other settings)", self.dir)
                shutil.rmtree(self.chunk_dir, ignore_errors=True)
        atomic_write_json(state_path, state)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class TextCache:
    """Text embeddings keyed by model identity + the exact list of strings."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "text"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def get(self, key: str, n: int) -> np.ndarray | None:
        arr_path, man_path = self.paths(key)
        if not (arr_path.exists() and man_path.exists()):
            return None
        try:
            man = json.loads(man_path.read_text())
            arr = np.load(arr_path, allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            log.warning("text cache entry %s unreadable (%s); recomputing", arr_path, e)
            return None
        if man.get("key") != key or arr.shape[0] != n or list(arr.shape) != man.get("shape"):
            log.warning("text cache entry %s does not match its manifest; recomputing", arr_path)
            return None
        return arr

    def put(self, key: str, array: np.ndarray, meta: dict[str, Any]) -> None:
        arr_path, man_path = self.paths(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        _save_npy_atomic(arr_path, np.ascontiguousarray(array, dtype=np.float32))
        atomic_write_json(man_path, {"key": key, "shape": list(array.shape), **meta})
