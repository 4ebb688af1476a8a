"""Class-name lists: built-in by name, or a file (one per line, a JSON list, or a JSON dict).

The class-name file changes results, so ``load_classnames`` returns the sha256 of its bytes with
the names. Lines of the form ``n01234567 name`` carry an ImageNet WordNet id before the name;
``load_wnids`` returns those ids (used to filter an ImageNet folder to a class subset).

Class names meet class *folders* through :func:`assign_folders`, which maps them by name, never
silently by position: the names are the folder names (any order; ``_`` may stand for a space),
or the file maps folders explicitly (``folder<TAB>name`` lines, a JSON dict folder -> name, or
``wnid name`` lines for folders named by WordNet id), or the folders are class indices
(``3`` or ``3_slug``). A bare list that is none of these is refused unless the caller opts into
sorted-folder order (``--classnames-order sorted``). How the names were mapped is recorded.
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
    mapping: dict[str, str] | None = None  # folder -> name (``folder<TAB>name`` or a JSON dict)


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
        if isinstance(obj, dict) and obj and not all(_is_int(k) for k in obj):
            if any(_is_int(k) for k in obj):
                raise DataError(
                    f"{origin}: a JSON class-name dict must map either label indices or class folders "
                    f"to names, not both"
                )
            return _mapping_classnames(list(obj.items()), sha, origin)
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
        numbered = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        tabbed = [i for i, ln in numbered if "\t" in ln.strip()]
        if tabbed:
            plain = [i for i, ln in numbered if "\t" not in ln.strip()]
            if plain:
                raise DataError(
                    f"{origin}:{plain[0]}: expected 'folder<TAB>name' like the other lines of this "
                    f"class-name file"
                )
            pairs = []
            for _i, ln in numbered:
                folder, _, name = ln.strip().partition("\t")
                pairs.append((folder.strip(), name.strip()))
            return _mapping_classnames(pairs, sha, origin)
        lines = [ln.strip() for _i, ln in numbered]
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


def _is_int(v: object) -> bool:
    try:
        int(str(v))
    except ValueError:
        return False
    return True


def _mapping_classnames(pairs: list[tuple[object, object]], sha: str, origin: str) -> ClassNames:
    """An explicit folder -> name mapping; label order = the file's order."""
    mapping: dict[str, str] = {}
    for folder, name in pairs:
        if not isinstance(folder, str) or not folder.strip() or not isinstance(name, str) or not name.strip():
            raise DataError(
                f"{origin}: each entry must map a class folder to a non-empty name, got {folder!r} -> {name!r}"
            )
        if folder in mapping:
            raise DataError(f"{origin}: class folder {folder!r} is mapped twice")
        mapping[folder] = name.strip()
    return ClassNames(names=list(mapping.values()), sha256=sha, origin=origin, mapping=mapping)


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


# ------------------------------------------------------------------ class names -> class folders

MAPPINGS = ("folder-names", "by-name", "mapping", "wnid", "folder-index", "classes-order", "sorted-order")
CLASSNAMES_ORDERS = ("by-name", "sorted")
_INDEX_FOLDER = re.compile(r"^(\d+)(?:_.*)?$")


def _preview(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def assign_folders(
    folders: list[str],
    classnames: ClassNames | list[str] | None,
    where: str,
    order: str | None = None,
    explicit_classes: bool = False,
) -> tuple[list[str], list[int], str]:
    """Map class names onto class folders by name.

    Args:
        folders: the class folders, in reading order (sorted, or the ``classes`` subset order).
        classnames: the names (a ClassNames from a file or built-in set, a list, or None for the
            folder names with ``_`` -> space).
        where: the folder being read (for messages).
        order: ``"sorted"`` opts into giving a bare list to the folders by position.
        explicit_classes: ``folders`` is an explicit ``classes`` list: positional assignment
            follows that declared order.

    Returns:
        ``(names, label of each folder, how)`` where ``how`` is one of :data:`MAPPINGS`.
        Labels index ``names``.
    """
    if order not in (None, *CLASSNAMES_ORDERS):
        raise DataError(f"classnames order {order!r}: expected one of {', '.join(CLASSNAMES_ORDERS)}")
    if classnames is None:
        return [f.replace("_", " ") for f in folders], list(range(len(folders))), "folder-names"
    cn = classnames if isinstance(classnames, ClassNames) else None
    names = list(cn.names) if cn is not None else [str(c) for c in classnames]  # type: ignore[union-attr]
    origin = cn.origin if cn is not None else "the class-name list"
    keyed = None
    how = ""
    if cn is not None and cn.mapping is not None:
        keyed, how = {f: i for i, f in enumerate(cn.mapping)}, "mapping"
    elif cn is not None and cn.wnids is not None and set(folders) <= set(cn.wnids):
        keyed, how = {w: i for i, w in enumerate(cn.wnids)}, "wnid"
    if keyed is not None:
        missing = [f for f in folders if f not in keyed]
        if missing:
            raise DataError(
                f"{origin}: class folder(s) {_preview(missing)} of {where} are not in the mapping; "
                f"add a 'folder<TAB>name' line for each class folder"
            )
        return names, [keyed[f] for f in folders], how
    # the names are the folder names (any order), exactly or with '_' standing for a space
    for norm in (lambda x: x, lambda x: x.replace("_", " ")):
        index: dict[str, int] = {}
        dup = False
        for i, n in enumerate(names):
            k = norm(n)
            dup = dup or k in index
            index.setdefault(k, i)
        labels = [index.get(norm(f)) for f in folders]
        if not dup and all(lb is not None for lb in labels) and len(set(labels)) == len(labels):
            return names, [int(lb) for lb in labels], "by-name"  # type: ignore[arg-type]
    # folders named by class index: '3' or '3_slug' (label = the index, whatever the sort order)
    idx = [_INDEX_FOLDER.match(f) for f in folders]
    if all(idx):
        labels = [int(m.group(1)) for m in idx]  # type: ignore[union-attr]
        if len(set(labels)) == len(labels) and all(0 <= lb < len(names) for lb in labels):
            return names, labels, "folder-index"
    if len(names) != len(folders):
        raise DataError(
            f"image folder {where} has {len(folders)} class subfolders but {len(names)} class names were "
            f"given ({origin}); give one 'folder<TAB>name' line per class folder"
        )
    if explicit_classes:
        return names, list(range(len(folders))), "classes-order"
    if order == "sorted":
        return names, list(range(len(folders))), "sorted-order"
    raise DataError(
        f"{origin}: class names ({_preview(names)}) are not the class folder names of {where} "
        f"({_preview(folders)}); to map them give 'folder<TAB>name' lines (or a JSON dict folder -> name), "
        f"or opt into sorted-folder order with --classnames-order sorted (YAML classnames_order: sorted, "
        f"API classnames_order='sorted')"
    )
