"""A short full fine-tune of the tiny model through the engine under torchrun, DDP or FSDP, checked
against the same run without a process group (run by benchmarks/gpu_check.sh).

    torchrun --standalone --nproc_per_node 1 benchmarks/gpu_dist_check.py --strategy fsdp --out DIR

Every rank first trains the reference without a process group (plain engine; rank 0's result is
used), then creates the process group itself (NCCL on CUDA, gloo on the CPU; also at world size 1,
which ``vlmood.distributed.init_distributed`` leaves alone, so the strategy's code runs on a single
GPU), trains the same run with ``--strategy`` (activation checkpointing on), compares the trained
tensors (SGD with momentum: equal up to float summation order), then repeats it stopped after epoch
1 and resumed from its checkpoint. Prints one JSON line (rank 0) and exits 1 when a check fails.

At world size 1 the engine applies no DDP wrapper (there is no other rank to synchronise with), so
``--strategy ddp`` then checks the engine under an NCCL process group (broadcasts, barriers, the
checkpoint) and ``--strategy fsdp`` the whole FSDP2 path (sharding over a mesh of one, DTensor
parameters, gathered checkpoints, the write-back); the 2-rank equality is checked on the CPU by
tests/test_finetune_scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


class PixelSet(torch.utils.data.Dataset):
    def __init__(self, n: int, classes: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixels": self.pixels[i], "label": self.labels[i]}


def parts(spec: str, device, precision: str):
    from vlmood.methods.finetune import FineTuneModule
    from vlmood.methods.losses import clip_contrastive_loss
    from vlmood.models import load_model

    model = load_model(spec, device=device, precision=precision)
    tokens = model.tokenize([f"a photo of a {c}." for c in ("zero", "one", "two", "three")])
    module = FineTuneModule(model)
    module.backbone.requires_grad_(True)
    size = model.torch_module.visual.image_size
    size = size[0] if isinstance(size, tuple) else size

    def loss_fn(m, batch):
        f = m.image(batch["pixels"])
        t = m.text(tokens[batch["label"].cpu()])
        return clip_contrastive_loss(f, t, m.scale()), {}

    return model, module, PixelSet(32, 4, size), loss_fn


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.torch_module.state_dict().items()}


class Stop(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", choices=("ddp", "fsdp"), required=True)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--model", default="tiny-test")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from vlmood import distributed as D
    from vlmood.train.engine import TrainConfig, Trainer

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device == "cuda"
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    out = Path(args.out) / f"{args.strategy}-{args.precision}"
    rank = int(os.environ.get("RANK", "0"))
    # 32 images of 4 classes, global batch 8 (W must divide it): 4 steps an epoch, 2 epochs
    cfg = dict(epochs=2, batch_size=8, lr=1e-2, optimizer="sgd", weight_decay=0.1, grad_clip=1.0)
    cfg["precision"] = args.precision
    res: dict = {"strategy": args.strategy, "precision": args.precision, "device": str(device)}

    t0 = time.perf_counter()
    model, module, data, loss_fn = parts(args.model, device, args.precision)
    Trainer(module, data, loss_fn, TrainConfig(**cfg), out / f"ref{rank}", device, progress=False).fit()
    ref = state(model)
    res["ref_s"] = time.perf_counter() - t0

    dist.init_process_group("nccl" if cuda else "gloo")
    res["world_size"] = D.world_size()
    res["backend"] = dist.get_backend()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model, module, data, loss_fn = parts(args.model, device, args.precision)
    run = TrainConfig(**cfg, strategy=args.strategy, grad_checkpointing=True)
    trainer = Trainer(module, data, loss_fn, run, out / "run", device, progress=False)
    res["fsdp_blocks"] = len(trainer._fsdp.blocks) if trainer._fsdp is not None else None
    res["ddp"] = isinstance(trainer.wrapped, torch.nn.parallel.DistributedDataParallel)
    trainer.fit()
    got = state(model)
    res["run_s"] = time.perf_counter() - t0
    if cuda:
        res["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    tol = dict(rtol=1e-3, atol=1e-4) if args.precision == "bf16" else dict(rtol=1e-5, atol=1e-6)
    res["max_abs_diff"] = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    res["same_as_reference"] = all(torch.allclose(got[k], ref[k], **tol) for k in ref)
    res["plain_tensors_back"] = all(
        type(p) is torch.nn.Parameter and p.device == device for p in model.torch_module.parameters()
    )

    # stopped after epoch 1, resumed from the checkpoint: the uninterrupted run's tensors
    model, module, data, loss_fn = parts(args.model, device, args.precision)
    run = TrainConfig(**cfg, strategy=args.strategy)

    def stop(epoch, _trainer):
        if epoch == 1:
            raise Stop

    try:
        Trainer(module, data, loss_fn, run, out / "resume", device, progress=False, on_epoch_end=stop).fit()
    except Stop:
        pass
    Trainer(module, data, loss_fn, run, out / "resume", device, progress=False).fit(resume=True)
    resumed = state(model)
    res["resume_max_abs_diff"] = max(float((resumed[k] - got[k]).abs().max()) for k in got)
    res["resume_same"] = all(torch.allclose(resumed[k], got[k], **tol) for k in got)
    ck = torch.load(out / "run" / "last.pt", map_location="cpu", weights_only=True)
    res["checkpoint_full_shapes"] = all(
        tuple(ck["params"][n].shape) == tuple(p.shape)
        for n, p in module.named_parameters()
        if n in ck["params"]
    )
    ok = res["same_as_reference"] and res["resume_same"] and res["plain_tensors_back"]
    ok = ok and res["checkpoint_full_shapes"]
    res["ok"] = bool(ok)
    if rank == 0:
        print(json.dumps(res), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
