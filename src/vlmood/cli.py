"""The ``vlmood`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from vlmood.errors import UsageError

log = logging.getLogger("vlmood")


def _scalar(text: str) -> Any:
    """A ``key=value`` value: bool, null, int, float or string (``vlmood.params.parse_value``)."""
    from vlmood.params import parse_value

    return parse_value(text)


def parse_score_arg(text: str) -> list[Any]:
    """``mcm`` | ``mcm,energy`` | ``neglabel:ngroup=10,temperature=0.01`` -> ScoreSpecs.

    A comma-separated list of names, or one name followed by ``:`` and ``key=value`` pairs
    (values parsed as YAML scalars, so ``1``, ``0.5``, ``true`` and ``null`` have their types).
    """
    from vlmood.errors import UsageError
    from vlmood.eval.runner import ScoreSpec
    from vlmood.params import parse_kv

    if ":" in text:
        name, _, rest = text.partition(":")
        params = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in part:
                raise UsageError(
                    f"--score {text!r}: parameter {part!r} is not key=value (e.g. {name.strip()}:{part}=1.0)"
                )
            k, v = parse_kv(part, f"--score {text!r}: parameter")
            params[k] = v
        if not name.strip():
            raise UsageError(f"--score {text!r}: no score name before ':'")
        return [ScoreSpec(name.strip(), params)]
    return [ScoreSpec(n.strip()) for n in text.split(",") if n.strip()]


_DEVICE_FORM = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _auto_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; other values checked against the machine."""
    from vlmood.errors import UsageError

    if not _DEVICE_FORM.match(device):
        raise UsageError(
            f"--device {device!r} is not a device: use cpu, cuda, cuda:N (N = GPU index) or auto"
        )
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: no CUDA GPU is visible on this machine "
                "(torch.cuda.is_available() is False); use --device cpu or --device auto"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s) "
                f"(indices 0..{torch.cuda.device_count() - 1})"
            )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return device


def _auto_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="vlmood-tiny",
        help="model spec (see `vlmood models`), e.g. open_clip:ViT-B-16@/path/w.safetensors "
        "(default: vlmood-tiny, the shipped small CLIP)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="packaged benchmark name (`vlmood data list`) or a YAML file")
    p.add_argument(
        "--root",
        help="data root the benchmark's paths are relative to; also the image root of list/CSV files "
        "given to --id/--ood/--train (default: each list's own folder)",
    )
    p.add_argument("--id", dest="id_data", help="ID set: image folder, image list (.txt) or CSV")
    p.add_argument(
        "--classnames",
        help="class-name file or built-in set (default: the ID folder names); mapped onto class folders "
        "by name: the folder names in any order, or 'folder<TAB>name' lines, or a JSON dict folder -> name",
    )
    p.add_argument(
        "--classnames-order",
        choices=["by-name", "sorted"],
        default=None,
        help="sorted: give a bare class-name list that is not the folder names to the sorted class "
        "folders by position (refused otherwise; the mapping used is recorded in results.json or adapter.json)",
    )
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let list/CSV entries, benchmark set paths, class-name/template files and symlinks point "
        "outside their data root (refused by default)",
    )
    p.add_argument(
        "--sets",
        default=None,
        metavar="NAME,...",
        help="read only the ID set and these benchmark sets (names or keys, e.g. ninco,textures)",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="[GROUP/]NAME=PATH",
        help="an OOD set, repeatable; GROUP is near or far, e.g. --ood far/textures=/data/dtd",
    )
    p.add_argument(
        "--train", help="ID training set (eval: the bank of knn and mahalanobis; fit: the images to train on)"
    )
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable images instead of failing (they are listed in results.json)",
    )
    p.add_argument(
        "--fingerprint",
        default="stat",
        choices=["stat", "content"],
        help="dataset identity for the cache: file sizes+mtimes (fast) or content hashes",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1)")
    p.add_argument(
        "--cache-dir", default=None, help="feature cache (default: $VLMOOD_CACHE or ~/.cache/vlmood)"
    )
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlmood", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    ev = sub.add_parser("eval", help="evaluate zero-shot OOD scores and ID accuracy")
    _add_model_args(ev)
    _add_data_args(ev)
    ev.add_argument(
        "--templates", default=None, help="built-in template set or file (default: benchmark's or 'simple')"
    )
    ev.add_argument(
        "--score",
        "--scores",
        dest="scores",
        action="append",
        default=[],
        help="score(s): 'mcm,energy' or 'neglabel:ngroup=100,temperature=0.01' (repeatable)",
    )
    ev.add_argument("--out", required=True, help="output directory (results.json, raw scores)")
    ev.add_argument(
        "--adapter", default=None, help="an adapter directory written by `vlmood fit` (same --model)"
    )
    ev.add_argument("--json", action="store_true", help="print results.json instead of the table")

    ca = sub.add_parser("cache", help="precompute image features (and class text features) into the cache")
    _add_model_args(ca)
    _add_data_args(ca)
    ca.add_argument("--kinds", default="image", help="comma list of image, preproj, patch")
    ca.add_argument("--templates", default=None)

    pt = sub.add_parser("pretrain", help="contrastive image-text pretraining of a small CLIP from scratch")
    pt.add_argument("--data", nargs="+", required=True, help="prepared source folders, each with a pairs.csv")
    pt.add_argument(
        "--exclude", nargs="*", default=[], help="files listing images to keep out (evaluation images)"
    )
    pt.add_argument("--model-config", default="vlmood-tiny", help="architecture JSON (file or packaged name)")
    pt.add_argument(
        "--text-tower",
        default="minilm",
        choices=["minilm", "own"],
        help="minilm: locked packaged MiniLM encoder (projection trains); own: train the arch's text tower",
    )
    pt.add_argument("--epochs", type=int, default=15)
    pt.add_argument("--batch-size", type=int, default=256)
    pt.add_argument("--lr", type=float, default=5e-4)
    pt.add_argument("--weight-decay", type=float, default=0.1)
    pt.add_argument("--warmup-steps", type=int, default=100)
    pt.add_argument("--grad-accum", type=int, default=1)
    pt.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast (CUDA and CPU)",
    )
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--workers", type=int, default=1)
    pt.add_argument("--device", default="auto")
    pt.add_argument("--out", required=True)
    pt.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    pt.add_argument("--no-progress", action="store_true")

    rp = sub.add_parser("report", help="HTML + Markdown report (tables, ROC curves, histograms) of results")
    rp.add_argument("results", nargs="+", help="results.json files or run folders (several: side by side)")
    rp.add_argument("--out", required=True)
    rp.add_argument("--title", default=None)

    dm = sub.add_parser("demo", help="evaluate vlmood-tiny on the bundled emoji demo set and write a report")
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--model", default="vlmood-tiny")
    dm.add_argument("--device", default="auto")
    dm.add_argument("--no-report", action="store_true")
    dm.add_argument("--no-progress", action="store_true")

    ft = sub.add_parser(
        "fit", help="train an adaptation method (CoOp, CoCoOp, LoCoOp, linear-probe, PLP, UEO)"
    )
    ft.add_argument("method", help="a registered method (see vlmood.methods.list_methods())")
    _add_model_args(ft)
    _add_data_args(ft)
    ft.add_argument(
        "--shots", type=int, default=None, help="k images per class (few-shot split saved with the run)"
    )
    ft.add_argument("--seed", type=int, default=None)
    ft.add_argument("--epochs", type=int, default=None, help="override the method's paper default")
    ft.add_argument(
        "--train-batch-size",
        type=int,
        default=None,
        help="override the paper default batch size; under torchrun the global batch, split evenly "
        "over the processes",
    )
    ft.add_argument("--lr", type=float, default=None, help="override the paper default learning rate")
    ft.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    ft.add_argument("--out", required=True, help="adapter directory")
    ft.add_argument("--resume", action="store_true")
    ft.add_argument(
        "--tensorboard", action="store_true", help="also log TensorBoard events to OUT/train/tensorboard"
    )
    for action in ft._actions:  # eval-only data options: hidden here, refused by cmd_fit
        if action.dest in _FIT_UNUSED:
            action.help = argparse.SUPPRESS

    st = sub.add_parser(
        "study",
        help="zero-shot and each adaptation method (seeds) x every score on a benchmark: one table",
    )
    _add_model_args(st)
    _add_data_args(st)
    st.add_argument(
        "--methods",
        default="zero-shot,coop,cocoop,locoop,linear-probe,plp",
        help="comma list: zero-shot and registered methods (default: %(default)s)",
    )
    st.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: %(default)s)")
    st.add_argument(
        "--shots", type=int, default=16, help="k images per class for supervised methods (default: 16)"
    )
    st.add_argument(
        "--score",
        "--scores",
        dest="scores",
        action="append",
        default=[],
        help="score(s), as for eval (default: mcm,neglabel,energy,maxlogit)",
    )
    st.add_argument("--templates", default=None)
    st.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a method hyperparameter, e.g. coop:n_ctx=4 (repeatable)",
    )
    st.add_argument(
        "--set",
        dest="train_set",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="a training setting for one method or all, e.g. epochs=20 or coop:batch_size=16",
    )
    st.add_argument("--out", required=True, help="study folder (a rerun resumes and reuses finished pieces)")

    sub.add_parser("models", help="list registered models and spec forms")
    sc = sub.add_parser("scores", help="list registered OOD scores and their parameters")
    sc.add_argument("pattern", nargs="?", default="*")

    da = sub.add_parser("data", help="dataset utilities")
    dsub = da.add_subparsers(dest="data_cmd", required=True)
    ch = dsub.add_parser("check", help="say which files of a benchmark are missing under --root")
    ch.add_argument("benchmark")
    ch.add_argument("--root", default=None, help="data root (default: the YAML's data_root or folder)")
    ch.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="allow paths that leave the data root (refused by default)",
    )
    dsub.add_parser("list", help="list packaged benchmarks")
    pr = dsub.add_parser("prepare", help="turn an offline source (npm/apt/pip package) into a vlmood dataset")
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
    dsub.add_parser("sources", help="list the sources `data prepare` knows")
    ex = dsub.add_parser(
        "example", help="write a small example benchmark from images shipped with scikit-learn"
    )
    ex.add_argument("--out", required=True)
    return ap


def _build_sets(args: argparse.Namespace):
    from vlmood.eval.sets import sets_from_args

    return sets_from_args(ood=args.ood, only=getattr(args, "sets", None), **_data_inputs(args))


def _data_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The data options eval, cache, study and fit share (how sets are found and checked)."""
    return {
        "benchmark": args.benchmark,
        "root": args.root,
        "id_data": args.id_data,
        "train": args.train,
        "classnames": args.classnames,
        "classnames_order": getattr(args, "classnames_order", None),
        "allow_outside_root": getattr(args, "allow_outside_root", False),
        "skip_missing": getattr(args, "skip_corrupt", False),
    }


def _templates(args: argparse.Namespace, sets) -> tuple[list[str], str]:
    """--templates, else the benchmark's templates, else the single 'a photo of a {}.'."""
    from vlmood.data.templates import load_templates

    if args.templates:
        return load_templates(args.templates)[0], args.templates
    if sets.templates:
        return list(sets.templates), sets.templates_origin or "benchmark"
    return load_templates("simple")[0], "simple"


def _eval_options(args: argparse.Namespace, sets):
    """EvalOptions from the data arguments shared by eval and study (templates resolved)."""
    from vlmood.eval.runner import EvalOptions

    templates, template_origin = _templates(args, sets)
    return EvalOptions(
        templates=templates,
        templates_origin=template_origin,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        fingerprint=args.fingerprint,
        progress=not args.no_progress,
        command=sys.argv,
    )


def _load_model(args: argparse.Namespace):
    from vlmood.models import load_model

    device = _auto_device(args.device)
    return load_model(args.model, device=device, precision=_auto_precision(args.precision, device))


def cmd_eval(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.eval.runner import format_table, run_eval

    D.init_distributed()
    specs = [
        s
        for text in (args.scores or ["mcm,msp,maxlogit,energy,entropy,variance"])
        for s in parse_score_arg(text)
    ]
    from vlmood.eval.runner import build_scores

    build_scores(specs)  # fail on a bad score or parameter before any loading
    sets = _build_sets(args)
    opts = _eval_options(args, sets)
    model = _load_model(args)
    if args.adapter:
        _apply_adapter(args.adapter, model, opts, sets.eval_sets.classnames)
    results = run_eval(model, sets.eval_sets, specs, args.out, opts)
    if D.is_main():
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        else:
            print(format_table(results))
            print(f"\nresults: {Path(args.out) / 'results.json'}")
    return 0


def _apply_adapter(path: str, model, opts, classnames: list[str]) -> None:
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
    sets = _build_sets(args)
    model = _load_model(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    es = sets.eval_sets
    todo = [es.id] + [o.source for o in es.ood] + ([es.train] if es.train is not None else [])
    todo += [s.source for s in es.domain_shift + es.held_out]
    for src in todo:
        fs = extract_features(
            model,
            src,
            kinds,
            cache_root=args.cache_dir,
            batch_size=args.batch_size,
            num_workers=args.workers,
            skip_corrupt=args.skip_corrupt,
            fingerprint=args.fingerprint,
            progress=not args.no_progress,
        )
        if D.is_main():
            print(
                f"{src.name}: {len(src)} images, encoded {fs.encoded}, {fs.timings.get('total_s', 0):.1f}s, "
                f"keys {fs.keys}"
            )
    templates, _ = _templates(args, sets)
    class_text_features(model, es.classnames, templates, args.cache_dir, progress=not args.no_progress)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.train.engine import TrainConfig
    from vlmood.train.pretrain import PretrainConfig, pretrain

    D.init_distributed()
    device = _auto_device(args.device)
    if device == "cuda" and D.is_initialized():
        device = str(D.default_device())
    precision = "bf16" if args.precision == "auto" else args.precision
    cfg = PretrainConfig(
        data=args.data,
        out=args.out,
        model_config=args.model_config,
        text_tower=args.text_tower,
        exclude=args.exclude,
        device=device,
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer="adamw",
            betas=(0.9, 0.98),
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            grad_accum=args.grad_accum,
            precision=precision,
            seed=args.seed,
            num_workers=args.workers,
        ),
    )
    summary = pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    if D.is_main():
        print(json.dumps(summary, indent=2))
    return 0


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
        device=_auto_device(args.device),
        report=not args.no_report,
        progress=not args.no_progress,
    )
    return 0


#: options _add_data_args gives every data command that fit does not use: refused, never ignored
_FIT_UNUSED = {"ood": "--ood", "sets": "--sets"}


def _refuse_unused_fit_options(args: argparse.Namespace) -> None:
    from vlmood.errors import UsageError

    for dest, flag in _FIT_UNUSED.items():
        if getattr(args, dest, None):
            raise UsageError(
                f"fit does not use {flag}: it trains on the training images only (--id/--train, or the "
                f"benchmark's train split); OOD sets belong to `vlmood eval`. Drop {flag}"
            )


def cmd_fit(args: argparse.Namespace) -> int:
    """``vlmood fit METHOD``: training data from its own resolver (no OOD sets needed); under
    torchrun a real DDP run (``--train-batch-size`` is the global batch, rank 0 writes --out)."""
    from vlmood import distributed as D
    from vlmood.methods import create_method, fit_method
    from vlmood.methods.base import check_shots
    from vlmood.params import parse_kv
    from vlmood.train.data import training_source
    from vlmood.train.engine import rank_batch_size

    _refuse_unused_fit_options(args)
    params = dict(parse_kv(text, "--param") for text in args.param)
    method = create_method(args.method, **params)  # unknown names and wrong types refused here
    given = {"epochs": args.epochs, "batch_size": args.train_batch_size, "lr": args.lr}
    cfg = method.default_config(**{k: v for k, v in given.items() if v is not None})
    if args.seed is not None:
        cfg.seed = args.seed
    cfg.tensorboard = bool(args.tensorboard)
    if args.workers is not None:
        cfg.num_workers = args.workers  # the training DataLoader (images each step: UEO, augment)
    cfg.check()
    check_shots(args.shots)
    D.init_distributed()
    rank_batch_size(cfg)  # the global batch must split over the torchrun processes
    ts = training_source(**_data_inputs(args))
    if D.is_initialized() and _auto_device(args.device) == "cuda":
        args.device = str(D.default_device())  # one GPU per rank (LOCAL_RANK)
    model = _load_model(args)
    out = fit_method(
        args.method,
        model,
        ts.source,
        args.out,
        cfg,
        params,
        shots=args.shots,
        seed=args.seed,
        classnames=ts.classnames,
        cache_root=args.cache_dir,
        progress=not args.no_progress,
        resume=args.resume,
        extract_options=_extract_options(args),
    )
    if D.is_main():
        print(f"adapter: {out}\nevaluate: vlmood eval --model {args.model} --adapter {out} ...")
    return 0


def _extract_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "skip_corrupt": args.skip_corrupt,
        "fingerprint": args.fingerprint,
    }


def _method_kv(items: list[str], flag: str, need_method: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for text in items:
        head, _, kv = text.partition(":") if ":" in text.split("=", 1)[0] else ("", "", text)
        if "=" not in kv or (need_method and not head):
            form = "METHOD:KEY=VALUE" if need_method else "[METHOD:]KEY=VALUE"
            raise UsageError(f"{flag} {text!r} is not {form}")
        k, _, v = kv.partition("=")
        out.setdefault(head.strip() or "*", {})[k.strip()] = _scalar(v.strip())
    return out


def cmd_study(args: argparse.Namespace) -> int:
    from vlmood.study import StudyConfig, format_study, run_study

    specs = [s for text in (args.scores or ["mcm,neglabel,energy,maxlogit"]) for s in parse_score_arg(text)]
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError as e:
        raise UsageError(f"--seeds {args.seeds!r}: a comma list of integers, e.g. --seeds 0,1,2") from e
    cfg = StudyConfig(
        methods=[m.strip().lower() for m in args.methods.split(",") if m.strip()],
        scores=specs,
        seeds=seeds,
        shots=args.shots,
        params=_method_kv(args.param, "--param", need_method=True),
        train=_method_kv(args.train_set, "--set", need_method=False),
    )
    from vlmood.study import _check_config

    _check_config(cfg)  # fail on bad methods, scores or settings before any loading
    sets = _build_sets(args)
    opts = _eval_options(args, sets)
    study = run_study(lambda: _load_model(args), sets.eval_sets, cfg, args.out, opts, not args.no_progress)
    print(format_study(study))
    print(f"study: {Path(args.out) / 'study.json'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vlmood.models import list_models

    print("registered models:")
    for name in list_models():
        print(f"  {name}")
    print(
        "\nspec forms:\n"
        "  NAME                              a registered model above\n"
        "  open_clip:ARCH@TAG                open_clip pretrained tag (needs the hub or its cache)\n"
        "  open_clip:ARCH@/path/w.safetensors  open_clip architecture + local weights file\n"
        "  open_clip:ARCH                    random initialisation (tests)\n"
        "  local-dir:/path                   open_clip_config.json + weights\n"
        "  hf:NAME or hf:/path               Hugging Face transformers CLIPModel"
    )
    return 0


def cmd_scores(args: argparse.Namespace) -> int:
    import inspect

    from vlmood.scores import SCORES

    for name, factory in SCORES.items():
        if not __import__("fnmatch").fnmatch(name, args.pattern):
            continue
        sig = inspect.signature(factory)
        params = ", ".join(
            f"{p.name}={p.default!r}"
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty
        )
        doc = (inspect.getdoc(factory) or "").splitlines()
        print(f"{name:<12} {doc[0] if doc else ''}")
        if params:
            print(f"{'':<12} params: {params}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "check":
        from vlmood.data.benchmarks import check_benchmark, format_check_report, load_benchmark

        report = check_benchmark(
            load_benchmark(args.benchmark), args.root, allow_outside_root=args.allow_outside_root
        )
        print(format_check_report(report))
        return 0 if report_ok(report) else 1
    if args.data_cmd == "list":
        from vlmood.data.benchmarks import BENCHMARKS, load_benchmark

        for name in BENCHMARKS.list():
            b = load_benchmark(name)
            print(f"{name:<28} {getattr(b, 'description', '') or ''}")
        return 0
    if args.data_cmd == "prepare":
        from vlmood.data.prepare import prepare

        opts = {"install": True} if args.install else {}
        if args.from_dir:
            opts["from_dir"] = args.from_dir
        path = prepare(args.source, args.out, force=args.force, **opts)
        print(f"prepared {args.source}: {path}")
        return 0
    if args.data_cmd == "sources":
        from vlmood.data.prepare import describe_source, list_sources

        for name in list_sources():
            print(f"{name:<18} {describe_source(name)}")
        return 0
    if args.data_cmd == "example":
        from vlmood.data.example import write_example

        path = write_example(args.out)
        print(f"example benchmark written: {path}")
        return 0
    raise AssertionError(args.data_cmd)


def report_ok(report: Any) -> bool:
    ok = getattr(report, "ok", None)
    if ok is not None:
        return bool(ok() if callable(ok) else ok)
    return bool(report.get("ok", False)) if isinstance(report, dict) else False


COMMANDS = {
    "eval": cmd_eval,
    "cache": cmd_cache,
    "pretrain": cmd_pretrain,
    "fit": cmd_fit,
    "study": cmd_study,
    "report": cmd_report,
    "demo": cmd_demo,
    "models": cmd_models,
    "scores": cmd_scores,
    "data": cmd_data,
}


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` must be a folder (or not exist yet): refuse an existing file before any work."""
    from vlmood.errors import UsageError

    out = getattr(args, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder; pass a folder path (it is created)")


_RESUME_HINT = {
    "fit": "rerun with --resume to continue from the last finished epoch",
    "pretrain": "rerun with --resume to continue from the last finished epoch",
    "study": "rerun the same command: finished pieces are reused and trainings resume",
    "cache": "rerun the same command: finished feature chunks are reused",
    "eval": "rerun the same command: finished feature chunks are reused",
}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _silence_stdout() -> None:
    """After a closed pipe (``vlmood data list | head``), send further output nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``vlmood`` command; returns the exit status.

    Every library error (``vlmood.errors.VlmoodError``) ends in one line on stderr,
    ``vlmood CMD: error: MESSAGE``, with status 2 (fix the command or its inputs) or 1 (the run
    failed); Ctrl-C/SIGTERM end in one line saying how to resume (status 1); a closed output
    pipe ends quietly. ``-v`` shows tracebacks.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("vlmood").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from vlmood.errors import VlmoodError

    def fail(message: str, code: int) -> int:
        print(f"vlmood {args.cmd}: {message}", file=sys.stderr)
        return code

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (main() called from a library thread)
        pass
    try:
        _check_out(args)
        return COMMANDS[args.cmd](args)
    except VlmoodError as e:
        if args.verbose:
            raise
        return fail(f"error: {e}", e.exit_code)
    except KeyboardInterrupt:
        hint = _RESUME_HINT.get(args.cmd, "rerun the same command")
        return fail(f"interrupted; completed work is kept, {hint}", 1)
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as e:  # disk full, permissions, a file that vanished: name it, no traceback
        if args.verbose:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        fix = "free disk space or write elsewhere" if e.errno == 28 else "check the path and its permissions"
        return fail(f"error: {e.strerror or e}{where}; {fix}", 1)
    except ValueError as e:  # a user-input check not yet converted to a VlmoodError
        if args.verbose:
            raise
        return fail(f"error: {e}", 2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
