"""Content-addressed on-disk cache of image and text embeddings.

Layout of one entry (one model x dataset x feature kind)::

    <cache_root>/images/<key>/manifest.json   # written last: its presence means "complete"
    <cache_root>/images/<key>/data.npy        # [N, ...] array, opened as a memory map
    <cache_root>/images/<key>/valid.npy       # [N] bool, False for skipped corrupt images
    <cache_root>/images/<key>/chunks/*.npz    # only while an extraction is unfinished
    <cache_root>/locks/<key>.lock             # flock'ed by the one process filling the entry

The key is sha256 over the model identity (architecture, weights hash or tag, precision,
QuickGELU, preprocessing), the dataset identity (file list + sizes + mtimes, or content hashes,
plus labels), the feature kind, the corrupt-image policy and the cache format version. A changed
key means a new entry: stale features are never reused. An entry whose files do not match
its manifest (truncated, wrong shape, wrong key, a blake2b checksum that differs: verified once
per process) is rebuilt with a warning; so is a damaged chunk (named in the warning).

Concurrency and faults: a process fills (or repairs) an entry only while it holds the entry's
lock (``fcntl.flock`` on ``locks/<key>.lock``, a file that is never deleted, so every
process locks the same inode); a second process waits, then finds the entry complete and reads it.
Every file is written to a temporary ``.NAME.PID@HOST.XXXX.tmp`` and renamed (no memory-mapped
writes: a full disk is an ``OSError``, never SIGBUS) and turned into a clear
:class:`vlmood.errors.RunError`; temporaries a killed writer left are swept under the lock.

Text embeddings (class names x templates, or any list of strings) live under
``<cache_root>/text/<key>.npy`` with a JSON manifest beside them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.errors import RunError
from vlmood.utils import (
    atomic_path,
    atomic_write_json,
    blake2b_file,
    is_disk_full,
    sha256_json,
    sweep_stale_temps,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STORE_DTYPES = {"image": np.float32, "preproj": np.float32, "patch": np.float16}


def default_cache_root() -> Path:
    """``$VLMOOD_CACHE`` or ``~/.cache/vlmood``."""
    env = os.environ.get("VLMOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vlmood"


class CacheError(RunError):
    """A cache entry is unusable (truncated, mismatched); it will be rebuilt."""


class BadChunksError(CacheError):
    """Finished chunks of an unfinished entry turned out unreadable; they were deleted and the
    extraction recomputes them (``chunks``: their ids)."""

    def __init__(self, entry_dir: Path, chunks: list[int]) -> None:
        self.chunks = chunks
        super().__init__(f"damaged chunks {chunks} in {entry_dir}")


def disk_full_message(path: str | os.PathLike) -> str:
    return f"no space left on device writing {path}; free space or set --cache-dir/VLMOOD_CACHE elsewhere"


@contextlib.contextmanager
def _writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into one clear RunError (temps are removed by the
    atomic writers themselves; nothing is left that a later run would trust)."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise RunError(disk_full_message(path)) from e
        raise


# entries whose checksums this process verified: (dir, stat of manifest/data/valid) -> True
_VERIFIED: set[tuple] = set()


def _stat_key(*paths: Path) -> tuple:
    out = []
    for p in paths:
        st = p.stat()
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _HashingWriter:
    """A binary file wrapper that hashes every byte written (numpy's header writer uses it)."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = hashlib.blake2b(digest_size=32)

    def write(self, b) -> int:
        self.h.update(b)
        return self.f.write(b)


def _preallocate(f, nbytes: int) -> None:
    """Reserve ``nbytes`` up front so a full disk fails at once (and never as a sparse file)."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(f.fileno(), 0, nbytes)
    except OSError as e:
        if is_disk_full(e):
            raise
        # EOPNOTSUPP / EINVAL: this file system cannot preallocate; plain writes still raise ENOSPC


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
    with _writing(path), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def _save_npy_atomic(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically; returns the blake2b of the file's bytes."""
    array = np.ascontiguousarray(array)
    with _writing(path), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            np.lib.format.write_array_header_1_0(w, np.lib.format.header_data_from_array_1_0(array))
            w.write(array.tobytes())
            f.flush()
            os.fsync(f.fileno())
    return w.h.hexdigest()


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

    @property
    def lock_path(self) -> Path:
        return self.root / "locks" / f"{self.key}.lock"

    # -- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this entry's inter-process lock (flock on ``locks/<key>.lock``; waits for a holder).

        The lock file lives outside the entry folder and is never deleted, so every process locks
        the same inode (``clear`` may remove the whole entry folder while the lock is held).
        """
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("waiting for another process that is filling feature cache entry %s", self.dir)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- reading ---------------------------------------------------------------------------
    def check(self) -> str | None:
        """None when a valid, complete entry exists, else why not ("" = no manifest yet)."""
        if not self.manifest_path.exists():
            return ""
        try:
            self._validate()
            return None
        except CacheError as e:
            return str(e)

    def is_complete(self) -> bool:
        """True when a valid, complete entry exists. A broken one is removed with a warning
        (call it while holding :meth:`lock` when other processes may be filling the entry)."""
        why = self.check()
        if why is None:
            return True
        if why:
            log.warning("feature cache entry %s is unusable (%s); rebuilding it", self.dir, why)
            self.clear()
        return False

    def _validate(self, verify: bool = True) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CacheError(f"unreadable manifest: {e}") from e
        if not isinstance(manifest, dict):
            raise CacheError("unreadable manifest: not a JSON object")
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
        if list(arr.shape) != manifest.get("shape") or str(arr.dtype) != manifest.get("dtype"):
            raise CacheError(
                f"data.npy has shape {arr.shape} {arr.dtype}, manifest says {manifest.get('shape')}"
            )
        del arr
        if verify:
            self._verify_checksums(manifest, data_path, valid_path)
        return manifest

    def _verify_checksums(self, manifest: dict[str, Any], data_path: Path, valid_path: Path) -> None:
        """Compare each array file with the blake2b its manifest recorded (once per process)."""
        sums = manifest.get("blake2b")
        if not isinstance(sums, dict) or not {"data.npy", "valid.npy"} <= set(sums):
            raise CacheError("manifest has no checksums (written by an older vlmood)")
        try:
            seen = (str(self.dir), _stat_key(self.manifest_path, data_path, valid_path))
        except OSError as e:
            raise CacheError(f"cannot stat entry files: {e}") from e
        if seen in _VERIFIED:
            return
        for p in (data_path, valid_path):
            try:
                got = blake2b_file(p)
            except OSError as e:
                raise CacheError(f"{p.name} unreadable: {e}") from e
            if got != sums[p.name]:
                raise CacheError(f"{p.name} does not match its checksum (corrupted on disk?)")
        _VERIFIED.add(seen)

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

    def _read_chunk_checked(self, chunk_id: int, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A finished chunk, or None (with a warning naming the file, which is deleted) when it is
        damaged: truncated, garbage, wrong row count."""
        path = self.chunk_path(chunk_id)
        try:
            feats, valid = self.read_chunk(chunk_id)
            if feats.shape[0] != rows or valid.shape != (rows,):
                raise ValueError(f"{feats.shape[0]} rows, expected {rows}")
        except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError...
            log.warning(
                "discarding damaged feature chunk %s (%s: %s); recomputing it", path, type(e).__name__, e
            )
            path.unlink(missing_ok=True)
            return None
        return feats, valid

    def assemble(self, n: int, chunk_size: int, manifest_extra: dict[str, Any]) -> None:
        """Concatenate finished chunks into data.npy (plain sequential writes into a preallocated
        temp file, hashed as written), then valid.npy and, last, the manifest.

        Raises :class:`BadChunksError` (after deleting them) when some chunks are damaged; the
        caller recomputes those and assembles again.
        """
        n_chunks = (n + chunk_size - 1) // chunk_size
        missing = set(range(n_chunks)) - self.finished_chunks()
        if missing:
            raise CacheError(f"cannot assemble {self.dir}: chunks {sorted(missing)[:5]} missing")
        data_path, valid_path = self.dir / "data.npy", self.dir / "valid.npy"
        valid_all = np.zeros(n, dtype=bool)
        bad: list[int] = []
        first = None
        first_got: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        for c in range(n_chunks):  # the first readable chunk gives the row shape and dtype
            got = self._read_chunk_checked(c, min(chunk_size, n - c * chunk_size))
            if got is None:
                bad.append(c)
                continue
            first, first_got = got[0], (c, got)
            break
        if first is None:
            raise BadChunksError(self.dir, bad)
        shape = (n, *first.shape[1:])
        dtype = first.dtype
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with _writing(data_path), atomic_path(data_path) as tmp:
            with open(tmp, "wb") as f:
                w = _HashingWriter(f)
                np.lib.format.write_array_header_1_0(w, header)
                _preallocate(f, f.tell() + n * row_bytes)
                for c in range(n_chunks):
                    s = c * chunk_size
                    rows = min(chunk_size, n - s)
                    if first_got is not None and first_got[0] == c:
                        got, first_got = first_got[1], None
                    else:
                        got = None if c in bad else self._read_chunk_checked(c, rows)
                    if got is not None and (got[0].shape[1:] != shape[1:] or got[0].dtype != dtype):
                        log.warning(
                            "discarding feature chunk %s (shape %s)", self.chunk_path(c), got[0].shape
                        )
                        self.chunk_path(c).unlink(missing_ok=True)
                        got = None
                    if got is None:
                        if c not in bad:
                            bad.append(c)
                        continue
                    if bad:
                        continue  # this file is discarded anyway; only look for other damage
                    feats, valid = got
                    w.write(np.ascontiguousarray(feats).tobytes())
                    valid_all[s : s + rows] = valid
                if bad:
                    raise BadChunksError(self.dir, sorted(bad))
                f.flush()
                os.fsync(f.fileno())
            data_sum = w.h.hexdigest()
        valid_sum = _save_npy_atomic(valid_path, valid_all)
        manifest = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "kind": self.kind,
            "shape": list(shape),
            "dtype": str(dtype),
            "data_bytes": data_path.stat().st_size,
            "valid_bytes": valid_path.stat().st_size,
            "blake2b": {"data.npy": data_sum, "valid.npy": valid_sum},
            "n_valid": int(valid_all.sum()),
            "chunk_size": chunk_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.meta,
            **manifest_extra,
        }
        with _writing(self.manifest_path):
            atomic_write_json(self.manifest_path, manifest)
        shutil.rmtree(self.chunk_dir, ignore_errors=True)

    def prepare(self, chunk_size: int) -> None:
        """Start or resume an extraction (holding :meth:`lock`): sweep temporaries a killed
        writer left and drop chunks written with another chunk size."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # under the lock no other process writes here: every temporary is a dead writer's
        sweep_stale_temps(self.dir, max_age_s=-math.inf)
        sweep_stale_temps(self.chunk_dir, max_age_s=-math.inf)
        state_path = self.dir / "partial.json"
        state = {"key": self.key, "chunk_size": chunk_size}
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if old != state:
                log.warning("discarding partial extraction in %s (written with other settings)", self.dir)
                shutil.rmtree(self.chunk_dir, ignore_errors=True)
        with _writing(state_path):
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
            raw = arr_path.read_bytes()
            if not isinstance(man, dict):
                raise ValueError("manifest is not a JSON object")
            if "blake2b" not in man:
                log.info("text cache entry %s has no checksum (an older vlmood); recomputing", arr_path)
                return None
            if hashlib.blake2b(raw, digest_size=32).hexdigest() != man["blake2b"]:
                raise ValueError("does not match its checksum (corrupted on disk?)")
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("text cache entry %s unreadable (%s); recomputing", arr_path, e)
            return None
        if man.get("key") != key or arr.shape[0] != n or list(arr.shape) != man.get("shape"):
            log.warning("text cache entry %s does not match its manifest; recomputing", arr_path)
            return None
        return arr

    def put(self, key: str, array: np.ndarray, meta: dict[str, Any]) -> None:
        arr_path, man_path = self.paths(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(self.dir)  # temporaries of killed writers (other live writers' are kept)
        digest = _save_npy_atomic(arr_path, np.ascontiguousarray(array, dtype=np.float32))
        with _writing(man_path):
            atomic_write_json(man_path, {"key": key, "shape": list(array.shape), "blake2b": digest, **meta})
