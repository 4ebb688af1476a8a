"""Captions of training images and image-text candidate pools (ARF's anchors, methods.md 9).

- **Captions files** (:func:`read_captions_file`, :func:`match_captions`): a CSV with a header
  ``path,caption``, one row per (image, caption); an image may have several rows (one of its
  captions is drawn per training step). Paths are relative to a root (default: the folder that
  holds the file) or absolute. Every training image must have a caption: the error names the
  file, how many images lack one, the first of them and the fix.
- **The builder** (:func:`build_captions`, ``vlmood data captions --root ROOT --out FILE``):
  composes one richer caption per image, deterministically, from the metadata the offline
  preparers already wrote under ``ROOT`` (``emoji/emoji.csv``: style, name, subcategory, tags;
  ``openclipart/captions.csv``: title, description, keywords, category;
  ``tuxpaint/stamps.csv``: caption, kind, category). Paths are written relative to ``ROOT``, the
  data root that ``vlmood fit --root`` and the packaged benchmarks take, e.g.
  ``emoji/twitter/animals-nature/1f435.png`` for the emoji-ood train split.
- **Candidate pools** (:func:`read_pool`): image-text pairs (CSV or parquet with ``path`` and
  ``caption`` columns, e.g. the prepared ``openclipart/pairs.csv`` and ``tuxpaint/pairs.csv``);
  paths relative to the pool file's folder or a given root; several files form one pool.
- **A captioner** (:func:`generate_captions`): a local Hugging Face image-to-text model folder
  (BLIP, BLIP-2, GIT, ... through ``AutoModelForImageTextToText``; ViT-GPT2 style
  ``VisionEncoderDecoderModel`` too) captions images when no captions file is given.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmood.data.base import DataError, ImageSample, ImageSource, is_within
from vlmood.errors import UsageError

log = logging.getLogger(__name__)

BUILD_COMMAND = "vlmood data captions --root DATA_ROOT --out FILE"
PATH_COLUMN = "path"
CAPTION_COLUMN = "caption"
PARQUET_SUFFIXES = (".parquet", ".pq")
#: the prepared sources the builder reads, in output order
BUILDER_SOURCES = ("emoji", "openclipart", "tuxpaint")
EMOJI_STYLES = {
    "google": "Google",
    "twitter": "Twitter",
    "openmoji-color": "OpenMoji colour",
    "openmoji-black": "OpenMoji black line-art",
    "fluent-3d": "Fluent 3D",
}


def _norm(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _clean(text: str) -> str:
    """Whitespace (newlines and tabs included) collapsed to single spaces."""
    return re.sub(r"\s+", " ", text or "").strip()


# ---------------------------------------------------------------------------------------------- pair CSVs
def _read_pairs_csv(path: Path, what: str) -> Iterator[tuple[int, str, str]]:
    """``(line, path, caption)`` rows of a CSV with ``path`` and ``caption`` columns (any case,
    other columns ignored); DataError naming the file for an unreadable file, missing columns
    or empty cells."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(
                    f"{what} {path} is empty: expected a header row path,caption and one row per pair"
                )
            lower = [h.strip().lower() for h in header]
            missing = [c for c in (PATH_COLUMN, CAPTION_COLUMN) if c not in lower]
            if missing:
                raise DataError(
                    f"{what} {path} has no {' or '.join(missing)} column (header: {','.join(header)[:200]}); "
                    f"expected a CSV with columns path,caption"
                )
            pi, ci = lower.index(PATH_COLUMN), lower.index(CAPTION_COLUMN)
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                line = reader.line_num
                p = row[pi].strip() if pi < len(row) else ""
                c = _clean(row[ci]) if ci < len(row) else ""
                if not p:
                    raise DataError(f"{path}:{line}: empty path in {what}")
                if not c:
                    raise DataError(f"{path}:{line}: empty caption for {p!r} in {what}")
                yield line, p, c
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"{what} {path} is not a readable UTF-8 CSV ({type(e).__name__}: {e}); expected columns path,caption"
        ) from None


def _read_pairs_parquet(path: Path, what: str) -> Iterator[tuple[int, str, str]]:
    try:
        import pandas as pd

        df = pd.read_parquet(path)
    except ImportError:
        raise UsageError(
            f"reading the parquet {what} {path} needs pyarrow: pip install pyarrow "
            "(or give it as a CSV with columns path,caption)"
        ) from None
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"{what} {path} is not a readable parquet file ({type(e).__name__}: {e})") from None
    cols = {str(c).strip().lower(): c for c in df.columns}
    missing = [c for c in (PATH_COLUMN, CAPTION_COLUMN) if c not in cols]
    if missing:
        raise DataError(
            f"{what} {path} has no {' or '.join(missing)} column (columns: {', '.join(map(str, df.columns))}); "
            "expected columns path,caption"
        )
    paths = df[cols[PATH_COLUMN]].tolist()
    caps = df[cols[CAPTION_COLUMN]].tolist()
    for i, (p, c) in enumerate(zip(paths, caps), 1):
        p = "" if p is None or p != p else str(p).strip()  # None / NaN: empty
        c = "" if c is None or c != c else _clean(str(c))
        if not p:
            raise DataError(f"{path}: row {i}: empty path in {what}")
        if not c:
            raise DataError(f"{path}: row {i}: empty caption for {p!r} in {what}")
        yield i, p, c


def read_pairs(path: str | os.PathLike, what: str = "pairs file") -> Iterator[tuple[int, str, str]]:
    """``(line or row, path, caption)`` of a CSV or parquet (``.parquet``/``.pq``) pairs file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist (or is not a file)")
    if p.suffix.lower() in PARQUET_SUFFIXES:
        return _read_pairs_parquet(p, what)
    return _read_pairs_csv(p, what)


# ---------------------------------------------------------------------------------------------- captions files
@dataclass
class CaptionsFile:
    """A captions file read into ``{normalised absolute image path: [captions]}``."""

    path: Path
    root: Path
    captions: dict[str, list[str]]
    rows: int

    def record(self) -> dict[str, Any]:
        from vlmood.utils import sha256_file

        return {
            "file": str(self.path),
            "root": str(self.root),
            "rows": self.rows,
            "sha256": sha256_file(self.path),
        }


def read_captions_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> CaptionsFile:
    """Read a ``path,caption`` CSV (or parquet); relative paths are taken from ``root``
    (default: the file's folder)."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise DataError(
            f"captions file {p} does not exist; build one from prepared data with `{BUILD_COMMAND}`, "
            "or caption the images with captioner=MODEL_DIR"
        )
    rootp = Path(root).expanduser().absolute() if root else p.parent
    caps: dict[str, list[str]] = {}
    rows = 0
    for _, rel, cap in read_pairs(p, "captions file"):
        caps.setdefault(_norm(rootp / rel), []).append(cap)
        rows += 1
    if not rows:
        raise DataError(f"captions file {p} has no rows (expected path,caption lines)")
    return CaptionsFile(p, rootp, caps, rows)


def match_captions(cf: CaptionsFile, paths: Sequence[str]) -> list[list[str]]:
    """The captions of each image of ``paths`` (absolute), in order; DataError naming the first
    image without one and the fix."""
    out: list[list[str]] = []
    missing: list[str] = []
    for p in paths:
        c = cf.captions.get(_norm(p))
        if c is None:
            missing.append(p)
        else:
            out.append(c)
    if missing:
        first = missing[0]
        shown = os.path.relpath(first, cf.root) if is_within(first, cf.root) else first
        raise DataError(
            f"captions file {cf.path} has no caption for {len(missing)} of {len(paths)} training images "
            f"(first: {shown!r}; its paths are read relative to {cf.root}); add them (`{BUILD_COMMAND}` "
            "writes one for prepared data, paths relative to DATA_ROOT), or set captions_root=DIR to the "
            "folder the file's paths are relative to"
        )
    return out


def write_pairs_csv(
    path: str | os.PathLike, rows: Sequence[tuple[str, str]] | Iterator[tuple[str, str]]
) -> int:
    """Write ``path,caption`` rows atomically; returns the number of rows."""
    from vlmood.utils import atomic_path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([PATH_COLUMN, CAPTION_COLUMN])
            for p, c in rows:
                w.writerow([p, c])
                n += 1
            f.flush()
            os.fsync(f.fileno())
    return n


# ---------------------------------------------------------------------------------------------- builder
def _split_terms(text: str, sep: str) -> list[str]:
    """Terms of a separated list, stripped, de-duplicated case-insensitively, in order."""
    seen: set[str] = set()
    out = []
    for t in (text or "").split(sep):
        t = _clean(t)
        if t and t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    return out


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _shorten(text: str, limit: int) -> str:
    text = _clean(text)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.") + "..."


def emoji_caption(row: dict[str, str], max_terms: int = 8) -> str:
    """``a <style> emoji of <name>, <subcategory>, tags: t1, t2, ...`` (tags that repeat the name
    left out)."""
    style = (row.get("style") or "").strip()
    style = EMOJI_STYLES.get(style, style.replace("-", " "))
    name = _clean(row.get("name") or row.get("caption") or "")
    sub = _clean((row.get("subcategory") or "").replace("-", " "))
    tags = [t for t in _split_terms(row.get("tags", ""), ",") if t.lower() != name.lower()][:max_terms]
    text = f"{_article(style)} {style} emoji of {name}" if style else f"an emoji of {name}"
    if sub:
        text += f", {sub}"
    if tags:
        text += ", tags: " + ", ".join(tags)
    return text


def openclipart_caption(row: dict[str, str], max_terms: int = 8, max_description: int = 200) -> str:
    """``a clip art of <title>, <category>. <description>. keywords: k1, k2, ...``"""
    title = _clean(row.get("title") or row.get("caption") or "")
    cat = _clean(row.get("category", "")).replace("_", " ")
    desc = _shorten(row.get("description", ""), max_description)
    if desc.lower().rstrip(".") == title.lower():
        desc = ""
    kws = [k for k in _split_terms(row.get("keywords", ""), ";") if k.lower() != title.lower()][:max_terms]
    text = f"a clip art of {title}" if title else "a clip art"
    if cat:
        text += f", {cat}"
    text += "."
    if desc:
        text += " " + desc.rstrip(".") + "."
    if kws:
        text += " keywords: " + ", ".join(kws)
    return text


def tuxpaint_caption(row: dict[str, str]) -> str:
    """``<caption> (<kind>: <category, words>)``"""
    cap = _clean(row.get("caption", ""))
    kind = _clean(row.get("kind", ""))
    cat = ", ".join(_clean(c.replace("_", " ")) for c in (row.get("category") or "").split("/") if c.strip())
    extra = ": ".join(x for x in (kind, cat) if x)
    return f"{cap} ({extra})" if extra else cap


def _dict_rows(path: Path) -> Iterator[dict[str, str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                yield {(k or "").strip().lower(): (v or "") for k, v in row.items()}
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a readable UTF-8 CSV ({type(e).__name__}: {e})") from None


def _source_rows(root: Path, source: str) -> tuple[Path, Iterator[tuple[str, str]]] | None:
    """(the metadata file, (path relative to root, caption) rows) of one prepared source, or None
    when it is not prepared under ``root``."""
    if source == "emoji":
        f, compose = root / "emoji" / "emoji.csv", emoji_caption
    elif source == "openclipart":
        f, compose = root / "openclipart" / "captions.csv", openclipart_caption
    elif source == "tuxpaint":
        f, compose = root / "tuxpaint" / "stamps.csv", tuxpaint_caption
        if not f.is_file() and (root / "tuxpaint" / "pairs.csv").is_file():
            f = root / "tuxpaint" / "pairs.csv"
    else:
        raise UsageError(f"unknown captions source {source!r}; choose from {', '.join(BUILDER_SOURCES)}")
    if not f.is_file():
        return None

    def rows() -> Iterator[tuple[str, str]]:
        for i, row in enumerate(_dict_rows(f), 2):
            rel = (row.get("path") or "").strip()
            if not rel:
                raise DataError(f"{f}:{i}: empty path")
            cap = compose(row)
            if not cap:
                raise DataError(f"{f}:{i}: nothing to compose a caption from for {rel!r}")
            yield f"{source}/{rel}", cap

    return f, rows()


def build_captions(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a captions file (``path,caption``, paths relative to ``root``) composed from the
    metadata of the prepared sources under ``root`` (see the module docstring); ``out`` defaults
    to ``ROOT/captions.csv``. Deterministic: the same prepared data gives the same file. Returns
    ``{"out", "rows", "sources": {name: rows}, "not_prepared": [...]}``."""
    rootp = Path(root).expanduser().absolute()
    if not rootp.is_dir():
        raise DataError(
            f"data root {rootp} does not exist; pass --root DIR, the folder of the prepared sources"
        )
    wanted = list(sources) if sources else list(BUILDER_SOURCES)
    found = {s: r for s in wanted if (r := _source_rows(rootp, s)) is not None}
    if not found:
        raise DataError(
            f"no prepared captioned data under {rootp}: expected emoji/emoji.csv, openclipart/captions.csv or "
            f"tuxpaint/stamps.csv; prepare them with `vlmood data prepare emoji --out {rootp / 'emoji'}` "
            "(likewise openclipart, tuxpaint)"
        )
    counts: dict[str, int] = {}

    def all_rows() -> Iterator[tuple[str, str]]:
        for s, (_, rows) in found.items():
            n = 0
            for r in rows:
                n += 1
                yield r
            counts[s] = n

    dest = Path(out).expanduser().absolute() if out else rootp / "captions.csv"
    if dest.is_dir():
        raise UsageError(
            f"--out {dest} is a folder; give the captions CSV file to write, e.g. {dest / 'captions.csv'}"
        )
    n = write_pairs_csv(dest, all_rows())
    return {
        "out": str(dest),
        "root": str(rootp),
        "rows": n,
        "sources": counts,
        "read": {s: str(f) for s, (f, _) in found.items()},
        "not_prepared": [s for s in wanted if s not in found],
    }


# ---------------------------------------------------------------------------------------------- pools
@dataclass
class PairPool:
    """Image-text pairs of one or more pool files: absolute image paths, captions and, per file,
    its row range and what identifies it (size, mtime)."""

    paths: list[str]
    captions: list[str]
    files: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def file_of(self, i: int) -> str:
        for f in self.files:
            if f["start"] <= i < f["stop"]:
                return str(f["file"])
        raise IndexError(i)

    def source(self, name: str = "arf-pool") -> ImageSource:
        """The pool's images as an unlabelled source (for the feature cache)."""
        samples = [ImageSample(path=p, label=-1, caption=c) for p, c in zip(self.paths, self.captions)]
        return ImageSource(
            name=name,
            samples=samples,
            kind="csv",
            origin=",".join(str(f["file"]) for f in self.files),
            meta={"pool_files": [str(f["file"]) for f in self.files]},
        )


def pool_files(spec: str | Sequence[str] | None) -> list[Path]:
    """Pool file names from a comma-separated string or a list ('~' expanded)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [Path(os.fspath(s).strip()).expanduser() for s in items if os.fspath(s).strip()]


def read_pool(
    files: str | Sequence[str | os.PathLike],
    root: str | os.PathLike | None = None,
    check_images: bool = True,
) -> PairPool:
    """Read candidate pool files (CSV or parquet with ``path`` and ``caption`` columns) into one
    :class:`PairPool`. Relative paths are taken from ``root`` (default: each file's folder) and
    must stay under it. DataError naming the file for a missing, unreadable, empty or malformed
    file, and (``check_images``) for images that do not exist."""
    names = pool_files(files if isinstance(files, str) else [os.fspath(f) for f in files])
    if not names:
        raise UsageError("no candidate pool given: pass pool=FILE[,FILE...] (CSV or parquet path,caption)")
    paths: list[str] = []
    caps: list[str] = []
    records: list[dict[str, Any]] = []
    for f in names:
        fp = f.absolute()
        if not fp.is_file():
            raise DataError(
                f"candidate pool {fp} does not exist; give CSV or parquet files with columns path,caption "
                "(e.g. a prepared openclipart/pairs.csv)"
            )
        r = Path(root).expanduser().absolute() if root else fp.parent
        start = len(paths)
        for line, rel, cap in read_pairs(fp, "candidate pool"):
            if not is_within(rel, r):
                raise DataError(
                    f"{fp}:{line}: path {rel!r} leaves the pool root {r}; move the image under it or set "
                    "pool_root=DIR to a folder above it"
                )
            paths.append(os.path.normpath(os.path.join(r, rel)))
            caps.append(cap)
        if len(paths) == start:
            raise DataError(f"candidate pool {fp} is empty (a header but no path,caption rows)")
        if check_images:
            mine = paths[start:]
            missing = [p for p in mine if not os.path.isfile(p)]
            if missing:
                raise DataError(
                    f"candidate pool {fp}: {len(missing)} of {len(mine)} images are missing under {r} "
                    f"(first: {os.path.relpath(missing[0], r)!r}); fix the pool file, or set pool_root=DIR "
                    "to the folder its paths are relative to"
                )
        st = fp.stat()
        records.append(
            {
                "file": str(fp),
                "root": str(r),
                "start": start,
                "stop": len(paths),
                "rows": len(paths) - start,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
            }
        )
    return PairPool(paths, caps, records)


# ---------------------------------------------------------------------------------------------- captioner
def check_captioner_dir(path: str | os.PathLike) -> Path:
    """A local Hugging Face model folder (with config.json); UsageError otherwise."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir() or not (p / "config.json").is_file():
        what = (
            "does not exist" if not p.exists() else "has no config.json" if p.is_dir() else "is not a folder"
        )
        raise UsageError(
            f"captioner {p} {what}: give a local Hugging Face image-to-text model folder (save_pretrained of "
            f"e.g. BLIP or BLIP-2: config.json, weights, processor files), or a captions file "
            f"(captions=FILE, built with `{BUILD_COMMAND}`)"
        )
    return p


def load_captioner(path: str | os.PathLike, device: str | Any = "cpu") -> tuple[Any, Any, Any]:
    """``(model, image processor callable, decode callable)`` of a local image-to-text model,
    loaded with ``local_files_only`` (never downloads). ModelLoadError when transformers cannot
    load it."""
    from vlmood.models.base import ModelLoadError

    p = check_captioner_dir(path)
    try:
        import transformers as tf
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelLoadError(f"a captioner needs transformers: pip install transformers ({e})") from None
    errors = []
    try:
        model = tf.AutoModelForImageTextToText.from_pretrained(p, local_files_only=True)
        proc = tf.AutoProcessor.from_pretrained(p, local_files_only=True)
        tok = getattr(proc, "tokenizer", proc)
        prep = lambda imgs: proc(images=imgs, return_tensors="pt")  # noqa: E731
    except Exception as e:  # noqa: BLE001 - another architecture, or an unreadable folder
        errors.append(f"{type(e).__name__}: {e}")
        try:
            model = tf.VisionEncoderDecoderModel.from_pretrained(p, local_files_only=True)
            improc = tf.AutoImageProcessor.from_pretrained(p, local_files_only=True)
            tok = tf.AutoTokenizer.from_pretrained(p, local_files_only=True)
            prep = lambda imgs: improc(images=imgs, return_tensors="pt")  # noqa: E731
        except Exception as e2:  # noqa: BLE001
            errors.append(f"{type(e2).__name__}: {e2}")
            reason = " / ".join(_clean(m)[:300] for m in errors)
            raise ModelLoadError(
                f"captioner {p} cannot be loaded as a Hugging Face image-to-text model ({reason}); give a "
                f"folder written by save_pretrained (model + processor), or a captions file (captions=FILE)"
            ) from None
    model.eval().to(device)

    def decode(ids):
        return tok.batch_decode(ids, skip_special_tokens=True)

    return model, prep, decode


def generate_captions(
    model_dir: str | os.PathLike,
    paths: Sequence[str],
    device: str | Any = "cpu",
    batch_size: int = 16,
    max_new_tokens: int = 40,
    progress: bool = True,
) -> list[str]:
    """One caption per image of ``paths`` (greedy decoding) from a local image-to-text model."""
    import torch
    from tqdm.auto import tqdm

    from vlmood.data.sources import open_image

    model, prep, decode = load_captioner(model_dir, device)
    out: list[str] = []
    bar = tqdm(total=len(paths), desc="captioning", unit="img", disable=not progress, leave=False)
    try:
        for s in range(0, len(paths), batch_size):
            part = list(paths[s : s + batch_size])
            inputs = prep([open_image(p) for p in part])
            inputs = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            texts = [_clean(t) for t in decode(ids)]
            for p, t in zip(part, texts):
                if not t:
                    raise DataError(
                        f"captioner {model_dir} produced an empty caption for {p}; use another captioner or "
                        "a captions file (captions=FILE)"
                    )
            out.extend(texts)
            bar.update(len(part))
    finally:
        bar.close()
    return out
