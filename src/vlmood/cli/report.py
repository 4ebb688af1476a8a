"""``vlmood report`` and ``vlmood demo``: arguments -> write_report / run_demo."""

from __future__ import annotations

import argparse
from typing import Any

from vlmood.cli import _common as C
from vlmood.defaults import DEFAULT_MODEL


def add_parsers(sub: Any) -> None:
    rp = C.add_command(
        sub, "report", help="HTML + Markdown report (tables, ROC curves, histograms) of results"
    )
    rp.add_argument(
        "results",
        nargs="+",
        help="results.json files, run folders, or a study or zoo folder (all its runs; a zoo adds its table, "
        "fits and accuracy-vs-AUROC scatter plots); several: side by side, named by their --label or model",
    )
    rp.add_argument("--out", required=True, help="report folder (index.html, report.md, figures)")
    rp.add_argument("--title", default=None, help="page title (default: one made from the runs)")
    rp.set_defaults(func=cmd_report)

    dm = C.add_command(
        sub, "demo", help=f"evaluate {DEFAULT_MODEL} on the bundled emoji demo set and write a report"
    )
    dm.add_argument("--out", default="runs/demo", help="output folder (results.json and the report)")
    dm.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model spec (see `vlmood models`; default {DEFAULT_MODEL})"
    )
    dm.add_argument("--device", default="auto", help=C.DEVICE_HELP)
    dm.add_argument("--no-report", action="store_true", help="evaluate only, write no HTML report")
    dm.add_argument("--no-progress", action="store_true", help="no progress bars")
    dm.set_defaults(func=cmd_demo)


def cmd_report(args: argparse.Namespace) -> int:
    from vlmood.report import write_report

    info = write_report(args.results, args.out, title=args.title)
    print(f"report: {info['index']}\nmarkdown: {info['markdown']}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlmood.demo import run_demo

    run_demo(
        out=args.out,
        model=args.model,
        device=C.auto_device(args.device),
        report=not args.no_report,
        progress=not args.no_progress,
    )
    return 0
