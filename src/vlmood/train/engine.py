"""The one training loop: optimiser and schedule, mixed precision, gradient accumulation, DDP,
atomic per-epoch checkpoints, exact resume, seeded determinism, JSONL metrics, NaN stop.

Used by pretraining (``vlmood pretrain``) and by every adaptation method. A task plugs in
``loss_fn(batch) -> (loss, logs)`` and a dataset; the engine owns everything else.

Determinism and resume: each epoch seeds torch's global RNG and the sampler/DataLoader
generator from ``(seed, epoch)``, so an epoch does the same thing whether it follows an
uninterrupted run or a resume from the previous epoch's checkpoint.

Batch size under torchrun: ``TrainConfig.batch_size`` is the **global** batch (what one optimiser
step sees over all ranks); each of the W ranks takes ``batch_size / W`` of it (a batch size that
W does not divide is refused). Every rank draws the same per-epoch permutation as a 1-process run
and takes its contiguous share of each global batch, and DDP averages the ranks' gradients, so a
W-process run takes the same steps as the 1-process run at the same batch size (up to float
summation order) and ``steps_per_epoch``, warmup in epochs and the schedule do not depend on W.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from vlmood import distributed as D
from vlmood.errors import RunError, UsageError, VlmoodError
from vlmood.train.metrics_log import MetricsLog
from vlmood.utils import atomic_path, atomic_write_text, sha256_json

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


class TrainingDivergedError(RunError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ResumeError(VlmoodError, ValueError):
    """A resume was asked for with a configuration that differs from the checkpoint's."""


#: training settings that change how a run goes or logs, not what it computes
#: (grad_checkpointing and strategy: how it uses memory and devices, see vlmood.train.sharding)
RUN_ONLY_SETTINGS = (
    "num_workers",
    "log_every",
    "tensorboard",
    "mlflow",
    "val_every",
    "grad_checkpointing",
    "strategy",
)


@dataclass
class TrainConfig:
    """Optimisation settings. Everything here is part of the run's identity (checked on resume)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"  # sgd | adam | adamw
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0  # optimiser steps
    warmup_lr: float | None = None  # constant warmup lr (CoOp); None = linear warmup from 0
    min_lr: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only, with a grad scaler)
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    drop_last: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # method settings, checked on resume too
    tensorboard: bool = False  # also write the logged scalars as TensorBoard events (out/tensorboard)
    mlflow: bool = False  # also log them to an MLflow run (needs the mlflow package)
    val_every: int = 0  # run the Trainer's ``validate`` every N epochs and after the last (0: never)
    grad_checkpointing: bool = False  # recompute each transformer block in backward (less memory)
    strategy: str = "ddp"  # ddp | fsdp: how torchrun ranks share the module (vlmood.train.sharding)

    def check(self) -> None:
        """Refuse settings that cannot train (UsageError naming the setting)."""
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise UsageError(f"epochs (--epochs) must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise UsageError(
                f"batch size (--train-batch-size) must be a positive integer, got {self.batch_size!r}"
            )
        if not isinstance(self.grad_accum, int) or isinstance(self.grad_accum, bool) or self.grad_accum < 1:
            raise UsageError(f"grad_accum must be a positive integer, got {self.grad_accum!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not (self.lr > 0):
            raise UsageError(f"learning rate (--lr) must be a positive number, got {self.lr!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise UsageError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        check_val_every(self.val_every)
        from vlmood.train.sharding import check_strategy

        check_strategy(self)
        if self.mlflow:
            from vlmood.train.metrics_log import require_mlflow

            require_mlflow()

    def identity(self) -> str:
        d = asdict(self)
        for k in RUN_ONLY_SETTINGS:
            d.pop(k)
        return sha256_json(d)


PRECISIONS = ("fp32", "bf16", "fp16")


def check_val_every(every: Any) -> int:
    """``--val-every``: an integer >= 0 (0: no validation), else UsageError."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UsageError(
            f"--val-every must be an integer >= 0 (validate every N epochs and after the last; 0: never), "
            f"got {every!r}"
        )
    return every


def validation_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` validates: every ``every``-th and the last."""
    return every > 0 and (epoch % every == 0 or epoch == epochs)


def batches_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Global batches of ``cfg.batch_size`` in an epoch of ``n`` samples (any world size)."""
    return (n // cfg.batch_size) if cfg.drop_last else math.ceil(n / cfg.batch_size)


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch of ``n`` samples at the global batch ``cfg.batch_size``: the same
    for every world size (so warmup given in epochs is the same number of steps under DDP)."""
    return batches_per_epoch(n, cfg) // cfg.grad_accum


def rank_batch_size(cfg: TrainConfig, world_size: int | None = None) -> int:
    """The per-rank share of the global batch; refuses a batch the world size does not divide."""
    w = D.world_size() if world_size is None else int(world_size)
    if cfg.batch_size % w:
        raise UsageError(
            f"batch size {cfg.batch_size} is the global batch and must split evenly over the {w} "
            f"processes of this torchrun job; use a multiple of {w} (e.g. {max(w, cfg.batch_size // w * w)})"
        )
    return cfg.batch_size // w


def epoch_order(n: int, seed_value: int) -> list[int]:
    """The epoch's sample order: what a 1-process ``DataLoader(RandomSampler(generator=g),
    generator=g)`` with ``g`` seeded by ``seed_value`` yields (the loader draws the workers' base
    seed from ``g`` before the sampler's permutation), so runs of earlier versions are reproduced."""
    g = torch.Generator().manual_seed(seed_value)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g).tolist()


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch of the epoch order (see the module docstring).

    Rank ``r`` of ``W`` takes positions ``[r*b, (r+1)*b)`` of each global batch of ``B = W*b``.
    With ``drop_last=False`` a short last batch is filled up from the start of the order, so
    every rank runs the same number of equal batches (DDP needs both)."""

    def __init__(
        self, n: int, batch_size: int, drop_last: bool, seed_value: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.batch, self.drop_last = n, batch_size, drop_last
        self.seed_value, self.rank, self.world = seed_value, rank, world_size
        self.rank_batch = batch_size // world_size

    def __len__(self) -> int:
        return (self.n // self.batch) if self.drop_last else math.ceil(self.n / self.batch)

    def __iter__(self):
        order = epoch_order(self.n, self.seed_value)
        b = self.rank_batch
        for i in range(len(self)):
            glob = order[i * self.batch : (i + 1) * self.batch]
            if self.world == 1:
                yield glob  # a short last batch stays short (drop_last=False), as a DataLoader does
                continue
            while len(glob) < self.batch:  # drop_last=False under DDP: equal shares for every rank
                glob = glob + order[: self.batch - len(glob)]
            yield glob[self.rank * b : (self.rank + 1) * b]


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict], cfg: TrainConfig
) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total``: warmup then cosine/constant."""
    if step < cfg.warmup_steps:
        if cfg.warmup_lr is not None:
            return cfg.warmup_lr
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule != "cosine":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or constant")
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    return torch.autocast(device.type, enabled=False)


def _mean_over_ranks(values: dict[str, Any]) -> dict[str, Any]:
    """Logged numbers averaged over the ranks (each saw its share of the global batch), so a DDP
    run logs what a 1-process run logs; unchanged without a process group."""
    if not (D.is_initialized() and D.world_size() > 1):
        return values
    keys = sorted(k for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool))
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    means = (t / D.world_size()).cpu().tolist()
    return {**values, **dict(zip(keys, means))}


@contextlib.contextmanager
def kept_modes(*modules: torch.nn.Module):
    """Restore every submodule's train/eval flag on exit (validation may switch them to eval)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class _LossModule(torch.nn.Module):
    """Runs ``loss_fn(module, batch)`` inside ``forward`` so that DDP (which wraps this module) sees
    a forward pass and synchronises gradients, whatever parts of the model the loss calls."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: Any):
        return self.loss_fn(self.module, batch)


class Trainer:
    """Runs ``cfg.epochs`` epochs of ``loss_fn`` over ``dataset``, training ``module``'s parameters
    that require grad. ``out_dir`` receives ``last.pt`` (every epoch, atomic), ``metrics.jsonl``
    and ``config.json``.

    ``loss_fn(module, batch) -> (loss, logs)`` gets the plain module and a batch already moved to the
    device; under DDP it runs inside the DDP-wrapped forward, so gradients are synchronised.

    ``validate(trainer) -> {name: number}`` (optional) runs at the end of every ``cfg.val_every``-th
    epoch and of the last (:func:`validation_due`), on rank 0 only, after the epoch's training and
    before its checkpoint; its numbers join the epoch's row (``val/...`` keys by convention) in
    ``metrics.jsonl``, TensorBoard and MLflow. It runs under ``torch.no_grad`` with the RNG states
    (torch CPU/CUDA, ``random``, numpy) saved and restored and every module's train/eval mode
    restored after it, so it changes nothing the training computes: a run with validation trains
    the same tensors as one without, and a resume reproduces it.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        dataset: Dataset,
        loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        collate_fn: Callable | None = None,
        param_groups: list[dict] | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[int, Trainer], dict[str, float] | None] | None = None,
        validate: Callable[[Trainer], dict[str, float]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.validate = validate
        self.device = torch.device(device)
        self.out = Path(out_dir)
        self.module = module.to(self.device)
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("nothing to train: no parameter of the module requires grad")
        self.param_names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.wrapped: torch.nn.Module = _LossModule(module, loss_fn)
        self._fsdp = None  # strategy fsdp: vlmood.train.sharding.FSDPRun (self.module is its copy)
        if cfg.strategy == "fsdp" and D.is_initialized():
            from vlmood.train.sharding import FSDPRun, check_strategy

            check_strategy(cfg)
            self._fsdp = FSDPRun(self.wrapped, self.device)
            self.wrapped, self.module = self._fsdp.root, self._fsdp.module
            trainable, param_groups = self._fsdp.trainable(), self._fsdp.param_groups(param_groups)
        elif D.is_initialized() and D.world_size() > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(param_groups or trainable, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self._metrics_log: MetricsLog | None = None  # open during fit, rank 0
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        cfg.check()
        self.rank_batch = rank_batch_size(cfg)  # the global batch split over the ranks
        per_epoch = batches_per_epoch(len(dataset), cfg)
        if per_epoch == 0:
            raise UsageError(
                f"the training set has {len(dataset)} samples, fewer than one batch of {cfg.batch_size} "
                f"(drop_last={cfg.drop_last}): lower the batch size (vlmood fit --train-batch-size N) "
                f"or train on more images (--shots)"
            )
        if per_epoch < cfg.grad_accum:
            raise ValueError(
                f"grad_accum={cfg.grad_accum} is more than the {per_epoch} batches of an epoch: "
                f"no optimiser step would ever run; lower grad_accum or the batch size"
            )
        self.steps_per_epoch = steps_per_epoch(len(dataset), cfg)
        self.total_steps = self.steps_per_epoch * cfg.epochs

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def trainable_state(self) -> dict[str, torch.Tensor]:
        if self._fsdp is not None:  # full tensors gathered from the shards (every rank; rank 0 keeps them)
            return self._fsdp.full_params(self.param_names)
        sd = self.module.state_dict()
        return {n: sd[n].detach().clone() for n in self.param_names}

    def save_checkpoint(self) -> None:
        if self._fsdp is not None:  # gathering the full tensors takes every rank
            params, optim = self.trainable_state(), self._fsdp.full_optimizer_state(self.optimizer)
        if not D.is_main():
            return
        if self._fsdp is None:
            params, optim = self.trainable_state(), self.optimizer.state_dict()
        state = {
            "format": 1,
            "config_identity": self.cfg.identity(),
            "epoch": self.epoch,
            "step": self.step,
            "params": params,
            "buffers": {n: b.detach().clone() for n, b in self.module.named_buffers()},
            "optimizer": optim,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            # epoch rows so far: a resumed run returns (and summarises) the whole run's history
            "history": list(getattr(self, "_history", [])),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        path = Path(path) if path else self.checkpoint_path
        if D.is_initialized() and D.world_size() > 1:
            # rank 0 (the writer) reads it and sends it: no shared file system needed
            state = None
            if D.is_main() and path.exists():
                state = torch.load(path, map_location="cpu", weights_only=True)
            state = D.broadcast_object(state)
        else:
            state = torch.load(path, map_location=self.device, weights_only=True) if path.exists() else None
        if state is None:
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        if state.get("config_identity") != self.cfg.identity():
            old = self.out / "config.json"
            hint = f" (the run's settings are in {old})" if old.exists() else ""
            raise ResumeError(
                f"cannot resume from {path}: it was written with different training settings{hint}. "
                f"Use the same settings, or a new --out directory."
            )
        missing = set(self.param_names) - set(state["params"])
        if missing:
            raise ResumeError(f"checkpoint {path} lacks parameters {sorted(missing)[:5]}")
        with torch.no_grad():
            own = dict(self.module.named_parameters())
            for n in self.param_names:
                if self._fsdp is None:
                    own[n].copy_(state["params"][n])
            if self._fsdp is not None:  # full tensors -> this rank's shards
                self._fsdp.load_params(state["params"], self.param_names)
            bufs = dict(self.module.named_buffers())
            for n, b in state.get("buffers", {}).items():
                if n in bufs:
                    bufs[n].copy_(b)
        if self._fsdp is not None:
            self._fsdp.load_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._history = [dict(r) for r in state.get("history", [])]
        self._truncate_log()
        (log.info if D.is_main() else log.debug)(
            "resumed from %s at epoch %d (step %d)", path, self.epoch, self.step
        )

    # ------------------------------------------------------------------ logging
    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _log(self, row: dict[str, Any]) -> None:
        """metrics.jsonl, and TensorBoard / MLflow when asked (:class:`MetricsLog`; rank 0)."""
        if self._metrics_log is not None:
            self._metrics_log.log(row)

    def _open_metrics_log(self, resume: bool) -> MetricsLog | None:
        if not D.is_main():
            return None
        return MetricsLog(
            self.out,
            tensorboard=self.cfg.tensorboard,
            mlflow=self.cfg.mlflow,
            step=self.step,
            params=asdict(self.cfg),
            resume=resume,
        )

    def _truncate_log(self) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone)."""
        if not D.is_main() or not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if row.get("epoch", 0) < self.epoch or (
                row.get("kind") == "epoch" and row.get("epoch") == self.epoch - 1
            ):
                keep.append(line)
        atomic_write_text(self.log_path, "".join(k + "\n" for k in keep))

    # ------------------------------------------------------------------ the loop
    def _loader(self, epoch: int) -> DataLoader:
        seed_value = self.cfg.seed * 100003 + epoch
        g = torch.Generator().manual_seed(seed_value)  # the workers' seeds
        batches = GlobalBatchSampler(
            len(self.dataset), self.cfg.batch_size, self.cfg.drop_last, seed_value, D.rank(), D.world_size()
        )
        w = self.cfg.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=w,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            generator=g,
            persistent_workers=False,
            prefetch_factor=4 if w > 0 else None,
        )

    def _to_device(self, batch: Any) -> Any:
        nb = self.device.type == "cuda"
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=nb)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs``; with ``resume`` continue from ``last.pt``. Returns epoch logs."""
        if self.validate is not None and self.cfg.val_every and getattr(self, "_fsdp", None) is not None:
            # rank 0 validates alone, but a sharded module's forward needs every rank
            raise UsageError("validation while training (--val-every) does not run with --strategy fsdp yet")
        if D.is_main():  # rank 0 is the only writer (checkpoint, config, metrics)
            self.out.mkdir(parents=True, exist_ok=True)
        self._history = []
        if D.is_main():  # temp files of writes a kill interrupted (atomic_path names them .NAME.*.tmp)
            for stale in self.out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        # rank 0's view of the folder decides for every rank (they need not share a file system)
        has_checkpoint = D.broadcast_object(self.checkpoint_path.exists() if D.is_main() else None)
        if resume:
            self.load_checkpoint()
        elif has_checkpoint:
            raise ResumeError(
                f"{self.out} already holds a checkpoint; pass --resume to continue it or choose another --out"
            )
        elif D.is_main() and self.log_path.exists():
            self.log_path.unlink()
        if D.is_main():
            atomic_write_text(
                self.out / "config.json", json.dumps(asdict(self.cfg), indent=2, default=str) + "\n"
            )
        self._metrics_log = self._open_metrics_log(resume)
        uncheckpoint = None
        if self.cfg.grad_checkpointing:  # on the blocks for this fit only (removed below)
            from vlmood.train.sharding import enable_grad_checkpointing

            uncheckpoint = enable_grad_checkpointing(self.module)
        try:
            with self._metrics_log or contextlib.nullcontext():  # closes TensorBoard, ends MLflow
                history = self._fit_loop()
            if self._fsdp is not None:  # every rank: the full trained tensors into the caller's module
                self._fsdp.write_back(self.param_names)
            return history
        finally:
            self._metrics_log = None
            if uncheckpoint is not None:
                uncheckpoint()

    def _run_validation(self) -> dict[str, Any]:
        """``self.validate(self)`` on rank 0 (the other ranks go on to the checkpoint barrier),
        without side effects on the training: no gradients, RNG states and module modes restored."""
        if not D.is_main() or self.validate is None:
            return {}
        import numpy as np

        py_state, np_state = random.getstate(), np.random.get_state()
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), kept_modes(self.module):
                out = dict(self.validate(self) or {})
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        out.setdefault("val/time_s", time.perf_counter() - t0)
        return out

    def _fit_loop(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        history = self._history  # rows restored from the checkpoint on resume
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            torch.manual_seed(cfg.seed * 100003 + epoch)
            random.seed(cfg.seed * 100003 + epoch)
            self.wrapped.train()
            loader = self._loader(epoch)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n_batches = 0
            micro = 0
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                disable=not (self.progress and D.is_main()),
            )
            self.optimizer.zero_grad(set_to_none=True)
            for batch in bar:
                if self.step >= (epoch + 1) * self.steps_per_epoch:
                    break
                lr = lr_at(self.step, self.total_steps, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                batch = self._to_device(batch)
                with _autocast(self.device, cfg.precision):
                    loss, logs = self.wrapped(batch)
                scaled = loss / cfg.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
                # checked after queueing the backward, before the optimiser step: the step's one host
                # sync then waits for work already queued instead of holding back the backward's launch
                finite = torch.isfinite(loss.detach()).all().float()
                if D.is_initialized() and D.world_size() > 1:  # every rank stops together
                    D.all_reduce_min(finite)
                if finite.item() < 1:
                    raise TrainingDivergedError(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {self.step}: training stopped. "
                        f"The last good checkpoint is {self.checkpoint_path if self.checkpoint_path.exists() else '(none yet)'}; "
                        f"lower the learning rate or check the data."
                    )
                logs = {k: float(v) for k, v in logs.items()}  # a loss_fn may log tensors: no sync in it
                micro += 1
                n_batches += 1
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if micro % cfg.grad_accum:
                    continue
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip
                    )
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.step % cfg.log_every == 0:  # (the same step on every rank)
                    self._log(
                        {
                            "kind": "step",
                            "epoch": epoch,
                            "step": self.step,
                            "lr": lr,
                            **_mean_over_ranks({"loss": float(loss.detach()), **logs}),
                        }
                    )
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.close()
            self.epoch = epoch + 1
            row = {
                "kind": "epoch",
                "epoch": epoch,
                "step": self.step,
                "time_s": time.perf_counter() - t0,
                "samples_per_s": n_batches * cfg.batch_size / max(1e-9, time.perf_counter() - t0),
                **_mean_over_ranks({k: v / max(1, n_batches) for k, v in sums.items()}),
            }
            if self.on_epoch_end is not None:
                row.update(self.on_epoch_end(epoch, self) or {})
            if self.validate is not None and validation_due(epoch + 1, cfg.val_every, cfg.epochs):
                row.update(self._run_validation())
            self._log(row)
            history.append(row)
            (log.info if D.is_main() else log.debug)(
                "epoch %d/%d: %s",
                epoch + 1,
                cfg.epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
            )
            self.save_checkpoint()
            D.barrier()
        return history
