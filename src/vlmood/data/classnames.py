"""Class-name lists: built-in by name, or a file (one per line, a JSON list, or a JSON dict).

The class-name file changes results, so ``load_classnames`` returns the sha256 of its bytes with
the names. Lines of the form ``n01234567 name`` carry an ImageNet WordNet id before the name;
``load_wnids`` returns those ids (used to filter an ImageNet folder to a class subset).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlmood.data.base import DataError

BUILTIN_CLASSNAMES = ("cifar10", "cifar100", "imagenet1k", "imagenet10", "imagenet20")
_WNID_LINE = re.compile(r"^(n\d{8})\s+(\S.*)$")


@dataclass(frozen=True)
class ClassNames:
    names: list[str]
    sha256: str
    origin: str
    wnids: list[str] | None = None


def list_classnames() -> list[str]:
    """Names of the built-in class-name sets."""
    return list(BUILTIN_CLASSNAMES)


def parse_classnames(data: bytes, origin: str = "<bytes>") -> ClassNames:
    """Parse class names from file bytes (text lines, JSON list, or JSON ``{index: name}``)."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{origin}: class-name file is not UTF-8 text ({e})") from e
    stripped = text.strip()
    wnids: list[str] | None = None
    if stripped.startswith(("[", "{")):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DataError(f"{origin}: invalid JSON class-name file: {e}") from e
        if isinstance(obj, list):
            names = obj
        else:
            try:
                idx = {int(k): v for k, v in obj.items()}
            except (TypeError, ValueError) as e:
                raise DataError(
                    f"{origin}: a JSON class-name dict must map integer indices to names ({e})"
                ) from e
            if sorted(idx) != list(range(len(idx))):
                raise DataError(f"{origin}: JSON class-name dict keys must be 0..{len(idx) - 1} without gaps")
            names = [idx[i] for i in range(len(idx))]
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise DataError(f"{origin}: class names must be non-empty strings, got {bad[:3]!r}")
        names = [n.strip() for n in names]
    else:
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        matches = [_WNID_LINE.match(ln) for ln in lines]
        if lines and all(matches):
            wnids = [m.group(1) for m in matches]  # type: ignore[union-attr]
            names = [m.group(2).strip() for m in matches]  # type: ignore[union-attr]
        else:
            names = lines
    if not names:
        raise DataError(f"{origin}: no class names found")
    # Duplicates are allowed: CLIP's ImageNet list names two classes "missile" and two "sunglasses".
    return ClassNames(names=names, sha256=sha, origin=origin, wnids=wnids)


def read_classnames(spec: str | os.PathLike) -> ClassNames:
    """Read a built-in set (by name) or a class-name file; returns names, hash, origin, wnids."""
    key = str(spec)
    if key.lower() in BUILTIN_CLASSNAMES:
        data = (
            resources.files("vlmood").joinpath("resources", "classnames", f"{key.lower()}.txt").read_bytes()
        )
        return parse_classnames(data, origin=f"built-in:{key.lower()}")
    path = Path(key)
    if not path.is_file():
        raise DataError(
            f"unknown class-name set {key!r}: not a built-in ({', '.join(BUILTIN_CLASSNAMES)}) and no such file"
        )
    return parse_classnames(path.read_bytes(), origin=str(path))


def load_classnames(spec: str | os.PathLike) -> tuple[list[str], str]:
    """Return ``(names, sha256 of the file bytes)`` for a built-in name or a file path."""
    cn = read_classnames(spec)
    return cn.names, cn.sha256


def load_wnids(spec: str | os.PathLike) -> list[str]:
    """WordNet ids of a class-name set whose lines are ``wnid name``; DataError if it has none."""
    cn = read_classnames(spec)
    if cn.wnids is None:
        raise DataError(f"class-name set {cn.origin} has no WordNet ids (lines 'n01234567 name')")
    return cn.wnids
