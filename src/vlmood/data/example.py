"""A small example benchmark built from images that ship with scikit-learn (no download).

ID: handwritten digits 0-4 (named classes); near-OOD: digits 5-9; far-OOD: crops of the two
photos in ``sklearn.datasets.load_sample_images``; train: other images of digits 0-4 (for KNN
and Mahalanobis). Useful to check an installation end to end; the numbers only mean something
with a model trained on such images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

EXAMPLE_YAML = """\
# Written by `vlmood data example`; paths are relative to this file's folder. classnames.txt
# lists the class folder names; class names are matched to folders by name, not by position.
name: example-digits
description: sklearn digits 0-4 (ID) vs digits 5-9 (near) and photo crops (far)
id:
  name: digits-0-4
  folder: id
  classnames: classnames.txt
  templates: simple
train:
  name: digits-0-4-train
  folder: train
  classnames: classnames.txt
ood:
  near:
    - name: digits-5-9
      flat: near/digits-5-9
  far:
    - name: photo-crops
      flat: far/photo-crops
"""


def write_example(out: str | os.PathLike, per_class: int = 30, size: int = 64, seed: int = 0) -> Path:
    """Write the example benchmark under ``out`` (atomically) and return its YAML path."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError as e:
        from vlmood.data.base import DataError

        raise DataError(
            "the example benchmark is made from scikit-learn's bundled images: "
            f"pip install 'vlmood[examples]' ({e})"
        ) from e

    out = Path(out)
    if (out / "example.yaml").exists():
        return out / "example.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        digits = load_digits()
        rng = np.random.default_rng(seed)

        def save_digit(i: int, path: Path) -> None:
            arr = (16.0 - digits.images[i]) / 16.0 * 255  # dark ink on white, like a drawing
            img = Image.fromarray(arr.astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
            path.parent.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(path)

        for d in range(10):
            idx = np.flatnonzero(digits.target == d)
            for j, i in enumerate(idx[:per_class]):
                if d < 5:
                    save_digit(i, tmp / "id" / DIGIT_NAMES[d] / f"{j:03d}.png")
                else:
                    save_digit(i, tmp / "near" / "digits-5-9" / f"{DIGIT_NAMES[d]}_{j:03d}.png")
            if d < 5:
                for j, i in enumerate(idx[per_class : 2 * per_class]):
                    save_digit(i, tmp / "train" / DIGIT_NAMES[d] / f"{j:03d}.png")
        photos = load_sample_images().images
        far = tmp / "far" / "photo-crops"
        far.mkdir(parents=True)
        for j in range(5 * per_class):
            ph = photos[j % len(photos)]
            c = int(rng.integers(96, 256))
            y = int(rng.integers(0, ph.shape[0] - c))
            x = int(rng.integers(0, ph.shape[1] - c))
            Image.fromarray(ph[y : y + c, x : x + c]).resize((size, size), Image.BILINEAR).save(
                far / f"{j:03d}.jpg"
            )
        (tmp / "classnames.txt").write_text("\n".join(DIGIT_NAMES[:5]) + "\n")
        (tmp / "example.yaml").write_text(EXAMPLE_YAML)
        (tmp / "LICENSE.txt").write_text(
            "Images derived from scikit-learn's bundled data (scikit-learn is BSD-3-Clause).\n"
            "- digits: the UCI ML hand-written digits data set, as shipped in sklearn.datasets.\n"
            "- photo crops: china.jpg (by danielbuechele) and flower.jpg (by vultilion), Flickr, CC BY 2.0\n"
            "  (https://creativecommons.org/licenses/by/2.0/), retrieved by Robert Layton for scikit-learn.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "example.yaml"
