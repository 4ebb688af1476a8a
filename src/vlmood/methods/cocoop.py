"""CoCoOp (Zhou et al. 2022, KaiyangZhou/CoOp ``trainers/cocoop.py``): image-conditioned prompts.

A meta-net ``Linear(vis_dim -> vis_dim/16) -> ReLU -> Linear(-> ctx_dim)`` maps each normalised
image feature to a bias ``pi(x)`` added to every context token, so every image has its own class
text features ``[K, D]`` and the text encoder runs B x K prompts per batch (chunked and
checkpointed, see ``prompt.encode_prompts``). Defaults (methods.md 7.2): 4 context tokens from
"a photo of a", batch size 1, 10 epochs, SGD lr 0.002, 1 warmup epoch at 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmood.methods.base import Adapter, register_method
from vlmood.methods.coop import PromptMethodBase
from vlmood.methods.prompt import PromptLearner, auto_chunk, encode_prompts
from vlmood.train.engine import TrainConfig


class MetaNet(nn.Sequential):
    def __init__(self, vis_dim: int, ctx_dim: int) -> None:
        hidden = max(1, vis_dim // 16)
        super().__init__()
        self.add_module("linear1", nn.Linear(vis_dim, hidden))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("linear2", nn.Linear(hidden, ctx_dim))


class CoCoOpModule(nn.Module):
    def __init__(self, learner: PromptLearner, vis_dim: int) -> None:
        super().__init__()
        self.learner = learner
        width = learner.ctx.shape[-1]
        self.meta_net = MetaNet(vis_dim, width).to(learner.ctx.device)

    def forward(self, image: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        return self.conditional_text_features(image, chunk)

    def conditional_text_features(self, image: torch.Tensor, chunk: int = 0, use_checkpoint: bool = True):
        """Per-image text features ``[B, K, D]`` for normalised image features ``image`` [B, D]."""
        bias = self.meta_net(image)  # [B, W]
        b, k = image.shape[0], self.learner.n_classes
        idx = torch.arange(b * k)

        def build(i: torch.Tensor):
            return self.learner.embed(i % k, bias=bias[(i // k).to(bias.device)])

        feats = encode_prompts(self.learner.model[0], build, idx, chunk, use_checkpoint)
        return feats.view(b, k, -1)


def cocoop_logits(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * <image_b, text_{b,k}>`` for per-image text features ``text`` [B, K, D]."""
    return scale * torch.einsum("bd,bkd->bk", image, text)


@dataclass
class CoCoOpParams:
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    csc: bool = False
    class_token_position: str = "end"
    init_std: float = 0.02
    init_seed: int | None = None
    text_chunk: int | None = None
    augment: bool = False


@register_method("cocoop")
class CoCoOp(PromptMethodBase):
    """CoCoOp: CoOp context plus an image-conditioned bias from a small meta-net."""

    Params = CoCoOpParams

    def default_config(self, **overrides: Any) -> TrainConfig:
        base = dict(epochs=10, batch_size=1)
        base.update(overrides)
        return super().default_config(**base)

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        learner = self.make_learner(model, data.classnames, cfg.seed)
        torch.manual_seed(cfg.seed if self.params.init_seed is None else self.params.init_seed)
        self.module = CoCoOpModule(learner, model.embed_dim)
        self.learner = learner
        scale = model.logit_scale

        def loss_fn(module, batch):
            img = self.image_features(model, batch, ("image",))["image"]
            chunk = auto_chunk(img.shape[0] * learner.n_classes, self.params.text_chunk)
            text = module(img, chunk)
            return F.cross_entropy(cocoop_logits(img, text, scale), batch["label"]), {}

        return self._train(model, data, cfg, out_dir, device, progress, resume, self.module, loss_fn)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"ctx": self.learner.ctx.detach()}
        out.update({f"meta_net.{k}": v.detach() for k, v in self.module.meta_net.state_dict().items()})
        return out

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return CoCoOpAdapter(model, info, tensors)


class CoCoOpAdapter(Adapter):
    """Per-image text features: use :meth:`similarities` (cosines [N, K])."""

    kind = "conditional"

    def __init__(self, model, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(model, info)
        p = info["params"]
        learner = PromptLearner(
            model,
            self.classnames,
            n_ctx=int(p["n_ctx"]),
            ctx_init=p.get("ctx_init") or None,
            csc=bool(p["csc"]),
            position=p.get("class_token_position", "end"),
        )
        self.module = CoCoOpModule(learner, model.embed_dim)
        state = {"learner.ctx": tensors["ctx"]}
        state.update({k: v for k, v in tensors.items() if k.startswith("meta_net.")})
        self.module.load_state_dict(state, strict=True)
        self.module.requires_grad_(False).eval()
        self.text_chunk = p.get("text_chunk")
        self._tensors = tensors

    @classmethod
    def head_type(cls):
        from vlmood.eval.heads import ConditionalHead

        return ConditionalHead

    def class_head(self, logit_scale: float):
        """Per-image cosines through :meth:`similarities` (:class:`~vlmood.eval.heads.ConditionalHead`)."""
        from vlmood.eval.heads import ConditionalHead

        return ConditionalHead(self, logit_scale)

    def for_classes(self, classnames) -> CoCoOpAdapter | None:
        if bool(self.params.get("csc")):
            return None
        return CoCoOpAdapter(self.model, {**self.info, "classnames": list(classnames)}, self._tensors)

    def similarities(
        self, image_features: np.ndarray, patch_features: np.ndarray | None = None, batch: int = 64
    ) -> np.ndarray:
        n = len(image_features)
        k = len(self.classnames)
        out = np.empty((n, k), dtype=np.float32)
        dev = self.module.learner.ctx.device
        with torch.no_grad():
            for s in range(0, n, batch):
                img = torch.from_numpy(np.array(image_features[s : s + batch], dtype=np.float32)).to(dev)
                chunk = auto_chunk(img.shape[0] * k, self.text_chunk)
                text = self.module.conditional_text_features(img, chunk, use_checkpoint=False)
                out[s : s + len(img)] = cocoop_logits(img, text, 1.0).cpu().numpy()  # unscaled
        return out

    def text_features_for(self, image_features: np.ndarray) -> np.ndarray:
        """Per-image class text features [N, K, D] (memory N x K x D: use on small batches)."""
        dev = self.module.learner.ctx.device
        with torch.no_grad():
            img = torch.from_numpy(np.array(image_features, dtype=np.float32)).to(dev)
            return self.module.conditional_text_features(img, 0, use_checkpoint=False).cpu().numpy()
