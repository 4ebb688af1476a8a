"""Prepare every offline data source and print per-source wall time, image count and size.

    python benchmarks/bench_prepare.py                 # into a temporary root (deleted after)
    python benchmarks/bench_prepare.py --root DIR      # keep the prepared data in DIR/<source>
    python benchmarks/bench_prepare.py --force --sources emoji tuxpaint

Sources whose packages are missing are reported with the install command, not fatal.
Figures, not a test.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from vlmood.data.base import DataError
from vlmood.data.prepare import list_sources, prepare, read_marker
from vlmood.data.prepare._common import dir_size

# photo-vs-drawing reads the prepared tuxpaint/openclipart/emoji folders: keep it last
ORDER = [
    "emoji",
    "openclipart",
    "tuxpaint",
    "fashion-mnist",
    "mnist5k",
    "opencv-digits",
    "sklearn-digits",
    "foolbox",
    "photo-vs-drawing",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="data root to keep (default: a temporary folder)")
    ap.add_argument("--sources", nargs="*", default=None, help=f"default: {' '.join(ORDER)}")
    ap.add_argument("--force", action="store_true", help="rebuild sources that are already prepared")
    ap.add_argument("--install", action="store_true", help="run missing apt/npm/pip installs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sources = args.sources or [s for s in ORDER if s in list_sources()]
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="vlmood-prepare-"))
    print(f"data root: {root}")
    print(f"{'source':<18} {'seconds':>8} {'images':>8} {'skipped':>8} {'MiB':>8}")
    try:
        for s in sources:
            opts = (
                {"install": True} if args.install and s not in ("sklearn-digits", "photo-vs-drawing") else {}
            )
            t0 = time.perf_counter()
            try:
                out = prepare(s, root / s, force=args.force, **opts)
            except DataError as e:
                print(f"{s:<18} unavailable: {str(e).splitlines()[0]}")
                continue
            dt = time.perf_counter() - t0
            m = read_marker(out) or {}
            counts = m.get("counts", {})
            n = counts.get("images", counts.get("id"))
            print(f"{s:<18} {dt:8.1f} {n!s:>8} {m.get('n_skipped', 0):>8} {dir_size(out) / 2**20:8.1f}")
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
