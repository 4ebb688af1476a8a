"""Run by tests/test_distributed.py under torchrun: train a small model with the engine under DDP."""

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from vlmood import distributed as D
from vlmood.train.engine import TrainConfig, Trainer


def main() -> None:
    out = Path(sys.argv[1])
    D.init_distributed()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.arange(1.0, 6.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def loss_fn(module, batch):
        # calls a submodule directly, as pretraining does: DDP must still synchronise gradients
        xb, yb = batch
        return torch.mean((module[2](module[1](module[0](xb))).squeeze(-1) - yb) ** 2), {}

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="sgd", log_every=1)
    Trainer(model, TensorDataset(x, y), loss_fn, cfg, out / "run", progress=False).fit()
    torch.save(model.state_dict(), out / f"weights_rank{D.rank()}.pt")
    D.barrier()


if __name__ == "__main__":
    main()
