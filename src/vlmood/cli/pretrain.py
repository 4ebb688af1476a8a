"""``vlmood pretrain``: arguments -> PretrainConfig (+ TrainConfig) -> pretrain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlmood.cli import _common as C


def add_parsers(sub: Any) -> None:
    pt = C.add_command(
        sub, "pretrain", help="contrastive image-text pretraining of a small CLIP from scratch"
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
    pt.add_argument("--epochs", type=int, default=15, help="passes over the image-text pairs")
    pt.add_argument("--batch-size", type=int, default=256, help="image-text pairs per batch")
    pt.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (cosine decay)")
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
    pt.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from vlmood import distributed as D
    from vlmood.train.engine import TrainConfig
    from vlmood.train.pretrain import PretrainConfig, pretrain

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
