"""Per-image failure view: which images a score gets wrong at its FPR95 threshold, as thumbnails.

At the FPR95 threshold 95% of the ID images score at or above it (the threshold of
``vlmood.metrics.fpr95``). The view shows, per score, the OOD images accepted as ID with the
highest scores and the ID images rejected with the lowest, plus per-class ID accuracy from the
head's predictions. It needs raw score files written with per-image paths and predictions; the
originals are never linked: small copies are written under the report folder (``thumbs/``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmood.metrics import RECALL_LEVEL
from vlmood.report.load import RawScores, Run

log = logging.getLogger(__name__)

THUMB_DIR = "thumbs"
THUMB_PX = 96  # stored size (longest side); shown at 64 CSS px, crisp on HiDPI screens
PLACEHOLDER = "missing.png"
N_SHOW = 6


def fpr95_threshold(id_scores: np.ndarray) -> float | None:
    """The highest threshold that accepts (score >= threshold) at least 95% of the ID scores."""
    v = np.sort(np.asarray(id_scores, dtype=np.float64)[np.isfinite(id_scores)])[::-1]
    if v.size == 0:
        return None
    k = int(np.argmax(np.arange(1, v.size + 1) / v.size >= RECALL_LEVEL))
    return float(v[k])


@dataclass
class Thumb:
    src: str  # relative to the report folder
    caption: str
    title: str  # tooltip: the original path
    ok: bool = True


@dataclass
class ScoreFailures:
    score: str
    threshold: float
    ood_accepted: list[Thumb] = field(default_factory=list)
    n_ood_accepted: int = 0
    n_ood: int = 0
    id_rejected: list[Thumb] = field(default_factory=list)
    n_id_rejected: int = 0
    n_id: int = 0


class Thumbnails:
    """Small JPEG copies of images, one file per distinct path, and one placeholder for the missing."""

    def __init__(self, folder: Path, px: int = THUMB_PX) -> None:
        self.folder = folder
        self.px = px
        self._done: dict[str, tuple[str, bool]] = {}
        self._placeholder: str | None = None

    def placeholder(self) -> str:
        if self._placeholder is None:
            from PIL import Image, ImageDraw

            im = Image.new("RGB", (self.px, self.px), (236, 239, 243))
            d = ImageDraw.Draw(im)
            m = self.px // 4
            d.line([(m, m), (self.px - m, self.px - m)], fill=(170, 178, 187), width=3)
            d.line([(m, self.px - m), (self.px - m, m)], fill=(170, 178, 187), width=3)
            self.folder.mkdir(parents=True, exist_ok=True)
            im.save(self.folder / PLACEHOLDER, format="PNG")
            self._placeholder = f"{THUMB_DIR}/{PLACEHOLDER}"
        return self._placeholder

    def get(self, path: str) -> tuple[str, bool]:
        """(relative src, True) for a readable image; (placeholder src, False) otherwise."""
        if path in self._done:
            return self._done[path]
        name = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg"
        try:
            self._write(Path(path), self.folder / name)
            res = (f"{THUMB_DIR}/{name}", True)
        except Exception as e:  # missing, unreadable, not an image: a placeholder, never an error
            log.info("report: no thumbnail for %s: %s", path, e)
            res = (self.placeholder(), False)
        self._done[path] = res
        return res

    def _write(self, src: Path, dst: Path) -> None:
        from PIL import Image, ImageOps

        if not src.is_file():
            raise FileNotFoundError(src)
        with Image.open(src) as im:
            im.draft("RGB", (self.px * 2, self.px * 2))  # JPEG: decode at a reduced size
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
            im.thumbnail((self.px, self.px), Image.Resampling.LANCZOS)
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            im.save(tmp, format="JPEG", quality=85)
        os.replace(tmp, dst)


def _name(classnames: list[str], i: int | None) -> str:
    if i is None:
        return "?"
    return classnames[i] if 0 <= i < len(classnames) else f"class {i}"


def score_failures(
    run: Run, label: str, raw: RawScores, thumbs: Thumbnails, n: int = N_SHOW
) -> ScoreFailures | None:
    """The failures of one score at its FPR95 threshold, or None without per-image paths."""
    if "id" not in raw.paths or not any(f"ood/{s}" in raw.paths for s in raw.ood):
        return None
    thr = fpr95_threshold(raw.id)
    if thr is None:
        return None
    names = run.classnames
    out = ScoreFailures(score=label, threshold=thr, n_id=int(raw.id.size))
    cands = []
    for s, v in raw.ood.items():
        key = f"ood/{s}"
        if key not in raw.paths:
            continue
        out.n_ood += int(v.size)
        hit = np.flatnonzero(np.isfinite(v) & (v >= thr))
        out.n_ood_accepted += int(hit.size)
        cands.extend((float(v[i]), s, key, int(i)) for i in hit)
    cands.sort(key=lambda c: -c[0])
    for val, s, key, i in cands[:n]:
        p = str(raw.paths[key][i])
        pred = raw.pred.get(key)
        as_cls = _name(names, int(pred[i])) if pred is not None else None
        src, ok = thumbs.get(p)
        cap = f"{s}\n{val:.4g}" + (f" → {as_cls}" if as_cls else "")  # → the ID class it was taken for
        out.ood_accepted.append(Thumb(src, cap, p if ok else f"image missing: {p}", ok))
    v = raw.id
    miss = np.flatnonzero(~(np.isfinite(v) & (v >= thr)))
    out.n_id_rejected = int(miss.size)
    order = miss[np.argsort(np.where(np.isfinite(v[miss]), v[miss], -np.inf), kind="stable")]
    for i in order[:n]:
        p = str(raw.paths["id"][i])
        true = _name(names, int(raw.labels[i])) if raw.labels is not None else "ID"
        pred = raw.pred.get("id")
        src, ok = thumbs.get(p)
        cap = f"{true}\n{v[i]:.4g}" + (f" → {_name(names, int(pred[i]))}" if pred is not None else "")
        out.id_rejected.append(Thumb(src, cap, p if ok else f"image missing: {p}", ok))
    return out


def class_accuracy(run: Run) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(class names, accuracy per class (NaN where a class has no image), images per class) from the
    first raw scores file that holds predictions and labels, or None."""
    for label in run.scores:
        raw = run.raw(label)
        if raw is None or raw.labels is None or "id" not in raw.pred:
            continue
        names = run.classnames
        k = max(len(names), int(raw.labels.max(initial=-1)) + 1)
        keep = raw.labels >= 0
        lab, pred = raw.labels[keep], raw.pred["id"][keep]
        n = np.bincount(lab, minlength=k)
        right = np.bincount(lab[pred == lab], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(n > 0, right / np.maximum(n, 1), np.nan)
        return [_name(names, i) for i in range(k)], acc, n
    return None
