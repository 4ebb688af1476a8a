"""Turn CLI/API arguments (a benchmark, or ID + OOD paths) into :class:`EvalSets`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmood.data.base import DataError
from vlmood.eval.runner import EvalSets, LabelledSet, OODSet


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
) -> ResolvedSets:
    """Build the evaluation sets from a benchmark definition or from explicit paths.

    Explicit ``--ood``/``--train`` add to a benchmark's sets; ``--classnames`` overrides its names.
    """
    from vlmood.data.classnames import load_classnames
    from vlmood.data.sources import load_source

    if benchmark:
        if id_data:
            raise DataError("pass either --benchmark or --id, not both")
        resolved = sets_from_benchmark(benchmark, root)
        es = resolved.eval_sets
    else:
        if not id_data:
            raise DataError("no ID data: pass --benchmark NAME --root DIR, or --id PATH with --ood NAME=PATH")
        names = None
        origin = ""
        if classnames:
            names, _sha = load_classnames(classnames)
            origin = str(classnames)
        src = load_source(id_data, classnames=names, name="id")
        if src.classnames is None:
            raise DataError(f"{id_data}: no class names; pass --classnames FILE (one name per line)")
        if any(lb < 0 for lb in src.labels):
            raise DataError(f"{id_data}: the ID set needs labels (a class folder, a labelled list or CSV)")
        es = EvalSets(
            id=src,
            classnames=list(src.classnames),
            ood=[],
            classnames_origin=origin or f"folder names of {id_data}",
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
    for text in ood:
        group, name, path = parse_ood_arg(text)
        if any(o.name == name for o in es.ood):
            raise DataError(f"two OOD sets are named {name!r}")
        es.ood.append(OODSet(name, load_source(path, name=name), group))
    if train:
        es.train = load_source(train, classnames=es.classnames, name="train")
    if not es.ood:
        raise DataError("no OOD sets: pass --ood NAME=PATH (repeatable) or a benchmark that defines them")
    return resolved


def sets_from_benchmark(benchmark: str, root: str | os.PathLike | None) -> ResolvedSets:
    """Resolve a packaged or YAML benchmark under ``root`` into EvalSets."""
    from vlmood.data.benchmarks import load_benchmark

    bench = load_benchmark(benchmark)
    r = bench.resolve(root)
    id_src = r["id"]
    names = list(id_src.classnames or [])
    if not names:
        raise DataError(f"{bench.origin}: the ID set has no class names (field 'id.classnames')")
    ood = []
    for key, src in r.items():
        if key.startswith("ood/"):
            _, group, name = key.split("/", 2)
            ood.append(OODSet(name, src, group))

    notes = {spec.key: getattr(spec, "note", None) for spec in bench.sets()}

    def labelled(prefix: str, default_names: list[str] | None) -> list[LabelledSet]:
        out = []
        for key, src in r.items():
            if key.startswith(prefix + "/"):
                cls = list(src.classnames or default_names or [])
                if not cls:
                    raise DataError(f"{bench.origin}: set {key!r} has no class names")
                out.append(LabelledSet(key.split("/", 1)[1], src, cls, notes.get(key)))
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
    )
    templates, _sha = bench.load_templates(root)
    return ResolvedSets(es, templates=templates, templates_origin=bench.id.templates or bench.templates)
