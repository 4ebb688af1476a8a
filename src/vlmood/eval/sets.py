"""Turn CLI/API arguments (a benchmark, or ID + OOD paths) into :class:`EvalSets`.

Besides building the sets this is where inputs are checked before any work starts: list/CSV
files must exist under their root (``0 of 150 images of set 'id' exist under ROOT``), and
:func:`input_warnings` flags inputs that give meaningless numbers without failing (a train set
that is the ID test set, an OOD set overlapping the ID set, duplicate class names); the warnings
are logged and recorded in ``EvalSets.warnings`` (results.json ``warnings``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmood.data.base import DataError, ImageSource
from vlmood.eval.runner import EvalSets, LabelledSet, OODSet

log = logging.getLogger(__name__)


@dataclass
class ResolvedSets:
    eval_sets: EvalSets
    templates: list[str] | None = None  # the benchmark's default templates
    templates_origin: str | None = None


def parse_ood_arg(text: str) -> tuple[str, str, str]:
    """``[near|far/]NAME=PATH`` or ``PATH`` -> (group, name, path)."""
    group = "ood"
    if "=" in text:
        left, _, path = text.partition("=")
        if "/" in left:
            group, _, name = left.partition("/")
            if group not in ("near", "far"):
                raise DataError(f"--ood {text!r}: group must be 'near' or 'far', got {group!r}")
        else:
            name = left
    else:
        path = text
        name = Path(text.rstrip("/")).name or text
    if not name or not path:
        raise DataError(f"--ood {text!r}: expected [near|far/]NAME=PATH")
    return group, name, path


def sets_from_args(
    benchmark: str | None = None,
    root: str | os.PathLike | None = None,
    id_data: str | None = None,
    classnames: str | None = None,
    ood: Sequence[str] = (),
    train: str | None = None,
    *,
    classnames_order: str | None = None,
    allow_outside_root: bool = False,
    only: str | Sequence[str] | None = None,
    skip_missing: bool = False,
) -> ResolvedSets:
    """Build the evaluation sets from a benchmark definition or from explicit paths.

    Explicit ``--ood``/``--train`` add to a benchmark's sets; ``--classnames`` overrides its names.
    ``root`` is the benchmark's data root, and the image root of list/CSV files given as
    ``id_data``/``ood``/``train`` (default: each list's own folder); a folder given directly is
    its own root. ``only`` (``--sets``) reads just the ID set and the named benchmark sets.
    ``classnames_order="sorted"`` opts a class folder into positional names;
    ``allow_outside_root`` lets paths leave their root. Listed files must exist
    (``skip_missing``: some may be missing, they are skipped by ``--skip-corrupt``).
    """
    from vlmood.data.classnames import load_classnames
    from vlmood.data.sources import load_source

    src_kw = {"allow_outside_root": allow_outside_root}
    if benchmark:
        if id_data:
            raise DataError("pass either --benchmark or --id, not both")
        resolved = sets_from_benchmark(
            benchmark,
            root,
            only=only,
            allow_outside_root=allow_outside_root,
            classnames_order=classnames_order,
        )
        es = resolved.eval_sets
    else:
        if only is not None:
            raise DataError("--sets selects sets of a benchmark; with --id/--ood give only the sets you want")
        if not id_data:
            raise DataError("no ID data: pass --benchmark NAME --root DIR, or --id PATH with --ood NAME=PATH")
        src = load_source(
            id_data, root=root, classnames=classnames, name="id", classnames_order=classnames_order, **src_kw
        )
        if src.classnames is None:
            raise DataError(f"{id_data}: no class names; pass --classnames FILE (one name per line)")
        if any(lb < 0 for lb in src.labels):
            raise DataError(f"{id_data}: the ID set needs labels (a class folder, a labelled list or CSV)")
        es = EvalSets(
            id=src,
            classnames=list(src.classnames),
            ood=[],
            classnames_origin=str(classnames) if classnames else f"folder names of {id_data}",
            classnames_mapping=str(src.meta.get("classnames_mapping", "")),
        )
        resolved = ResolvedSets(es)
    if classnames and benchmark:
        names, _sha = load_classnames(classnames)
        if len(names) != len(es.classnames):
            raise DataError(
                f"--classnames {classnames} has {len(names)} names, the benchmark's ID set {len(es.classnames)}"
            )
        for ls in es.domain_shift:  # domain-shift sets share the ID label space: rename them too
            if ls.classnames == es.classnames:
                ls.classnames = list(names)
        es.classnames, es.classnames_origin = list(names), str(classnames)
        es.classnames_mapping = f"{es.classnames_mapping}, renamed by label index (--classnames)"
    for text in ood:
        group, name, path = parse_ood_arg(text)
        if any(o.name == name for o in es.ood):
            raise DataError(f"two OOD sets are named {name!r}")
        es.ood.append(OODSet(name, load_source(path, root=root, name=name, **src_kw), group))
    if train:
        # the ID class names, mapped onto the train folders the same way (by name, mapping file...)
        spec = es.id.meta.get("classnames_spec") if not (classnames and benchmark) else None
        es.train = load_source(
            train,
            root=root,
            classnames=spec or es.classnames,
            name="train",
            classnames_order=classnames_order,
            **src_kw,
        )
        if es.train.classnames is not None and list(es.train.classnames) != list(es.classnames):
            raise DataError(
                f"--train {train}: its class names ({len(es.train.classnames)}) differ from the ID set's "
                f"({len(es.classnames)}); give the training images of the ID classes"
            )
    if not es.ood:
        raise DataError("no OOD sets: pass --ood NAME=PATH (repeatable) or a benchmark that defines them")
    check_sets_exist(es, allow_missing=skip_missing)
    es.warnings = input_warnings(es)
    for w in es.warnings:
        log.warning("%s", w)
    return resolved


def sets_from_benchmark(
    benchmark: str,
    root: str | os.PathLike | None,
    *,
    only: str | Sequence[str] | None = None,
    allow_outside_root: bool = False,
    classnames_order: str | None = None,
) -> ResolvedSets:
    """Resolve a packaged or YAML benchmark under ``root`` into EvalSets (``only``: the ID set
    plus these set names, see :meth:`Benchmark.set_keys`)."""
    from vlmood.data.benchmarks import load_benchmark

    bench = load_benchmark(benchmark)
    if classnames_order is not None:
        bench.classnames_order = classnames_order
    r = bench.resolve(
        root,
        only=list(only) if isinstance(only, (list, tuple)) else only,
        allow_outside_root=allow_outside_root,
    )
    id_src = r["id"]
    names = list(id_src.classnames or [])
    if not names:
        raise DataError(f"{bench.origin}: the ID set has no class names (field 'id.classnames')")
    # the declared set specs give each resolved source its role, name and group (no key parsing)
    resolved = [(spec, r[spec.key]) for spec in bench.sets() if spec.key in r]
    ood = [OODSet(spec.name, src, spec.role) for spec, src in resolved if spec.role in ("near", "far")]

    def labelled(role: str, default_names: list[str] | None) -> list[LabelledSet]:
        out = []
        for spec, src in resolved:
            if spec.role == role:
                cls = list(src.classnames or default_names or [])
                if not cls:
                    raise DataError(f"{bench.origin}: set {spec.key!r} has no class names")
                out.append(LabelledSet(spec.name, src, cls, getattr(spec, "note", None)))
        return out

    es = EvalSets(
        id=id_src,
        classnames=names,
        ood=ood,
        train=r.get("train"),
        domain_shift=labelled("domain_shift", names),
        held_out=labelled("held_out", None),
        classnames_origin=str(id_src.meta.get("classnames_origin") or bench.id.classnames or bench.name),
        benchmark=bench.name,
        classnames_mapping=str(id_src.meta.get("classnames_mapping", "")),
    )
    templates, _sha = bench.load_templates(root, allow_outside_root=allow_outside_root)
    return ResolvedSets(es, templates=templates, templates_origin=bench.id.templates or bench.templates)


def _all_sources(es: EvalSets) -> list[tuple[str, ImageSource]]:
    out = [("id", es.id)] + [(o.name, o.source) for o in es.ood]
    if es.train is not None:
        out.append(("train", es.train))
    return out + [(ls.name, ls.source) for ls in es.domain_shift + es.held_out]


def check_sets_exist(es: EvalSets, allow_missing: bool = False) -> None:
    """Every listed file of every set exists under its root (before any DataLoader starts)."""
    from vlmood.data.sources import check_files_exist

    for label, src in _all_sources(es):
        check_files_exist(src, label, allow_missing=allow_missing)


def _real_files(src: ImageSource) -> set[str]:
    """The sample files with symlinked folders resolved (one realpath per folder, not per file)."""
    dirs: dict[str, str] = {}
    out = set()
    for s in src.samples:
        d, base = os.path.split(s.path)
        if d not in dirs:
            dirs[d] = os.path.realpath(d)
        out.add(os.path.join(dirs[d], base))
    return out


def input_warnings(es: EvalSets) -> list[str]:
    """Inputs that run but give meaningless or surprising numbers (one line each):
    train files = ID test files, an OOD set sharing files with the ID set, duplicate class names."""
    out: list[str] = []
    id_files = _real_files(es.id)
    if es.train is not None:
        tr = _real_files(es.train)
        both = len(id_files & tr)
        if tr == id_files:
            out.append(
                f"the train set ({es.train.origin}) is the ID test set ({len(tr)} same files): KNN and "
                f"Mahalanobis compare test images with themselves (KNN AUROC ~1.0); pass a separate "
                f"training split with --train"
            )
        elif both:
            out.append(
                f"{both} of {len(id_files)} ID test images are also in the train set ({es.train.origin}); "
                f"KNN/Mahalanobis scores are optimistic for them; use disjoint splits"
            )
    for o in es.ood:
        of = _real_files(o.source)
        both = len(id_files & of)
        if of == id_files:
            out.append(
                f"OOD set {o.name!r} ({o.source.origin}) is the ID set ({len(of)} same files): its AUROC "
                f"is 0.5 by construction; check --ood"
            )
        elif both:
            out.append(
                f"{both} of {len(of)} images of OOD set {o.name!r} are also in the ID set; they count as "
                f"both ID and OOD"
            )
    dup = sorted(n for n, c in Counter(es.classnames).items() if c > 1)
    if dup:
        shown = ", ".join(repr(n) for n in dup[:5]) + (" ..." if len(dup) > 5 else "")
        out.append(
            f"{len(dup)} class name(s) appear more than once ({shown}) in {es.classnames_origin or 'the class names'}: "
            f"those classes get identical text features and zero-shot accuracy cannot tell them apart"
        )
    return out
