"""Zero-shot / post-hoc OOD evaluation: images -> cached features -> scores -> metrics -> results.

The path data takes:

1. ``load_model(spec)``: a :class:`~vlmood.models.base.VLM` and its identity.
2. ``EvalSets``: the ID set with class names, OOD sets (grouped near/far), optional ID train
   set (KNN, Mahalanobis), domain-shift and held-out-class sets.
3. ``extract_features``: every set encoded once per (model, data, feature kind), memory-mapped.
4. ``class_text_features``: class names x templates -> [K, D] zero-shot classifier (cached).
5. Each score is fitted (``ScoreContext``) and scores every set, chunked; metrics per OOD set,
   mean over sets and over near/far groups.
6. ``results.json`` + per-score raw scores (``scores/<label>.npz``) in the output directory.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmood import distributed as D
from vlmood import metrics as M
from vlmood.data.base import ImageSource
from vlmood.errors import RunError, UsageError
from vlmood.eval import heads as H
from vlmood.eval.provenance import environment_info
from vlmood.features.extract import (
    FeatureSet,
    cache_info,
    class_text_features,
    extract_features,
)
from vlmood.features.options import ExtractOptions
from vlmood.features.text import TextEncoder
from vlmood.models.base import VLM
from vlmood.scores import ScoreContext
from vlmood.scores._math import argmax_classes
from vlmood.utils import (
    atomic_path,
    atomic_write_json,
    check_folder_path,
    is_disk_full,
    replace_dir,
    sha256_json,
    sha256_text,
    sweep_stale_temps,
    temp_prefix,
)

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "vlmood.results/1"
TABLE_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")


@dataclass
class OODSet:
    name: str
    source: ImageSource
    group: str = "ood"  # near | far | ood


@dataclass
class LabelledSet:
    name: str
    source: ImageSource
    classnames: list[str]
    note: str | None = None  # e.g. "a pretraining style", carried into results.json


@dataclass
class EvalSets:
    """Everything one evaluation reads. ``classnames`` index the ID labels."""

    id: ImageSource
    classnames: list[str]
    ood: list[OODSet]
    train: ImageSource | None = None
    domain_shift: list[LabelledSet] = field(default_factory=list)
    held_out: list[LabelledSet] = field(default_factory=list)
    classnames_origin: str = ""
    benchmark: str | None = None
    # how the ID class names met the data (by-name, mapping, wnid, folder-index, sorted-order,
    # folder-names, label-index...; vlmood.data.classnames.assign_folders) and input warnings
    # (train = ID test files, an OOD set overlapping the ID set, duplicate class names)
    classnames_mapping: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class ScoreSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    display: str | None = None  # a label to show instead of name(params)
    # a Score object to run instead of creating ``name`` from the registry (the Python API accepts
    # instances of unregistered Score subclasses); each run fits its own copy
    instance: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, score: Any, display: str | None = None) -> ScoreSpec:
        """The spec of a Score object: named by its registered name when its own class is
        registered, else by its class name; its parameters are ``score.params()``."""
        name = type(score).__dict__.get("registered_name") or type(score).__name__
        return cls(str(name), dict(score.params()), display, instance=score)

    @property
    def label(self) -> str:
        if self.display:
            return self.display
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"

    def record(self) -> dict[str, Any]:
        """JSON-ready description (name, params, display; a Score object's class as ``module.Name``)."""
        out: dict[str, Any] = {"name": self.name, "params": dict(self.params), "display": self.display}
        if self.instance is not None:
            out["class"] = score_class_name(self.instance)
        return out


def score_class_name(score: Any) -> str:
    return f"{type(score).__module__}.{type(score).__qualname__}"


def parse_score_text(text: str, flag: str = "--score") -> list[ScoreSpec]:
    """``mcm`` | ``mcm,energy`` | ``neglabel:ngroup=10,temperature=0.01`` -> ScoreSpecs.

    A comma-separated list of names, or one name followed by ``:`` and ``key=value`` pairs
    (values typed by :func:`vlmood.params.parse_kv`: ``1``, ``0.5``, ``true``, ``null``).
    UsageError (naming ``flag``) for a malformed text.
    """
    from vlmood.params import parse_kv

    if ":" in text:
        name, _, rest = text.partition(":")
        params = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in part:
                raise UsageError(
                    f"{flag} {text!r}: parameter {part!r} is not key=value (e.g. {name.strip()}:{part}=1.0)"
                )
            k, v = parse_kv(part, f"{flag} {text!r}: parameter")
            params[k] = v
        if not name.strip():
            raise UsageError(f"{flag} {text!r}: no score name before ':'")
        return [ScoreSpec(name.strip(), params)]
    return [ScoreSpec(n.strip()) for n in text.split(",") if n.strip()]


#: EvalOptions' former extraction fields -> ExtractOptions fields (still accepted and readable)
_EXTRACT_FIELDS = {
    "cache_dir": "cache_root",
    "batch_size": "batch_size",
    "num_workers": "num_workers",
    "skip_corrupt": "skip_corrupt",
    "fingerprint": "fingerprint",
    "progress": "progress",
}


@dataclass(init=False)
class EvalOptions:
    """How :func:`run_eval` runs: templates, extraction (``extract``, one
    :class:`~vlmood.features.options.ExtractOptions`), what it writes and records.

    ``cache_dir``, ``batch_size``, ``num_workers``, ``skip_corrupt``, ``fingerprint`` and
    ``progress`` are accepted as keywords and readable as attributes: they are ``extract``'s
    fields (``cache_dir`` is its ``cache_root``), given over ``extract``'s values."""

    templates: list[str]
    templates_origin: str
    extract: ExtractOptions
    save_scores: bool
    command: list[str] | None
    # a loaded adapter (vlmood.methods.load_adapter) replaces the zero-shot classifier through its
    # class head (vlmood.eval.heads): prompt learning and UEO give class text features, CoCoOp
    # per-image cosines, probes logits on their cached feature kind
    adapter: Any
    adapter_info: dict[str, Any] | None
    # when given, filled in place: score label -> that score's raw arrays (the keys of
    # scores/<label>.npz); the Python API keeps them in memory this way
    raw_scores: dict[str, dict[str, np.ndarray]] | None
    # a name for the run (``--label``), recorded in results.json; ``vlmood report`` shows it
    label: str | None

    def __init__(
        self,
        templates: list[str],
        templates_origin: str = "simple",
        extract: ExtractOptions | None = None,
        save_scores: bool = True,
        command: list[str] | None = None,
        adapter: Any = None,
        adapter_info: dict[str, Any] | None = None,
        raw_scores: dict[str, dict[str, np.ndarray]] | None = None,
        label: str | None = None,
        **extract_fields: Any,
    ) -> None:
        unknown = sorted(set(extract_fields) - set(_EXTRACT_FIELDS))
        if unknown:
            raise TypeError(f"EvalOptions got unexpected keyword argument(s) {unknown}")
        self.templates = templates
        self.templates_origin = templates_origin
        self.extract = ExtractOptions.of(
            extract, **{_EXTRACT_FIELDS[k]: v for k, v in extract_fields.items()}
        )
        self.save_scores = save_scores
        self.command = command
        self.adapter = adapter
        self.adapter_info = adapter_info
        self.raw_scores = raw_scores
        self.label = label

    def __getattr__(self, name: str) -> Any:
        # the former extraction fields, read from ``extract`` (cache_dir: its cache_root)
        if name in _EXTRACT_FIELDS:
            return getattr(self.extract, _EXTRACT_FIELDS[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _summarise(per_set: dict[str, dict[str, float]], groups: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if not per_set:
        return out
    names = list(per_set)
    metric_names = list(per_set[names[0]])
    out["mean"] = {m: float(np.mean([per_set[n][m] for n in names])) for m in metric_names}
    for g in ("near", "far"):
        members = [n for n in names if groups.get(n) == g]
        if members:
            out[f"{g}_mean"] = {m: float(np.mean([per_set[n][m] for n in members])) for m in metric_names}
    return out


def build_scores(specs: Sequence[ScoreSpec]) -> list[tuple[ScoreSpec, Any]]:
    """Create the scores; unknown parameters and values of the wrong type are refused
    (UsageError), and the returned specs carry the checked values (``k=3.0`` -> ``3``)."""
    from vlmood.errors import UsageError
    from vlmood.params import check_params
    from vlmood.scores import SCORES

    out = []
    for spec in specs:
        if spec.instance is not None:  # a Score object: run a copy (the caller's stays unfitted)
            out.append((spec, copy.deepcopy(spec.instance)))
            continue
        factory = SCORES.get(spec.name)
        params = check_params(factory, spec.params, f"score {spec.name!r}")
        # labels keep the value as written when it is the same number (2 for 2.0); a value the
        # check changed in kind (ngroup=1e2 -> 100) is recorded as it runs
        shown = {
            k: spec.params[k] if type(spec.params[k]) is type(v) or spec.params[k] == v else v
            for k, v in params.items()
        }
        spec = ScoreSpec(spec.name, shown, spec.display)
        try:
            out.append((spec, factory(**params)))
        except (TypeError, ValueError) as e:
            raise UsageError(f"score {spec.label}: {e}") from e
    return out


def zero_shot_accuracy(image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of argmax cosine (images with label < 0 are ignored)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    return float(np.mean(argmax_classes(image, text)[keep] == labels[keep]))


def matrix_accuracy(matrix: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the argmax of class similarities / logits (labels < 0 ignored)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.argmax(matrix, axis=1)[keep] == labels[keep]))


def _modality_gap(id_fs: FeatureSet, head: H.ClassHead) -> dict[str, Any]:
    """The ID set's modality gap against the head's class text features
    (:func:`vlmood.metrics.modality_gap`); ``{"n/a": why}`` for heads without text features."""
    if head.text_features is None:
        return {"n/a": f"a {head.kind} head has no class text features"}
    labels = id_fs.valid_labels()
    if not (labels >= 0).any():
        return {"n/a": "the ID set has no labels"}
    return M.modality_gap(id_fs.get("image"), head.text_features, labels)


def _dataset_record(fs: FeatureSet, group: str | None = None) -> dict[str, Any]:
    rec = {
        "name": fs.source.name,
        "kind": fs.source.kind,
        "origin": fs.source.origin,
        "n": len(fs.source),
        "n_valid": int(fs.valid.sum()),
        "skipped": fs.skipped,
        "cache": cache_info(fs),
    }
    meta = fs.source.meta
    if meta.get("walk"):  # what a folder walk read and skipped (revisited folders, non-regular files)
        rec["walk"] = meta["walk"]
    if meta.get("classnames_mapping"):
        rec["classnames_mapping"] = meta["classnames_mapping"]
    if meta.get("folder_labels") and fs.source.classnames:  # which folder got which class name
        names = fs.source.classnames
        rec["class_folders"] = {f: names[i] for f, i in meta["folder_labels"].items() if 0 <= i < len(names)}
    if group:
        rec["group"] = group
    return rec


#: what a run writes into its output folder (and `vlmood report --out OUT/report`, as the demo
#: does): an existing --out holding only these is an earlier run, replaced as a whole
RUN_OUTPUTS = ("results.json", "scores", "artifacts", "report")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """The folder a run will replace as a whole (a symlink is followed). Refused before any work:
    an existing file, and a folder holding anything but an earlier run's outputs (replacing it
    would delete those files)."""
    out = check_folder_path(out_dir).absolute()
    if out.is_symlink():
        out = out.resolve()
    if out.is_dir():
        try:
            names = sorted(p.name for p in out.iterdir())
        except OSError as e:
            raise UsageError(f"--out {out} cannot be read ({e.strerror}); choose another folder") from e
        # (temporaries a killed writer left inside an earlier run's folder go with it)
        other = [n for n in names if n not in RUN_OUTPUTS and not (n.startswith(".") and n.endswith(".tmp"))]
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            raise UsageError(
                f"--out {out} holds files that are not a vlmood run's outputs ({shown}); a run replaces "
                f"its --out folder as a whole when it completes: choose a new or empty folder"
            )
    return out


def eval_identity(model: VLM, sets: EvalSets, opts: EvalOptions) -> dict[str, Any]:
    """What decides an evaluation's numbers, and its key (``sha256_json`` of the rest): the model
    (its identity without the spec text), the adapter key, class names, templates, every set's
    fingerprint and the corrupt-image policy. Score parameters are per score (their labels).
    Written into results.json as ``identity``; ``run_eval(..., reuse=True)`` compares it."""
    fp = opts.fingerprint
    datasets = {"id": sets.id.fingerprint(fp)}
    datasets.update({f"ood/{o.name}": o.source.fingerprint(fp) for o in sets.ood})
    for kind, group in (("domain_shift", sets.domain_shift), ("held_out", sets.held_out)):
        datasets.update({f"{kind}/{ls.name}": ls.source.fingerprint(fp) for ls in group})
    if sets.train is not None:
        datasets["train"] = sets.train.fingerprint(fp)
    model_id = dict(model.identity.to_dict())
    model_id.pop("spec", None)  # how the model was named, not what it is
    ident = {
        "model": model_id,
        "adapter": getattr(opts.adapter, "key", None),
        "classnames": sha256_text("\n".join(sets.classnames)),
        "templates": sha256_text("\n".join(opts.templates)),
        "datasets": datasets,
        "skip_corrupt": bool(opts.skip_corrupt),
    }
    return {"key": sha256_json(ident), **ident}


def _reusable(final: Path, ident: dict[str, Any], labels: list[str]) -> dict[str, Any] | None:
    """The results in ``final`` when they were computed from the same inputs (identity key) and
    hold every requested score; None otherwise (the caller evaluates)."""
    import json

    path = final / "results.json"
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    have = (res.get("identity") or {}).get("key")
    if have != ident["key"]:
        if have is not None:  # not silent: the folder's earlier results are replaced
            log.warning("%s was computed from other inputs (identity key); evaluating again", path)
        return None
    if not set(labels) <= set(res.get("scores", {})):
        return None
    return res


def run_eval(
    model: VLM,
    sets: EvalSets,
    scores: Sequence[ScoreSpec],
    out_dir: str | os.PathLike | None,
    opts: EvalOptions,
    reuse: bool = False,
) -> dict[str, Any]:
    """Evaluate every score on ``sets``; write results.json (+ raw scores) and return the results dict.

    Outputs are written into a temporary sibling folder (``.OUT.PID@HOST.XXXX.tmp``) that replaces
    ``out_dir`` only when the run is complete: a run that fails or is killed half way leaves the
    previous run's folder as it was (and its temporary folder is swept by a later run).

    ``out_dir=None`` writes nothing that stays: score artifacts (e.g. NegLabel's mined labels) go to
    a temporary folder deleted when the run ends, raw scores are not saved (``opts.raw_scores``
    keeps them in memory), and paths into that folder are None in the returned dict.

    results.json carries ``identity`` (:func:`eval_identity`); with ``reuse=True`` an ``out_dir``
    whose results have the same identity key and every requested score is returned as it is,
    without any work (what ``vlmood study`` relies on to resume).
    """
    ident = eval_identity(model, sets, opts)
    if out_dir is None:
        res = _run_eval_in_memory(model, sets, scores, opts)
        res["identity"] = ident
        return res
    final = check_out_dir(out_dir)
    if reuse:
        labels = [s.label for s in scores]
        prev = _reusable(final, ident, labels) if D.is_main() else None
        if D.broadcast_object(prev is not None if D.is_main() else None):
            log.info("%s: reusing results computed from the same inputs", final)
            return prev if prev is not None else {}
    if not D.is_main():
        return _run_eval(model, sets, scores, final, opts)  # only rank 0 writes
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(final.parent, name=final.name)  # temp folders of killed runs into this --out
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; the run folder gets normal permissions
    try:
        results = _run_eval(model, sets, scores, staging, opts)
        # paths recorded inside the results (e.g. NegLabel's mined labels) name the final folder
        results = _retarget(results, str(staging), str(final))
        results["identity"] = ident
        atomic_write_json(staging / "results.json", results)
        replace_dir(staging, final)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(e):
            raise RunError(
                f"no space left on device writing the results into {final}; free space or choose another --out"
            ) from e
        raise
    return results


def _run_eval_in_memory(
    model: VLM, sets: EvalSets, scores: Sequence[ScoreSpec], opts: EvalOptions
) -> dict[str, Any]:
    """run_eval without an output folder (see :func:`run_eval`)."""
    import dataclasses

    tmp = tempfile.mkdtemp(prefix="vlmood-eval-", suffix=".tmp")
    try:
        results = _run_eval(model, sets, scores, tmp, dataclasses.replace(opts, save_scores=False))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _retarget(results, tmp, None)


def _retarget(obj: Any, old: str, new: str | None) -> Any:
    """``obj`` with every string path under ``old`` moved under ``new`` (None: replaced by None)."""
    if isinstance(obj, str):
        if obj == old or obj.startswith(old + os.sep):
            return None if new is None else new + obj[len(old) :]
        return obj
    if isinstance(obj, dict):
        return {k: _retarget(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, old, new) for v in obj]
    return obj


def _run_eval(
    model: VLM,
    sets: EvalSets,
    scores: Sequence[ScoreSpec],
    out_dir: str | os.PathLike,
    opts: EvalOptions,
) -> dict[str, Any]:
    """run_eval's work, writing into ``out_dir`` (the temporary folder on rank 0)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    names = [o.name for o in sets.ood]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"OOD set names must be unique; repeated: {dup}")
    score_objs = build_scores(scores)
    labels_seen = [s.label for s, _ in score_objs]
    if len(set(labels_seen)) != len(labels_seen):
        raise UsageError(f"the same score was requested twice: {labels_seen}")
    adapter = opts.adapter
    head_type = H.head_type(adapter)
    head_kind = head_type.kind
    if adapter is not None:
        if list(adapter.classnames) != list(sets.classnames):
            raise UsageError(
                f"the adapter ({adapter.method}) was trained for {len(adapter.classnames)} classes other "
                f"than this ID set's {len(sets.classnames)}; evaluate it on the classes it learned"
            )
        bad = [f"{spec.label}: {why}" for spec, sc in score_objs if (why := H.unsupported(sc, head_type))]
        if bad:
            raise UsageError(
                f"score(s) not defined for a {adapter.method} adapter ({head_kind} head): " + "; ".join(bad)
            )
    head_feature = "image" if adapter is None else adapter.feature_kind  # what the head's matrix reads
    set_kinds = list(dict.fromkeys(["image", head_feature]))
    kinds = list(set_kinds)
    for _, sc in score_objs:
        for k in sc.requires:
            if k not in kinds:
                kinds.append(k)
    needs_train = [s.label for s, sc in score_objs if sc.needs_train]
    if needs_train and sets.train is None:
        raise UsageError(
            f"score(s) {needs_train} need ID training features: pass --train DIR (or use a benchmark "
            f"with a train split), or drop these scores"
        )
    xo = opts.extract
    timings: dict[str, float] = {}
    t = time.perf_counter()
    id_fs = extract_features(model, sets.id, kinds, options=xo)
    ood_fs = {o.name: extract_features(model, o.source, kinds, options=xo) for o in sets.ood}
    train_fs = extract_features(model, sets.train, ["image"], options=xo) if needs_train else None
    # every rank takes part in each extraction (they are collective under torchrun)
    # held-out classes: a probe cannot classify them, so only its own ID classes need its features
    held_kinds = ["image"] if head_kind == "probe" else set_kinds
    labelled_fs = {
        (kind, ls.name): extract_features(
            model, ls.source, set_kinds if kind == "domain_shift" else held_kinds, options=xo
        )
        for kind, group in (("domain_shift", sets.domain_shift), ("held_out", sets.held_out))
        for ls in group
    }
    timings["features_s"] = time.perf_counter() - t
    if not D.is_main():
        return {}  # scoring, metrics and files are rank 0's job
    t = time.perf_counter()
    # the base zero-shot classifier: the head of a zero-shot run; with a conditional or probe
    # adapter still what NegLabel mines its negatives against
    base_text = None
    if "text_features" not in head_type.provides or adapter is None:
        base_text = class_text_features(
            model, sets.classnames, opts.templates, opts.cache_dir, progress=opts.progress
        )
    if adapter is None:
        head: H.ClassHead = H.TextHead(base_text, model.logit_scale)
    else:
        head = H.head_for_adapter(adapter, model)
    text = head.text_features if head.text_features is not None else base_text
    timings["text_s"] = time.perf_counter() - t

    matrices: dict[str, np.ndarray] = {}

    def head_matrix(key: str, fs: FeatureSet, h: H.ClassHead = head) -> np.ndarray:
        """The head's [N, K] similarities for one set, computed once and shared by every score."""
        if key not in matrices:
            matrices[key] = h.matrix({k: fs.get(k) for k in set_kinds})
        return matrices[key]

    t = time.perf_counter()
    id_labels = id_fs.valid_labels()
    id_accuracy = (
        zero_shot_accuracy(id_fs.get("image"), head.text_features, id_labels)
        if head.text_features is not None  # chunked; no [N, K] matrix kept
        else matrix_accuracy(head_matrix("id", id_fs), id_labels)
    )
    timings["head_s"] = time.perf_counter() - t
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": opts.command,
        **({"label": opts.label} if opts.label else {}),
        "benchmark": sets.benchmark,
        "model": {**model.identity.to_dict(), "logit_scale": model.logit_scale, "embed_dim": model.embed_dim},
        "device": str(model.device),
        "classnames": {
            "origin": sets.classnames_origin,
            "mapping": sets.classnames_mapping,
            "sha256": sha256_text("\n".join(sets.classnames)),
            "n": len(sets.classnames),
            "names": list(sets.classnames),
        },
        "templates": {
            "origin": opts.templates_origin,
            "sha256": sha256_text("\n".join(opts.templates)),
            "templates": list(opts.templates),
        },
        "datasets": {
            "id": _dataset_record(id_fs),
            "ood": {o.name: _dataset_record(ood_fs[o.name], o.group) for o in sets.ood},
            **({"train": _dataset_record(train_fs)} if train_fs is not None else {}),
        },
        "options": {
            **opts.extract.record(),
            "feature_kinds": kinds,
        },
        "id_accuracy": id_accuracy,
        "modality_gap": _modality_gap(id_fs, head),
        "warnings": list(sets.warnings),
        "head": H.head_info(head),
        **({"adapter": opts.adapter_info} if opts.adapter_info else {}),
    }
    # Domain shift: the ID classes in another domain; held-out: other classes, their own names.
    extra_acc: dict[str, dict[str, Any]] = {}
    for kind_name, group in (("domain_shift", sets.domain_shift), ("held_out", sets.held_out)):
        recs = {}
        for ls in group:
            fs = labelled_fs[(kind_name, ls.name)]
            acc, classifier = _labelled_accuracy(model, sets, ls, fs, head, adapter, opts, set_kinds)
            recs[ls.name] = {
                "accuracy": acc,
                "classifier": classifier,
                "n_classes": len(ls.classnames),
                "dataset": _dataset_record(fs),
                **({"note": ls.note} if ls.note else {}),
            }
        if recs:
            extra_acc[kind_name] = recs
    results.update(extra_acc)

    # cached, length-sorted, with a progress bar for NegLabel's ~140k candidate prompts
    encode_fn = TextEncoder(model, opts.cache_dir, progress=opts.progress)

    groups = {o.name: o.group for o in sets.ood}
    # per image, shared by every score's raw file: path, the head's predicted class, true ID class
    per_image = (
        _per_image(id_fs, ood_fs, sets, head, head_matrix)
        if (opts.save_scores or opts.raw_scores is not None)
        else {}
    )
    score_results: dict[str, Any] = {}
    t_scores = time.perf_counter()
    for spec, sc in score_objs:
        t = time.perf_counter()
        ctx = ScoreContext(
            text_features=text,
            classnames=list(sets.classnames),
            encode_text=encode_fn,
            train_features=train_fs.get("image") if (train_fs is not None and sc.needs_train) else None,
            train_labels=train_fs.valid_labels() if (train_fs is not None and sc.needs_train) else None,
            logit_scale=head.logit_scale,
            cache_dir=str(out / "artifacts"),
            # a prompt adapter's class features are the ID side (NegLabel would re-encode the names)
            extra={"id_features_given": adapter is not None and head.text_features is not None},
        )
        sc.fit(ctx)
        fit_s = time.perf_counter() - t

        def run(key: str, fs: FeatureSet, sc=sc) -> np.ndarray:
            feats = {k: fs.get(k) for k in sc.requires}
            feats["image"] = fs.get("image")
            matrix = head_matrix(key, fs) if head.needs_matrix else None
            return H.score_with_head(sc, feats, head, matrix)

        id_scores = run("id", id_fs)
        per_set = {}
        # scores of readable images; index/* maps them back to the source's samples
        raw = {"id": id_scores, "index/id": np.flatnonzero(id_fs.valid)}
        for o in sets.ood:
            ood_scores = run(f"ood/{o.name}", ood_fs[o.name])
            raw[f"ood/{o.name}"] = ood_scores
            raw[f"index/ood/{o.name}"] = np.flatnonzero(ood_fs[o.name].valid)
            per_set[o.name] = M.ood_metrics(id_scores, ood_scores)
        raw.update(per_image)
        entry = {
            "name": spec.name,
            **({"class": score_class_name(sc)} if spec.instance is not None else {}),
            "params": {**sc.params()},
            "requested_params": spec.params,
            "artifacts": sc.artifacts(),
            "per_set": per_set,
            **_summarise(per_set, groups),
            "fit_s": fit_s,
            "time_s": time.perf_counter() - t,
        }
        if opts.raw_scores is not None:
            opts.raw_scores[spec.label] = raw
        if opts.save_scores:
            path = out / "scores" / f"{_safe(spec.label)}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, **raw)  # paths repeat long prefixes; compressed they cost little
            entry["raw_scores"] = str(path.relative_to(out))
        score_results[spec.label] = entry
    timings["scores_s"] = time.perf_counter() - t_scores
    results["scores"] = score_results
    timings["total_s"] = time.perf_counter() - t_start
    results["timings"] = timings
    results["environment"] = environment_info(model.device)
    atomic_write_json(out / "results.json", results)
    return results


def _labelled_accuracy(model, sets: EvalSets, ls: LabelledSet, fs, head, adapter, opts, set_kinds):
    """Accuracy on a domain-shift or held-out set and which classifier gave it.

    Same classes as the ID set: the evaluated head. Other classes (held-out): zero-shot text
    features for them; with an adapter, the adapter applied to the new names where it can be (a
    shared learned prompt context, CoCoOp's meta-net) and otherwise the base zero-shot classifier
    (class-specific context) or none at all (a probe knows only its training classes)."""
    feats = {k: fs.get(k) for k in set_kinds if k in fs.arrays}
    labels = fs.valid_labels()

    def accuracy(h) -> float:
        if h.text_features is not None:
            return zero_shot_accuracy(feats["image"], h.text_features, labels)
        return matrix_accuracy(h.matrix(feats), labels)

    if ls.classnames == sets.classnames:
        return accuracy(head), "zero-shot" if adapter is None else "adapter"
    if adapter is not None:
        other = head.for_classes(list(ls.classnames))
        if other is not None:
            return accuracy(other), "adapter on new class names"
        if head.kind == "probe":
            return None, "none: a probe has no classifier for classes it was not trained on"
    text = class_text_features(model, ls.classnames, opts.templates, opts.cache_dir, progress=opts.progress)
    which = "zero-shot" if adapter is None else "zero-shot (the adapter does not transfer to new class names)"
    return zero_shot_accuracy(fs.get("image"), text, labels), which


def _per_image(id_fs: FeatureSet, ood_fs: dict[str, FeatureSet], sets: EvalSets, head, head_matrix):
    """``paths/<set>`` (str), ``pred/<set>`` (the head's argmax class) for ID and each OOD set, and
    ``labels/id``, over each set's readable images in the order of the raw scores (``<set>`` is
    ``id`` or ``ood/<name>``); ``vlmood report`` reads them for its per-image failure view."""

    def pred(key: str, fs: FeatureSet) -> np.ndarray:
        if head.text_features is None:
            return np.argmax(head_matrix(key, fs), axis=1).astype(np.int32)
        return argmax_classes(fs.get("image"), head.text_features).astype(np.int32)

    arrays: dict[str, np.ndarray] = {"labels/id": id_fs.valid_labels().astype(np.int32)}
    for key, fs in [("id", id_fs)] + [(f"ood/{o.name}", ood_fs[o.name]) for o in sets.ood]:
        arrays[f"paths/{key}"] = np.array(
            [fs.source.samples[i].path for i in np.flatnonzero(fs.valid)], dtype=str
        )
        arrays[f"pred/{key}"] = pred(key, fs)
    return arrays


def _safe(label: str) -> str:
    """A file name for a score label (a long label, e.g. with an inline vocabulary, is cut and
    made unique by a hash: file names are limited to 255 bytes, temp-file affixes included)."""
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)
    return safe if len(safe) <= 120 else f"{safe[:100]}-{sha256_text(label)[:16]}"


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table per score: FPR95/AUROC/AUPR-in/AUPR-out per OOD set and means (in %)."""
    lines = []
    acc = results.get("id_accuracy")
    model = results.get("model", {})
    lines.append(f"model: {model.get('spec') or model.get('arch')}  ID accuracy: {100 * acc:.2f}%")
    gap = results.get("modality_gap") or {}
    if "gap" in gap:
        lines.append(
            f"modality gap: {gap['gap']:.4f}  cosine to own class {gap['own_cosine']:.4f}, "
            f"to other classes {gap['other_cosine']:.4f}"
        )
    for kind_name in ("domain_shift", "held_out"):
        for name, rec in results.get(kind_name, {}).items():
            note = f"  ({rec['note']})" if rec.get("note") else ""
            acc = "n/a" if rec.get("accuracy") is None else f"{100 * rec['accuracy']:.2f}%"
            lines.append(f"{kind_name} {name}: accuracy {acc}{note}")
    header = f"{'OOD set':<24}" + "".join(f"{m:>10}" for m in ("FPR95", "AUROC", "AUPR-in", "AUPR-out"))
    for label, entry in results.get("scores", {}).items():
        lines.append("")
        lines.append(f"== {label} ==")
        lines.append(header)
        rows = list(entry["per_set"].items())
        for key in ("near_mean", "far_mean", "mean"):
            if key in entry:
                rows.append((key.replace("_", " "), entry[key]))
        for name, mets in rows:
            lines.append(f"{name:<24}" + "".join(f"{100 * mets[m]:>10.2f}" for m in TABLE_METRICS))
    return "\n".join(lines)
