"""LoCoOp (Miyai et al. 2023, AtsuMiyai/LoCoOp ``trainers/locoop.py``): CoOp + OOD regularisation
from local features.

Loss = CE(global logits) + lambda * (-H_ood), where H_ood is the mean entropy of the softmax of
local (patch) logits over the patches whose top-K predicted classes do not contain the image's
label (background / ID-irrelevant regions), so their entropy is *maximised*. Entropy as in the
reference code: ``-sum p log(p + 1e-5)``; 0 when no patch qualifies. Local features are the
GL-MCM value-path patch features (``"patch"`` kind). Defaults (methods.md 7.3): lambda 0.25,
top-K 200 (capped at the number of classes), 16 context tokens, end position, CoOp's schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmood.errors import UsageError
from vlmood.methods.base import register_method
from vlmood.methods.coop import CoOpParams, PromptAdapter, PromptMethodBase, coop_loss
from vlmood.methods.prompt import auto_chunk
from vlmood.scores._torch import class_logits, entropy


def locoop_entropy_term(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean entropy of softmax(local logits) [B, P, K] over patches whose top-``top_k`` classes
    exclude the label (0 when there are none)."""
    b, p, k = local_logits.shape
    probs = F.softmax(local_logits.reshape(b * p, k), dim=-1)
    top = torch.topk(probs, k=min(top_k, k), dim=1).indices
    lab = labels.repeat_interleave(p).unsqueeze(1)
    keep = ~(top == lab).any(dim=1)
    sel = probs[keep]
    if sel.shape[0] == 0:
        return local_logits.sum() * 0.0
    return entropy(sel).mean()


def locoop_loss(
    image: torch.Tensor,
    patch: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    lam: float,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, CE, H_ood): total = CE - lam * H_ood."""
    ce = coop_loss(image, text, labels, scale)
    local = class_logits(patch, text, scale)
    h = locoop_entropy_term(local, labels, top_k)
    return ce - lam * h, ce, h


@dataclass
class LoCoOpParams(CoOpParams):
    lam: float = 0.25
    top_k: int = 200


@register_method("locoop")
class LoCoOp(PromptMethodBase):
    """LoCoOp: CoOp's CE plus entropy maximisation on ID-irrelevant local regions."""

    Params = LoCoOpParams
    kinds = ("image", "patch")

    def validate(self) -> None:
        super().validate()
        if self.params.top_k < 1:
            raise UsageError(f"method {self.name!r} parameter 'top_k' must be >= 1, got {self.params.top_k}")

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        self.learner = self.make_learner(model, data.classnames, cfg.seed)
        scale = model.logit_scale
        chunk = auto_chunk(data.n_classes, self.params.text_chunk)
        p = self.params

        def loss_fn(module, batch):
            f = self.image_features(model, batch, ("image", "patch"))
            text = module(chunk)
            loss, ce, h = locoop_loss(
                f["image"], f["patch"].float(), text, batch["label"], scale, p.lam, p.top_k
            )
            return loss, {"ce": float(ce.detach()), "h_ood": float(h.detach())}

        return self._train(model, data, cfg, out_dir, device, progress, resume, self.learner, loss_fn)

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return PromptAdapter(model, info, tensors)
