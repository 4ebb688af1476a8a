"""Readers that turn an image folder, an image list or a CSV into an :class:`ImageSource`,
plus strict image decoding (:func:`open_image`) and a torch ``Dataset`` over a source.

Labels are indices into the source's ``classnames``; ``-1`` means "no label" (OOD sets).
Sample paths are absolute; ``source.meta["root"]`` is the folder relative paths were taken from.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmood.data.base import CorruptImageError, DataError, ImageSample, ImageSource, resolve
from vlmood.data.classnames import read_classnames

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


def _walk_images(folder: Path, extensions: Sequence[str], recursive: bool = True) -> list[str]:
    """Image files under ``folder`` in a deterministic (sorted) order; follows symlinks."""
    out: list[str] = []
    if not recursive:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and _is_image(entry.name, extensions):
                out.append(str(Path(entry.path).absolute()))
        return out
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if _is_image(fn, extensions):
                out.append(str(Path(dirpath, fn).absolute()))
    return out


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _resolve_classnames(
    classnames: Sequence[str] | str | os.PathLike | None,
) -> tuple[list[str] | None, dict[str, Any]]:
    """A list is used as is; a string is a built-in set name or a class-name file."""
    if classnames is None:
        return None, {}
    if isinstance(classnames, (str, os.PathLike)):
        cn = read_classnames(classnames)
        return list(cn.names), {"classnames_origin": cn.origin, "classnames_sha256": cn.sha256}
    return [str(c) for c in classnames], {}


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
    classnames: Sequence[str] | str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> ImageSource:
    """One subfolder per class; label = position of the subfolder in sorted order.

    Args:
        root: folder holding one subfolder per class (images may sit in nested folders).
        classnames: names in label order (a list, a built-in set name or a file); default: the
            folder names with ``_`` replaced by a space.
        extensions: file suffixes counted as images (case-insensitive).
        classes: use only these subfolders, in this order (label = position in this list), e.g.
            ImageNet WordNet ids for a class subset; missing subfolders raise DataError.
        name: source name; default: the folder name.
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
    names, meta = _resolve_classnames(classnames)
    if names is None:
        names = [f.replace("_", " ") for f in folders]
    elif len(names) != len(folders):
        raise DataError(
            f"image folder {rootp.absolute()} has {len(folders)} class subfolders but "
            f"{len(names)} class names were given"
        )
    samples: list[ImageSample] = []
    for label, folder in enumerate(folders):
        files = _walk_images(rootp / folder, extensions)
        if not files:
            raise DataError(
                f"class folder {(rootp / folder).absolute()} has no images ({', '.join(extensions)})"
            )
        samples.extend(ImageSample(path=f, label=label) for f in files)
    meta.update(root=str(rootp.absolute()), class_folders=list(folders))
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
) -> ImageSource:
    """All images directly in ``root`` (or below it with ``recursive``), unlabelled (label -1)."""
    rootp = _require_dir(root, "image folder")
    files = _walk_images(rootp, extensions, recursive=recursive)
    if not files:
        raise DataError(f"image folder {rootp.absolute()} has no images ({', '.join(extensions)})")
    return ImageSource(
        name=name or rootp.absolute().name,
        samples=[ImageSample(path=f, label=-1) for f in files],
        classnames=None,
        kind="folder",
        origin=str(rootp.absolute()),
        meta={"root": str(rootp.absolute()), "flat": True},
    )


def image_list(
    list_file: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classnames: Sequence[str] | str | None = None,
    name: str | None = None,
) -> ImageSource:
    """Read an image list: lines ``relative/path [label [extra ...]]`` (OpenOOD, MOS lists).

    Paths are relative to ``root`` (default: the list file's folder). A missing label gives -1.
    Extra columns after the label are ignored (OpenOOD may append JSON). Blank lines and lines
    starting with ``#`` are skipped. A label that is not an integer raises DataError naming
    ``file:line``. Paths containing spaces are not supported.
    """
    lf = _require_file(list_file, "image list")
    rootp = Path(root) if root is not None else lf.absolute().parent
    names, meta = _resolve_classnames(classnames)
    samples: list[ImageSample] = []
    with open(lf, encoding="utf-8") as f:
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
            samples.append(ImageSample(path=resolve(tokens[0], rootp), label=label))
    if not samples:
        raise DataError(f"image list {lf.absolute()} has no entries")
    meta.update(root=str(rootp.absolute()), list_file=str(lf.absolute()))
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
    classnames: Sequence[str] | str | None = None,
    name: str | None = None,
) -> ImageSource:
    """Read a CSV with a header row: an image path column, optional label and caption columns.

    Args:
        csv_file: the CSV file.
        root: folder relative paths are taken from; default: the CSV's folder.
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
    with open(cf, encoding="utf-8-sig", newline="") as f:
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
        samples.append(ImageSample(path=resolve(row[pcol].strip(), rootp), label=label, caption=caption))
    if not samples:
        raise DataError(f"CSV file {cf.absolute()} has no rows")
    meta.update(root=str(rootp.absolute()), csv_file=str(cf.absolute()))
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
            if any(True for _ in _walk_images(p / d, extensions)):
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
    classnames: Sequence[str] | str | None = None,
    name: str | None = None,
    classes: Sequence[str] | None = None,
) -> ImageSource:
    """Open a dataset from a path, guessing its kind unless a prefix forces it.

    A folder with class subfolders -> :func:`image_folder`; a folder of images -> unlabelled
    :func:`flat_folder`; ``*.txt``/``*.lst`` -> :func:`image_list` (``root`` = image root,
    default the list's folder); ``*.csv`` -> :func:`csv_source`. Prefixes ``folder:``, ``flat:``,
    ``list:``, ``csv:`` force the kind. ``classes`` restricts a class folder to those subfolders.
    """
    kind, path = split_kind(str(spec))
    if kind is None:
        kind = guess_kind(path)
    if classes is not None and kind != "folder":
        raise DataError(f"{path}: a class subset (classes/wnids) needs a class folder, not a {kind} source")
    if kind == "folder":
        return image_folder(path, classnames=classnames, classes=classes, name=name)
    if kind == "flat":
        src = flat_folder(path, name=name)
        if classnames is not None:
            src.classnames, meta = _resolve_classnames(classnames)
            src.meta.update(meta)
        return src
    if kind == "list":
        return image_list(path, root=root, classnames=classnames, name=name)
    return csv_source(path, root=root, classnames=classnames, name=name)


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
    """
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
    Without a transform, images become CxHxW float tensors in [0, 1] (sizes then vary, and the
    placeholder for a skipped image is 3x224x224).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        placeholder_size: tuple[int, int] = (224, 224),
    ) -> None:
        self.name = source.name
        self.samples = list(source.samples)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
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
            if not self.skip_corrupt:
                raise
            log.warning("skipping unreadable image %s (%s)", sample.path, e)
            return self.placeholder(), i, False
        return self._apply(img), i, True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_placeholder"] = None  # recomputed in the worker
        return state
