"""Dataset sources: a list of (image path, label[, caption]) with an identity for cache keys.

Concrete readers (image folder, image list + root, CSV) live in ``vlmood.data.sources`` and all
return an :class:`ImageSource`. Labels are integer indices into ``classnames`` (``-1`` = no label,
as for OOD sets).
"""

from __future__ import annotations

import hashlib
import os
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
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.path.encode("utf-8"))
            h.update(b"\0")
            h.update(str(s.label).encode())
            h.update(b"\0")
            try:
                if mode == "content":
                    with open(s.path, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
                elif mode == "stat":
                    st = os.stat(s.path)
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                else:
                    raise ValueError(f"unknown fingerprint mode {mode!r} (stat|content)")
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


def resolve(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    return str(p.absolute())
