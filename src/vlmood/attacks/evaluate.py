"""The attack's evaluation table: ID vs the original OOD images and ID vs the manipulated ones.

Three evaluations through :func:`vlmood.eval.runner.run_eval` (each resumable, in
``OUT/eval/<run>/``):

- ``zero-shot``: the requested scores (default KNN, MCM, NegLabel, energy) with the ID training
  set as KNN's bank;
- ``knn-without-targets``: KNN with the attack's target images removed from the bank (PLP's
  "_sub" row: a manipulated image can no longer match its own target);
- ``adapter`` (with ``--adapter``): the adapter's class head and its scores (e.g. a PLP probe's
  MSP / energy / max-logit).

``attack_results.json`` gathers one row per (run, score): AUROC and FPR95 for both OOD sets and
the AUROC drop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmood.attacks.run import manifest_rows, manipulated_source, original_source, read_attack
from vlmood.data.base import ImageSource
from vlmood.errors import UsageError
from vlmood.eval.runner import EvalOptions, EvalSets, OODSet, ScoreSpec, run_eval
from vlmood.utils import atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_SCORES = "knn,mcm,neglabel,energy"
DEFAULT_ADAPTER_SCORES = "msp,energy,maxlogit"
RESULTS_SCHEMA = "vlmood.attack_results/1"
SETS = ("original", "manipulated")


def without_targets(train: ImageSource, used: set[str]) -> ImageSource:
    keep = [s for s in train.samples if s.path not in used]
    found = len({s.path for s in train.samples} & used)
    if found != len(used):
        raise UsageError(
            f"the ID training set {train.name!r} ({train.origin}) holds {found} of the attack's {len(used)} target "
            "images (matched by path): KNN without the targets needs the training set the attack drew them "
            "from; pass the same --benchmark/--root or --train"
        )
    if not keep:
        raise UsageError(
            "every ID training image is an attack target: KNN without the targets has an empty bank; "
            "attack fewer images (--limit) or use a larger training set"
        )
    return dataclasses.replace(train, name=f"{train.name}-without-targets", samples=keep)


def evaluate_attack(
    model,
    sets: EvalSets,
    out: str | os.PathLike,
    scores: Sequence[ScoreSpec],
    opts: EvalOptions,
    *,
    adapter: str | os.PathLike | None = None,
    adapter_scores: Sequence[ScoreSpec] = (),
) -> dict[str, Any]:
    """Run the evaluations and write ``OUT/attack_results.json`` (returned; with another model than the
    attacked one, ``OUT/attack_results-transfer-<key>.json`` and ``OUT/eval/transfer-<key>/``). ``adapter``: an
    adapter folder (``vlmood fit``), loaded onto ``model`` after the zero-shot evaluations."""
    from vlmood import distributed as D

    out = Path(out).absolute()
    meta = read_attack(out)
    rows_m = manifest_rows(out)
    # the attacked model's evaluation is eval/<run>/ and attack_results.json; another model's (a
    # transfer attack) eval/transfer-<key>/<run>/ and attack_results-transfer-<key>.json
    transfer = meta["identity"]["model"] != model.identity.key
    tag = f"transfer-{model.identity.key[:12]}" if transfer else ""
    eval_dir = out / "eval" / tag if transfer else out / "eval"
    results_file = out / (f"attack_results-{tag}.json" if transfer else "attack_results.json")
    both = [
        OODSet("original", original_source(out, rows=rows_m)),
        OODSet("manipulated", manipulated_source(out, rows=rows_m)),
    ]
    base = dataclasses.replace(sets, ood=both, domain_shift=[], held_out=[])
    runs: dict[str, dict[str, Any]] = {}
    needs_train = [s for s in scores if s.name in ("knn", "mahalanobis")]
    if needs_train and sets.train is None:
        raise UsageError("knn/mahalanobis need the ID training set as their bank; pass --train or drop them")
    runs["zero-shot"] = run_eval(model, base, list(scores), eval_dir / "zero-shot", opts, reuse=True)
    knn = [s for s in scores if s.name == "knn"]
    if knn and sets.train is not None:
        sub = dataclasses.replace(base, train=without_targets(sets.train, {r["target"] for r in rows_m}))
        specs = [ScoreSpec(s.name, dict(s.params), f"{s.label} (bank without targets)") for s in knn]
        runs["knn-without-targets"] = run_eval(
            model, sub, specs, eval_dir / "knn-without-targets", opts, reuse=True
        )
    if adapter is not None:
        from vlmood.eval.heads import head_kind
        from vlmood.methods import load_adapter
        from vlmood.studies import _supported

        check_adapter(adapter, sets.classnames)
        adapter_path, adapter = adapter, load_adapter(adapter, model)
        adapter_info = adapter.record(str(adapter_path))

        ok, skipped = _supported(list(adapter_scores), head_kind(adapter))
        for label, why in skipped.items():
            log.warning("adapter score %s skipped: %s", label, why)
        if not ok:
            raise UsageError(
                f"none of the adapter scores ({', '.join(s.label for s in adapter_scores)}) runs on this "
                f"adapter's {head_kind(adapter)} head; choose others with --adapter-scores"
            )
        aopts = dataclasses.replace(opts, adapter=adapter, adapter_info=adapter_info)
        runs["adapter"] = run_eval(model, base, ok, eval_dir / "adapter", aopts, reuse=True)
    table = attack_table(runs)
    result = {
        "schema": RESULTS_SCHEMA,
        "n_id": len(sets.id),
        "n_attacked": len(rows_m),
        # the evaluated model; another than the attacked one measures a transfer attack
        "model": model.identity.to_dict(),
        "attacked_model_key": meta["identity"]["model"],
        "transfer": transfer,
        "id_accuracy": runs["zero-shot"].get("id_accuracy"),
        "runs": {k: str(eval_dir / k / "results.json") for k in runs},
        "rows": table,
    }
    if D.is_main():  # under torchrun every rank evaluates (run_eval is collective); rank 0 writes
        atomic_write_json(results_file, result)
    return result


def check_adapter(path: str | os.PathLike, classnames: Sequence[str]) -> None:
    """Refuse an adapter trained for other class names (before any work)."""
    from vlmood.methods import read_adapter_info

    info = read_adapter_info(path)
    if list(info.get("classnames", [])) != list(classnames):
        raise UsageError(
            f"adapter {path} was trained for {len(info.get('classnames', []))} other class names than this "
            f"ID set's {len(classnames)}; evaluate it on the classes it learned"
        )


def attack_table(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, score): AUROC / FPR95 on the original and the manipulated images."""
    rows = []
    for run, res in runs.items():
        for label, rec in res.get("scores", {}).items():
            per = rec.get("per_set", {})
            if not all(s in per for s in SETS):
                continue
            o, m = per["original"], per["manipulated"]
            rows.append(
                {
                    "run": run,
                    "score": label,
                    "auroc_original": o.get("auroc"),
                    "auroc_manipulated": m.get("auroc"),
                    "auroc_drop": _sub(o.get("auroc"), m.get("auroc")),
                    "fpr95_original": o.get("fpr95"),
                    "fpr95_manipulated": m.get("fpr95"),
                }
            )
    return rows


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def format_attack_table(result: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    lines = []
    if meta is not None:
        s = meta.get("summary", {})
        lines.append(
            f"attack ({meta.get('kind')}, lambda_s={meta['config']['smooth']:g}, {meta['config']['steps']} steps, "
            f"epsilon={meta['config']['epsilon']}): {meta['n_images']} OOD images; cosine to target "
            f"{s.get('cos_before_mean', float('nan')):.3f} -> {s.get('cos_after_mean', float('nan')):.3f}, "
            f"max |delta| {s.get('linf_max', float('nan')):.3f}"
        )
    head = f"{'score':<38} {'AUROC orig':>10} {'AUROC manip':>11} {'drop':>7} {'FPR95 orig':>10} {'FPR95 manip':>11}"
    lines += [head, "-" * len(head)]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    for r in result["rows"]:
        name = r["score"] if r["run"] != "adapter" else f"adapter: {r['score']}"
        lines.append(
            f"{name:<38} {pct(r['auroc_original']):>10} {pct(r['auroc_manipulated']):>11} "
            f"{pct(r['auroc_drop']):>7} {pct(r['fpr95_original']):>10} {pct(r['fpr95_manipulated']):>11}"
        )
    return "\n".join(lines)
