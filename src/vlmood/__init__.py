"""vlmood: out-of-distribution detection and robust adaptation of CLIP-style vision-language models.

Score convention: every OOD score is an *ID score* (higher = more in-distribution); metrics and
accuracies are fractions in [0, 1].

The Python API (:mod:`vlmood.api`), loaded on first use so that ``import vlmood`` stays cheap (no
torch until a name below is touched)::

    import vlmood
    model = vlmood.load_model("tiny-test")                       # a VLM
    bench = vlmood.load_benchmark("imagenet-mos", root="/data")   # BenchmarkSets
    res = vlmood.evaluate(model, bench, scores=["mcm", "energy"]) # Results: .table(), .accuracy
    ad = vlmood.fit("coop", model, bench, shots=16, seed=1, out="runs/coop")  # Adapter
    study = vlmood.study(model, bench, methods=["zero-shot", "coop"], seeds=[1, 2], out="runs/s")
    zoo = vlmood.zoo(["vlmood-tiny", "vlmood-small"], bench, out="runs/zoo")  # Zoo: .table(), .fits()
    att = vlmood.attack(model, bench, out="runs/att", preset="patchy", limit=64)  # .table(), .dataset

The study machinery behind ``vlmood.study`` (and ``vlmood study``) lives in :mod:`vlmood.studies`, the
zoo's behind ``vlmood.zoo`` in :mod:`vlmood.zoos` (not ``vlmood.zoo``: importing a submodule of
that name would replace the function on the package).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BenchmarkSets",
    "Results",
    "Study",
    "Zoo",
    "__version__",
    "evaluate",
    "fit",
    "load_benchmark",
    "load_model",
    "study",
    "zoo",
    "attack",
    "AttackResult",
]

if TYPE_CHECKING:
    from vlmood.api import (
        AttackResult,
        BenchmarkSets,
        Results,
        Study,
        Zoo,
        attack,
        evaluate,
        fit,
        load_benchmark,
        study,
        zoo,
    )
    from vlmood.models import load_model

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "AttackResult": "vlmood.api",
    "attack": "vlmood.api",
    "BenchmarkSets": "vlmood.api",
    "Results": "vlmood.api",
    "Study": "vlmood.api",
    "evaluate": "vlmood.api",
    "fit": "vlmood.api",
    "load_benchmark": "vlmood.api",
    "load_model": "vlmood.models",
    "study": "vlmood.api",
    "Zoo": "vlmood.api",
    "zoo": "vlmood.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmood' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})
