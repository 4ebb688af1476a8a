"""Readers that turn an image folder, an image list or a CSV into an :class:`ImageSource`,
plus strict image decoding (:func:`open_image`) and a torch ``Dataset`` over a source.

Labels are indices into the source's ``classnames``; ``-1`` means "no label" (OOD sets).
Sample paths are absolute; ``source.meta["root"]`` is the folder relative paths were taken from.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmood.data.base import (
    OUTSIDE_ROOT_FIX,
    CorruptImageError,
    DataError,
    ImageSample,
    ImageSource,
    resolve,
)
from vlmood.data.classnames import ClassNames, assign_folders, read_classnames

try:  # torch is a hard dependency of the package, but keep the readers importable without it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
LIST_SUFFIXES = (".txt", ".lst")
CSV_SUFFIXES = (".csv",)
SOURCE_KINDS = ("folder", "flat", "list", "csv")
_PATH_COLUMNS = ("path", "filepath", "file", "filename", "image")
_CAPTION_COLUMNS = ("caption", "title", "text")


# --------------------------------------------------------------------------- helpers


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(e.lower() for e in extensions))


class WalkStats(dict):
    """What a folder walk read and skipped (recorded in ``source.meta["walk"]``)."""

    def __init__(self) -> None:
        super().__init__(
            files=0, dirs=0, non_regular_skipped=0, broken_links_skipped=0, dirs_revisited_skipped=0
        )

    def add(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            self[k] = self.get(k, 0) + v


def _walk_images(
    folder: Path,
    extensions: Sequence[str],
    recursive: bool = True,
    *,
    stats: WalkStats | None = None,
    allow_outside_root: bool = False,
) -> list[str]:
    """Image files under ``folder`` in a deterministic order (a folder's files sorted by name, then
    its subfolders, sorted, depth first).

    Only regular files are read (a FIFO or device named ``x.png`` is skipped and counted: opening
    one would block). Symlinks are followed, each directory at most once (cycles and a directory
    reached twice are skipped and counted, keyed by (st_dev, st_ino)), and a symlink whose target
    lies outside ``folder``'s real path raises DataError unless ``allow_outside_root``.
    """
    st = stats if stats is not None else WalkStats()
    top = Path(folder).absolute()
    real_top = os.path.realpath(top)
    out: list[str] = []
    seen: set[tuple[int, int]] = set()

    def outside(entry: os.DirEntry) -> bool:
        if allow_outside_root or not entry.is_symlink():
            return False
        real = os.path.realpath(entry.path)
        return not (real == real_top or real.startswith(real_top.rstrip(os.sep) + os.sep))

    def visit(d: str) -> None:
        try:
            dst = os.stat(d)
        except OSError:
            return
        key = (dst.st_dev, dst.st_ino)
        if key in seen:
            st["dirs_revisited_skipped"] += 1
            return
        seen.add(key)
        st["dirs"] += 1
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    if outside(e):
                        raise DataError(
                            f"{e.path}: symlinked folder points outside {real_top} (to "
                            f"{os.path.realpath(e.path)}); {OUTSIDE_ROOT_FIX}"
                        )
                    subdirs.append(e.path)
                continue
            if not _is_image(e.name, extensions):
                continue
            try:
                mode = e.stat().st_mode  # follows symlinks
            except OSError:
                st["broken_links_skipped"] += 1
                log.warning("skipping %s: a broken symlink", e.path)
                continue
            if not stat.S_ISREG(mode):
                st["non_regular_skipped"] += 1
                log.warning("skipping %s: not a regular file (a FIFO, socket or device)", e.path)
                continue
            if outside(e):
                raise DataError(
                    f"{e.path}: symlink points outside {real_top} (to {os.path.realpath(e.path)}); "
                    f"{OUTSIDE_ROOT_FIX}"
                )
            out.append(str(Path(e.path).absolute()))
            st["files"] += 1
        for sd in subdirs:
            visit(sd)

    visit(str(top))
    return out


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _read_classnames(classnames: Sequence[str] | str | os.PathLike | ClassNames | None) -> ClassNames | None:
    """A ClassNames, or None; a string is a built-in set name or a class-name file."""
    if classnames is None or isinstance(classnames, ClassNames):
        return classnames
    if isinstance(classnames, (str, os.PathLike)):
        return read_classnames(classnames)
    names = [str(c) for c in classnames]
    return ClassNames(names=names, sha256="", origin="the class-name list")


def _classnames_meta(cn: ClassNames | None) -> dict[str, Any]:
    if cn is None or not cn.sha256:
        return {}
    spec = cn.origin.removeprefix("built-in:")  # what read_classnames reads again (e.g. for --train)
    return {"classnames_origin": cn.origin, "classnames_sha256": cn.sha256, "classnames_spec": spec}


def _resolve_classnames(
    classnames: Sequence[str] | str | os.PathLike | ClassNames | None,
) -> tuple[list[str] | None, dict[str, Any]]:
    """A list is used as is; a string is a built-in set name or a class-name file."""
    cn = _read_classnames(classnames)
    if cn is None:
        return None, {}
    return list(cn.names), _classnames_meta(cn)


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    p = Path(root)
    if not p.exists():
        raise DataError(f"{what} {p.absolute()} does not exist")
    if not p.is_dir():
        raise DataError(f"{what} {p.absolute()} is not a directory")
    return p


def _require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p.absolute()} does not exist or is not a file")
    return p


# --------------------------------------------------------------------------- readers


def image_folder(
    root: str | os.PathLike,
    classnames: Sequence[str] | str | ClassNames | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    *,
    classnames_order: str | None = None,
    allow_outside_root: bool = False,
) -> ImageSource:
    """One subfolder per class; class names are mapped onto the folders *by name*.

    Args:
        root: folder holding one subfolder per class (images may sit in nested folders).
        classnames: a list, a built-in set name or a class-name file; default: the folder names
            with ``_`` replaced by a space. Mapped by name (see
            :func:`vlmood.data.classnames.assign_folders`): the names are the folder names (any
            order), or the file maps folders (``folder<TAB>name``, JSON dict, ``wnid name``), or the
            folders are class indices. Labels index these names.
        extensions: file suffixes counted as images (case-insensitive).
        classes: use only these subfolders, in this order, e.g. ImageNet WordNet ids for a class
            subset; missing subfolders raise DataError. A bare name list follows this order.
        name: source name; default: the folder name.
        classnames_order: ``"sorted"`` gives a bare name list that is not the folder names to the
            sorted folders by position (otherwise it is refused).
        allow_outside_root: follow symlinks that lead outside ``root``.

    ``meta["classnames_mapping"]`` records how names met folders; ``meta["walk"]`` counts the
    files read and what was skipped (non-regular files, broken links, directories seen twice).
    """
    rootp = _require_dir(root, "image folder")
    if classes is None:
        folders = _class_dirs(rootp)
        if not folders:
            raise DataError(
                f"image folder {rootp.absolute()} has no class subfolders (expected <root>/<class>/<image>)"
            )
    else:
        folders = list(classes)
        missing = [c for c in folders if not (rootp / c).is_dir()]
        if missing:
            raise DataError(
                f"image folder {rootp.absolute()} lacks {len(missing)} of {len(folders)} class "
                f"subfolders: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        bad = [c for c in folders if os.sep in c or c in ("..", ".")]
        if bad and not allow_outside_root:
            raise DataError(f"image folder {rootp.absolute()}: class {bad[0]!r} is not a subfolder name")
    cn = _read_classnames(classnames)
    names, folder_labels, how = assign_folders(
        folders, cn, str(rootp.absolute()), order=classnames_order, explicit_classes=classes is not None
    )
    meta = _classnames_meta(cn)
    stats = WalkStats()
    samples: list[ImageSample] = []
    for label, folder in zip(folder_labels, folders):
        files = _walk_images(rootp / folder, extensions, stats=stats, allow_outside_root=allow_outside_root)
        if not files:
            raise DataError(
                f"class folder {(rootp / folder).absolute()} has no images ({', '.join(extensions)})"
            )
        samples.extend(ImageSample(path=f, label=label) for f in files)
    samples.sort(key=lambda smp: smp.label)  # label order = class-name order (stable within a class)
    meta.update(
        root=str(rootp.absolute()),
        class_folders=list(folders),
        folder_labels=dict(zip(folders, folder_labels)),
        classnames_mapping=how,
        walk=dict(stats),
    )
    return ImageSource(
        name=name or rootp.absolute().name,
        samples=samples,
        classnames=names,
        kind="folder",
        origin=str(rootp.absolute()),
        meta=meta,
    )


def flat_folder(
    root: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
    name: str | None = None,
    *,
    allow_outside_root: bool = False,
) -> ImageSource:
    """All images directly in ``root`` (or below it with ``recursive``), unlabelled (label -1)."""
    rootp = _require_dir(root, "image folder")
    stats = WalkStats()
    files = _walk_images(
        rootp, extensions, recursive=recursive, stats=stats, allow_outside_root=allow_outside_root
    )
    if not files:
        raise DataError(f"image folder {rootp.absolute()} has no images ({', '.join(extensions)})")
    return ImageSource(
        name=name or rootp.absolute().name,
        samples=[ImageSample(path=f, label=-1) for f in files],
        classnames=None,
        kind="folder",
        origin=str(rootp.absolute()),
        meta={"root": str(rootp.absolute()), "flat": True, "walk": dict(stats)},
    )


def image_list(
    list_file: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classnames: Sequence[str] | str | ClassNames | None = None,
    name: str | None = None,
    *,
    allow_outside_root: bool = False,
) -> ImageSource:
    """Read an image list: lines ``relative/path [label [extra ...]]`` (OpenOOD, MOS lists).

    Paths are relative to ``root`` (default: the list file's folder) and must stay under it
    (``..`` or an absolute path elsewhere raises DataError naming ``file:line``) unless
    ``allow_outside_root``. A missing label gives -1; labels index ``classnames`` in order.
    Extra columns after the label are ignored (OpenOOD may append JSON). Blank lines and lines
    starting with ``#`` are skipped. A label that is not an integer raises DataError naming
    ``file:line``. Paths containing spaces are not supported.
    """
    lf = _require_file(list_file, "image list")
    rootp = Path(root) if root is not None else lf.absolute().parent
    names, meta = _resolve_classnames(classnames)
    samples: list[ImageSample] = []
    with open(lf, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            tokens = line.split()
            label = -1
            if len(tokens) >= 2:
                try:
                    label = int(tokens[1])
                except ValueError:
                    raise DataError(
                        f"{lf}:{lineno}: expected 'relative/path label' with an integer label, "
                        f"got {line[:120]!r}"
                    ) from None
                if label < -1:
                    raise DataError(f"{lf}:{lineno}: label {label} is negative (use -1 or omit it)")
                if names is not None and label >= len(names):
                    raise DataError(f"{lf}:{lineno}: label {label} is out of range for {len(names)} classes")
            path = resolve(tokens[0], rootp, what=f"{lf}:{lineno}", allow_outside_root=allow_outside_root)
            samples.append(ImageSample(path=path, label=label))
    if not samples:
        raise DataError(f"image list {lf.absolute()} has no entries")
    meta.update(root=str(rootp.absolute()), list_file=str(lf.absolute()))
    if names is not None:
        meta["classnames_mapping"] = "label-index"
    return ImageSource(
        name=name or lf.stem,
        samples=samples,
        classnames=names,
        kind="list",
        origin=str(lf.absolute()),
        meta=meta,
    )


def _pick_column(
    header: list[str], wanted: str | Sequence[str] | None, defaults: Sequence[str]
) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    if wanted is not None:
        cands = [wanted] if isinstance(wanted, str) else list(wanted)
        for c in cands:
            if c in header:
                return c
            if c.lower() in lower:
                return lower[c.lower()]
        return None
    for c in defaults:
        if c in lower:
            return lower[c]
    return None


def csv_source(
    csv_file: str | os.PathLike,
    root: str | os.PathLike | None = None,
    path_col: str | None = None,
    label_col: str | None = "label",
    caption_col: str | None = None,
    classnames: Sequence[str] | str | ClassNames | None = None,
    name: str | None = None,
    *,
    allow_outside_root: bool = False,
) -> ImageSource:
    """Read a CSV with a header row: an image path column, optional label and caption columns.

    Args:
        csv_file: the CSV file.
        root: folder relative paths are taken from; default: the CSV's folder. Paths must stay
            under it unless ``allow_outside_root``.
        path_col: path column; default: the first of path, filepath, file, filename, image.
        label_col: label column (int indices or class-name strings); absent column or empty
            cell -> -1. String labels map through ``classnames``; without ``classnames`` the
            sorted distinct strings become the class names.
        caption_col: caption column; default: the first of caption, title, text if present.
        classnames: class names in label order (list, built-in name or file).
        name: source name; default: the CSV file's stem.
    """
    cf = _require_file(csv_file, "CSV file")
    rootp = Path(root) if root is not None else cf.absolute().parent
    names, meta = _resolve_classnames(classnames)
    with open(cf, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if not header:
            raise DataError(f"{cf}: empty CSV (expected a header row with a path column)")
        pcol = _pick_column(header, path_col, _PATH_COLUMNS)
        if pcol is None:
            raise DataError(
                f"{cf}: no path column (looked for {path_col or ', '.join(_PATH_COLUMNS)}; "
                f"header is {', '.join(header)})"
            )
        lcol = _pick_column(header, label_col, ()) if label_col else None
        ccol = _pick_column(header, caption_col, _CAPTION_COLUMNS)
        if caption_col is not None and ccol is None:
            raise DataError(f"{cf}: caption column {caption_col!r} not in header {', '.join(header)}")
        rows = [(reader.line_num, row) for row in reader]
    raw_labels: list[str] = []
    for lineno, row in rows:
        if not (row.get(pcol) or "").strip():
            raise DataError(f"{cf}:{lineno}: empty path in column {pcol!r}")
        raw_labels.append((row.get(lcol) or "").strip() if lcol else "")
    string_labels = sorted({v for v in raw_labels if v and not _is_int(v)})
    if string_labels and names is None:
        names = string_labels
        meta["classnames_from_labels"] = True
    index = {n: i for i, n in enumerate(names or [])}
    samples: list[ImageSample] = []
    for (lineno, row), raw in zip(rows, raw_labels):
        if not raw:
            label = -1
        elif _is_int(raw):
            label = int(raw)
            if label < -1 or (names is not None and label >= len(names)):
                raise DataError(f"{cf}:{lineno}: label {label} is out of range")
        elif raw in index:
            label = index[raw]
        else:
            raise DataError(f"{cf}:{lineno}: label {raw!r} is not one of the class names")
        caption = ((row.get(ccol) or "").strip() or None) if ccol else None
        path = resolve(row[pcol].strip(), rootp, what=f"{cf}:{lineno}", allow_outside_root=allow_outside_root)
        samples.append(ImageSample(path=path, label=label, caption=caption))
    if not samples:
        raise DataError(f"CSV file {cf.absolute()} has no rows")
    meta.update(root=str(rootp.absolute()), csv_file=str(cf.absolute()))
    if names is not None:
        meta["classnames_mapping"] = "by-name" if string_labels else "label-index"
    return ImageSource(
        name=name or cf.stem,
        samples=samples,
        classnames=names,
        kind="csv",
        origin=str(cf.absolute()),
        meta=meta,
    )


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def split_kind(spec: str) -> tuple[str | None, str]:
    """Split an optional ``folder:``/``flat:``/``list:``/``csv:`` prefix off a source spec."""
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in SOURCE_KINDS:
        return head.lower(), rest
    return None, spec


def guess_kind(path: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    """``folder`` (class subfolders), ``flat`` (images only), ``list`` or ``csv`` for a path."""
    p = Path(path)
    if p.is_dir():
        for d in _class_dirs(p):
            if _walk_images(p / d, extensions, allow_outside_root=True):  # the real check comes later
                return "folder"
        return "flat"
    suffix = p.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return "list"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if not p.exists():
        raise DataError(f"dataset path {p.absolute()} does not exist")
    raise DataError(
        f"cannot tell what {p.absolute()} is: expected a folder, a {'/'.join(LIST_SUFFIXES)} image "
        f"list or a .csv (or force the kind with a folder:/flat:/list:/csv: prefix)"
    )


def load_source(
    spec: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classnames: Sequence[str] | str | ClassNames | None = None,
    name: str | None = None,
    classes: Sequence[str] | None = None,
    *,
    classnames_order: str | None = None,
    allow_outside_root: bool = False,
) -> ImageSource:
    """Open a dataset from a path, guessing its kind unless a prefix forces it.

    A folder with class subfolders -> :func:`image_folder`; a folder of images -> unlabelled
    :func:`flat_folder`; ``*.txt``/``*.lst`` -> :func:`image_list` (``root`` = image root,
    default the list's folder); ``*.csv`` -> :func:`csv_source`. Prefixes ``folder:``, ``flat:``,
    ``list:``, ``csv:`` force the kind. ``classes`` restricts a class folder to those subfolders.
    ``classnames_order="sorted"`` opts a class folder into positional names;
    ``allow_outside_root`` lets list/CSV entries and symlinks leave their root.
    """
    kind, path = split_kind(str(spec))
    if kind is None:
        kind = guess_kind(path)
    if classes is not None and kind != "folder":
        raise DataError(f"{path}: a class subset (classes/wnids) needs a class folder, not a {kind} source")
    if kind == "folder":
        return image_folder(
            path,
            classnames=classnames,
            classes=classes,
            name=name,
            classnames_order=classnames_order,
            allow_outside_root=allow_outside_root,
        )
    if kind == "flat":
        src = flat_folder(path, name=name, allow_outside_root=allow_outside_root)
        if classnames is not None:
            src.classnames, meta = _resolve_classnames(classnames)
            src.meta.update(meta)
        return src
    if kind == "list":
        return image_list(
            path, root=root, classnames=classnames, name=name, allow_outside_root=allow_outside_root
        )
    return csv_source(
        path, root=root, classnames=classnames, name=name, allow_outside_root=allow_outside_root
    )


def check_files_exist(source: ImageSource, label: str | None = None, allow_missing: bool = False) -> int:
    """Check, before any DataLoader worker starts, that a list/CSV source's files exist.

    Folder sources were walked, so they exist. Raises DataError when none exist (always: the
    root is wrong) or when some are missing and ``allow_missing`` is false; returns the number
    missing (recorded in ``source.meta["n_missing"]``).
    """
    if source.kind not in ("list", "csv"):
        return 0
    missing = [s.path for s in source.samples if not os.path.isfile(s.path)]
    source.meta["n_missing"] = len(missing)
    if not missing:
        return 0
    root = source.meta.get("root", "")
    n = len(source)
    what = f"set {label or source.name!r}"
    eg = ", ".join(repr(m) for m in missing[:2])
    if len(missing) == n:
        raise DataError(
            f"0 of {n} images of {what} exist under {root} (e.g. {eg}); the list's paths are relative "
            f"to the image root: pass --root DIR (the folder they are relative to) or fix {source.origin}"
        )
    if not allow_missing:
        raise DataError(
            f"{len(missing)} of {n} images of {what} are missing under {root} (e.g. {eg}); fix "
            f"{source.origin} or pass --skip-corrupt to skip them (recorded in results.json)"
        )
    log.warning("%s: %d of %d listed images are missing; they will be skipped", what, len(missing), n)
    return len(missing)


# --------------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB; transparent images are composited onto white."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    elif mode in ("RGB", "L") and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and return it as RGB (transparency composited onto white).

    Raises CorruptImageError naming the file on any decode error (unknown format, truncated
    or empty file, missing file).
    A path that is not a regular file (a FIFO, socket or device named ``x.png``) is refused
    before it is opened (opening a FIFO blocks forever).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CorruptImageError(path, f"{type(e).__name__}: {e.strerror or e}") from e
    if not stat.S_ISREG(mode):
        raise CorruptImageError(path, "not a regular file (a FIFO, socket, device or folder)")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except CorruptImageError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
    ) as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise CorruptImageError(path, reason) from e


def pil_to_tensor(img: Image.Image):
    """HxWxC uint8 PIL image -> float tensor CxHxW in [0, 1] (used when no transform is given)."""
    import torch

    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class ImageDataset(_TorchDataset):
    """A torch Dataset over an ImageSource; items are ``(tensor, index, ok)``.

    With ``skip_corrupt=False`` an unreadable file raises CorruptImageError. With
    ``skip_corrupt=True`` it yields a zero tensor shaped like a transformed image and
    ``ok=False`` (and logs a warning); the caller records the skipped indices.
    With ``report_errors=True`` items are ``(tensor, index, ok, error)`` and an unreadable file
    never raises: ``error`` is the CorruptImageError's message ("" when readable), so the process
    that iterates a multi-worker DataLoader can raise the plain error itself (an exception raised
    in a worker reaches it wrapped in the worker's traceback).
    Without a transform, images become CxHxW float tensors in [0, 1] (sizes then vary, and the
    placeholder for a skipped image is 3x224x224).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        placeholder_size: tuple[int, int] = (224, 224),
        report_errors: bool = False,
    ) -> None:
        self.name = source.name
        self.samples = list(source.samples)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.report_errors = report_errors
        self.placeholder_size = placeholder_size
        self._placeholder = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def _apply(self, img: Image.Image):
        return self.transform(img) if self.transform is not None else pil_to_tensor(img)

    def placeholder(self):
        """Zero tensor with the shape a transformed image has (computed once, lazily)."""
        if self._placeholder is None:
            import torch

            blank = Image.new("RGB", self.placeholder_size, (255, 255, 255))
            out = self._apply(blank)
            self._placeholder = torch.zeros_like(torch.as_tensor(out))
        return self._placeholder.clone()

    def __getitem__(self, i: int):
        sample = self.samples[i]
        try:
            img = open_image(sample.path)
        except CorruptImageError as e:
            if self.report_errors:
                if self.skip_corrupt:
                    log.warning("skipping unreadable image %s (%s)", sample.path, e.reason)
                return self.placeholder(), i, False, str(e)
            if not self.skip_corrupt:
                raise
            log.warning("skipping unreadable image %s (%s)", sample.path, e.reason)
            return self.placeholder(), i, False
        return (self._apply(img), i, True, "") if self.report_errors else (self._apply(img), i, True)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_placeholder"] = None  # recomputed in the worker
        return state
