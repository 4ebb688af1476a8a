"""``vlmood attack``: PLP's feature-space OOD manipulation, written as a dataset, then the
evaluation table (ID vs original and vs manipulated OOD). Arguments -> run_attack / evaluate_attack."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmood.cli import _common as C
from vlmood.errors import UsageError


def _number(kind: type, low: float, strict: bool):
    """An argparse type: ``kind`` (int or float) above ``low`` (``strict``) or at least ``low``."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return v

    return parse


_positive_float = _number(float, 0, strict=True)
_positive_int = _number(int, 1, strict=False)
_nonneg_float = _number(float, 0, strict=False)
_nonneg_int = _number(int, 0, strict=False)


def add_parsers(sub: Any) -> None:
    from vlmood.attacks.evaluate import DEFAULT_ADAPTER_SCORES, DEFAULT_SCORES
    from vlmood.attacks.feature import PRESETS

    p = C.add_command(
        sub,
        "attack",
        help="make OOD images look ID in feature space (PLP) and evaluate scores on them",
        description="For each OOD image (the benchmark's OOD sets, or --sets / --ood), a seeded random "
        "ID training image is the target; a pixel perturbation is optimised so the image's feature "
        "(pre-projection by default) points at the target's, with Adam. The manipulated images are "
        "written as a dataset (OUT/images/*.png + OUT/manifest.csv; a killed run resumes), then "
        "evaluated: AUROC/FPR95 of ID vs the original and vs the manipulated images.",
    )
    C.add_model_args(p)
    C.add_data_args(p)
    p.add_argument("--out", required=True, help="attack folder (images, manifest, evaluation)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="smooth",
        help="smooth: lambda_s = 5e3 (smooth perturbations); patchy: lambda_s = 0",
    )
    p.add_argument(
        "--smooth",
        type=_nonneg_float,
        default=None,
        metavar="LAMBDA",
        help="the smoothness weight lambda_s, instead of the preset's",
    )
    p.add_argument("--steps", type=_positive_int, default=250, help="Adam steps per image")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--epsilon",
        type=_positive_float,
        default=None,
        help="l-infinity budget on the perturbation in [0, 1] pixel units (PLP has none: default unbounded)",
    )
    p.add_argument("--attack-batch", type=_positive_int, default=16, help="images optimised together")
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="attack N seeded OOD images (default: all)"
    )
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the image choice, targets and starts")
    p.add_argument(
        "--feature", choices=["preproj", "image"], default="preproj", help="the attacked feature (phi)"
    )
    C.add_templates_arg(p)
    C.add_scores_arg(
        p, DEFAULT_SCORES, "scores to evaluate; knn also runs with the targets removed from its bank"
    )
    p.add_argument("--adapter", default=None, help="also evaluate this adapter's scores (e.g. a plp probe)")
    p.add_argument(
        "--adapter-scores",
        default=DEFAULT_ADAPTER_SCORES,
        help="scores run through the adapter's head",
    )
    p.add_argument("--no-eval", action="store_true", help="only write the manipulated dataset")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate the finished attack in --out with --model (no attack settings needed; another "
        "model than the attacked one measures how the attack transfers)",
    )
    C.add_label_arg(p, "this attack's evaluation")
    p.add_argument("--json", action="store_true", help="print attack_results.json instead of the table")
    p.set_defaults(func=cmd_attack)


def cmd_attack(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.attacks.evaluate import (
        DEFAULT_ADAPTER_SCORES,
        DEFAULT_SCORES,
        check_adapter,
        evaluate_attack,
        format_attack_table,
    )
    from vlmood.attacks.feature import PRESETS, AttackConfig
    from vlmood.attacks.run import read_attack, run_attack
    from vlmood.eval.runner import build_scores

    D.init_distributed()
    if args.eval_only and args.no_eval:
        raise UsageError("--eval-only and --no-eval exclude each other")
    smooth = PRESETS[args.preset] if args.smooth is None else args.smooth
    cfg = (
        None
        if args.eval_only
        else AttackConfig(
            steps=args.steps,
            lr=args.lr,
            smooth=smooth,
            epsilon=args.epsilon,
            batch_size=args.attack_batch,
            seed=args.seed,
            feature=args.feature,
        )
    )
    specs = C.score_specs(args.scores, DEFAULT_SCORES)
    adapter_specs = C.score_specs([args.adapter_scores], DEFAULT_ADAPTER_SCORES) if args.adapter else []
    if not args.no_eval:
        build_scores(specs + adapter_specs)  # a bad score fails before the attack, not after it
    sets = C.build_sets(args)
    es = sets.eval_sets
    if es.train is None and not args.eval_only:
        if es.benchmark and args.sets:
            why = f" (--sets leaves it out: add train, e.g. --sets train,{args.sets})"
        elif es.benchmark:
            why = f" (benchmark {es.benchmark}: its optional train set is missing under --root)"
        else:
            why = ""
        raise UsageError(
            f"the attack needs ID training images as targets, and this ID set has no train split{why}; "
            "pass --train PATH (labelled ID images) or a benchmark with a train split"
        )
    ood = [(o.name, o.source) for o in es.ood]
    if not ood and not args.eval_only:
        raise UsageError(
            "no OOD set to attack: give a benchmark with OOD sets, --sets NAME,... or --ood NAME=PATH"
        )
    if args.adapter and not args.no_eval:
        check_adapter(args.adapter, es.classnames)
    opts = C.eval_options(args, sets) if not args.no_eval else None
    if args.eval_only:
        meta = read_attack(args.out)  # before the model loads: a wrong folder fails at once
    model = C.load_model(args)
    if not args.eval_only:
        meta = run_attack(
            model,
            ood,
            es.train,
            args.out,
            cfg,
            limit=args.limit,
            classnames=es.classnames,
            progress=not args.no_progress,
        )
    out = Path(args.out)
    if meta["status"] != "complete":  # every rank has the finished attack.json (broadcast)
        raise UsageError(
            f"the attack in {out} is incomplete ({meta.get('missing_batches')} batches); rerun to resume"
        )
    if args.no_eval:
        if D.is_main():
            print(json.dumps(meta, indent=2) if args.json else _summary(meta))
            print(f"\nmanipulated dataset: {out / 'manifest.csv'} (csv:{out / 'manifest.csv'} as an OOD set)")
        return 0
    # every rank evaluates (run_eval is collective under torchrun); rank 0 writes and prints
    result = evaluate_attack(model, es, out, specs, opts, adapter=args.adapter, adapter_scores=adapter_specs)
    if D.is_main():
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            name = "attack_results.json" if not result.get("transfer") else "attack_results-transfer-*.json"
            print(format_attack_table(result, meta))
            print(f"\nresults: {out / name}   report: vlmood report {out} --out {out / 'report'}")
    return 0


def _summary(meta: dict[str, Any]) -> str:
    s = meta.get("summary", {})
    return (
        f"attacked {meta['n_images']} images ({meta['kind']}): cosine to target "
        f"{s.get('cos_before_mean', float('nan')):.3f} -> {s.get('cos_after_mean', float('nan')):.3f}, "
        f"max |delta| {s.get('linf_max', float('nan')):.3f}"
    )
