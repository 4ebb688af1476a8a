"""``vlmood zoo``: a model list, one benchmark -> run_zoo (ID accuracy against OOD detection)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmood.cli import _common as C

DEFAULT_ZOO_SCORES = "mcm,knn,neglabel,energy"


def add_parsers(sub: Any) -> None:
    zp = C.add_command(
        sub,
        "zoo",
        help="many models, one benchmark: ID accuracy against OOD detection per score, with the "
        "least-squares fit (R², Pearson r, Spearman rho) and a scatter plot",
    )
    zp.add_argument(
        "--models",
        required=True,
        metavar="FILE|SPEC,SPEC,...",
        help="a model-list file (one name=spec or bare spec per line, # comments; relative local-dir: "
        "paths are relative to the file, e.g. the zoo.txt of scripts/build_zoo.sh) or a comma list of "
        "model specs (names derived from the specs); at least 2 models, 3+ for a fit",
    )
    zp.add_argument("--device", default="auto", help=C.DEVICE_HELP)
    zp.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    C.add_data_args(zp)
    C.add_scores_arg(
        zp,
        f"{DEFAULT_ZOO_SCORES}; knn is left out, with a warning, on a benchmark without a train split",
    )
    C.add_templates_arg(zp)
    zp.add_argument(
        "--out",
        required=True,
        help="zoo folder: models/<name>/ per model, zoo.json, zoo.md, scatter-<score>.png (a rerun "
        "reuses the models already evaluated)",
    )
    zp.set_defaults(func=cmd_zoo)


def cmd_zoo(args: argparse.Namespace) -> int:
    from vlmood.models import load_model
    from vlmood.zoos import check_zoo, format_zoo, parse_models, run_zoo

    members = parse_models(args.models)
    specs = C.score_specs(args.scores, DEFAULT_ZOO_SCORES)
    check_zoo(members, specs)  # names, specs that cannot load, unknown scores: before any work
    device = C.auto_device(args.device)
    precision = C.auto_precision(args.precision, device)
    sets = C.build_sets(args)
    opts = C.eval_options(args, sets)

    def load(spec: str):
        return load_model(spec, device=device, precision=precision)

    zoo = run_zoo(members, sets.eval_sets, specs, args.out, opts, load)
    print(format_zoo(zoo))
    out = Path(args.out)
    print(f"zoo: {out / 'zoo.json'}")
    for name in (zoo.get("figures") or {}).values():
        print(f"scatter: {out / name}")
    print(f"report: vlmood report {out} --out {out / 'report'}")
    return 0
