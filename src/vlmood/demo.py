"""`vlmood demo`: the default model (vlmood-small) on the bundled emoji demo set, every main score, a table and a report.

The demo set (``resources/demo/emoji-demo.zip``, built by ``scripts/build_demo_set.py``) is
extracted once into the cache folder (atomically), then evaluated like any benchmark.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from vlmood.data.base import DataError
from vlmood.features.cache import default_cache_root
from vlmood.utils import sha256_file

log = logging.getLogger(__name__)

DEMO_ZIP = "emoji-demo.zip"


def demo_zip_path() -> Path:
    p = Path(str(resources.files("vlmood") / "resources" / "demo" / DEMO_ZIP))
    if not p.is_file():
        raise DataError(
            f"the bundled demo set {p} is missing; reinstall vlmood or run scripts/build_demo_set.py"
        )
    return p


def extract_demo(cache_root: str | os.PathLike | None = None) -> Path:
    """Extract the demo set (once per zip content) and return the folder holding demo.yaml."""
    zpath = demo_zip_path()
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / "demo" / sha256_file(zpath)[:16]
    if (target / "demo.yaml").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a damaged extraction (no demo.yaml): replace it
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        with zipfile.ZipFile(zpath) as z:
            for name in z.namelist():
                if not (tmp / name).resolve().is_relative_to(tmp.resolve()):
                    raise DataError(f"{zpath}: unsafe path {name!r} in the archive")
            z.extractall(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (target / "demo.yaml").is_file():
        raise DataError(f"{target} has no demo.yaml after extracting {zpath}; remove {target} and retry")
    return target


def demo_scores(folder: Path) -> list[Any]:
    """MCM, NegLabel (with the shipped mined labels when present), energy, max-logit, KNN."""
    from vlmood.eval.runner import ScoreSpec

    labels = folder / "neglabel_labels.json"
    if labels.is_file():  # negatives mined once from all of WordNet, shipped with the demo
        neg = ScoreSpec("neglabel", {"labels_file": str(labels)}, display="neglabel(shipped labels)")
    else:
        neg = ScoreSpec("neglabel")
    return [ScoreSpec("mcm"), neg, ScoreSpec("energy"), ScoreSpec("maxlogit"), ScoreSpec("knn")]


def run_demo(
    out: str | os.PathLike = "runs/demo",
    model: str | None = None,
    device: str = "cpu",
    report: bool = True,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    from vlmood.defaults import DEFAULT_MODEL
    from vlmood.eval.runner import EvalOptions, format_table, run_eval
    from vlmood.eval.sets import sets_from_args
    from vlmood.features.options import ExtractOptions
    from vlmood.models import load_model

    model = model or DEFAULT_MODEL
    folder = extract_demo(cache_dir)
    resolved = sets_from_args(benchmark=str(folder / "demo.yaml"))
    vlm = load_model(model, device=device, precision="bf16" if device.startswith("cuda") else "fp32")
    opts = EvalOptions(
        templates=list(resolved.templates or ["a photo of a {}."]),
        templates_origin=resolved.templates_origin or "simple",
        extract=ExtractOptions(cache_root=cache_dir or None, progress=progress),
        command=sys.argv,
    )
    results = run_eval(vlm, resolved.eval_sets, demo_scores(folder), out, opts)
    print(format_table(results))
    print(f"\nresults: {Path(out) / 'results.json'}")
    if report:
        from vlmood.report import write_report

        info = write_report(
            [Path(out) / "results.json"], Path(out) / "report", title=f"vlmood demo: {model} on emoji"
        )
        print(f"report:  {info['index']}")
    return results
