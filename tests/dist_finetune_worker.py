"""Run by tests/test_finetune.py under torchrun: the gathered contrastive losses on each rank's
share of one global batch, with their gradients; rank 0 saves what every rank computed."""

import sys

import torch
import torch.nn.functional as F

from vlmood import distributed as D
from vlmood.methods.losses import clip_contrastive_loss, cma_loss


def main() -> None:
    out = sys.argv[1]
    D.init_distributed()
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    text = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    text[5] = text[1]  # a class appearing twice in the global batch, on different ranks
    b = image.shape[0] // D.world_size()
    rows = slice(D.rank() * b, (D.rank() + 1) * b)
    rec = {}
    for name in ("clip", "cma"):
        img = image[rows].clone().requires_grad_(True)
        txt = text[rows].clone().requires_grad_(True)
        scale = torch.tensor(3.0, requires_grad=True)
        if name == "clip":
            loss = clip_contrastive_loss(img, txt, scale)
        else:
            loss = cma_loss(img, txt, scale, 0.3)[0]
        loss.backward()
        rec[name] = {
            "loss": float(loss.detach()),
            "image_grad": img.grad.clone(),
            "text_grad": txt.grad.clone(),
            "scale_grad": float(scale.grad),
        }
    gathered = D.gather_objects(rec)
    if D.is_main():
        torch.save({"image": image, "text": text, "ranks": gathered}, out)
    D.barrier()


if __name__ == "__main__":
    main()
