"""Captioned drawings and photos from Debian packages: OpenClipart and Tux Paint stamps.

``openclipart`` (``apt-get install --no-install-recommends openclipart-png openclipart-svg``;
public domain): every drawing under ``/usr/share/openclipart/png/<category>/.../<name>.png`` with
the metadata of the matching ``svg/.../<name>.svg``: ``dc:title`` of the ``cc:Work`` (the
caption), ``dc:description`` and the ``dc:subject`` keywords (the author's name, which some
artists add as a keyword, is dropped). Symlinked paths are de-duplicated by their real path
(about 6,900 unique drawings). A drawing without a title falls back to its keywords; without
either it is skipped with a warning. A corrupt PNG falls back to rendering the SVG; when both fail
it is skipped. Images are composited onto white and fitted into a ``size`` x ``size`` white square
(longer side = ``size``, default 96). Output::

    DIR/images/<category>/.../<name>.png
    DIR/captions.csv   path,caption,title,description,keywords,category
    DIR/pairs.csv      path,caption
    DIR/LICENSE.txt

``tuxpaint`` (``apt-get install --no-install-recommends tuxpaint-stamps-default``; GPL-2): the
stamps under ``/usr/share/tuxpaint/stamps/<category>/.../<name>.{png,svg}`` with ``<name>.txt``.
The caption is the first line of the ``.txt`` that is not a ``<lang>.utf8=`` translation (the
untagged line is English); files whose lines are all tagged use ``en.utf8``/``en_US``/``en_GB``.
``_mirror``/``_flip`` variants are skipped; a stamp with both PNG and SVG uses the PNG; a stamp
without a caption file is skipped with a warning. Kinds: ``cartoon`` (stamps in ``cartoon/``
folders), ``drawing`` (vector SVG stamps elsewhere) and ``photo`` (raster stamps elsewhere:
mostly cut-out photos, a few flat drawings such as road signs). Output::

    DIR/photos/<category>/<name>.png, DIR/cartoons/..., DIR/drawings/...
    DIR/stamps.csv     path,caption,kind,category,name
    DIR/pairs.csv      path,caption
    DIR/LICENSE.txt
"""

from __future__ import annotations

import html
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from vlmood.data.prepare import PREPARERS
from vlmood.data.prepare._common import (
    Skips,
    dpkg_version,
    fit_square,
    load_raster,
    log,
    render_svg_fit,
    require_apt,
    require_cairosvg,
    save_png,
    write_csv,
    write_pairs,
)

OPENCLIPART_PACKAGES = ("openclipart-png", "openclipart-svg")
OPENCLIPART_DIR = "/usr/share/openclipart"
TUXPAINT_PACKAGES = ("tuxpaint-stamps-default",)
TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WORK = re.compile(r"<cc:Work\b.*?</cc:Work>", re.S)
_AGENT = re.compile(r"<cc:Agent\b.*?</cc:Agent>", re.S)
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_DESC = re.compile(r"<dc:description>(.*?)</dc:description>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)
_TAG = re.compile(r"<[^>]+>")
_LANG_LINE = re.compile(r"^([A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@\w+)?)\.utf8=(.*)$")


def _safe(part: str) -> str:
    return _SAFE.sub("_", part).strip("_") or "x"


def _text(s: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", s)).split())


def svg_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Title, description, keywords and creator of an Inkscape/OpenClipart SVG (``cc:Work``)."""
    try:
        head = Path(path).read_bytes()[:200_000].decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"cannot read SVG ({e})") from e
    m = _WORK.search(head)
    work = m.group(0) if m else ""
    agents = [_text(t) for a in _AGENT.findall(work) for t in _TITLE.findall(a)]
    body = _AGENT.sub("", work)
    t = _TITLE.search(body)
    d = _DESC.search(body)
    s = _SUBJECT.search(body)
    creators = {a.lower() for a in agents}
    keywords: list[str] = []
    for li in _LI.findall(s.group(1)) if s else []:
        k = _text(li)
        if k and k.lower() not in creators and k not in keywords:
            keywords.append(k)
    return {
        "title": _text(t.group(1)) if t else "",
        "description": _text(d.group(1)) if d else "",
        "keywords": keywords,
        "creators": agents,
    }


def _workers(workers: int | None) -> int:
    return int(workers) if workers is not None else min(4, os.cpu_count() or 1)


def _map(fn, jobs: list, workers: int | None) -> list:
    n = _workers(workers)
    if n > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(n) as ex:
            return list(ex.map(fn, jobs, chunksize=32))
    return [fn(j) for j in jobs]


# --------------------------------------------------------------------------- openclipart


HUGE_PIXELS = 16_000_000


def _pixels(path: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0] * im.size[1]
    except Exception:
        return 0


def _oc_job(job: tuple[str, str, str, int]) -> tuple[str | None, str | None]:
    """Convert one drawing; returns (error, fallback note)."""
    png, svg, dest, size = job
    try:
        if _pixels(png) > HUGE_PIXELS:  # a poster-size PNG: rendering the SVG is much cheaper
            try:
                save_png(render_svg_fit(svg, size), Path(dest))
                return None, None
            except ValueError:
                pass
        img = fit_square(load_raster(png), size)
        note = None
    except ValueError as e:
        try:
            img = render_svg_fit(svg, size)
        except Exception as e2:
            return f"{e}; the SVG {svg} does not render either: {e2}", None
        note = f"{png}: {e} (rendered {svg} instead)"
    save_png(img, Path(dest))
    return None, note


@PREPARERS.register("openclipart")
def prepare_openclipart(
    out: Path,
    from_dir: str | os.PathLike | None = None,
    install: bool = False,
    size: int = 96,
    workers: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """OpenClipart drawings with titles/keywords (apt openclipart-png + openclipart-svg)."""
    size = int(size)
    base = Path(from_dir) if from_dir is not None else Path(OPENCLIPART_DIR)
    png_root = require_apt("OpenClipart PNG files", [base / "png"], OPENCLIPART_PACKAGES, bool(install))
    svg_root = require_apt("OpenClipart SVG files", [base / "svg"], OPENCLIPART_PACKAGES, bool(install))
    png_real = png_root.resolve()
    skips = Skips("openclipart")
    seen: set[str] = set()
    jobs, rows = [], []
    for dirpath, dirnames, filenames in os.walk(png_root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.lower().endswith(".png"):
                continue
            p = Path(dirpath, fn)
            real = p.resolve()
            if str(real) in seen:
                continue
            seen.add(str(real))
            try:
                rel = real.relative_to(png_real)
            except ValueError:
                rel = p.relative_to(png_root)
            svg = svg_root / rel.with_suffix(".svg")
            if not svg.is_file():
                skips.add(p, f"no matching SVG {svg} (the caption comes from it)")
                continue
            try:
                meta = svg_metadata(svg)
            except ValueError as e:
                skips.add(svg, str(e))
                continue
            title, keywords = meta["title"], meta["keywords"]
            creators = {c.lower() for c in meta["creators"]}
            if title.lower() in creators or title.lower() in ("untitled", "title"):
                title = ""  # some artists put their own name in the title
            caption = title or ", ".join(keywords)
            if not caption:
                skips.add(svg, "no caption: the SVG has no dc:title and no keywords")
                continue
            category = rel.parts[0] if len(rel.parts) > 1 else ""
            dest = "images/" + "/".join(_safe(x) for x in rel.with_suffix(".png").parts)
            jobs.append((str(p), str(svg), str(out / dest), size))
            rows.append([dest, caption, title, meta["description"], "; ".join(keywords), category])
            if limit is not None and len(rows) >= int(limit):
                break
        if limit is not None and len(rows) >= int(limit):
            break
    if jobs:
        require_cairosvg()  # only needed for fallbacks, but fail early and clearly
    results = _map(_oc_job, jobs, workers)
    keep = []
    for job, row, (err, note) in zip(jobs, rows, results):
        if err is not None:
            skips.add(job[0], err)
        else:
            if note:
                log.warning("openclipart: %s", note)
            keep.append(row)
    skips.check_usable(len(keep), "drawings")
    write_csv(out / "captions.csv", ["path", "caption", "title", "description", "keywords", "category"], keep)
    write_pairs(out, [(r[0], r[1]) for r in keep])
    versions = {f"deb:{p}": dpkg_version(p) for p in OPENCLIPART_PACKAGES}
    (out / "LICENSE.txt").write_text(
        "OpenClipart drawings (https://openclipart.org), via the Debian packages openclipart-png "
        f"({versions['deb:openclipart-png']}) and openclipart-svg ({versions['deb:openclipart-svg']}).\n"
        "Licence: public domain (Creative Commons CC0 / PD dedication by the artists). The artist of each\n"
        "drawing is named in the dc:creator of its SVG under /usr/share/openclipart/svg.\n"
        f"Prepared by vlmood: composited onto white, fitted into {size}x{size} px.\n",
        encoding="utf-8",
    )
    cats: dict[str, int] = {}
    for r in keep:
        cats[r[5]] = cats.get(r[5], 0) + 1
    return {
        "packages": versions,
        "counts": {
            "images": len(keep),
            "with_description": sum(1 for r in keep if r[3]),
            "with_keywords": sum(1 for r in keep if r[4]),
            "categories": cats,
        },
        "image_size": size,
        **skips.to_dict(),
    }


# --------------------------------------------------------------------------- tux paint


def tuxpaint_caption(txt: str | os.PathLike) -> str:
    """The English caption of a Tux Paint stamp description file (ValueError when none)."""
    try:
        lines = Path(txt).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read caption file ({e})") from e
    tagged: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        m = _LANG_LINE.match(line)
        if m is None:
            return line
        tagged.setdefault(m.group(1), m.group(2).strip())
    for lang in ("en", "en_US", "en_GB", "en_AU", "en_CA"):
        if tagged.get(lang):
            return tagged[lang]
    raise ValueError("no English caption line (an untagged first line or en.utf8=...)")


def _tp_job(job: tuple[str, str, int]) -> str | None:
    src, dest, size = job
    try:
        img = render_svg_fit(src, size) if src.endswith(".svg") else fit_square(load_raster(src), size)
    except Exception as e:  # one bad stamp never stops the run
        return str(e)
    save_png(img, Path(dest))
    return None


@PREPARERS.register("tuxpaint")
def prepare_tuxpaint(
    out: Path,
    from_dir: str | os.PathLike | None = None,
    install: bool = False,
    size: int = 96,
    workers: int | None = None,
) -> dict[str, Any]:
    """Tux Paint stamps: captioned photos, cartoons and drawings (apt tuxpaint-stamps-default)."""
    size = int(size)
    root = require_apt(
        "Tux Paint stamps",
        [Path(from_dir) if from_dir is not None else Path(TUXPAINT_DIR)],
        TUXPAINT_PACKAGES,
        bool(install),
    )
    stems: dict[Path, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in filenames:
            stem, ext = os.path.splitext(fn)
            if ext.lower() in (".png", ".svg"):
                stems.setdefault(Path(dirpath, stem), set()).add(ext.lower())
    skips = Skips("tuxpaint")
    jobs, rows = [], []
    n_variants = 0
    folders = {"photo": "photos", "cartoon": "cartoons", "drawing": "drawings"}
    for stem in sorted(stems):
        if stem.name.endswith(("_mirror", "_flip")):
            n_variants += 1
            continue
        exts = stems[stem]
        src = stem.with_suffix(".png") if ".png" in exts else stem.with_suffix(".svg")
        txt = stem.with_suffix(".txt")
        if not txt.is_file():
            skips.add(src, f"missing caption file {txt}")
            continue
        try:
            caption = tuxpaint_caption(txt)
        except ValueError as e:
            skips.add(txt, str(e))
            continue
        rel = stem.relative_to(root)
        parts = list(rel.parts[:-1])
        if "cartoon" in parts:
            kind = "cartoon"
        elif ".png" not in exts:
            kind = "drawing"
        elif ".svg" in exts:
            kind = "drawing"  # a vector stamp with a raster fallback
        else:
            kind = "photo"
        cat_parts = [p for p in parts if p != "cartoon"]
        category = "/".join(cat_parts)
        dest = "/".join([folders[kind], *(_safe(p) for p in cat_parts), _safe(stem.name) + ".png"])
        jobs.append((str(src), str(out / dest), size))
        rows.append([dest, caption, kind, category, stem.name])
    if any(j[0].endswith(".svg") for j in jobs):
        require_cairosvg()
    results = _map(_tp_job, jobs, workers)
    keep = []
    for job, row, err in zip(jobs, rows, results):
        if err is not None:
            skips.add(job[0], err)
        else:
            keep.append(row)
    skips.check_usable(len(keep), "stamps")
    write_csv(out / "stamps.csv", ["path", "caption", "kind", "category", "name"], keep)
    write_pairs(out, [(r[0], r[1]) for r in keep])
    version = dpkg_version(TUXPAINT_PACKAGES[0])
    (out / "LICENSE.txt").write_text(
        f"Tux Paint stamps (https://tuxpaint.org), Debian package tuxpaint-stamps-default ({version}).\n"
        "Copyright the Tux Paint stamp contributors (New Breed Software and others); licensed under the\n"
        "GNU General Public License version 2 or later (see /usr/share/doc/tuxpaint-stamps-default/copyright).\n"
        f"Prepared by vlmood: composited onto white, fitted into {size}x{size} px; captions are the English\n"
        "line of each stamp's .txt description.\n",
        encoding="utf-8",
    )
    kinds: dict[str, int] = {}
    for r in keep:
        kinds[r[2]] = kinds.get(r[2], 0) + 1
    return {
        "packages": {f"deb:{TUXPAINT_PACKAGES[0]}": version},
        "counts": {"images": len(keep), "kinds": kinds, "mirror_flip_variants_skipped": n_variants},
        "image_size": size,
        **skips.to_dict(),
    }
