"""FLYP-style full fine-tuning of the tiny model through the engine, shared by
tests/test_finetune_scale.py (the 1-process reference) and, run under torchrun (2 gloo ranks), with
``strategy="fsdp"``: (a) SGD with momentum and activation checkpointing, compared with the
1-process run; (b) AdamW straight through and (c) AdamW stopped after its first epoch and resumed
from the full-tensor checkpoint, compared with each other (Adam turns the float noise of the
gradients that are zero in exact arithmetic, e.g. attention key biases, into +-lr steps, so only
the same reduction order reproduces it). Rank 0 saves the trained tensors."""

import functools
import sys
from pathlib import Path

import torch

from vlmood import distributed as D
from vlmood.methods.finetune import FineTuneModule
from vlmood.methods.losses import clip_contrastive_loss
from vlmood.train.engine import TrainConfig, Trainer

#: 16 images of 4 classes, global batch 8: 2 steps an epoch; grad_clip exercises the sharded norm
SCALE_CFG = functools.partial(
    TrainConfig, epochs=2, batch_size=8, lr=1e-2, optimizer="sgd", weight_decay=0.1, grad_clip=1.0
)


class PixelSet(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, classes: int = 4, size: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixels": self.pixels[i], "label": self.labels[i]}


def flyp_parts(spec: str = "tiny-test"):
    """(model, FineTuneModule with every parameter trainable, dataset, FLYP's loss)."""
    from vlmood.models import load_model

    model = load_model(spec)
    tokens = model.tokenize([f"a photo of a {c}." for c in ("zero", "one", "two", "three")])
    module = FineTuneModule(model)
    module.backbone.requires_grad_(True)

    def loss_fn(m, batch):
        f = m.image(batch["pixels"])
        t = m.text(tokens[batch["label"].cpu()])
        return clip_contrastive_loss(f, t, m.scale()), {}

    return model, module, PixelSet(), loss_fn


def trained_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.torch_module.state_dict().items()}


class Stop(Exception):
    pass


def main() -> None:
    out = Path(sys.argv[1])
    D.init_distributed()
    torch.set_num_threads(1)
    res = {"world": D.world_size()}

    model, module, dataset, loss_fn = flyp_parts()
    cfg = SCALE_CFG(strategy="fsdp", grad_checkpointing=True)
    trainer = Trainer(module, dataset, loss_fn, cfg, out / "a", progress=False)
    res["blocks"] = len(trainer._fsdp.blocks) if trainer._fsdp is not None else 0
    proj = dict(trainer.module.named_parameters())["backbone.visual.proj"]
    res["proj_rows"] = (int(proj.to_local().shape[0]), int(proj.shape[0]))
    trainer.fit()
    res["a"] = trained_state(model)

    adamw = SCALE_CFG(strategy="fsdp", optimizer="adamw", lr=1e-3)
    model, module, dataset, loss_fn = flyp_parts()
    Trainer(module, dataset, loss_fn, adamw, out / "b", progress=False).fit()
    res["b"] = trained_state(model)

    # (c) stopped after epoch 1 (its checkpoint written), then resumed by a new trainer
    model, module, dataset, loss_fn = flyp_parts()
    before = trained_state(model)

    def stop(epoch, _trainer):
        if epoch == 1:
            raise Stop

    try:
        Trainer(module, dataset, loss_fn, adamw, out / "c", progress=False, on_epoch_end=stop).fit()
    except Stop:
        pass
    after_stop = trained_state(model)
    res["untouched_after_stop"] = all(torch.equal(before[k], after_stop[k]) for k in before)
    Trainer(module, dataset, loss_fn, adamw, out / "c", progress=False).fit(resume=True)
    res["c"] = trained_state(model)
    if D.is_main():
        torch.save(res, out / "ranks.pt")
    D.barrier()


if __name__ == "__main__":
    main()
