"""Pinned outputs: regenerate (deliberately) the reference values that tests/test_pinned.py checks.

A seeded ``tiny-test`` model (random init, seed 0) evaluates the example benchmark
(:func:`vlmood.data.example.write_example`: scikit-learn's bundled digits and sample photos,
deterministic) with EVERY registered score through the library's evaluation path
(:func:`vlmood.eval.runner.run_eval`). What is pinned in ``tests/pinned/outputs.json``:

- every score's raw per-image values on every set (ID and each OOD set), as float32 written in the
  shortest decimal form that reads back to the same float32 (exact, yet readable in a diff);
- every metric results.json holds for every score (per OOD set, mean, near/far means);
- ID accuracy, the scores' parameters as they ran and their numeric artifacts (NegLabel's counts
  and the mined negative labels);
- the zero-shot text side: the class prompts, their token ids (exact) and the [K, D] class text
  features (float32), so a tokenizer or text-tower change is caught;
- diagnostics that are only printed when something moved: package versions, the model weights'
  hash and a hash of each set's decoded pixels (tells "the inputs changed" from "the code changed").

Run it when an output change is intended, review the printed summary of what moved, and commit
the new file with the change that caused it::

    .venv/bin/python scripts/regen_pinned.py            # recompute, show the changes, write the pins
    .venv/bin/python scripts/regen_pinned.py --check    # only compare (exit 1 if anything moved)
    .venv/bin/python scripts/regen_pinned.py --force    # rewrite even if nothing moved beyond noise

The test imports :func:`compute` and :func:`compare` from this file, so the test and the pins
always describe the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "pinned" / "outputs.json"
SCHEMA = "vlmood.pinned/1"
REGEN = "python scripts/regen_pinned.py"

MODEL = "tiny-test"  # random open_clip ViT, seed 0 (vlmood.models.specs.tiny_test)
EXAMPLE = {"per_class": 30, "size": 32, "seed": 0}  # 150 ID, 150 near, 150 far, 150 train images

# Tolerances for float32 across machines (BLAS kernels, thread counts, CPU vector widths). A raw
# score may move by SCORE_RTOL * |value| + SCORE_STOL * (the 5-95 % spread of that score's pinned
# ID values): the spread is the scale that matters for ranking, and a random tiny model gives
# nearly constant scores (entropy spans ~1.5e-4 around -1.609), where a plain rtol of 1e-4 would
# hide any reordering. Measured by rerunning with other batch sizes and thread counts (other GEMM
# shapes, so other summation orders): at most 6.3e-6 relative (Mahalanobis, ridge 0, far from the
# ID spread) and 3.1e-4 of the ID spread (entropy; KNN at float32 ulp level); the largest
# noise/tolerance ratio seen is 0.18 (Mahalanobis' -52816 outlier), the others below 0.04.
SCORE_RTOL, SCORE_STOL = 3e-6, 2e-3
TEXT_ATOL = 1e-5  # text features are unit vectors; measured noise 6e-8
EXACT = 1e-9  # metrics recomputed from the same scores (float64 arithmetic)
# ID accuracy is an argmax: when scores are not bit-identical, allow this many near-tie flips
# (class similarities themselves are checked through the text features and the cosine scores).
ACC_FLIPS = 2


# --------------------------------------------------------------------------- small helpers
def f32(values: Any) -> list[float]:
    """float32 values as Python floats that print as the shortest decimal reading back to the same float32."""
    arr = np.asarray(values, dtype=np.float32).ravel()
    return [float(str(v)) for v in arr]


def _pixels_sha(source: Any) -> str:
    """sha256 of a set's labels and decoded RGB pixels, in order (file names and encodings aside)."""
    from PIL import Image

    h = hashlib.sha256()
    for sample in source.samples:
        h.update(f"{sample.label}:".encode())
        with Image.open(sample.path) as im:
            h.update(np.asarray(im.convert("RGB")).tobytes())
    return h.hexdigest()


def _weights_sha(model: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.torch_module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("vlmood", "torch", "open_clip_torch", "numpy", "scikit-learn", "Pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def _plain(obj: Any) -> Any:
    """JSON-plain copy (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def small_vocabulary() -> dict[str, list[str]]:
    """A fixed 600-noun / 150-adjective slice of the packaged WordNet lists (as tests/test_cli.py):
    mining all ~140k candidates is slow on CPU."""
    from vlmood.scores.neglabel import load_wordnet_vocabulary

    voc = load_wordnet_vocabulary()
    return {"noun": list(voc["noun"][::200][:600]), "adj": list(voc["adj"][::100][:150])}


def score_specs() -> list[Any]:
    """One spec per registered score, default parameters (NegLabel: the small vocabulary)."""
    from vlmood.eval.runner import ScoreSpec
    from vlmood.scores import SCORES

    specs = []
    for name in SCORES.list():
        if name == "neglabel":
            specs.append(ScoreSpec(name, {"vocabulary": small_vocabulary()}, display="neglabel"))
        else:
            specs.append(ScoreSpec(name, {}, display=name))
    return specs


# --------------------------------------------------------------------------- the run
def compute(workdir: str | os.PathLike, progress: bool = False, batch_size: int = 64) -> dict[str, Any]:
    """Run the pinned evaluation in ``workdir`` (images, cache, run folder) and return the pins.

    ``batch_size`` changes only float rounding (other GEMM shapes): a way to see float32 noise."""
    from vlmood.data.example import write_example
    from vlmood.data.templates import render_prompts
    from vlmood.eval.runner import EvalOptions, run_eval
    from vlmood.eval.sets import sets_from_benchmark
    from vlmood.features.extract import class_text_features
    from vlmood.models import load_model

    work = Path(workdir)
    bench = write_example(work / "example", **EXAMPLE)
    resolved = sets_from_benchmark(str(bench), None)
    sets = resolved.eval_sets
    templates = list(resolved.templates or ["a photo of a {}."])
    model = load_model(MODEL)
    cache = str(work / "cache")
    opts = EvalOptions(
        templates=templates,
        templates_origin=resolved.templates_origin or "simple",
        cache_dir=cache,
        batch_size=batch_size,
        num_workers=0,
        progress=progress,
        save_scores=True,
    )
    out = work / "run"
    results = run_eval(model, sets, score_specs(), out, opts)

    prompts = [p for ps in render_prompts(sets.classnames, templates) for p in ps]
    tokens = model.tokenize(prompts)
    text = class_text_features(model, sets.classnames, templates, cache, progress=False)

    set_names = ["id", *(f"ood/{o.name}" for o in sets.ood)]
    pins: dict[str, Any] = {
        "schema": SCHEMA,
        "regenerate": REGEN,
        "setup": {"model": MODEL, "example": EXAMPLE, "templates": templates, "classnames": sets.classnames},
        "diagnostics": {
            "versions": _versions(),
            "model_identity_key": model.identity.key,
            "weights_sha256": _weights_sha(model),
            "pixels_sha256": {
                "id": _pixels_sha(sets.id),
                **{f"ood/{o.name}": _pixels_sha(o.source) for o in sets.ood},
                **({"train": _pixels_sha(sets.train)} if sets.train is not None else {}),
            },
        },
        "text": {
            "prompts": prompts,
            "token_ids": [[int(t) for t in row if int(t) != 0] for row in tokens.tolist()],
            "logit_scale": float(np.float32(model.logit_scale)),
            "shape": list(text.shape),
            "features": f32(text),
        },
        "id_accuracy": results["id_accuracy"],
        "ood_groups": {name: rec.get("group", "ood") for name, rec in results["datasets"]["ood"].items()},
        "n": {
            "id": results["datasets"]["id"]["n_valid"],
            **{f"ood/{k}": v["n_valid"] for k, v in results["datasets"]["ood"].items()},
        },
        "scores": {},
    }
    for label, entry in results["scores"].items():
        raw = np.load(out / entry["raw_scores"])
        pins["scores"][label] = {
            "params": _plain(entry["params"]),
            "artifacts": {
                k: v
                for k, v in _plain(entry.get("artifacts", {})).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
            "metrics": {
                key: _plain(entry[key])
                for key in ("per_set", "mean", "near_mean", "far_mean")
                if key in entry
            },
            "raw": {s: [float(v) for v in np.asarray(raw[s], dtype=np.float64)] for s in set_names},
        }
        if label == "neglabel":
            # the mined negatives themselves (words and kinds, in order); the file's distances and
            # ID-feature hash carry float noise, so they are left to the scores' check
            mined = json.loads(
                Path(out / "artifacts" / Path(entry["artifacts"]["neglabel_labels_file"]).name).read_text()
            )
            pins["scores"][label]["mined_labels_sha256"] = hashlib.sha256(
                json.dumps([mined["labels"], mined["kinds"]]).encode()
            ).hexdigest()
    return pins


# --------------------------------------------------------------------------- comparing
def _summary_metrics(per_set: dict[str, dict[str, float]], groups: dict[str, str]) -> dict[str, Any]:
    """The per-set metrics with the runner's own means (overall, near, far)."""
    from vlmood.eval.runner import _summarise

    return {"per_set": per_set, **_summarise(per_set, groups)}


def _metrics_from_raw(raw: dict[str, list[float]], groups: dict[str, str]) -> dict[str, Any]:
    from vlmood.metrics import ood_metrics

    id_scores = np.asarray(raw["id"], dtype=np.float64)
    per_set = {
        name: ood_metrics(id_scores, np.asarray(raw[f"ood/{name}"], dtype=np.float64)) for name in groups
    }
    return _summary_metrics(per_set, groups)


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    """{"per_set/digits-5-9/auroc": v, "mean/fpr95": v, ...}"""
    out = {}
    for key, val in metrics.items():
        if key == "per_set":
            for name, ms in val.items():
                for m, v in ms.items():
                    out[f"per_set/{name}/{m}"] = v
        else:
            for m, v in val.items():
                out[f"{key}/{m}"] = v
    return out


def _same(a: float, b: float, tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= tol


def _score_tol(pinned_raw: dict[str, list[float]], values: np.ndarray) -> np.ndarray:
    """Per-value tolerance for one score (module comment at SCORE_RTOL)."""
    q05, q95 = np.quantile(np.asarray(pinned_raw["id"], dtype=np.float64), [0.05, 0.95])
    return SCORE_RTOL * np.abs(values) + SCORE_STOL * float(q95 - q05) + 1e-12


def _metric_bounds(pinned_raw: dict[str, list[float]], groups: dict[str, str]) -> tuple[dict, dict]:
    """Metrics of the pinned scores moved by their full tolerance towards worse and towards better
    separation (ID down + OOD up, and the reverse). Ranking metrics are monotone in every ID-OOD
    pairwise order, so any scores within tolerance give metrics between these two."""
    lo: dict[str, list[float]] = {}
    hi: dict[str, list[float]] = {}
    for sign, side in ((-1.0, lo), (1.0, hi)):
        moved = {}
        for s, v in pinned_raw.items():
            a = np.asarray(v, dtype=np.float64)
            direction = sign if s == "id" else -sign
            moved[s] = a + direction * _score_tol(pinned_raw, a)
        side.update(_flat(_metrics_from_raw(moved, groups)))
    low = {k: min(lo[k], hi[k]) for k in lo}
    high = {k: max(lo[k], hi[k]) for k in lo}
    return low, high


def compare(pinned: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Every way ``live`` differs from ``pinned`` beyond float32 noise, one line each (empty: same).

    Scores: raw values elementwise within rtol/atol. Metrics, three checks that together are
    robust to near-ties yet catch any change: (1) the metric code, exactly, on the pinned scores;
    (2) the run's metrics are exactly those of its own raw scores (wiring, means); (3) the run's
    metrics against the pinned ones: exactly when the scores are bit-identical, else between the
    metrics of the pinned scores moved by their tolerance either way (near-ties may flip, nothing
    more; :func:`_metric_bounds`).
    """
    problems: list[str] = []
    if pinned.get("schema") != SCHEMA:
        return [f"pinned file schema {pinned.get('schema')!r}, expected {SCHEMA!r}"]

    def exact(path: str, a: Any, b: Any) -> None:
        if a != b:
            problems.append(f"{path}: pinned {_short(a)} != now {_short(b)}")

    exact("setup", pinned["setup"], live["setup"])
    # text side
    pt, lt = pinned["text"], live["text"]
    exact("text/prompts", pt["prompts"], lt["prompts"])
    exact("text/token_ids", pt["token_ids"], lt["token_ids"])
    if abs(pt["logit_scale"] - lt["logit_scale"]) > 1e-6 * abs(pt["logit_scale"]):
        problems.append(f"text/logit_scale: pinned {pt['logit_scale']} now {lt['logit_scale']}")
    if pt["shape"] != lt["shape"]:
        problems.append(f"text/features shape: pinned {pt['shape']} now {lt['shape']}")
    else:
        d = np.abs(np.asarray(pt["features"]) - np.asarray(lt["features"]))
        if d.max() > TEXT_ATOL:
            i = int(d.argmax())
            problems.append(
                f"text/features: {int((d > TEXT_ATOL).sum())} of {d.size} values moved, max |diff| "
                f"{d.max():.3g} at class {i // pt['shape'][1]} dim {i % pt['shape'][1]}"
            )
    exact("ood_groups", pinned["ood_groups"], live["ood_groups"])
    exact("n (images per set)", pinned["n"], live["n"])
    if problems:  # a different setup or text side: everything below would only repeat it
        return problems + _diagnose(pinned, live)

    n = pinned["n"]
    groups = pinned["ood_groups"]
    bitwise = True
    missing = sorted(set(pinned["scores"]) - set(live["scores"]))
    added = sorted(set(live["scores"]) - set(pinned["scores"]))
    if missing:
        problems.append(f"scores no longer run: {missing}")
    if added:
        problems.append(f"scores not pinned (a new score? regenerate): {added}")
    for label in [s for s in pinned["scores"] if s in live["scores"]]:
        ps, ls = pinned["scores"][label], live["scores"][label]
        exact(f"{label}/params", ps["params"], ls["params"])
        exact(f"{label}/artifacts", ps["artifacts"], ls["artifacts"])
        if "mined_labels_sha256" in ps or "mined_labels_sha256" in ls:
            exact(
                f"{label}/mined labels (sha256)", ps.get("mined_labels_sha256"), ls.get("mined_labels_sha256")
            )
        score_bitwise = True
        for s, pv in ps["raw"].items():
            lv = ls["raw"].get(s)
            if lv is None or len(lv) != len(pv):
                problems.append(
                    f"{label}/{s}: pinned {len(pv)} values, now {None if lv is None else len(lv)}"
                )
                score_bitwise = False
                continue
            a, b = np.asarray(pv, dtype=np.float64), np.asarray(lv, dtype=np.float64)
            if not np.array_equal(a, b, equal_nan=True):
                score_bitwise = False
            tol = _score_tol(ps["raw"], a)
            d = np.abs(a - b)
            d[np.isnan(a) != np.isnan(b)] = np.inf
            d[np.isnan(a) & np.isnan(b)] = 0.0
            bad = d > tol
            if bad.any():
                i = int(np.argmax(np.where(bad, d / tol, -1)))
                problems.append(
                    f"{label}/{s}: {int(bad.sum())} of {a.size} raw scores moved beyond tolerance; worst at "
                    f"image {i}: pinned {a[i]:.9g} now {b[i]:.9g} (|diff| {d[i]:.3g}, {d[i] / tol[i]:.3g}x "
                    f"the tolerance {tol[i]:.3g})"
                )
        bitwise &= score_bitwise
        pm, lm = _flat(ps["metrics"]), _flat(ls["metrics"])
        if set(pm) != set(lm):
            problems.append(
                f"{label}/metrics: keys differ: only pinned {sorted(set(pm) - set(lm))}, "
                f"only now {sorted(set(lm) - set(pm))}"
            )
        # (1) the metric code on the pinned scores
        for k, v in _flat(_metrics_from_raw(ps["raw"], groups)).items():
            if k in pm and not _same(pm[k], v, EXACT):
                problems.append(
                    f"{label}/{k}: the metric code gives {v:.6g} on the pinned scores, pinned {pm[k]:.6g} "
                    f"(diff {v - pm[k]:+.3g})"
                )
        # (2) the run's metrics are those of its own scores
        for k, v in _flat(_metrics_from_raw(ls["raw"], groups)).items():
            if k in lm and not _same(lm[k], v, EXACT):
                problems.append(
                    f"{label}/{k}: results.json has {lm[k]:.6g} but its raw scores give {v:.6g} "
                    f"(diff {lm[k] - v:+.3g})"
                )
        # (3) the run's metrics against the pins
        low, high = _metric_bounds(ps["raw"], groups) if not score_bitwise else (pm, pm)
        for k in sorted(set(pm) & set(lm)):
            v = lm[k]
            if _same(pm[k], v, EXACT) or (low[k] - EXACT <= v <= high[k] + EXACT):
                continue
            allowed = "exactly" if score_bitwise else f"within [{low[k]:.6g}, {high[k]:.6g}]"
            problems.append(
                f"{label}/{k}: pinned {pm[k]:.6g} now {v:.6g} (diff {v - pm[k]:+.3g}; allowed {allowed})"
            )
    acc_tol = EXACT if bitwise else ACC_FLIPS / n["id"] + EXACT
    if not _same(pinned["id_accuracy"], live["id_accuracy"], acc_tol):
        problems.append(
            f"id_accuracy: pinned {pinned['id_accuracy']:.6g} now {live['id_accuracy']:.6g} "
            f"(tolerance {acc_tol:.3g})"
        )
    if problems:
        problems += _diagnose(pinned, live)
    return problems


def _diagnose(pinned: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """Hints (not failures by themselves) on why outputs moved."""
    pd, ld = pinned.get("diagnostics", {}), live.get("diagnostics", {})
    out = []
    for k in ("model_identity_key", "weights_sha256"):
        if pd.get(k) != ld.get(k):
            out.append(f"  hint: the model changed ({k}: {_short(pd.get(k))} -> {_short(ld.get(k))})")
    for s, h in pd.get("pixels_sha256", {}).items():
        if ld.get("pixels_sha256", {}).get(s) != h:
            out.append(f"  hint: the decoded pixels of set {s} changed (scikit-learn/Pillow/libjpeg?)")
    pv, lv = pd.get("versions", {}), ld.get("versions", {})
    moved = [f"{k} {pv.get(k)} -> {lv.get(k)}" for k in sorted(set(pv) | set(lv)) if pv.get(k) != lv.get(k)]
    if moved:
        out.append("  hint: package versions differ from the pins': " + ", ".join(moved))
    return out


def _short(x: Any, n: int = 120) -> str:
    s = json.dumps(x) if not isinstance(x, str) else x
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------- writing
def dumps(pins: dict[str, Any]) -> str:
    """Indented JSON with each list of numbers on one line (small, and a diff names the array)."""
    text = json.dumps(pins, indent=1, allow_nan=True)
    return (
        _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
        + "\n"
    )


_NUMBER_LIST = re.compile(r"\[\s*([-+0-9.eENaIfinity,\s]+?)\s*\]")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=PINNED, help="pinned file (default: %(default)s)")
    ap.add_argument(
        "--check", action="store_true", help="only compare with the pins; exit 1 if anything moved"
    )
    ap.add_argument(
        "--force", action="store_true", help="rewrite the pins even when nothing moved beyond float noise"
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep images/cache/run here (default: a temp dir)"
    )
    args = ap.parse_args(argv)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        live = compute(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="vlmood-pinned-") as tmp:
            live = compute(tmp)
    old = json.loads(args.out.read_text()) if args.out.exists() else None
    changes = ["(new file)"] if old is None else compare(old, live)
    if old is None:
        print(f"no pins at {args.out} yet")
    elif changes:
        print("changes against the current pins:")
        for line in changes:
            print("  " + line)
    else:
        print("no changes beyond float32 noise against the current pins")
        if old.get("diagnostics") != live.get("diagnostics"):
            print("\n".join(_diagnose(old, live)))
    if args.check:
        return 1 if changes else 0
    if not changes and not args.force:
        print(f"{args.out}: kept (pass --force to rewrite it with this machine's values)")
        return 0
    text = dumps(live)
    if old is not None and args.out.read_text() == text:
        print(f"{args.out}: unchanged")
        return 0
    write_atomic(args.out, text)
    n_raw = sum(len(v) for s in live["scores"].values() for v in s["raw"].values())
    print(
        f"wrote {args.out} ({len(text.encode()) / 1024:.0f} KiB): {len(live['scores'])} scores, {n_raw} raw "
        f"values, text features {live['text']['shape']}; review the changes above and commit the file"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
