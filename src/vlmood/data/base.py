"""Dataset sources: a list of (image path, label[, caption]) with an identity for cache keys.

Concrete readers (image folder, image list + root, CSV) live in ``vlmood.data.sources`` and all
return an :class:`ImageSource`. Labels are integer indices into ``classnames`` (``-1`` = no label,
as for OOD sets).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmood.errors import VlmoodError
from vlmood.utils import sha256_json


class DataError(VlmoodError, ValueError):
    """Bad dataset input; the message names the file and the fix."""


class CorruptImageError(DataError):
    """An image file could not be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot read image {self.path}: {reason}. Fix or remove the file, or pass "
            f"--skip-corrupt to skip unreadable images (skipped files are recorded in the result)."
        )


@dataclass(frozen=True)
class ImageSample:
    path: str  # absolute path
    label: int = -1
    caption: str | None = None


@dataclass
class ImageSource:
    """An ordered list of image samples plus how it was declared."""

    name: str
    samples: list[ImageSample]
    classnames: list[str] | None = None
    kind: str = "folder"  # folder | list | csv
    origin: str = ""  # the path the source was read from
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def fingerprint(self, mode: str = "stat") -> str:
        """Dataset identity for cache keys.

        ``stat``: file list with sizes and mtimes (fast); ``content``: sha256 of every file.
        Labels are included, so relabelling changes the key.
        """
        if mode not in ("stat", "content"):
            raise ValueError(f"unknown fingerprint mode {mode!r} (stat|content)")
        h = hashlib.sha256()
        for s in self.samples:
            h.update(os.fsencode(s.path))  # a non-UTF-8 name (surrogate-escaped) keeps its bytes
            h.update(b"\0")
            h.update(str(s.label).encode())
            h.update(b"\0")
            try:
                if mode == "content":
                    h.update(_file_sha256(s.path))
                else:
                    st = os.stat(s.path)
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except FileNotFoundError:
                h.update(b"<missing>")
            h.update(b"\n")
        return sha256_json({"mode": mode, "files": h.hexdigest(), "n": len(self.samples)})

    def subset(self, indices: list[int], name: str | None = None) -> ImageSource:
        return ImageSource(
            name=name or self.name,
            samples=[self.samples[i] for i in indices],
            classnames=self.classnames,
            kind=self.kind,
            origin=self.origin,
            meta=dict(self.meta, subset_of=self.name),
        )


def _file_sha256(path: str, block: int = 1 << 20) -> bytes:
    """sha256 digest of a file read in blocks (bounded memory); only regular files are read."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would block
        return b"<not a regular file>"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.digest()


OUTSIDE_ROOT_FIX = "move it under the root, or pass --allow-outside-root (API: allow_outside_root=True)"


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` (absolute, or relative to ``root``; normalised, '..' collapsed) lies
    under ``root``. Pass the path as written, not already joined to a relative root.

    The test is on the path as written, so a data root that is itself a symlink, or holds
    symlinked dataset folders, still counts as the root; symlinks *inside* class folders are
    checked where folders are walked (against the real path of the walked folder).
    """
    r = os.path.normpath(os.path.abspath(root))
    p = os.path.normpath(os.path.join(r, os.fspath(path)))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def resolve(
    path: str | os.PathLike,
    root: str | os.PathLike | None,
    *,
    what: str | None = None,
    allow_outside_root: bool = True,
) -> str:
    """Absolute path of ``path`` relative to ``root``.

    With ``allow_outside_root=False`` a path that leaves ``root`` ('..' or an absolute path
    elsewhere) raises DataError naming ``what`` (e.g. ``list.txt:3``) and the fix.
    """
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    if not allow_outside_root and root is not None and not is_within(path, root):
        raise DataError(
            f"{what or path}: path {os.fspath(path)!r} leaves the data root {Path(root).absolute()}; "
            f"{OUTSIDE_ROOT_FIX}"
        )
    return str(p.absolute())
