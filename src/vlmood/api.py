"""The Python front door: load a model and a benchmark, evaluate scores, fit adapters, run a study
or a zoo of models.

.. code-block:: python

    import vlmood

    model = vlmood.load_model("open_clip:ViT-B-16@/w/vit_b16.safetensors")
    bench = vlmood.load_benchmark("imagenet-mos", root="/data")
    res = vlmood.evaluate(model, bench, scores=["mcm", "neglabel", MyScore(t=2)])
    res.table()  # one row per (score, OOD set)
    ad = vlmood.fit("coop", model, bench, shots=16, seed=1, out="runs/coop")
    res2 = vlmood.evaluate(model, bench, scores=["mcm"], adapter=ad)
    study = vlmood.study(model, bench, methods=["zero-shot", "coop", "plp"], seeds=[1, 2, 3], out="runs/s")
    study.table()
    zoo = vlmood.zoo(["vlmood-tiny", "vlmood-small", "local-dir:/m/c"], bench, out="runs/zoo")
    zoo.fits()  # per score: slope, intercept, R², Pearson r, Spearman rho of AUROC vs ID accuracy

Conventions (the same as the command line's and ``results.json``'s):

- every score is an **ID score**: higher means more in-distribution;
- every metric and accuracy is a **fraction in [0, 1]** (AUROC 0.93, FPR95 0.41), never percent;
  ``fpr95`` is lower-better, the others higher-better;
- metric names are those of :mod:`vlmood.metrics` (``auroc``, ``fpr95``, ``fpr95_interp``,
  ``fpr95_nearest``, ``fpr95_openood``, ``aupr_in``, ``aupr_out``, ``detection_error``).

These functions call the same code as ``vlmood eval`` / ``fit`` / ``study``
(:func:`vlmood.eval.runner.run_eval`, :func:`vlmood.methods.fit_method`,
:func:`vlmood.studies.run_study`, :func:`vlmood.zoos.run_zoo`), so a run made here equals the command's run with the same inputs.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vlmood.errors import RunError, UsageError
from vlmood.models import load_model

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from vlmood.data.base import ImageSource
    from vlmood.eval.runner import EvalSets, LabelledSet, OODSet, ScoreSpec
    from vlmood.features.options import ExtractOptions
    from vlmood.methods.base import Adapter
    from vlmood.models.base import VLM

    try:
        from typing import Self
    except ImportError:  # Python 3.10
        from typing_extensions import Self
    from vlmood.scores.base import Score
    from vlmood.train.data import TrainingSet

    #: what ``scores=`` takes: a name (``"mcm"``), a ``"name:key=value,..."`` text, a ScoreSpec or
    #: a Score object (a registered score or your own subclass of :class:`vlmood.scores.Score`)
    ScoreLike = str | ScoreSpec | Score

__all__ = [
    "DEFAULT_SCORES",
    "BenchmarkSets",
    "Results",
    "Study",
    "Zoo",
    "evaluate",
    "fit",
    "load_benchmark",
    "load_model",
    "study",
    "zoo",
]

#: the scores ``evaluate`` runs when none are named (``vlmood eval``'s default)
DEFAULT_SCORES: tuple[str, ...] = ("mcm", "msp", "maxlogit", "energy", "entropy", "variance")
#: the scores ``study`` runs when none are named (``vlmood study``'s default)
DEFAULT_STUDY_SCORES: tuple[str, ...] = ("mcm", "neglabel", "energy", "maxlogit")
#: the metrics of :meth:`Results.summary` and :meth:`Study.table` (fractions; fpr95 lower-better)
SUMMARY_METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")


# ---------------------------------------------------------------------------------------------- benchmark
@dataclass
class BenchmarkSets:
    """The image sets of one benchmark, resolved and checked, with the templates that go with them.

    Returned by :func:`load_benchmark`; read by :func:`evaluate`, :func:`fit` and :func:`study`.
    Every set is a :class:`vlmood.data.base.ImageSource` (an ordered list of absolute image paths
    with integer labels, -1 for OOD images, and class names where it has them).

    Attributes:
        eval_sets: the :class:`vlmood.eval.runner.EvalSets` the runners read.
        templates: prompt templates (one ``{}`` each) or CuPL ``class<TAB>prompt`` entries.
        templates_origin: where the templates came from (a built-in name, a file, ``benchmark``).
        root: the data root the sets were resolved under (None: paths as given).
    """

    eval_sets: EvalSets
    templates: list[str]
    templates_origin: str = "simple"
    root: str | None = None

    @property
    def name(self) -> str | None:
        """The benchmark's name (None for sets given by path)."""
        return self.eval_sets.benchmark

    @property
    def id(self) -> ImageSource:
        """The labelled ID test set (labels index :attr:`classnames`)."""
        return self.eval_sets.id

    @property
    def train(self) -> ImageSource | None:
        """The ID training split (used by :func:`fit`, KNN and Mahalanobis), or None."""
        return self.eval_sets.train

    @property
    def ood(self) -> list[OODSet]:
        """The OOD sets: ``.name``, ``.source`` (ImageSource) and ``.group`` (near / far / ood)."""
        return self.eval_sets.ood

    @property
    def domain_shift(self) -> list[LabelledSet]:
        """Sets of the ID classes in another domain (accuracy only): ``.name``, ``.source``, ``.classnames``."""
        return self.eval_sets.domain_shift

    @property
    def held_out(self) -> list[LabelledSet]:
        """Sets of other classes with their own names (zero-shot accuracy only)."""
        return self.eval_sets.held_out

    @property
    def classnames(self) -> list[str]:
        """The ID class names, in label order."""
        return self.eval_sets.classnames

    @property
    def warnings(self) -> list[str]:
        """Inputs that run but mislead (train = ID test, OOD overlapping ID, duplicate names)."""
        return self.eval_sets.warnings

    def __repr__(self) -> str:
        ood = ", ".join(f"{o.group}/{o.name}" if o.group != "ood" else o.name for o in self.ood)
        train = f", train={len(self.train)} images" if self.train is not None else ""
        return (
            f"BenchmarkSets({self.name or 'custom'}: id={len(self.id)} images of "
            f"{len(self.classnames)} classes{train}, ood=[{ood}], {len(self.templates)} templates)"
        )


def _resolve_templates(
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None,
    default: list[str] | None = None,
    default_origin: str | None = None,
) -> tuple[list[str], str]:
    """``templates`` (a built-in set name, a template file, a list of templates or a CuPL dict),
    else ``default`` (a benchmark's), else the built-in ``simple`` set; with where they came from."""
    from vlmood.data.templates import check_template, is_class_prompts, load_templates, parse_templates

    if templates is None:
        if default:
            return list(default), default_origin or "benchmark"
        return load_templates("simple")[0], "simple"
    if isinstance(templates, (str, os.PathLike)):
        return load_templates(templates)[0], str(templates)
    if isinstance(templates, Mapping):
        return parse_templates(json.dumps(dict(templates)), "templates (dict)"), "templates (dict)"
    out = list(templates)
    if not out:
        raise UsageError("templates: an empty list; give at least one template with '{}'")
    if not is_class_prompts(out):
        out = [check_template(t, f"templates[{i}]") for i, t in enumerate(out)]
    return out, "templates (list)"


def load_benchmark(
    benchmark: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    *,
    id: str | os.PathLike | None = None,
    ood: Sequence[str] | Mapping[str, str | os.PathLike] = (),
    train: str | os.PathLike | None = None,
    classnames: str | os.PathLike | None = None,
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    sets: str | Sequence[str] | None = None,
    allow_outside_root: bool = False,
    classnames_order: str | None = None,
    skip_missing: bool = False,
) -> BenchmarkSets:
    """Resolve a benchmark (or ID + OOD paths) into checked image sets; returns :class:`BenchmarkSets`.

    Args:
        benchmark: a packaged benchmark name (``vlmood data list``), a benchmark YAML file, or None
            to give the sets by path (``id=`` and ``ood=``).
        root: the benchmark's data root; for ``id``/``ood``/``train`` list or CSV files the image
            root (default: each list's own folder).
        id: the labelled ID test images (a class folder, image list or CSV), without ``benchmark``.
        ood: OOD sets, added to the benchmark's: ``["[near|far/]NAME=PATH", ...]`` or
            ``{"NAME": PATH}`` (``{"near/NAME": PATH}`` sets the group).
        train: ID training images (KNN/Mahalanobis, :func:`fit`), labelled with the ID classes.
        classnames: a class-name file or built-in set; with a benchmark it renames the ID classes
            by label index.
        templates: a built-in template set name, a template file, a list of templates (one ``{}``
            each) or a CuPL dict ``{class: [prompts]}``; default: the benchmark's, else ``simple``.
        sets: only the ID set and these benchmark set names (``--sets``).
        allow_outside_root: let set paths, list entries and symlinks leave their root.
        classnames_order: ``"sorted"`` maps a bare class-name list onto sorted class folders.
        skip_missing: listed files may be missing (evaluate with ``skip_corrupt=True``).

    Raises:
        DataError / UsageError naming the input, before any image is read.
    """
    from vlmood.eval.sets import sets_from_args

    if isinstance(ood, Mapping):
        ood_args = [f"{name}={path}" for name, path in ood.items()]
    elif isinstance(ood, (str, os.PathLike)):
        ood_args = [str(ood)]
    else:
        ood_args = [str(o) for o in ood]
    resolved = sets_from_args(
        benchmark=str(benchmark) if benchmark is not None else None,
        root=root,
        id_data=str(id) if id is not None else None,
        classnames=str(classnames) if classnames is not None else None,
        ood=ood_args,
        train=str(train) if train is not None else None,
        classnames_order=classnames_order,
        allow_outside_root=allow_outside_root,
        only=sets,
        skip_missing=skip_missing,
    )
    tmpl, origin = _resolve_templates(templates, resolved.templates, resolved.templates_origin)
    return BenchmarkSets(resolved.eval_sets, tmpl, origin, str(root) if root is not None else None)


def _bench(bench: BenchmarkSets | str | os.PathLike) -> BenchmarkSets:
    if isinstance(bench, BenchmarkSets):
        return bench
    if isinstance(bench, (str, os.PathLike)):
        return load_benchmark(bench)
    raise UsageError(
        f"expected the sets of vlmood.load_benchmark(...) (or a benchmark name / YAML path), "
        f"got {type(bench).__name__}"
    )


# ---------------------------------------------------------------------------------------------- scores
def score_specs(scores: ScoreLike | Sequence[ScoreLike]) -> list[ScoreSpec]:
    """ScoreSpecs for ``scores``: names, ``"name:key=value,..."`` texts, ScoreSpecs or Score objects
    (including unregistered subclasses of :class:`vlmood.scores.Score`; recorded by class name and
    ``params()``). UsageError for anything else (a Score class instead of an object, say)."""
    from vlmood.eval.runner import ScoreSpec, parse_score_text
    from vlmood.scores.base import Score

    items = [scores] if isinstance(scores, (str, ScoreSpec, Score)) else list(scores)
    out: list[ScoreSpec] = []
    for s in items:
        if isinstance(s, str):
            out.extend(parse_score_text(s, "score"))
        elif isinstance(s, ScoreSpec):
            out.append(s)
        elif isinstance(s, Score):
            out.append(ScoreSpec.of(s))
        elif isinstance(s, type) and issubclass(s, Score):
            raise UsageError(f"scores: {s.__name__} is a class; pass an object, e.g. {s.__name__}()")
        else:
            raise UsageError(
                f"scores: {s!r} is not a score name, 'name:key=value' text, ScoreSpec or Score object"
            )
    if not out:
        raise UsageError("scores: none given")
    return out


# ---------------------------------------------------------------------------------------------- results
def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


@dataclass
class Results:
    """One evaluation's results (``results.json``, schema ``vlmood.results/1``) with table views.

    Scores are ID scores (higher = more ID); metrics and accuracies are fractions in [0, 1].

    Attributes:
        out: the run folder (``results.json``, ``scores/``), or None for an in-memory run.
    """

    _data: dict[str, Any]
    out: Path | None = None
    _raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Results of an earlier run: a run folder or its ``results.json``."""
        p = Path(path)
        f = p / "results.json" if p.is_dir() else p
        if not f.is_file():
            raise UsageError(f"{p}: no results.json (a folder written by vlmood eval / evaluate(out=...))")
        return cls(json.loads(f.read_text(encoding="utf-8")), f.parent)

    def to_dict(self) -> dict[str, Any]:
        """The results.json dict (model, data, templates, per-score metrics, provenance)."""
        return self._data

    @property
    def accuracy(self) -> float:
        """ID top-1 accuracy of the evaluated classifier (zero-shot or the adapter's head), a fraction."""
        return float(self._data.get("id_accuracy", float("nan")))

    @property
    def modality_gap(self) -> dict[str, Any]:
        """The ID set's modality gap (``gap``, ``own_cosine``, ``other_cosine``, ``margin``; see
        :func:`vlmood.metrics.modality_gap`), or ``{"n/a": why}`` for a head without class text
        features; ``{}`` for results written before it was measured."""
        return dict(self._data.get("modality_gap") or {})

    @property
    def scores(self) -> list[str]:
        """The score labels, in the order they ran (the ``score`` column of :meth:`table`)."""
        return list(self._data.get("scores", {}))

    @property
    def ood_sets(self) -> list[str]:
        """The OOD set names."""
        return list((self._data.get("datasets") or {}).get("ood", {}))

    def table(self) -> pd.DataFrame:
        """pandas DataFrame, one row per (score, OOD set): columns ``score``, ``ood_set``, ``group``
        (near / far / ood), then every metric of results.json (``auroc``, ``fpr95``, ``aupr_in``,
        ``aupr_out``, ... as fractions)."""
        groups = {
            n: rec.get("group", "ood") for n, rec in (self._data.get("datasets") or {}).get("ood", {}).items()
        }
        rows: list[dict[str, Any]] = []
        metrics: list[str] = []
        for label, entry in self._data.get("scores", {}).items():
            for name, mets in entry.get("per_set", {}).items():
                metrics += [m for m in mets if m not in metrics]
                rows.append({"score": label, "ood_set": name, "group": groups.get(name, "ood"), **mets})
        return _frame(rows, ["score", "ood_set", "group", *metrics])

    def summary(self, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
        """pandas DataFrame, one row per score (index ``score``): each metric's mean over all OOD
        sets (``auroc``, ...), and over near / far sets where the benchmark groups them
        (``near_auroc``, ``far_auroc``, ...); fractions."""
        rows = []
        cols: list[str] = []
        for label, entry in self._data.get("scores", {}).items():
            row: dict[str, Any] = {"score": label}
            for key, prefix in (("mean", ""), ("near_mean", "near_"), ("far_mean", "far_")):
                for m in metrics:
                    if key in entry and m in entry[key]:
                        row[prefix + m] = entry[key][m]
            cols += [c for c in row if c not in cols]
            rows.append(row)
        return _frame(rows, cols or ["score"]).set_index("score")

    def score_values(self, score: str) -> dict[str, np.ndarray]:
        """The raw ID scores of one score (label as in :attr:`scores`): ``"id"`` and
        ``"ood/<set>"`` arrays (float64, higher = more ID) over each set's readable images, and
        ``"index/..."`` arrays mapping them back to the set's samples."""
        if score in self._raw:
            return self._raw[score]
        entry = self._data.get("scores", {}).get(score)
        if entry is None:
            raise KeyError(f"no score {score!r}; scores: {self.scores}")
        rel = entry.get("raw_scores")
        if not rel or self.out is None:
            raise KeyError(f"raw scores of {score!r} were not kept")
        import numpy as np

        with np.load(self.out / rel) as z:
            self._raw[score] = {k: z[k] for k in z.files}
        return self._raw[score]

    def __str__(self) -> str:
        from vlmood.eval.runner import format_table

        return format_table(self._data)

    def __repr__(self) -> str:
        where = f", out={str(self.out)!r}" if self.out else ""
        return f"Results(accuracy={self.accuracy:.4f}, scores={self.scores}, ood_sets={self.ood_sets}{where})"


# ---------------------------------------------------------------------------------------------- evaluate
def _adapter_for(adapter: Adapter | str | os.PathLike, model: VLM, bench: BenchmarkSets) -> tuple[Any, Any]:
    """(the adapter, the model to extract features with). A path is loaded onto ``model`` (onto a
    copy when the method rewrites the image encoder, UEO, so ``model`` stays the base model)."""
    from vlmood.methods import METHODS, Adapter, AdapterMismatchError, load_adapter, read_adapter_info
    from vlmood.methods.base import base_identity_key

    if isinstance(adapter, (str, os.PathLike)):
        info = read_adapter_info(adapter)
        if list(info.get("classnames", [])) != list(bench.classnames):
            raise UsageError(
                f"adapter {adapter} was trained for {len(info.get('classnames', []))} other class names "
                f"than this ID set's {len(bench.classnames)}; evaluate it on the classes it learned"
            )
        rewrites = getattr(METHODS.get(info["method"]), "adapts_image_encoder", False)
        adapter = load_adapter(adapter, copy.deepcopy(model) if rewrites else model)
    elif not isinstance(adapter, Adapter):
        raise UsageError(
            f"adapter: expected an Adapter (vlmood.fit) or an adapter folder, got {type(adapter).__name__}"
        )
    if adapter.adapts_image_encoder:
        return adapter, adapter.model  # features come from the adapted encoder
    if adapter.model is not model and base_identity_key(adapter.model) != base_identity_key(model):
        raise AdapterMismatchError(
            f"the {adapter.method} adapter was loaded onto another base model "
            f"({adapter.model.identity.spec!r}) than the one given ({model.identity.spec!r})"
        )
    return adapter, model


def _extract_options(
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    num_workers: int | None,
    skip_corrupt: bool,
    fingerprint: str,
    progress: bool,
) -> ExtractOptions:
    """The extraction arguments of :func:`evaluate`, :func:`fit` and :func:`study` as the one
    :class:`~vlmood.features.options.ExtractOptions` every extraction takes."""
    from vlmood.features.options import ExtractOptions

    return ExtractOptions(
        cache_root=cache_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        skip_corrupt=skip_corrupt,
        fingerprint=fingerprint,
        progress=progress,
    )


def evaluate(
    model: VLM,
    bench: BenchmarkSets | str | os.PathLike,
    scores: ScoreLike | Sequence[ScoreLike] = DEFAULT_SCORES,
    *,
    adapter: Adapter | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    label: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    skip_corrupt: bool = False,
    fingerprint: str = "stat",
    progress: bool = True,
) -> Results:
    """Evaluate OOD scores of ``model`` on ``bench``; returns :class:`Results`.

    Args:
        model: a model from :func:`load_model`.
        bench: the sets of :func:`load_benchmark` (or a benchmark name / YAML path).
        scores: names (``"mcm"``), ``"name:key=value,..."`` texts (``"neglabel:ngroup=10"``),
            ScoreSpecs, or Score objects, your own unregistered subclasses of
            :class:`vlmood.scores.Score` included (each run fits a copy; recorded by class name
            and ``params()``). Every score is an ID score (higher = more ID).
        adapter: an :class:`~vlmood.methods.Adapter` (from :func:`fit`) or an adapter folder: its
            class head replaces the zero-shot classifier.
        out: a run folder to write ``results.json`` and raw scores into (replaced as a whole when
            the run completes, like ``vlmood eval --out``); None: nothing is written there, the
            results and raw scores stay in memory.
        templates: override the benchmark's templates (a built-in name, a file, a list, a CuPL dict).
        label: a name for the run, recorded in results.json.
        cache_dir: the feature cache (default ``$VLMOOD_CACHE`` or ``~/.cache/vlmood``).
        batch_size, num_workers, skip_corrupt, fingerprint, progress: feature extraction options
            (images per forward pass, DataLoader workers, skip unreadable images, ``stat`` or
            ``content`` dataset fingerprint, progress bars).

    Raises:
        UsageError / DataError / AdapterError naming the input, before features are extracted.
    """
    from vlmood.eval.runner import EvalOptions, build_scores, run_eval

    bench = _bench(bench)
    specs = score_specs(scores)
    build_scores(specs)  # unknown scores and bad parameters fail before any work
    tmpl, origin = (
        (bench.templates, bench.templates_origin) if templates is None else _resolve_templates(templates)
    )
    ad, run_model = (None, model) if adapter is None else _adapter_for(adapter, model, bench)
    raw: dict[str, dict[str, Any]] = {}
    opts = EvalOptions(
        templates=list(tmpl),
        templates_origin=origin,
        extract=_extract_options(cache_dir, batch_size, num_workers, skip_corrupt, fingerprint, progress),
        save_scores=out is not None,
        adapter=ad,
        adapter_info=ad.record(ad.path or "") if ad is not None else None,
        raw_scores=raw,
        label=label,
    )
    results = run_eval(run_model, bench.eval_sets, specs, out, opts)
    final = Path(out).absolute() if out is not None else None
    return Results(results, final, raw)


# ---------------------------------------------------------------------------------------------- fit
def _training_data(data: Any) -> tuple[Any, list[str]]:
    """(ImageSource, class names) for :func:`fit`."""
    from vlmood.data.base import ImageSource
    from vlmood.train.data import TrainingSet, training_source

    if isinstance(data, BenchmarkSets):
        if data.train is None:
            raise UsageError(
                f"benchmark {data.name or '(custom sets)'} has no train split; pass "
                f"vlmood.load_benchmark(..., train=DIR) with training images of its {len(data.classnames)} "
                f"ID classes"
            )
        return data.train, list(data.classnames)
    if isinstance(data, TrainingSet):
        return data.source, list(data.classnames)
    if isinstance(data, ImageSource):
        if not data.classnames:
            raise UsageError(f"training images {data.origin}: no class names (a labelled class folder)")
        return data, list(data.classnames)
    if isinstance(data, (str, os.PathLike)):
        ts = training_source(id_data=str(data))
        return ts.source, list(ts.classnames)
    raise UsageError(
        f"fit: expected the sets of vlmood.load_benchmark(...), an ImageSource or a labelled image "
        f"folder / list, got {type(data).__name__}"
    )


def _validation_sets(data: Any, val_sets: Any, classnames: list[str]) -> dict[str, Any]:
    """``{name: ImageSource}`` for :func:`fit`'s ``val_sets``: domain-shift set names of ``data``
    (the sets of :func:`load_benchmark`), paths, or a mapping of names to sources or paths."""
    from vlmood.data.base import ImageSource
    from vlmood.train.data import validation_sets

    if not val_sets:
        return {}
    items = list(val_sets.items()) if isinstance(val_sets, Mapping) else [(v, v) for v in val_sets]
    shift = (
        {ls.name: ls.source for ls in data.eval_sets.domain_shift} if isinstance(data, BenchmarkSets) else {}
    )
    out: dict[str, Any] = {}
    for name, v in items:
        if isinstance(v, ImageSource):
            out[str(name)] = v
        elif isinstance(v, str) and v in shift:
            out[str(name)] = shift[v]
        elif isinstance(v, (str, os.PathLike)) and Path(v).exists():
            (src,) = validation_sets([str(v)], classnames=classnames, n_classes=len(classnames)).values()
            out[str(name)] = src
        else:
            have = f" (domain-shift sets of the data: {', '.join(shift)})" if shift else ""
            raise UsageError(
                f"val_sets: {v!r} is neither a domain-shift set of the training data{have} nor an "
                "existing labelled folder / list / CSV of the training classes"
            )
    return out


def fit(
    method: str,
    model: VLM,
    data: BenchmarkSets | TrainingSet | ImageSource | str | os.PathLike,
    *,
    out: str | os.PathLike,
    shots: int | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    train: Mapping[str, Any] | None = None,
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    extract_batch_size: int = 64,
    num_workers: int | None = None,
    skip_corrupt: bool = False,
    fingerprint: str = "stat",
    progress: bool = True,
    label: str | None = None,
    val_fraction: float | None = None,
    val_sets: Sequence[str] | Mapping[str, Any] | None = None,
    val_every: int | None = None,
    tensorboard: bool = False,
    mlflow: bool = False,
) -> Adapter:
    """Train adaptation method ``method`` (``vlmood methods``/``vlmood.methods.list_methods()``) on
    the training images and write its adapter artifact to ``out`` (an ``out`` that already holds
    an adapter trained with the same settings is reused as it is; one of other settings is
    refused with what differs: UsageError); returns the loaded
    :class:`~vlmood.methods.Adapter` (``.method``, ``.kind``, ``.classnames``, ``.key``, ``.path``),
    ready for ``evaluate(..., adapter=...)``.

    Args:
        data: the sets of :func:`load_benchmark` (its ``train`` split and ID class names), a
            :class:`~vlmood.train.data.TrainingSet`, a labelled ImageSource, or a labelled image
            folder / list / CSV path (class names from its class folders).
        out: the adapter folder (``adapter.json`` + ``adapter.safetensors``; ``train/`` holds the
            checkpoint and metrics log).
        shots: k images per class (None: every image; unsupervised methods, PLP and UEO, ignore labels).
        seed: the training and few-shot sampling seed (default: the method's, 0).
        params: method hyperparameters (e.g. ``{"n_ctx": 4}`` for CoOp).
        epochs, lr, batch_size: training settings (``batch_size`` is the global training batch);
            default: the method's paper settings.
        train: other :class:`~vlmood.train.engine.TrainConfig` fields (``{"weight_decay": 5e-4}``).
        resume: continue from ``out/train``'s checkpoint (a killed training also resumes by itself
            when ``out`` holds its checkpoint and no adapter yet).
        cache_dir, extract_batch_size, num_workers, skip_corrupt, fingerprint, progress: feature
            extraction options (``num_workers`` also sets the training DataLoader's workers).
        label: a name for the adapter (adapter.json ``label``), shown by ``vlmood report`` for every
            evaluation of it.
        val_fraction: hold out this fraction (0 < F < 1) of each class's training images for
            validation (seeded by ``seed``; with ``shots`` drawn from the images the k-shot split
            leaves out, so the k-shot training set does not change; without, held out of training).
        val_sets: more validation sets of the training classes: names of ``data``'s domain-shift
            sets, labelled folder / list / CSV paths, or ``{name: ImageSource or path}``.
        val_every: validate every N epochs and after the last (0: never; default 1 when there is
            something to validate). ``val/id_accuracy`` and ``val/<set>_accuracy`` join the epoch
            rows of ``out/train/metrics.jsonl``.
        tensorboard, mlflow: also log the metrics as TensorBoard events (``out/train/tensorboard``)
            / to an MLflow run (needs ``pip install mlflow``).

    UEO's adapter rewrites the image encoder it is loaded onto: it is loaded onto a copy of
    ``model`` (``adapter.model``), and ``model`` stays the base model.
    """
    from vlmood.methods import METHODS, create_method, fit_method, load_adapter
    from vlmood.methods.base import check_shots, train_config
    from vlmood.train.validation import check_val_fraction, resolve_val_every

    params = dict(params or {})
    m = create_method(method, **params)  # unknown names and wrong types refused here
    val_fraction = check_val_fraction(val_fraction)
    cfg = train_config(
        m,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        num_workers=num_workers,
        overrides=train,
        tensorboard=tensorboard or None,
        mlflow=mlflow or None,
        val_every=resolve_val_every(val_every, val_fraction, val_sets),
    )
    check_shots(shots)
    source, classnames = _training_data(data)
    vsets = _validation_sets(data, val_sets, classnames)
    path = fit_method(
        method,
        model,
        source,
        out,
        cfg,
        params,
        shots=shots,
        seed=seed,
        classnames=classnames,
        progress=progress,
        resume=resume,
        extract_options=_extract_options(
            cache_dir, extract_batch_size, num_workers, skip_corrupt, fingerprint, progress
        ),
        reuse=True,  # rerunning a notebook cell keeps a finished adapter of the same settings
        label=label,
        val_fraction=val_fraction,
        val_sets=vsets,
    )
    rewrites = getattr(METHODS.get(method), "adapts_image_encoder", False)
    return load_adapter(Path(path).absolute(), copy.deepcopy(model) if rewrites else model)


# ---------------------------------------------------------------------------------------------- study
@dataclass
class _Folder:
    """A finished run folder summarised by one JSON file (``FILE``, written by ``WRITER``)."""

    FILE: ClassVar[str]
    WRITER: ClassVar[str]
    _data: dict[str, Any]
    out: Path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """An earlier run: its folder or its JSON file."""
        p = Path(path)
        f = p / cls.FILE if p.is_dir() else p
        if not f.is_file():
            raise UsageError(f"{p}: no {cls.FILE} (a folder written by {cls.WRITER})")
        return cls(json.loads(f.read_text(encoding="utf-8")), f.parent)


@dataclass
class Study(_Folder):
    """A finished study (``study.json``, schema ``vlmood.study/1``) with a table view.

    Attributes:
        out: the study folder (``study.json``, ``study.md``, ``adapters/``, ``runs/``).
    """

    FILE: ClassVar[str] = "study.json"
    WRITER: ClassVar[str] = "vlmood study / vlmood.study"

    def to_dict(self) -> dict[str, Any]:
        """The study.json dict (plan, model, runs per method and seed, aggregated table)."""
        return self._data

    @property
    def methods(self) -> list[str]:
        """The methods, in the order they ran (``zero-shot`` first when included)."""
        return list(self._data.get("runs", {}))

    def table(self) -> pd.DataFrame:
        """pandas DataFrame, one row per (method, score): ``method``, ``score``, ``n_seeds``,
        ``id_accuracy`` and ``id_accuracy_std``, then per OOD group and metric the mean over seeds
        and its standard deviation (``near_fpr95``, ``near_fpr95_std``, ``near_auroc``, ...,
        ``far_...``; ``mean_...`` for a benchmark without near/far groups); fractions. A score a
        method's head cannot support has empty (NaN) metrics and the reason in ``note``."""
        rows: list[dict[str, Any]] = []
        cols = ["method", "score", "n_seeds", "id_accuracy", "id_accuracy_std"]
        for method, row in self._data.get("table", {}).items():
            acc = row.get("id_accuracy") or {}
            for label, cell in row.get("scores", {}).items():
                r: dict[str, Any] = {
                    "method": method,
                    "score": label,
                    "n_seeds": acc.get("n"),
                    "id_accuracy": acc.get("mean"),
                    "id_accuracy_std": acc.get("std"),
                }
                if "n/a" in cell:
                    r["note"] = cell["n/a"]
                for key, ms in cell.items():
                    if key == "n/a":
                        continue
                    r[key] = None if ms is None else ms.get("mean")
                    r[f"{key}_std"] = None if ms is None else ms.get("std")
                cols += [c for c in r if c not in cols and c != "note"]
                rows.append(r)
        if any("note" in r for r in rows):
            cols.append("note")
        return _frame(rows, cols)

    def results(self, method: str, seed: int | None = None) -> Results:
        """The :class:`Results` of one evaluation: ``method`` (``"zero-shot"`` has no seed), ``seed``
        (default: the first seed)."""
        runs = self._data.get("runs", {})
        if method not in runs:
            raise KeyError(f"no method {method!r} in this study; methods: {list(runs)}")
        seeds = runs[method]["seeds"]
        key = next(iter(seeds)) if seed is None else str(seed)
        if key not in seeds:
            raise KeyError(f"{method} has no seed {seed}; seeds: {list(seeds)}")
        return Results.load(self.out / seeds[key]["results"])

    def __str__(self) -> str:
        from vlmood.studies import format_study

        return format_study(self._data)

    def __repr__(self) -> str:
        return f"Study(methods={self.methods}, seeds={self._data.get('plan', {}).get('seeds')}, out={str(self.out)!r})"


def study(
    model: VLM,
    bench: BenchmarkSets | str | os.PathLike,
    methods: Sequence[str] = ("zero-shot", "coop"),
    seeds: Sequence[int] = (0,),
    *,
    out: str | os.PathLike,
    shots: int | None = 16,
    scores: ScoreLike | Sequence[ScoreLike] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    train: Mapping[str, Any] | None = None,
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    extract_batch_size: int = 64,
    num_workers: int | None = None,
    skip_corrupt: bool = False,
    fingerprint: str = "stat",
    progress: bool = True,
) -> Study:
    """Run (or resume) the fine-tuning x OOD-score study into ``out``: zero-shot, then each method
    x seed trained on ``bench``'s train split and evaluated with every score; returns :class:`Study`.

    Rerunning with the same ``out`` reuses finished adapters and evaluations and resumes killed
    trainings; adapters of other training settings are refused (naming what differs), while
    evaluations of other evaluation settings (templates, scores not yet computed) are computed
    again, with a warning, replacing the earlier results of that piece.

    Args:
        methods: ``"zero-shot"`` and registered method names (``vlmood.methods.list_methods()``).
        seeds: training / few-shot seeds; every method runs once per seed.
        shots: k images per class for supervised methods (PLP and UEO use the whole split).
        scores: as in :func:`evaluate`; default ``mcm, neglabel, energy, maxlogit``. A score a
            method's head cannot support is ``n/a`` for it.
        params: method -> hyperparameters (``{"coop": {"n_ctx": 4}}``).
        epochs, lr, batch_size: training settings for every method (``batch_size``: the global
            training batch).
        train: more :class:`~vlmood.train.engine.TrainConfig` fields, for every method
            (``{"weight_decay": 5e-4}``) or per method (``{"coop": {"epochs": 50}}``).
        templates, cache_dir, extract_batch_size, num_workers, skip_corrupt, fingerprint,
            progress: as in :func:`evaluate` (``extract_batch_size`` is its ``batch_size``).

    ``model`` is the base model; a method that rewrites the image encoder (UEO) gets a copy.
    """
    from vlmood.eval.runner import EvalOptions
    from vlmood.studies import StudyConfig, _check_config, run_study

    bench = _bench(bench)
    train_over: dict[str, dict[str, Any]] = {}
    for k, v in dict(train or {}).items():
        if isinstance(v, Mapping):
            train_over.setdefault(k, {}).update(v)
        else:
            train_over.setdefault("*", {})[k] = v
    given = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    train_over.setdefault("*", {}).update({k: v for k, v in given.items() if v is not None})
    if not train_over["*"]:
        del train_over["*"]
    cfg = StudyConfig(
        methods=[m.strip().lower() for m in ([methods] if isinstance(methods, str) else methods)],
        scores=score_specs(DEFAULT_STUDY_SCORES if scores is None else scores),
        seeds=[int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)],
        shots=shots,
        params={k: dict(v) for k, v in dict(params or {}).items()},
        train=train_over,
    )
    _check_config(cfg)  # bad methods, scores or settings fail before any work
    tmpl, origin = (
        (bench.templates, bench.templates_origin) if templates is None else _resolve_templates(templates)
    )
    opts = EvalOptions(
        templates=list(tmpl),
        templates_origin=origin,
        extract=_extract_options(
            cache_dir, extract_batch_size, num_workers, skip_corrupt, fingerprint, progress
        ),
    )
    calls = 0

    def model_factory() -> VLM:
        # the base model first; a fresh copy for each method that rewrites the image encoder
        nonlocal calls
        calls += 1
        return model if calls == 1 else copy.deepcopy(model)

    data = run_study(model_factory, bench.eval_sets, cfg, out, opts, progress)
    return Study(data, Path(out).absolute())


# ---------------------------------------------------------------------------------------------- zoo
@dataclass
class Zoo(_Folder):
    """A finished zoo (``zoo.json``, schema ``vlmood.zoo/1``): many models evaluated zero-shot on one
    benchmark, with ID accuracy against OOD detection per score.

    Attributes:
        out: the zoo folder (``zoo.json``, ``zoo.md``, ``scatter-<score>.png``, ``models/<name>/``).
    """

    FILE: ClassVar[str] = "zoo.json"
    WRITER: ClassVar[str] = "vlmood zoo / vlmood.zoo"

    def to_dict(self) -> dict[str, Any]:
        """The zoo.json dict (models with specs and identities, per-model metrics, fits)."""
        return self._data

    @property
    def models(self) -> list[str]:
        """The model names, in the order they ran."""
        return [str(r["name"]) for r in self._data.get("models", [])]

    @property
    def scores(self) -> list[str]:
        """The score labels that ran (a score the benchmark cannot support is in ``skipped_scores``)."""
        return list(self._data.get("scores", []))

    def table(self, metric: str = "auroc", group: str | None = None) -> pd.DataFrame:
        """pandas DataFrame, one row per model: ``model``, ``spec``, ``accuracy`` (ID top-1), then one
        column per score holding ``metric`` (``auroc`` or ``fpr95``) averaged over all OOD sets, or
        over the ``group``'s sets (``"near"`` / ``"far"``); fractions."""
        if metric not in ("auroc", "fpr95"):
            raise UsageError(f"metric {metric!r}: a zoo keeps 'auroc' and 'fpr95'")
        if group not in (None, "near", "far"):
            raise UsageError(f"group {group!r}: None (all OOD sets), 'near' or 'far'")
        key = metric if group is None else f"{group}_{metric}"
        rows = []
        for r in self._data.get("models", []):
            row: dict[str, Any] = {
                "model": r["name"],
                "spec": r.get("spec"),
                "accuracy": r.get("id_accuracy"),
            }
            for label in self.scores:
                row[label] = (r.get("scores", {}).get(label) or {}).get(key)
            rows.append(row)
        return _frame(rows, ["model", "spec", "accuracy", *self.scores])

    def fits(self, y: str = "auroc") -> pd.DataFrame:
        """pandas DataFrame, one row per score: the least-squares line ``y = slope * accuracy +
        intercept`` over the models, ``score``, ``slope``, ``intercept``, ``r2`` (1 - SS_res/SS_tot),
        ``pearson``, ``spearman``, ``n`` (models) and ``note`` (why a value is missing: fewer than 3
        models, equal accuracies). ``y``: ``auroc`` (mean over all OOD sets), ``near_auroc`` or
        ``far_auroc`` (benchmarks with groups)."""
        rows = []
        for label, per in self._data.get("fits", {}).items():
            fit = per.get(y)
            if fit is None:
                continue
            rows.append(
                {"score": label, **{k: v for k, v in fit.items() if k != "n/a"}, "note": fit.get("n/a")}
            )
        cols = ["score", "slope", "intercept", "r2", "pearson", "spearman", "n", "note"]
        return _frame(rows, cols)

    def results(self, model: str) -> Results:
        """The :class:`Results` of one model's evaluation."""
        for r in self._data.get("models", []):
            if r["name"] == model:
                return Results.load(self.out / r["results"])
        raise KeyError(f"no model {model!r} in this zoo; models: {self.models}")

    def __str__(self) -> str:
        from vlmood.zoos import format_zoo

        return format_zoo(self._data)

    def __repr__(self) -> str:
        return f"Zoo(models={self.models}, scores={self.scores}, out={str(self.out)!r})"


def zoo(
    models: str | os.PathLike | Sequence[str | VLM] | Mapping[str, str | VLM],
    bench: BenchmarkSets | str | os.PathLike,
    scores: ScoreLike | Sequence[ScoreLike] | None = None,
    *,
    out: str | os.PathLike,
    device: str = "cpu",
    precision: str = "fp32",
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    skip_corrupt: bool = False,
    fingerprint: str = "stat",
    progress: bool = True,
) -> Zoo:
    """Evaluate many models zero-shot on one benchmark and fit, per score, AUROC against ID accuracy
    (``vlmood zoo``); returns :class:`Zoo`. Rerunning with the same ``out`` reuses the models
    already evaluated from the same inputs.

    Args:
        models: a model-list file (one ``name=spec`` or bare spec per line), a comma list of specs,
            a list of specs (or ``"name=spec"`` texts, or models from :func:`load_model`), or a dict
            name -> spec or model. Specs are loaded one at a time on ``device`` / ``precision``
            and dropped after their evaluation; at least 2 models (3 for a fit).
        bench: the sets of :func:`load_benchmark` (or a benchmark name / YAML path).
        scores: as in :func:`evaluate`; default ``mcm, knn, neglabel, energy`` (KNN and
            Mahalanobis are left out, with a warning, when the benchmark has no train split).
        out: the zoo folder (``zoo.json``, ``zoo.md``, ``scatter-<score>.png``, ``models/<name>/``).
        device, precision: where and how specs are loaded (:func:`load_model`).
        templates, cache_dir, batch_size, num_workers, skip_corrupt, fingerprint, progress: as in
            :func:`evaluate`.
    """
    from vlmood.eval.runner import EvalOptions
    from vlmood.zoos import DEFAULT_ZOO_SCORES, check_zoo, members_from, run_zoo

    members = members_from(models)
    specs = score_specs(DEFAULT_ZOO_SCORES if scores is None else scores)
    check_zoo(members, specs)  # names, specs that cannot load, unknown scores: before any work
    bench = _bench(bench)
    tmpl, origin = (
        (bench.templates, bench.templates_origin) if templates is None else _resolve_templates(templates)
    )
    opts = EvalOptions(
        templates=list(tmpl),
        templates_origin=origin,
        extract=_extract_options(cache_dir, batch_size, num_workers, skip_corrupt, fingerprint, progress),
    )

    def load(spec: str) -> VLM:
        return load_model(spec, device=device, precision=precision)

    data = run_zoo(members, bench.eval_sets, specs, out, opts, load)
    return Zoo(data, Path(out).absolute())


# ---------------------------------------------------------------------------------------------- attack
@dataclass
class AttackResult:
    """A finished ``vlmood attack`` folder: the manipulated dataset and, when evaluated, the table of
    ID vs original and ID vs manipulated OOD images.

    Attributes:
        meta: attack.json (settings, identity, summary: cosines before/after, largest change).
        results: attack_results.json, or None when the attack was not evaluated.
        out: the attack folder.
    """

    meta: dict[str, Any]
    results: dict[str, Any] | None
    out: Path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttackResult:
        from vlmood.attacks.run import read_attack

        out = Path(path).absolute()
        meta = read_attack(out)
        f = out / "attack_results.json"
        return cls(meta, json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None, out)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.meta.get("summary", {}))

    @property
    def dataset(self) -> ImageSource:
        """The manipulated images as an OOD :class:`~vlmood.data.base.ImageSource`."""
        from vlmood.attacks.run import manipulated_source

        return manipulated_source(self.out)

    def manifest(self) -> pd.DataFrame:
        """One row per manipulated image: path, source, target, cosines, l-inf."""
        import pandas as pd

        return pd.read_csv(self.out / "manifest.csv")

    def table(self) -> pd.DataFrame:
        """One row per (evaluation, score): AUROC and FPR95 on the original and the manipulated images."""
        cols = ["run", "score", "auroc_original", "auroc_manipulated", "auroc_drop"]
        cols += ["fpr95_original", "fpr95_manipulated"]
        if self.results is None:
            raise UsageError(
                f"the attack in {self.out} was not evaluated; run vlmood.attack(..., evaluate=True)"
            )
        return _frame(self.results["rows"], cols)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"AttackResult({self.out.name}: {self.meta.get('n_images')} images, {self.meta.get('kind')}, "
            f"cosine {s.get('cos_before_mean', float('nan')):.3f} -> {s.get('cos_after_mean', float('nan')):.3f})"
        )


def attack(
    model: VLM,
    bench: BenchmarkSets | str | os.PathLike,
    *,
    out: str | os.PathLike,
    preset: str = "smooth",
    smooth: float | None = None,
    steps: int = 250,
    lr: float = 1e-3,
    epsilon: float | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
    feature: str = "preproj",
    evaluate: bool = True,
    scores: ScoreLike | Sequence[ScoreLike] | None = None,
    adapter: str | os.PathLike | None = None,
    adapter_scores: ScoreLike | Sequence[ScoreLike] | None = None,
    templates: str | os.PathLike | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> AttackResult:
    """PLP's feature-space OOD manipulation (``vlmood attack``): every OOD image of ``bench`` (or a
    seeded ``limit`` of them) is moved towards a seeded random ID training image's feature, written
    as a dataset into ``out`` (resumable: the same call continues a killed run), then evaluated.

    Returns an :class:`AttackResult`: ``.table()`` holds AUROC / FPR95 (fractions in [0, 1]) of ID vs
    the original and vs the manipulated images per score (scores are ID-high), ``.dataset`` the
    manipulated images, ``.summary`` the mean cosine to the targets before and after.

    Args:
        model: from :func:`load_model` (the attacked image encoder).
        bench: the sets of :func:`load_benchmark`; its train split holds the targets.
        preset: ``"smooth"`` (lambda_s 5e3) or ``"patchy"`` (0); ``smooth`` overrides lambda_s.
        steps, lr, batch_size, seed, feature: the optimisation (PLP: 250, 1e-3, 16; ``preproj``).
        epsilon: an l-infinity budget in [0, 1] pixel units (PLP has none; default None).
        evaluate: score ID vs original and vs manipulated images (``scores``: default KNN, MCM,
            NegLabel, energy; KNN also without the targets in its bank); ``adapter`` adds its head's
            ``adapter_scores`` (default msp, energy, maxlogit).
        templates, cache_dir, num_workers, progress: as in :func:`evaluate`.
    """
    from vlmood.attacks.evaluate import DEFAULT_ADAPTER_SCORES, DEFAULT_SCORES, check_adapter, evaluate_attack
    from vlmood.attacks.feature import PRESETS, AttackConfig
    from vlmood.attacks.run import run_attack
    from vlmood.eval.runner import EvalOptions, build_scores

    if preset not in PRESETS:
        raise UsageError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    cfg = AttackConfig(
        steps=steps,
        lr=lr,
        smooth=PRESETS[preset] if smooth is None else smooth,
        epsilon=epsilon,
        batch_size=batch_size,
        seed=seed,
        feature=feature,
    )
    bench = _bench(bench)
    es = bench.eval_sets
    if es.train is None:
        raise UsageError(
            "the attack needs ID training images as targets, and this benchmark has no train split"
        )
    specs = score_specs(DEFAULT_SCORES if scores is None else scores)
    aspecs = (
        score_specs(DEFAULT_ADAPTER_SCORES if adapter_scores is None else adapter_scores) if adapter else []
    )
    if evaluate:
        build_scores(specs + aspecs)
        if adapter is not None:
            check_adapter(adapter, es.classnames)
    meta = run_attack(
        model, [(o.name, o.source) for o in es.ood], es.train, out, cfg, limit=limit,
        classnames=es.classnames, progress=progress,
    )  # fmt: skip
    if meta.get("status") != "complete":
        raise RunError(f"the attack in {out} is incomplete; call again to resume it")
    results = None
    if evaluate:
        tmpl, origin = (
            (bench.templates, bench.templates_origin) if templates is None else _resolve_templates(templates)
        )
        opts = EvalOptions(
            templates=list(tmpl),
            templates_origin=origin,
            extract=_extract_options(cache_dir, 64, num_workers, False, "stat", progress),
        )
        results = evaluate_attack(model, es, out, specs, opts, adapter=adapter, adapter_scores=aspecs)
    return AttackResult(meta, results, Path(out).absolute())
