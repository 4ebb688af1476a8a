"""Training data for ``vlmood fit``: its own resolver, independent of the evaluation sets.

Training needs labelled (or, for UEO/PLP, unlabelled) images and the class names, never OOD
sets. :func:`training_source` resolves them from

- ``benchmark``: the benchmark's ``train`` split (only the ID and train sets are read), or the
  images of ``train`` labelled with the benchmark's ID classes; ``classnames`` renames the
  classes by label index (as ``eval`` does);
- ``id_data`` and/or ``train``: an image folder, list or CSV. With both, the images are
  ``train`` and the class names those of ``id_data`` (mapped onto ``train``'s folders the same
  way); with one, that one.

Paths, class-name mapping (by folder name, explicit mapping files, ``classnames_order``),
``root`` for lists and the outside-root checks are the data layer's
(:func:`vlmood.data.sources.load_source`, :func:`vlmood.eval.sets.sets_from_benchmark`), so
``fit`` reads data exactly as ``eval`` does.

``val_sets`` (``vlmood fit --val-set``): validation sets of the training classes, each a
domain-shift set of ``benchmark`` by name or a labelled folder / list / CSV whose classes are
mapped onto the training class names as ``train`` is (:func:`validation_sets`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmood.data.base import DataError, ImageSource
from vlmood.errors import UsageError


@dataclass
class TrainingSet:
    """The images a method trains on and the class names their labels index."""

    source: ImageSource
    classnames: list[str]
    origin: str  # where the images and names came from (for messages and records)
    meta: dict[str, Any] = field(default_factory=dict)
    #: validation sets of the training classes by name (``--val-set``; domain shift)
    val_sets: dict[str, ImageSource] = field(default_factory=dict)


def training_source(
    *,
    benchmark: str | None = None,
    root: str | os.PathLike | None = None,
    id_data: str | None = None,
    train: str | None = None,
    classnames: str | None = None,
    classnames_order: str | None = None,
    allow_outside_root: bool = False,
    skip_missing: bool = False,
    val_sets: Sequence[str] = (),
) -> TrainingSet:
    """Resolve the training images (and ``val_sets``, see the module docstring); DataError /
    UsageError naming the input when they cannot be read, before any model is loaded."""
    from vlmood.data.sources import check_files_exist, load_source

    kw: dict[str, Any] = {"allow_outside_root": allow_outside_root}
    if classnames_order is not None:
        kw["classnames_order"] = classnames_order
    if benchmark:
        if id_data:
            raise UsageError(
                "pass either --benchmark (its train split is used) or --id/--train DIR, not both"
            )
        ts = _from_benchmark(benchmark, root, train, classnames, classnames_order, allow_outside_root)
    else:
        if not (id_data or train):
            raise UsageError(
                "no training data: pass --benchmark NAME (its train split), or --id DIR with the "
                "labelled training images (a class folder, image list or CSV) and --classnames FILE"
            )
        first = id_data or train
        src = load_source(first, root=root, classnames=classnames, name="train", **kw)
        names = list(src.classnames or [])
        origin = f"{first}"
        if id_data and train:  # images of --train, class names of --id (mapped the same way)
            spec = src.meta.get("classnames_spec") or names
            src = load_source(train, root=root, classnames=spec or None, name="train", **kw)
            if src.classnames is not None and names and list(src.classnames) != names:
                raise DataError(
                    f"--train {train}: its class names ({len(src.classnames)}) differ from those of "
                    f"--id {id_data} ({len(names)}); give the training images of the same classes"
                )
            origin = f"{train} (classes of {id_data})"
        if not names:
            raise UsageError(
                f"{first}: no class names for the training images; pass --classnames FILE "
                f"(a class folder names its classes by its subfolders)"
            )
        ts = TrainingSet(src, names, origin)
    check_files_exist(ts.source, "train", allow_missing=skip_missing)
    if val_sets:
        spec = ts.source.meta.get("classnames_spec") or ts.classnames
        ts.val_sets = validation_sets(
            val_sets,
            benchmark=benchmark,
            root=root,
            classnames=spec,
            n_classes=len(ts.classnames),
            classnames_order=classnames_order,
            allow_outside_root=allow_outside_root,
        )
        for name, src in ts.val_sets.items():
            check_files_exist(src, f"validation set {name}", allow_missing=skip_missing)
    return ts


def validation_sets(
    specs: Sequence[str],
    *,
    benchmark: str | None = None,
    root: str | os.PathLike | None = None,
    classnames: Any = None,
    n_classes: int | None = None,
    classnames_order: str | None = None,
    allow_outside_root: bool = False,
) -> dict[str, ImageSource]:
    """``{name: source}`` of ``--val-set`` values: a domain-shift set of ``benchmark`` by name, or a
    labelled folder / list / CSV of the training classes (``classnames``: their names or mapping,
    as for ``--train``). UsageError for a name that is neither."""
    from pathlib import Path

    from vlmood.data.sources import load_source, split_kind

    bench = None
    shift: list[str] = []
    if benchmark:
        from vlmood.data.benchmarks import load_benchmark

        bench = load_benchmark(benchmark)
        shift = [s.name for s in bench.domain_shift]
    out: dict[str, ImageSource] = {}
    by_bench = [s for s in dict.fromkeys(specs) if s in shift]
    if by_bench:
        from vlmood.eval.sets import sets_from_benchmark

        es = sets_from_benchmark(
            benchmark,
            root,
            only=by_bench,
            allow_outside_root=allow_outside_root,
            classnames_order=classnames_order,
        ).eval_sets
        out.update({ls.name: ls.source for ls in es.domain_shift if ls.name in by_bench})
    for spec in dict.fromkeys(specs):
        if spec in out:
            continue
        _kind, path = split_kind(str(spec))
        if not Path(path).exists():
            where = (
                f"benchmark {bench.name!r} has no domain-shift set of that name (its domain-shift sets: "
                f"{', '.join(shift) or 'none'})"
                if bench is not None
                else "give a domain-shift set of --benchmark by name"
            )
            raise UsageError(
                f"--val-set {spec}: {where}, and no such path (a labelled folder, list or CSV of the "
                "training classes)"
            )
        kw: dict[str, Any] = {"allow_outside_root": allow_outside_root}
        if classnames_order is not None:
            kw["classnames_order"] = classnames_order
        src = load_source(spec, root=root, classnames=classnames, name=Path(path).stem or str(spec), **kw)
        if all(label < 0 for label in src.labels):
            raise UsageError(
                f"--val-set {spec}: its images have no labels; give a labelled class folder, list or CSV"
            )
        if n_classes is not None and src.classnames and len(src.classnames) != n_classes:
            raise DataError(
                f"--val-set {spec}: {len(src.classnames)} classes, the training data {n_classes}; a "
                "validation set holds images of the training classes"
            )
        out[str(spec)] = src
    return out


def _from_benchmark(
    benchmark: str,
    root: str | os.PathLike | None,
    train: str | None,
    classnames: str | None,
    classnames_order: str | None,
    allow_outside_root: bool,
) -> TrainingSet:
    from vlmood.data.benchmarks import load_benchmark
    from vlmood.data.classnames import load_classnames
    from vlmood.data.sources import load_source
    from vlmood.eval.sets import sets_from_benchmark

    bench = load_benchmark(benchmark)
    only = ["train"] if (bench.train is not None and not train) else []  # the ID set is always read
    es = sets_from_benchmark(
        benchmark,
        root,
        only=only,
        allow_outside_root=allow_outside_root,
        classnames_order=classnames_order,
    ).eval_sets
    names = list(es.classnames)
    if train:
        spec = es.id.meta.get("classnames_spec") or names
        kw: dict[str, Any] = {"allow_outside_root": allow_outside_root}
        if classnames_order is not None:
            kw["classnames_order"] = classnames_order
        src = load_source(train, root=root, classnames=spec, name="train", **kw)
        origin = f"{train} (classes of benchmark {bench.name})"
    elif es.train is None:
        raise DataError(
            f"benchmark {bench.name!r} has no train split; pass --train DIR with training images of its "
            f"{len(names)} ID classes"
        )
    else:
        src = es.train
        origin = f"benchmark {bench.name} train split"
    if classnames:
        renamed, _sha = load_classnames(classnames)
        if len(renamed) != len(names):
            raise DataError(
                f"--classnames {classnames} has {len(renamed)} names, the benchmark's ID set {len(names)}"
            )
        names = list(renamed)
    return TrainingSet(src, names, origin, {"benchmark": bench.name})
