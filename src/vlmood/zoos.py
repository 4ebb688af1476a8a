"""Many models, one benchmark: ``vlmood zoo`` / ``vlmood.zoo``, ID accuracy against OOD detection.

PLP (TMLR 2024) reports that a CLIP model's OOD detection rises with its ID accuracy across
models (R² >= 0.92). A zoo evaluates every model of a list zero-shot on one benchmark with the
same scores and fits, per score, the least-squares line AUROC = slope x ID accuracy + intercept
(R², Pearson r and Spearman rho with it).

Layout of ``out_dir`` (a killed zoo resumes: a model whose evaluation finished is not evaluated
again, see :func:`vlmood.eval.runner.run_eval`'s ``reuse``):

- ``models/<name>/``: that model's ``vlmood eval`` folder (``results.json``, raw scores, NegLabel's
  mined negatives in ``artifacts/``);
- ``zoo.json`` (schema ``vlmood.zoo/1``: the models with their specs and identities, per model the
  ID accuracy and per score AUROC / FPR95, per score the fits), ``zoo.md`` (the tables);
- ``scatter-<score>.png``: ID accuracy (x) against mean AUROC (y), one point per model, the line.

The y value is the AUROC averaged over the benchmark's OOD sets with equal weight per set (the
``mean`` of results.json); near / far group means are fitted too where the benchmark has groups.
Models are loaded one at a time and freed before the next. NegLabel mines its negatives with each
model's own text encoder (a study shares one model's negatives between methods; a zoo has no
shared model). A score that needs the ID train split (KNN, Mahalanobis) is left out, with a
warning and the reason in ``zoo.json``, when the benchmark has none.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.errors import UsageError
from vlmood.eval.runner import EvalOptions, EvalSets, ScoreSpec, _safe, build_scores, run_eval
from vlmood.models.base import ModelLoadError
from vlmood.utils import atomic_path, atomic_write_json, check_own_folder, sha256_json

log = logging.getLogger(__name__)

ZOO_SCHEMA = "vlmood.zoo/1"
ZOO_FILE = "zoo.json"
MODELS_DIR = "models"
#: ``vlmood zoo``'s scores when none are named (KNN is left out on a benchmark without a train split)
DEFAULT_ZOO_SCORES: tuple[str, ...] = ("mcm", "knn", "neglabel", "energy")
#: the y values fitted against ID accuracy: mean AUROC over all OOD sets, then the group means
TARGETS = ("auroc", "near_auroc", "far_auroc")
#: the per-model metrics kept from each score's results: (results.json key, prefix)
_SUMMARIES = (("mean", ""), ("near_mean", "near_"), ("far_mean", "far_"))
MIN_FIT_MODELS = 3

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
NAME_RULE = "1-100 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"


# ---------------------------------------------------------------------------------------------- members
@dataclass(frozen=True)
class ZooMember:
    """One model of a zoo: its ``name`` (the folder ``models/<name>``, the label in tables and
    plots), the ``spec`` :func:`vlmood.models.load_model` takes, where it was given (``origin``:
    ``FILE:LINE`` or ``--models``), and, from the Python API, an already loaded model."""

    name: str
    spec: str
    origin: str = ""
    model: Any = dataclasses.field(default=None, compare=False, repr=False)


def _split_entry(text: str) -> tuple[str | None, str]:
    """``name=spec`` -> (name, spec); a bare spec -> (None, spec). A ``=`` counts only when what
    precedes it cannot be part of a spec (no ``:``, ``/`` or leading ``~``/``.``)."""
    head, sep, rest = text.partition("=")
    if sep and head.strip() and not any(c in head for c in ":/\\") and not head.startswith(("~", ".")):
        return head.strip(), rest.strip()
    return None, text.strip()


def _name_candidates(spec: str) -> list[str]:
    """Names for a spec, most readable first: the registered name, the folder name (then with its
    parent folder), ``ARCH-TAG``, ``ARCH-<weights file stem>`` or ``ARCH-random<seed>``."""
    from vlmood.models import parse_model_spec

    try:
        p = parse_model_spec(spec)
    except ModelLoadError:
        return [_sanitize(spec)]
    if p.scheme == "named":
        return [_sanitize(p.name)]
    if p.scheme in ("local-dir", "hf"):
        path = Path(p.name.rstrip("/\\"))
        cands = [path.name or p.name]
        if path.parent.name:
            cands.append(f"{path.parent.name}-{path.name}")
        return [_sanitize(c) for c in cands]
    if p.weights_kind == "tag":
        return [_sanitize(f"{p.name}-{p.weights}")]
    if p.weights_kind == "file":
        w = Path(str(p.weights))
        cands = [f"{p.name}-{w.stem}"]
        if w.parent.name:
            cands.append(f"{p.name}-{w.parent.name}-{w.stem}")
        return [_sanitize(c) for c in cands]
    return [_sanitize(p.name if p.seed is None else f"{p.name}-random{p.seed}")]


def _sanitize(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-._+")
    return (s or "model")[:80]


def _unique_names(specs: Sequence[str]) -> list[str]:
    """A name per spec (:func:`_name_candidates`), unique: a repeated name takes its next
    candidate (the parent folder), then a ``-2``, ``-3``... suffix."""
    cands = [_name_candidates(s) for s in specs]
    names = [c[0] for c in cands]
    dup = {n for n in names if names.count(n) > 1}
    names = [c[1] if n in dup and len(c) > 1 else n for n, c in zip(names, cands)]
    out: list[str] = []
    for n in names:
        if names.count(n) == 1:
            out.append(n)
            continue
        k = 1
        while f"{n}-{k}" in names or f"{n}-{k}" in out:
            k += 1
        out.append(f"{n}-{k}")
    return out


def _resolve_relative(spec: str, base: Path) -> str:
    """``spec`` with a relative folder or weights path made absolute against ``base`` (the model
    list's folder): ``local-dir:`` always, ``hf:`` when the folder exists there or starts with
    ``./``/``../``, an open_clip weights file always."""
    from vlmood.models import parse_model_spec

    try:
        p = parse_model_spec(spec)
    except ModelLoadError:
        return spec  # reported by check_member, naming the model
    if p.scheme == "local-dir" and not _absolute(p.name):
        return f"local-dir:{os.path.normpath(base / p.name)}"
    if p.scheme == "hf" and not _absolute(p.name):
        if p.name.startswith(("./", "../")) or (base / p.name).is_dir():
            return f"hf:{os.path.normpath(base / p.name)}"
    if p.scheme == "open_clip" and p.weights_kind == "file" and not _absolute(str(p.weights)):
        return f"{spec.split(':', 1)[0]}:{p.name}@{os.path.normpath(base / str(p.weights))}"
    return spec


def _absolute(path: str) -> bool:
    return path.startswith("~") or os.path.isabs(path)


def read_model_list(path: str | os.PathLike) -> list[ZooMember]:
    """A model-list file: one ``name=spec`` or bare ``spec`` per line (a bare spec's name is derived
    from it, made unique), ``#`` comments and blank lines ignored; relative ``local-dir:`` paths
    (and weights files, local ``hf:`` folders) are resolved against the file's folder.
    UsageError for a missing or unreadable file and for a bad name (naming the line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise UsageError(
            f"--models {p}: the model-list file {what}; give a file with one name=spec per line, "
            "or a comma list of specs (--models vlmood-tiny,vlmood-small,local-dir:/path)"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--models {p}: cannot read the model-list file ({e})") from e
    entries: list[tuple[str | None, str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"\s#", raw.strip(), maxsplit=1)[0].strip()
        if not line or line.startswith("#"):
            continue
        name, spec = _split_entry(line)
        where = f"{p}:{lineno}"
        if not spec:
            raise UsageError(f"--models {where}: {line!r} names no model spec after '='")
        entries.append((name, _resolve_relative(spec, p.parent.absolute()), where))
    return _members(entries, f"--models {p}")


def parse_models(text: str) -> list[ZooMember]:
    """``--models``: a model-list file (:func:`read_model_list`) or a comma list of specs (each
    optionally ``name=spec``). A value that looks like a file path but names no file is refused."""
    text = text.strip()
    p = Path(text).expanduser()
    if p.exists():
        return read_model_list(p)
    looks_like_file = (
        "," not in text and ":" not in text and ("/" in text or p.suffix in (".txt", ".lst", ".list"))
    )
    if looks_like_file:
        return read_model_list(p)  # the missing-file error
    parts = [part for part in text.split(",") if part.strip()]
    entries = [(*_split_entry(part), f"--models item {i}") for i, part in enumerate(parts, 1)]
    return _members(entries, "--models")


def members_from(models: Any) -> list[ZooMember]:
    """The Python API's ``models``: a model-list file path, a comma list of specs, a list of specs
    (or ``name=spec`` texts, or loaded models), or a mapping name -> spec or loaded model."""
    from vlmood.models.base import VLM

    if isinstance(models, os.PathLike):
        return read_model_list(models)
    if isinstance(models, str):
        return parse_models(models)
    entries: list[tuple[str | None, Any, str]] = []
    if isinstance(models, Mapping):
        entries = [(str(k), v, f"models[{k!r}]") for k, v in models.items()]
    elif isinstance(models, Sequence):
        for i, item in enumerate(models):
            where = f"models[{i}]"
            entries.append((*_split_entry(item), where) if isinstance(item, str) else (None, item, where))
    else:
        raise UsageError(
            f"models: expected a model-list file, a list of specs or a dict name -> spec, got {type(models).__name__}"
        )
    for _, value, _ in entries:
        if not isinstance(value, (str, VLM)):
            raise UsageError(
                f"models: {value!r} is neither a model spec nor a loaded model (vlmood.load_model)"
            )
    return _members(entries, "models")


def _members(entries: Sequence[tuple[str | None, Any, str]], where: str) -> list[ZooMember]:
    """Named, checked members: names valid and unique, no model listed twice, at least two."""
    specs = [v if isinstance(v, str) else _model_spec(v) for _, v, _ in entries]
    derived = iter(_unique_names([s for (n, _, _), s in zip(entries, specs) if n is None]))
    out = []
    for (name, value, origin), spec in zip(entries, specs):
        model = None if isinstance(value, str) else value
        out.append(ZooMember(name if name is not None else next(derived), spec, origin, model))
    for m in out:
        if not _NAME.match(m.name):
            raise UsageError(f"{m.origin}: model name {m.name!r} is not a folder name: use {NAME_RULE}")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        lines = "; ".join(f"{n} at {', '.join(m.origin for m in out if m.name == n)}" for n in dup)
        raise UsageError(f"{where}: model names must be unique, repeated: {lines}")
    seen: dict[str, str] = {}
    for m in out:
        if m.model is None and m.spec in seen:
            raise UsageError(f"{where}: model spec {m.spec!r} is listed twice ({seen[m.spec]} and {m.name})")
        seen.setdefault(m.spec, m.name)
    if len(out) < 2:
        got = ", ".join(f"{m.name}={m.spec}" for m in out) or "none"
        raise UsageError(
            f"{where}: a zoo compares models and needs at least 2 ({MIN_FIT_MODELS}+ for a fit); got {got}"
        )
    return out


def _model_spec(model: Any) -> str:
    ident = getattr(model, "identity", None)
    return str(
        getattr(ident, "spec", "") or f"{getattr(ident, 'backend', 'model')}:{getattr(ident, 'arch', '')}"
    )


def check_member(m: ZooMember) -> None:
    """Refuse (UsageError naming the model) a spec that cannot load, without loading it: a
    malformed spec, an unknown registered name or open_clip architecture, a missing folder or
    weights file. A hub name (``hf:org/name``, an open_clip tag) is left to the loader."""
    if m.model is not None:
        return
    from vlmood.models import MODELS, list_models, parse_model_spec

    def bad(why: str) -> UsageError:
        return UsageError(f"model {m.name!r} ({m.spec}, {m.origin}): {why}")

    try:
        p = parse_model_spec(m.spec)
    except ModelLoadError as e:
        raise bad(str(e)) from e
    if p.scheme == "named":
        if p.name not in MODELS:
            raise bad(
                f"no registered model {p.name!r}; registered: {', '.join(list_models())}; or a spec "
                "such as local-dir:/path, hf:/path, open_clip:ARCH@/path/weights.safetensors"
            )
    elif p.scheme == "local-dir":
        from vlmood.models.minilm_clip import WEIGHTS_NAME, is_minilm_dir
        from vlmood.models.specs import LOCAL_DIR_WEIGHTS

        d = Path(p.name).expanduser()
        if not d.is_dir():
            raise bad(f"folder {d} does not exist")
        if not (d / "open_clip_config.json").is_file():
            raise bad(f"{d} holds no open_clip_config.json (an open_clip or `vlmood pretrain` model folder)")
        weights = (WEIGHTS_NAME,) if is_minilm_dir(d) else LOCAL_DIR_WEIGHTS
        if not any((d / w).is_file() for w in weights):
            raise bad(f"{d} holds no weights ({' or '.join(weights)}): is its training finished?")
    elif p.scheme == "hf":
        d = Path(p.name).expanduser()
        if _absolute(p.name) or p.name.startswith("."):
            if not d.is_dir():
                raise bad(f"folder {d} does not exist")
            if not (d / "config.json").is_file():
                raise bad(f"{d} holds no config.json (a transformers CLIPModel folder)")
    elif p.scheme == "open_clip":
        if p.weights_kind == "file" and not Path(str(p.weights)).expanduser().is_file():
            raise bad(f"weights file {Path(str(p.weights)).expanduser()} does not exist")
        from vlmood.models import list_open_clip_archs

        if p.name not in list_open_clip_archs():
            raise bad(f"open_clip has no architecture {p.name!r} (open_clip.list_models() lists them)")


# ---------------------------------------------------------------------------------------------- fits
def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    ranks = np.empty(v.size, dtype=np.float64)
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return None if den == 0.0 else float(np.clip((dx @ dy) / den, -1.0, 1.0))


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """The least-squares line ``y = slope * x + intercept`` and how well it fits, in float64.

    Returns ``n`` (finite pairs used), ``slope``, ``intercept``, ``r2`` (1 - SS_res / SS_tot of
    this fit), ``pearson`` (r), ``spearman`` (rho: Pearson on average ranks). With fewer than 3
    pairs, or when x (or y) does not vary, every value but ``n`` is None and ``n/a`` says why.
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length ({xa.size} vs {ya.size})")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    out: dict[str, Any] = {
        "n": int(xa.size),
        "slope": None,
        "intercept": None,
        "r2": None,
        "pearson": None,
        "spearman": None,
    }
    if xa.size < MIN_FIT_MODELS:
        return {**out, "n/a": f"a fit needs at least {MIN_FIT_MODELS} models with values; got {xa.size}"}
    # equal values checked exactly (a mean of equal floats can differ from them in the last bit)
    if np.ptp(xa) == 0.0:
        return {**out, "n/a": "every model has the same ID accuracy: no line through the points"}
    if np.ptp(ya) == 0.0:
        return {**out, "n/a": "every model has the same AUROC: R² is undefined"}
    dx = xa - xa.mean()
    sxx = float(dx @ dx)
    dy = ya - ya.mean()
    ss_tot = float(dy @ dy)
    slope = float(dx @ dy) / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    resid = ya - (slope * xa + intercept)
    return {
        **out,
        "slope": slope,
        "intercept": intercept,
        "r2": 1.0 - float(resid @ resid) / ss_tot,
        "pearson": _pearson(xa, ya),
        "spearman": _pearson(_ranks(xa), _ranks(ya)),
    }


# ---------------------------------------------------------------------------------------------- the run
def _score_cell(entry: dict[str, Any]) -> dict[str, float]:
    """A score's AUROC and FPR95 means from results.json: over all OOD sets (``auroc``), near and
    far groups (``near_auroc``...) where the benchmark has them."""
    cell: dict[str, float] = {}
    for key, prefix in _SUMMARIES:
        block = entry.get(key)
        if isinstance(block, dict):
            for metric in ("auroc", "fpr95"):
                if block.get(metric) is not None:
                    cell[prefix + metric] = float(block[metric])
    return cell


def _plan_scores(
    specs: Sequence[ScoreSpec], sets: EvalSets
) -> tuple[list[ScoreSpec], dict[str, str], list[str]]:
    """(the scores to run, checked; {label: why skipped}; every label in order)."""
    keep, skipped, labels = [], {}, []
    for spec, sc in build_scores(specs):  # unknown scores and parameters fail here
        labels.append(spec.label)
        if sc.needs_train and sets.train is None:
            skipped[spec.label] = (
                "needs the ID train split (its features are the score's reference), and the benchmark has none"
            )
        else:
            keep.append(spec)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"the same score was requested twice: {dup}")
    return keep, skipped, labels


def check_zoo(members: Sequence[ZooMember], specs: Sequence[ScoreSpec]) -> None:
    """Everything that can be refused before the first model loads: the member list (names, specs
    that cannot resolve), the scores. UsageError naming the model or score."""
    if len(members) < 2:
        raise UsageError(f"a zoo needs at least 2 models ({MIN_FIT_MODELS}+ for a fit); got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UsageError(
            f"model names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}"
        )
    for m in members:
        if not _NAME.match(m.name):
            raise UsageError(f"model name {m.name!r} is not a folder name: use {NAME_RULE}")
        check_member(m)
    if not specs:
        raise UsageError("no scores given")
    build_scores(specs)


def run_zoo(
    members: Sequence[ZooMember],
    sets: EvalSets,
    scores: Sequence[ScoreSpec],
    out_dir: str | os.PathLike,
    opts: EvalOptions,
    load: Callable[[str], Any],
) -> dict[str, Any]:
    """Evaluate every member zero-shot on ``sets`` into ``out_dir/models/<name>/`` (reused when
    already computed from the same inputs), fit accuracy against AUROC per score, write
    ``zoo.json``, ``zoo.md`` and ``scatter-<score>.png``; returns the ``zoo.json`` dict.

    ``load(spec)`` returns a model (device and precision are the caller's); one model is loaded
    at a time and dropped before the next. A member given as a loaded model is used as it is.
    """
    check_zoo(members, scores)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(
            "vlmood zoo runs in one process (it evaluates many models into one folder); run it without "
            "torchrun, or run `vlmood eval` under torchrun per model"
        )
    specs, skipped, labels = _plan_scores(scores, sets)
    for label, why in skipped.items():
        log.warning("zoo: score %s left out: it %s", label, why)
    if not specs:
        raise UsageError(
            f"none of the scores can run on this benchmark: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}"
        )
    out = Path(out_dir).absolute()
    check_own_folder(out, (out / ZOO_FILE).is_file() or (out / MODELS_DIR).is_dir(), "a zoo")
    previous_figures = _previous_figures(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    for i, m in enumerate(members):
        log.info("zoo: model %d/%d %s (%s)", i + 1, len(members), m.name, m.spec)
        t = time.perf_counter()
        run_dir = out / MODELS_DIR / m.name
        model = m.model if m.model is not None else _load(m, load)
        try:
            res = run_eval(model, sets, specs, run_dir, dataclasses.replace(opts, label=m.name), reuse=True)
            identity = model.identity.to_dict()
        finally:
            del model
            _free()
        records.append(
            {
                "name": m.name,
                "spec": m.spec,
                "origin": m.origin,
                "identity": identity,
                "results": str((run_dir / "results.json").relative_to(out)),
                "results_key": (res.get("identity") or {}).get("key"),
                "id_accuracy": res.get("id_accuracy"),
                "scores": {s.label: _score_cell(res["scores"][s.label]) for s in specs},
                "wall_s": time.perf_counter() - t,
            }
        )
    ran = [s.label for s in specs]
    zoo: dict[str, Any] = {
        "schema": ZOO_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": opts.command,
        "benchmark": sets.benchmark,
        "ood_sets": {o.name: o.group for o in sets.ood},
        "plan": {
            "models": [{"name": m.name, "spec": m.spec} for m in members],
            "scores": [s.record() for s in scores],
            "templates": opts.templates_origin,
        },
        "models": records,
        "scores": ran,
        "skipped_scores": skipped,
        "y": "AUROC averaged over the OOD sets (equal weight per set); near_/far_: over each group's sets",
        "fits": {label: _fits(records, label) for label in ran},
    }
    zoo["plan_sha256"] = sha256_json(zoo["plan"])
    zoo["figures"] = _write_figures(zoo, out, previous_figures)
    zoo["wall_s"] = time.perf_counter() - t0
    atomic_write_json(out / ZOO_FILE, zoo)
    with atomic_path(out / "zoo.md") as tmp:
        Path(tmp).write_text(format_zoo_md(zoo), encoding="utf-8")
    return zoo


def _load(m: ZooMember, load: Callable[[str], Any]):
    try:
        return load(m.spec)
    except ModelLoadError as e:
        raise ModelLoadError(f"model {m.name!r} ({m.spec}): {e}") from e


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _fits(records: list[dict[str, Any]], label: str) -> dict[str, dict[str, Any]]:
    """Per target (``auroc``, ``near_auroc``, ``far_auroc`` where present): the fit of that AUROC
    against ID accuracy over the models."""
    fits = {}
    for target in TARGETS:
        ys = [r["scores"][label].get(target) for r in records]
        if all(v is None for v in ys):
            continue
        xs = [_num(r.get("id_accuracy")) for r in records]
        fits[target] = linear_fit(xs, [_num(v) for v in ys])
    return fits


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def points(zoo: dict[str, Any], label: str, target: str = "auroc") -> list[tuple[str, float, float]]:
    """(model, ID accuracy, y) of every model with both values, for one score and target."""
    out = []
    for r in zoo.get("models", []):
        x, y = r.get("id_accuracy"), (r.get("scores", {}).get(label) or {}).get(target)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            out.append((str(r["name"]), float(x), float(y)))
    return out


def _previous_figures(out: Path) -> set[str]:
    """The scatter files an earlier zoo.json in ``out`` lists (only those are removed when stale)."""
    import json

    try:
        prev = json.loads((out / ZOO_FILE).read_text(encoding="utf-8"))
        return {str(v) for v in (prev.get("figures") or {}).values()}
    except (OSError, ValueError, AttributeError):
        return set()


def _write_figures(zoo: dict[str, Any], out: Path, previous: set[str] = frozenset()) -> dict[str, str]:
    """``scatter-<score>.png`` per score in ``out`` (earlier ones of scores no longer run removed);
    {label: file name}. Without matplotlib: a warning and no figures."""
    try:
        from vlmood.report.zoo import plot_zoo_scatter
    except ImportError as e:  # pragma: no cover - matplotlib is the report extra
        log.warning("zoo: no scatter plots (%s); pip install 'vlmood[report]'", e)
        return {}
    figures = {}
    for label in zoo["scores"]:
        name = f"scatter-{_safe(label)}.png"
        try:
            plot_zoo_scatter(
                points(zoo, label), zoo["fits"][label].get("auroc"), label, out / name, zoo.get("benchmark")
            )
        except ImportError as e:  # pragma: no cover
            log.warning("zoo: no scatter plots (%s); pip install 'vlmood[report]'", e)
            return {}
        figures[label] = name
    for old in previous - set(figures.values()):  # only files an earlier zoo wrote
        if "/" not in old and old.startswith("scatter-"):
            (out / old).unlink(missing_ok=True)
    return figures


# ---------------------------------------------------------------------------------------------- tables
def _pct(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.2f}"


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def fit_rows(zoo: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (score, target) fit: score, y (``auroc``, ``near_auroc``, ``far_auroc``), n,
    slope, intercept, r2, pearson, spearman, and ``note`` (why there is no fit)."""
    rows = []
    for label, per in zoo.get("fits", {}).items():
        for target, fit in per.items():
            rows.append(
                {
                    "score": label,
                    "y": target,
                    **{k: v for k, v in fit.items() if k != "n/a"},
                    "note": fit.get("n/a"),
                }
            )
    return rows


def _target_text(target: str) -> str:
    return {"auroc": "all OOD sets", "near_auroc": "near OOD", "far_auroc": "far OOD"}.get(target, target)


def format_zoo(zoo: dict[str, Any]) -> str:
    """A plain-text table (ID accuracy and mean AUROC per score, in %) and the fits."""
    labels = list(zoo.get("scores", []))
    models = zoo.get("models", [])
    n_sets = len(zoo.get("ood_sets", {}))
    w = max([len("model"), *(len(r["name"]) for r in models)])
    cols = [max(len(lbl), 7) for lbl in labels]
    lines = [
        f"zoo: {zoo.get('benchmark') or 'custom sets'}, {len(models)} models; "
        f"AUROC in % = mean over the {n_sets} OOD set{'s' if n_sets != 1 else ''}",
        f"{'model':<{w}}  {'ID acc':>7}  " + "  ".join(f"{lbl:>{c}}" for lbl, c in zip(labels, cols)),
    ]
    for r in models:
        vals = [_pct(r["scores"].get(lbl, {}).get("auroc")) for lbl in labels]
        lines.append(
            f"{r['name']:<{w}}  {_pct(r.get('id_accuracy')):>7}  "
            + "  ".join(f"{v:>{c}}" for v, c in zip(vals, cols))
        )
    lines += ["", "least squares: AUROC = slope x ID accuracy + intercept (fractions)"]
    sw = max([len("score"), *(len(lbl) for lbl in labels)])
    lines.append(
        f"{'score':<{sw}}  {'AUROC over':<12}  {'n':>2}  {'slope':>7}  {'intercept':>9}  {'R²':>6}  {'Pearson r':>9}  {'Spearman':>8}"
    )
    for row in fit_rows(zoo):
        if row["note"]:
            lines.append(
                f"{row['score']:<{sw}}  {_target_text(row['y']):<12}  {row['n']:>2}  n/a: {row['note']}"
            )
            continue
        lines.append(
            f"{row['score']:<{sw}}  {_target_text(row['y']):<12}  {row['n']:>2}  {_f(row['slope']):>7}  "
            f"{_f(row['intercept']):>9}  {_f(row['r2']):>6}  {_f(row['pearson']):>9}  {_f(row['spearman']):>8}"
        )
    for label, why in zoo.get("skipped_scores", {}).items():
        lines.append(f"note: {label} left out: it {why}")
    return "\n".join(lines)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_zoo_md(zoo: dict[str, Any], figures: bool = True) -> str:
    """Markdown: the models (spec, ID accuracy, per score mean AUROC / FPR95 in %), the fits, the
    scatter plots (``figures``: links to the files beside zoo.json)."""
    labels = list(zoo.get("scores", []))
    models = zoo.get("models", [])
    lines = [
        f"# Zoo: {_md(zoo.get('benchmark') or 'custom sets')}",
        "",
        f"{len(models)} models evaluated zero-shot with the same scores; values in %; AUROC and FPR95 "
        f"are means over the {len(zoo.get('ood_sets', {}))} OOD sets (equal weight per set).",
        "",
        "| model | ID acc | " + " | ".join(f"{_md(lbl)} AUROC↑ | {_md(lbl)} FPR95↓" for lbl in labels) + " |",
        "|---|---:|" + "---:|---:|" * len(labels),
    ]
    for r in models:
        cells = []
        for lbl in labels:
            c = r["scores"].get(lbl, {})
            cells += [_pct(c.get("auroc")), _pct(c.get("fpr95"))]
        lines.append(f"| {_md(r['name'])} | {_pct(r.get('id_accuracy'))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Least-squares fit of AUROC (fraction) against ID accuracy (fraction): AUROC = slope x accuracy + "
        "intercept; R² = 1 - SS_res / SS_tot of that fit; Pearson r and Spearman rho of the same points.",
        "",
        "| score | AUROC over | n | slope | intercept | R² | Pearson r | Spearman rho |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in fit_rows(zoo):
        vals = [_f(row[k]) for k in ("slope", "intercept", "r2", "pearson", "spearman")]
        lines.append(
            f"| {_md(row['score'])} | {_target_text(row['y'])} | {row['n']} | " + " | ".join(vals) + " |"
        )
    notes = [
        f"- {_md(r['score'])} ({_target_text(r['y'])}): {_md(r['note'])}" for r in fit_rows(zoo) if r["note"]
    ]
    notes += [f"- {_md(lbl)} left out: it {_md(why)}" for lbl, why in zoo.get("skipped_scores", {}).items()]
    if notes:
        lines += ["", "n/a:", *notes]
    lines += ["", "Models:", "", "| model | spec | weights |", "|---|---|---|"]
    for r in models:
        weights = str((r.get("identity") or {}).get("weights") or "")
        lines.append(f"| {_md(r['name'])} | `{_md(r['spec'])}` | {_md(weights[:23])} |")
    if figures and zoo.get("figures"):
        lines.append("")
        for label, name in zoo["figures"].items():
            lines += [f"![ID accuracy vs AUROC: {_md(label)}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"
