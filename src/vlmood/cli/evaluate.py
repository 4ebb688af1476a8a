"""``vlmood eval`` and ``vlmood cache``: arguments -> sets, EvalOptions, scores -> run_eval /
extract_features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmood.cli import _common as C
from vlmood.errors import UsageError

DEFAULT_SCORES = "mcm,msp,maxlogit,energy,entropy,variance"


def add_parsers(sub: Any) -> None:
    ev = C.add_command(sub, "eval", help="evaluate zero-shot OOD scores and ID accuracy")
    C.add_model_args(ev)
    C.add_data_args(ev)
    C.add_templates_arg(ev)
    C.add_scores_arg(ev, DEFAULT_SCORES, "score(s): 'mcm,energy' or 'neglabel:ngroup=100,temperature=0.01'")
    ev.add_argument("--out", required=True, help="output directory (results.json, raw scores)")
    ev.add_argument(
        "--adapter", default=None, help="an adapter directory written by `vlmood fit` (same --model)"
    )
    C.add_label_arg(ev, "this run")
    ev.add_argument("--json", action="store_true", help="print results.json instead of the table")
    ev.set_defaults(func=cmd_eval)

    ca = C.add_command(
        sub, "cache", help="precompute image features (and class text features) into the cache"
    )
    C.add_model_args(ca)
    C.add_data_args(ca)
    ca.add_argument("--kinds", default="image", help="comma list of image, preproj, patch")
    C.add_templates_arg(
        ca,
        "built-in template set or file whose class text features to cache (default: benchmark's or 'simple')",
    )
    ca.set_defaults(func=cmd_cache)


def cmd_eval(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.eval.runner import build_scores, format_table, run_eval

    D.init_distributed()
    specs = C.score_specs(args.scores, DEFAULT_SCORES)
    build_scores(specs)  # fail on a bad score or parameter before any loading
    sets = C.build_sets(args)
    opts = C.eval_options(args, sets)
    model = C.load_model(args)
    if args.adapter:
        apply_adapter(args.adapter, model, opts, sets.eval_sets.classnames)
    results = run_eval(model, sets.eval_sets, specs, args.out, opts)
    if D.is_main():
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        else:
            print(format_table(results))
            print(f"\nresults: {Path(args.out) / 'results.json'}")
    return 0


def apply_adapter(path: str, model, opts, classnames: list[str]) -> None:
    """Load an adapter onto ``model`` (UEO also rewrites the visual norms and the model identity);
    its class head replaces the zero-shot classifier in run_eval."""
    from vlmood.methods import load_adapter, read_adapter_info

    info = read_adapter_info(path)
    if list(info.get("classnames", [])) != list(classnames):
        raise UsageError(
            f"adapter {path} was trained for {len(info.get('classnames', []))} other class names than this "
            f"ID set's {len(classnames)}; evaluate it on the classes it learned"
        )
    ad = load_adapter(path, model)
    opts.adapter = ad
    opts.adapter_info = ad.record(path)


def cmd_cache(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.features.extract import class_text_features, extract_features

    D.init_distributed()
    sets = C.build_sets(args)
    model = C.load_model(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    es = sets.eval_sets
    todo = [es.id] + [o.source for o in es.ood] + ([es.train] if es.train is not None else [])
    todo += [s.source for s in es.domain_shift + es.held_out]
    for src in todo:
        fs = extract_features(model, src, kinds, options=C.extract_options(args))
        if D.is_main():
            print(
                f"{src.name}: {len(src)} images, encoded {fs.encoded}, {fs.timings.get('total_s', 0):.1f}s, "
                f"keys {fs.keys}"
            )
    templates, _ = C.templates(args, sets)
    class_text_features(model, es.classnames, templates, args.cache_dir, progress=not args.no_progress)
    return 0
