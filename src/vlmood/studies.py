"""The fine-tuning x OOD-score study (Ming & Li, IJCV 2023) as one command: ``vlmood study``.

For one benchmark: evaluate the zero-shot model, then for each adaptation method and seed train an
adapter on the benchmark's train split (few-shot for supervised methods; the whole split, labels
unused, for unsupervised ones: PLP, UEO), evaluate it with every requested score through its class
head (:mod:`vlmood.eval.heads`), and aggregate one table: per method and score, ID accuracy and
near/far-OOD FPR95 / AUROC as mean and standard deviation over seeds.

Layout of ``out_dir`` (every piece is reused when the study runs again, so a killed study
resumes where it stopped; a piece whose settings changed is an error, not silently reused):

- ``adapters/<method>/seed<s>/``: adapter artifacts (``vlmood fit``'s layout; an interrupted
  training resumes from its checkpoint);
- ``runs/zero-shot/`` and ``runs/<method>/seed<s>/``: ``vlmood eval`` results;
- ``study.json`` (every number per seed plus the aggregates), ``study.md`` (the tables).

NegLabel negatives are mined once, by the zero-shot run (when it is part of the study), and reused by
every method; the ID side is each method's own class features (or per-image cosines).

A score a method's head cannot support (NegLabel and GL-MCM on a probe, GL-MCM on CoCoOp) is
shown as ``n/a`` for that method, with the reason in ``study.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.eval.heads import head_kind
from vlmood.eval.runner import EvalOptions, EvalSets, ScoreSpec, build_scores, run_eval
from vlmood.utils import atomic_path, atomic_write_json, sha256_json

log = logging.getLogger(__name__)

STUDY_SCHEMA = "vlmood.study/1"
ZERO_SHOT = "zero-shot"
WISE_FT = "wise-ft"


@dataclass
class StudyConfig:
    methods: list[str]
    scores: list[ScoreSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    shots: int | None = 16
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> hyperparameters
    train: dict[str, dict[str, Any]] = field(default_factory=dict)  # method or "*" -> TrainConfig fields


def _check_config(cfg: StudyConfig) -> None:
    from vlmood.methods import METHODS

    if not cfg.methods:
        raise ValueError("no methods given")
    dup = sorted({m for m in cfg.methods if cfg.methods.count(m) > 1})
    if dup:
        raise ValueError(f"methods repeated: {dup}")
    unknown = [m for m in cfg.methods if m != ZERO_SHOT and m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {ZERO_SHOT}, {', '.join(METHODS.list())}")
    for m in list(cfg.params) + [k for k in cfg.train if k != "*"]:
        if m not in cfg.methods:
            raise ValueError(f"settings given for {m!r}, which is not among the study's methods")
    if not cfg.seeds:
        raise ValueError("no seeds given")
    if cfg.shots is not None and cfg.shots < 1:
        raise ValueError(f"shots must be >= 1, got {cfg.shots}")
    build_scores(cfg.scores)  # unknown scores / parameters fail now
    from vlmood.methods import create_method

    for m in cfg.methods:  # bad hyperparameters or training settings fail before any work
        if m != ZERO_SHOT:
            _train_config(create_method(m, **cfg.params.get(m, {})), cfg, cfg.seeds[0])
    if any(over.get("strategy") == "fsdp" for over in cfg.train.values()):
        raise ValueError(
            "strategy=fsdp shards a model over torchrun processes and a study runs in one process; "
            "run `vlmood fit` under torchrun for sharded training"
        )
    if WISE_FT in cfg.methods:
        _check_wise_ft_endpoint(cfg)


def _check_wise_ft_endpoint(cfg: StudyConfig) -> None:
    """wise-ft's endpoint: a full fine-tune method of the study listed before it, or an adapter folder."""
    from vlmood.methods import METHODS
    from vlmood.methods.finetune import FullFinetune

    endpoint = str(cfg.params.get(WISE_FT, {}).get("endpoint", ""))

    def full_finetune(m: str) -> bool:
        return m in METHODS and m != WISE_FT and issubclass(METHODS.get(m), FullFinetune)

    full = [m for m in cfg.methods if full_finetune(m)]
    if endpoint in cfg.methods:
        if not full_finetune(endpoint):
            raise ValueError(
                f"wise-ft:endpoint {endpoint!r} is not a full fine-tune; name one of the study's "
                f"full fine-tunes ({', '.join(full) or 'none: add ft, lp-ft, flyp, cma or arf to --methods'})"
            )
        if cfg.methods.index(endpoint) > cfg.methods.index(WISE_FT):
            raise ValueError(
                f"wise-ft interpolates the study's {endpoint!r} adapters: list {endpoint} before wise-ft"
            )
    elif not Path(endpoint).is_dir():
        raise ValueError(
            f"wise-ft:endpoint {endpoint!r} is neither a method of this study nor an adapter folder; "
            f"pass --param wise-ft:endpoint=<{'|'.join(full) or 'ft'}> (listed in --methods before "
            "wise-ft) or the folder of a full fine-tune adapter"
        )


def _train_config(method, cfg: StudyConfig, seed: int):
    over = {**cfg.train.get("*", {}), **cfg.train.get(method.name, {})}
    from vlmood.train.engine import TrainConfig

    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(over) - valid)
    if bad:
        raise ValueError(f"unknown training setting(s) {bad}; valid: {', '.join(sorted(valid))}")
    tc = method.default_config(**over)
    return dataclasses.replace(tc, seed=seed)


def _supported(specs: Sequence[ScoreSpec], head_kind: str) -> tuple[list[ScoreSpec], dict[str, str]]:
    from vlmood.eval.heads import unsupported_reason

    keep, skipped = [], {}
    for spec, sc in build_scores(specs):
        why = unsupported_reason(sc, head_kind)
        if why:
            skipped[spec.label] = why
        else:
            keep.append(spec)
    return keep, skipped


def run_study(
    model_factory: Callable[[], Any],
    sets: EvalSets,
    cfg: StudyConfig,
    out_dir: str | os.PathLike,
    opts: EvalOptions,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the study; returns the ``study.json`` dict. ``model_factory()`` returns a
    fresh base model: methods that rewrite the image encoder when loaded (UEO) get their own."""
    from vlmood.methods import (
        METHODS,
        AdapterMismatchError,
        create_method,
        fit_method,
        load_adapter,
    )
    from vlmood.methods.wise_ft import parse_alphas

    _check_config(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "vlmood study runs in one process (it trains and evaluates many pieces into one folder); "
            "run it without torchrun, or run `vlmood fit` / `vlmood eval` under torchrun instead"
        )
    if any(m != ZERO_SHOT for m in cfg.methods) and sets.train is None:
        raise ValueError(
            "the study trains adapters on the benchmark's train split, and this benchmark has none"
        )
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "methods": cfg.methods,
        "seeds": cfg.seeds,
        "shots": cfg.shots,
        "params": cfg.params,
        "train": cfg.train,
        "scores": [s.record() for s in cfg.scores],
        "benchmark": sets.benchmark,
    }
    t0 = time.perf_counter()
    base = model_factory()
    runs: dict[str, dict[str, Any]] = {}
    results: dict[tuple[str, str], dict[str, Any]] = {}  # (method, seed) -> results dict

    method_scores = list(cfg.scores)

    def evaluate(
        run_dir: Path, model, adapter, info: dict | None, wanted: list[ScoreSpec]
    ) -> tuple[dict, dict]:
        specs, skipped = _supported(wanted, head_kind(adapter))
        o = dataclasses.replace(opts, adapter=adapter, adapter_info=info, command=opts.command)
        res = run_eval(model, sets, specs, run_dir, o, reuse=True)  # same inputs: nothing recomputed
        rec = {"results": str((run_dir / "results.json").relative_to(out)), "skipped_scores": skipped}
        return rec, res

    if ZERO_SHOT in cfg.methods:
        log.info("study: zero-shot")
        rec, res = evaluate(out / "runs" / ZERO_SHOT, base, None, None, cfg.scores)
        runs[ZERO_SHOT] = {"seeds": {"-": rec}}
        results[(ZERO_SHOT, "-")] = res
        method_scores = _reuse_negatives(cfg.scores, res, out / "runs" / ZERO_SHOT)

    def fit_and_eval(row: str, name: str, params: dict[str, Any], seed: int, ad_dir: Path, run_dir: Path):
        method = create_method(name, **params)
        tc = _train_config(method, cfg, seed)
        # the model's precision is the training precision (fit_method runs and records it)
        tc = dataclasses.replace(tc, precision=str(base.identity.precision))
        shots = cfg.shots if method.needs_labels else None
        # an adapter of the same settings is reused, another refused, a killed one resumed
        fit_method(
            name,
            base,
            sets.train,
            ad_dir,
            cfg=tc,
            params=params,
            shots=shots,
            seed=seed,
            classnames=sets.classnames,
            progress=progress,
            extract_options=opts.extract,
            reuse=True,
        )
        # an adapter that rewrites the image encoder gets a fresh model (the base stays clean)
        model = model_factory() if getattr(METHODS.get(name), "adapts_image_encoder", False) else base
        try:
            adapter = load_adapter(ad_dir, model)
        except AdapterMismatchError as e:
            raise AdapterMismatchError(
                f"{e} In a study: this --out holds adapters of another model; use another --out."
            ) from e
        if adapter.adapts_image_encoder and model is base:
            raise RuntimeError(f"{name}: adapter rewrote the shared base model")
        rec, res = evaluate(run_dir, model, adapter, adapter.record(ad_dir), method_scores)
        results[(row, str(seed))] = res
        rec["adapter"] = str(ad_dir.relative_to(out))
        rec["train_s"] = (adapter.info.get("metrics") or {}).get("train_s")
        return rec

    for name in cfg.methods:
        if name == ZERO_SHOT:
            continue
        params = dict(cfg.params.get(name, {}))
        if name == WISE_FT:
            # one row per alpha; an endpoint named as a method of the study is that seed's adapter
            alphas = parse_alphas(params.pop("alphas", "")) or [
                float(0.5 if params.get("alpha") is None else params["alpha"])
            ]
            endpoint = str(params.get("endpoint", ""))
            for a in alphas:
                row = f"{name}(alpha={a:g})" if len(alphas) > 1 else name
                entry = {"seeds": {}, "method": name, "alpha": a, "endpoint": endpoint}
                for seed in cfg.seeds:
                    ep = out / "adapters" / endpoint / f"seed{seed}" if endpoint in cfg.methods else endpoint
                    p = {**params, "endpoint": str(ep), "alpha": a}
                    sub = f"alpha{a:g}" if len(alphas) > 1 else ""
                    ad_dir = out / "adapters" / name / sub / f"seed{seed}"
                    run_dir = out / "runs" / name / sub / f"seed{seed}"
                    entry["seeds"][str(seed)] = fit_and_eval(row, name, p, seed, ad_dir, run_dir)
                runs[row] = entry
            continue
        entry = {"seeds": {}}
        for seed in cfg.seeds:
            ad_dir = out / "adapters" / name / f"seed{seed}"
            run_dir = out / "runs" / name / f"seed{seed}"
            entry["seeds"][str(seed)] = fit_and_eval(name, name, params, seed, ad_dir, run_dir)
        runs[name] = entry

    study = {
        "schema": STUDY_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": opts.command,
        "plan": plan,
        "plan_sha256": sha256_json(plan),
        "model": base.identity.to_dict(),
        "runs": runs,
        "table": aggregate(runs, results, [s.label for s in cfg.scores]),
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(out / "study.json", study)
    with atomic_path(out / "study.md") as tmp:
        Path(tmp).write_text(format_study(study), encoding="utf-8")
    return study


def _reuse_negatives(specs: list[ScoreSpec], res: dict[str, Any], run_dir: Path) -> list[ScoreSpec]:
    """NegLabel specs that mine their own negatives get the zero-shot run's mined labels file, so
    every method is scored against the same negatives (each with its own ID side); the label
    shown stays the requested one."""
    out = []
    for spec in specs:
        mined = (res.get("scores", {}).get(spec.label, {}).get("artifacts") or {}).get("neglabel_labels_file")
        if spec.name == "neglabel" and "labels_file" not in spec.params and mined:
            # always relative to this study folder (which may have been moved since)
            path = run_dir / "artifacts" / Path(mined).name
            out.append(
                ScoreSpec(spec.name, {**spec.params, "labels_file": str(path)}, display=spec.label)
                if spec.instance is None
                else spec  # a NegLabel object runs as given
            )
        else:
            out.append(spec)
    return out


# ---------------------------------------------------------------------------------------------- aggregation
#: the modality-gap fields aggregated and shown (vlmood.metrics.modality_gap)
GAP_KEYS = ("gap", "own_cosine", "other_cosine", "margin")


def _mean_std(xs: list[float]) -> dict[str, float] | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def aggregate(
    runs: dict[str, Any], all_results: dict[tuple[str, str], dict[str, Any]], score_labels: list[str]
) -> dict[str, Any]:
    """Per method: accuracies and, per score, OOD metric means/stds over seeds (from the results
    dicts ``run_eval`` returned, keyed by (method, seed))."""
    table: dict[str, Any] = {}
    for method, entry in runs.items():
        results = [all_results[(method, seed)] for seed in entry["seeds"]]
        row: dict[str, Any] = {"id_accuracy": _mean_std([r.get("id_accuracy") for r in results])}
        for kind in ("domain_shift", "held_out"):
            names = list(results[0].get(kind, {}))
            if names:
                row[kind] = {n: _mean_std([r[kind][n].get("accuracy") for r in results]) for n in names}
        gaps = [r.get("modality_gap") or {} for r in results]
        if all("gap" in g for g in gaps):
            row["modality_gap"] = {k: _mean_std([g[k] for g in gaps]) for k in GAP_KEYS}
        scores: dict[str, Any] = {}
        skipped = next(iter(entry["seeds"].values()))["skipped_scores"]
        for label in score_labels:
            if label in skipped:
                scores[label] = {"n/a": skipped[label]}
                continue
            groups = [g for g in ("near_mean", "far_mean") if g in results[0]["scores"][label]] or ["mean"]
            cell = {}
            for g in groups:
                for metric in ("fpr95", "auroc"):
                    cell[f"{g.replace('_mean', '')}_{metric}"] = _mean_std(
                        [r["scores"][label][g][metric] for r in results]
                    )
            scores[label] = cell
        row["scores"] = scores
        table[method] = row
    return table


def _fmt(ms: dict[str, float] | None, pct: bool = True, digits: int = 1) -> str:
    if ms is None:
        return "n/a"
    f = 100.0 if pct else 1.0
    if ms["n"] > 1:
        return f"{f * ms['mean']:.{digits}f} ± {f * ms['std']:.{digits}f}"
    return f"{f * ms['mean']:.{digits}f}"


def format_study(study: dict[str, Any]) -> str:
    """Markdown: the methods x scores table (ID accuracy, near/far FPR95 and AUROC in %, mean ± std
    over seeds), then the accuracy table (ID, domain-shift and held-out sets)."""
    table = study["table"]
    plan = study["plan"]
    lines = [
        f"# Study: {plan.get('benchmark') or 'custom sets'}",
        "",
        f"model `{study['model'].get('spec')}`; seeds {plan['seeds']}; shots {plan['shots']} "
        "(supervised methods; PLP and UEO use the whole train split without labels); "
        "values in %, mean ± std over seeds.",
        "",
    ]
    cols: list[str] = []
    for row in table.values():
        for cell in row["scores"].values():
            for k in cell:
                if k != "n/a" and k not in cols:
                    cols.append(k)
    names = {
        "near_fpr95": "near FPR95↓",
        "near_auroc": "near AUROC↑",
        "far_fpr95": "far FPR95↓",
        "far_auroc": "far AUROC↑",
        "mean_fpr95": "FPR95↓",
        "mean_auroc": "AUROC↑",
    }
    lines.append("| method | score | ID acc | " + " | ".join(names.get(c, c) for c in cols) + " |")
    lines.append("|---|---|---|" + "---|" * len(cols))
    for method, row in table.items():
        for label, cell in row["scores"].items():
            vals = ["n/a"] * len(cols) if "n/a" in cell else [_fmt(cell.get(c)) for c in cols]
            lines.append(f"| {method} | {label} | {_fmt(row['id_accuracy'])} | " + " | ".join(vals) + " |")
    acc_cols: list[tuple[str, str]] = []
    for row in table.values():
        for kind in ("domain_shift", "held_out"):
            for n in row.get(kind, {}):
                if (kind, n) not in acc_cols:
                    acc_cols.append((kind, n))
    if acc_cols:
        lines += ["", "Accuracy (%):", ""]
        lines.append(
            "| method | ID | " + " | ".join(f"{n} ({k.replace('_', ' ')})" for k, n in acc_cols) + " |"
        )
        lines.append("|---|---|" + "---|" * len(acc_cols))
        for method, row in table.items():
            vals = [_fmt(row.get(k, {}).get(n)) for k, n in acc_cols]
            lines.append(f"| {method} | {_fmt(row['id_accuracy'])} | " + " | ".join(vals) + " |")
    gap_rows = [(m, row["modality_gap"]) for m, row in table.items() if "modality_gap" in row]
    if gap_rows:
        lines += [
            "",
            "Modality gap on the ID test set (distance between the mean image and the mean own-class "
            "text embedding; mean cosine of an image to its own class text and to the other classes):",
            "",
            "| method | gap↓ | own cosine | other cosine | margin↑ |",
            "|---|---|---|---|---|",
        ]
        for m, g in gap_rows:
            lines.append(f"| {m} | " + " | ".join(_fmt(g[k], pct=False, digits=3) for k in GAP_KEYS) + " |")
    skipped = {
        (m, lbl): cell["n/a"]
        for m, row in table.items()
        for lbl, cell in row["scores"].items()
        if "n/a" in cell
    }
    if skipped:
        lines += ["", "n/a:"]
        lines += [f"- {m} / {lbl}: {why}" for (m, lbl), why in skipped.items()]
    return "\n".join(lines) + "\n"
