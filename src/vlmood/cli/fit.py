"""``vlmood fit METHOD`` and ``vlmood study``: arguments -> method, TrainConfig, training data ->
fit_method / run_study."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmood.cli import _common as C
from vlmood.errors import UsageError

#: options add_data_args gives every data command that fit does not use: refused, never ignored
FIT_UNUSED = {"ood": "--ood", "sets": "--sets"}

DEFAULT_STUDY_SCORES = "mcm,neglabel,energy,maxlogit"


def add_parsers(sub: Any) -> None:
    ft = C.add_command(
        sub,
        "fit",
        help="train an adaptation method (CoOp, CoCoOp, LoCoOp, linear-probe, PLP, UEO, FT, LP-FT, FLYP, CMA, WiSE-FT, ARF)",
    )
    ft.add_argument("method", help="a registered method (see `vlmood methods`)")
    C.add_label_arg(ft, "this adapter")
    C.add_model_args(ft)
    C.add_data_args(ft)
    ft.add_argument(
        "--shots", type=int, default=None, help="k images per class (few-shot split saved with the run)"
    )
    ft.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the few-shot split and the training (default: the method's training seed)",
    )
    ft.add_argument("--epochs", type=int, default=None, help="override the method's paper default")
    ft.add_argument(
        "--train-batch-size",
        type=int,
        default=None,
        help="override the paper default batch size; under torchrun the global batch, split evenly "
        "over the processes",
    )
    ft.add_argument("--lr", type=float, default=None, help="override the paper default learning rate")
    ft.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method hyperparameter, e.g. n_ctx=4 (repeatable; see `vlmood methods`)",
    )
    ft.add_argument("--out", required=True, help="adapter directory")
    ft.add_argument(
        "--resume", action="store_true", help="continue the training in --out from its last finished epoch"
    )
    ft.add_argument(
        "--tensorboard", action="store_true", help="also log TensorBoard events to OUT/train/tensorboard"
    )
    ft.add_argument(
        "--set",
        dest="train_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training setting (a TrainConfig field; repeatable), e.g. grad_checkpointing=true "
        "(recompute each transformer block in backward: less memory), strategy=fsdp (under torchrun: "
        "shard parameters, gradients and optimiser state over the processes), weight_decay=0.01",
    )
    add_mlflow_arg(ft)
    vg = ft.add_argument_group(
        "validation while training",
        "scores on held-out training images and domain-shift sets, logged per epoch as val/id_accuracy "
        "and val/<set>_accuracy in OUT/train/metrics.jsonl (and TensorBoard / MLflow when asked)",
    )
    vg.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="hold out this fraction (0 < F < 1) of each class's training images for validation, seeded "
        "by --seed; with --shots drawn from the images the k-shot split leaves out (the k-shot "
        "training set does not change), without --shots held out of training (default: none)",
    )
    vg.add_argument(
        "--val-set",
        action="append",
        default=[],
        metavar="NAME",
        help="also validate on this domain-shift set of --benchmark, or a labelled folder / list / CSV "
        "of the training classes (repeatable)",
    )
    vg.add_argument(
        "--val-every",
        type=int,
        default=None,
        metavar="N",
        help="validate every N epochs and after the last; 0: never (default: 1 with --val-fraction or "
        "--val-set, else 0)",
    )
    for action in ft._actions:  # eval-only data options: hidden here, refused by cmd_fit
        if action.dest in FIT_UNUSED:
            action.help = argparse.SUPPRESS
    ft.set_defaults(func=cmd_fit)

    st = C.add_command(
        sub,
        "study",
        help="zero-shot and each adaptation method (seeds) x every score on a benchmark: one table",
    )
    C.add_model_args(st)
    C.add_data_args(st)
    st.add_argument(
        "--methods",
        default="zero-shot,coop,cocoop,locoop,linear-probe,plp",
        help="comma list: zero-shot and registered methods (default: %(default)s)",
    )
    st.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: %(default)s)")
    st.add_argument(
        "--shots", type=int, default=16, help="k images per class for supervised methods (default: 16)"
    )
    C.add_scores_arg(st, DEFAULT_STUDY_SCORES)
    C.add_templates_arg(st)
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
    st.set_defaults(func=cmd_study)


def add_mlflow_arg(parser: argparse.ArgumentParser) -> None:
    """``--mlflow`` (``fit``, ``pretrain``)."""
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help="also log the settings and metrics to an MLflow run named after --out (needs `pip install "
        "mlflow`; MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME choose where it goes)",
    )


def train_settings(items: list[str]) -> dict[str, Any]:
    """``fit --set KEY=VALUE`` items -> TrainConfig fields (unknown names refused)."""
    import dataclasses

    from vlmood.params import parse_kv
    from vlmood.train.engine import TrainConfig

    out = dict(parse_kv(text, "--set") for text in items)
    valid = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    bad = sorted(set(out) - valid)
    if bad:
        raise UsageError(f"--set: unknown training setting(s) {bad}; valid: {', '.join(sorted(valid))}")
    flagged = [k for k in out if k in FLAG_SETTINGS]
    if flagged:  # their flags always decide (with their defaults), so --set would be ignored
        raise UsageError(
            "--set: " + "; ".join(f"{k} has its own option: use {FLAG_SETTINGS[k]}" for k in flagged)
        )
    return out


#: training settings that `vlmood fit` sets from its own options
FLAG_SETTINGS = {
    "seed": "--seed",
    "num_workers": "--workers",
    "tensorboard": "--tensorboard",
    "mlflow": "--mlflow",
    "val_every": "--val-every",
}


def refuse_unused_fit_options(args: argparse.Namespace) -> None:
    for dest, flag in FIT_UNUSED.items():
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
    from vlmood.methods.base import check_shots, train_config
    from vlmood.params import parse_kv
    from vlmood.train.data import training_source
    from vlmood.train.engine import rank_batch_size
    from vlmood.train.validation import check_val_fraction, resolve_val_every

    refuse_unused_fit_options(args)
    params = dict(parse_kv(text, "--param") for text in args.param)
    method = create_method(args.method, **params)  # unknown names and wrong types refused here
    val_fraction = check_val_fraction(args.val_fraction)
    cfg = train_config(
        method,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.train_batch_size,
        seed=args.seed,
        num_workers=args.workers,
        tensorboard=args.tensorboard,
        overrides=train_settings(args.train_set),
        mlflow=args.mlflow,
        val_every=resolve_val_every(args.val_every, val_fraction, args.val_set),
    )
    check_shots(args.shots)
    check_strategy_here(cfg)
    if getattr(method, "alphas", None):  # wise-ft with several alphas: one adapter each, nothing trains
        return fit_wise_ft_alphas(args, method, cfg)
    D.init_distributed()
    rank_batch_size(cfg)  # the global batch must split over the torchrun processes
    ts = training_source(**C.data_inputs(args), val_sets=args.val_set)
    if D.is_initialized() and C.auto_device(args.device) == "cuda":
        args.device = str(D.default_device())  # one GPU per rank (LOCAL_RANK)
    model = C.load_model(args)
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
        progress=not args.no_progress,
        resume=args.resume,
        extract_options=C.extract_options(args),
        reuse=True,  # a finished adapter of the same settings is kept; other settings are refused
        label=args.label,
        val_fraction=val_fraction,
        val_sets=ts.val_sets,
    )
    if D.is_main():
        print(f"adapter: {out}\nevaluate: vlmood eval --model {args.model} --adapter {out} ...")
    return 0


def check_strategy_here(cfg) -> None:
    """``strategy=fsdp`` shards over torchrun processes: refused in a plain single process."""
    import os

    if getattr(cfg, "strategy", "ddp") == "fsdp" and "WORLD_SIZE" not in os.environ:
        raise UsageError(
            "--set strategy=fsdp shards the model over torchrun processes: run "
            "`torchrun --nproc_per_node N -m vlmood.cli fit ...`, or drop it for a single process"
        )


def fit_wise_ft_alphas(args: argparse.Namespace, method, cfg) -> int:
    """``vlmood fit wise-ft --param endpoint=DIR --param alphas=0,0.5,1 --out OUT``: one adapter
    per alpha in ``OUT/alpha<a>/`` (the endpoint's class names; no training data is read)."""
    from vlmood.methods.wise_ft import wise_ft_adapters

    model = C.load_model(args)
    outs = wise_ft_adapters(
        model,
        method.params.endpoint,
        method.alphas,
        args.out,
        cfg=cfg,
        progress=not args.no_progress,
        label=args.label,
    )
    for a, out in zip(method.alphas, outs, strict=True):
        print(f"alpha {a:g}: adapter {out}")
    print(
        f"evaluate each: vlmood eval --model {args.model} --adapter {outs[0]} ...; "
        f"or all at once with the endpoint's training: vlmood study --methods zero-shot,<endpoint method>,wise-ft "
        f"--param wise-ft:endpoint=<endpoint method> --param wise-ft:alphas=..."
    )
    return 0


def method_kv(items: list[str], flag: str, need_method: bool) -> dict[str, dict[str, Any]]:
    """``[METHOD:]KEY=VALUE`` items -> {method or '*': {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for text in items:
        head, _, kv = text.partition(":") if ":" in text.split("=", 1)[0] else ("", "", text)
        if "=" not in kv or (need_method and not head):
            form = "METHOD:KEY=VALUE" if need_method else "[METHOD:]KEY=VALUE"
            raise UsageError(f"{flag} {text!r} is not {form}")
        k, _, v = kv.partition("=")
        out.setdefault(head.strip() or "*", {})[k.strip()] = C.scalar(v.strip())
    return out


def cmd_study(args: argparse.Namespace) -> int:
    from vlmood.studies import StudyConfig, _check_config, format_study, run_study

    specs = C.score_specs(args.scores, DEFAULT_STUDY_SCORES)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError as e:
        raise UsageError(f"--seeds {args.seeds!r}: a comma list of integers, e.g. --seeds 0,1,2") from e
    cfg = StudyConfig(
        methods=[m.strip().lower() for m in args.methods.split(",") if m.strip()],
        scores=specs,
        seeds=seeds,
        shots=args.shots,
        params=method_kv(args.param, "--param", need_method=True),
        train=method_kv(args.train_set, "--set", need_method=False),
    )
    _check_config(cfg)  # fail on bad methods, scores or settings before any loading
    sets = C.build_sets(args)
    opts = C.eval_options(args, sets)
    study = run_study(lambda: C.load_model(args), sets.eval_sets, cfg, args.out, opts, not args.no_progress)
    print(format_study(study))
    print(f"study: {Path(args.out) / 'study.json'}")
    return 0
