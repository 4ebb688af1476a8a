"""CoOp (Zhou et al. 2022, KaiyangZhou/CoOp ``trainers/coop.py``): learned prompt context.

Only the context vectors train; both encoders are frozen. Logits = CLIP's logit scale x cosine,
loss = cross-entropy. Defaults (methods.md 7.1): 16 context tokens, random N(0, 0.02^2) init
(or ``ctx_init`` words from the token embeddings), shared context (``csc`` for class-specific),
class token at the end; SGD lr 0.002, batch 32, cosine, 1 warmup epoch at constant lr 1e-5,
50 epochs (CoOp's ImageNet schedule; 200 for 8/16 shots on the other datasets).

With ``augment=False`` (the default here) training reads cached image features (encode once,
feature-first); ``augment=True`` runs the frozen image encoder on random resized crops + flips
each step as the reference code does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmood.errors import UsageError
from vlmood.methods.base import (
    Adapter,
    ArrayDataset,
    ImageTrainDataset,
    Method,
    TrainData,
    epoch_summary,
    frozen,
    register_method,
    resolve_train_config,
    run_engine,
    train_transform,
)
from vlmood.methods.prompt import POSITIONS, PromptLearner, auto_chunk
from vlmood.scores._torch import class_logits
from vlmood.train.engine import TrainConfig

log = logging.getLogger(__name__)


def coop_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of ``scale * image @ text.T`` (both normalised) against ``labels``."""
    return F.cross_entropy(class_logits(image, text, scale), labels)


def resolve_config(cfg: TrainConfig, n: int) -> TrainConfig:
    """Turn ``cfg.extra`` warmup given in epochs (``warmup_epochs``) or as a fraction of all steps
    (``warmup_frac``) into ``warmup_steps`` for a dataset of ``n`` samples (at the global batch,
    whatever the world size): :func:`vlmood.methods.base.resolve_train_config`."""
    return resolve_train_config(cfg, n)[0]


@dataclass
class CoOpParams:
    n_ctx: int = 16
    ctx_init: str | None = None  # e.g. "a photo of a"; None = random N(0, init_std^2)
    csc: bool = False  # class-specific context
    class_token_position: str = "end"  # end | middle | front
    init_std: float = 0.02
    init_seed: int | None = None  # None: the training seed
    text_chunk: int | None = None  # prompts per text-encoder chunk; None = auto, 0 = never chunk
    augment: bool = False  # run the image encoder on augmented images each step


class PromptMethodBase(Method):
    """Shared parts of the CoOp family: prompt learner construction, data, adapter tensors."""

    Params = CoOpParams
    kinds = ("image",)

    def validate(self) -> None:
        p = self.params
        if p.class_token_position not in POSITIONS:
            raise UsageError(
                f"class_token_position {p.class_token_position!r}; choose from {', '.join(POSITIONS)}"
            )
        if p.n_ctx < 1:
            raise UsageError(f"method {self.name!r} parameter 'n_ctx' must be >= 1, got {p.n_ctx}")

    @property
    def needs_images(self) -> bool:
        return bool(self.params.augment)

    def default_config(self, **overrides: Any) -> TrainConfig:
        base = dict(
            epochs=50,
            batch_size=32,
            lr=0.002,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_lr=1e-5,
            extra={"warmup_epochs": 1},
        )
        base.update(overrides)
        return TrainConfig(**base)

    def make_learner(self, model, classnames, seed: int) -> PromptLearner:
        p = self.params
        return PromptLearner(
            model,
            classnames,
            n_ctx=p.n_ctx,
            ctx_init=p.ctx_init or None,
            csc=p.csc,
            position=p.class_token_position,
            init_std=p.init_std,
            seed=seed if p.init_seed is None else p.init_seed,
        )

    def dataset(self, model, data: TrainData):
        if self.needs_images:
            return ImageTrainDataset(data.source, train_transform(model, (0.08, 1.0)), data.labels)
        missing = [k for k in self.kinds if k not in data.features]
        if missing:
            raise ValueError(f"method {self.name!r} needs cached feature kinds {missing} (or augment=True)")
        return ArrayDataset({k: data.features[k] for k in self.kinds}, data.labels)

    @staticmethod
    def image_features(model, batch: dict[str, torch.Tensor], kinds) -> dict[str, torch.Tensor]:
        if "pixels" in batch:
            with torch.no_grad():
                return model.encode_image_features(batch["pixels"], kinds)
        return {k: batch[k] for k in kinds}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.learner.ctx.detach()}

    def _train(self, model, data, cfg, out_dir, device, progress, resume, module, loss_fn) -> dict[str, Any]:
        cfg = resolve_config(cfg, len(data))
        self.effective_config = cfg
        model.to(device)
        with frozen(model.torch_module):
            hist = run_engine(
                module, self.dataset(model, data), loss_fn, cfg, Path(out_dir), device, progress, resume
            )
        return epoch_summary(hist)


@register_method("coop")
class CoOp(PromptMethodBase):
    """CoOp: learned context, cross-entropy at CLIP's logit scale."""

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        self.learner = self.make_learner(model, data.classnames, cfg.seed)
        scale = model.logit_scale
        chunk = auto_chunk(data.n_classes, self.params.text_chunk)

        def loss_fn(module, batch):
            img = self.image_features(model, batch, ("image",))["image"]
            text = module(chunk)
            loss = coop_loss(img, text, batch["label"], scale)
            return loss, {}

        return self._train(model, data, cfg, out_dir, device, progress, resume, self.learner, loss_fn)

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return PromptAdapter(model, info, tensors)


class PromptAdapter(Adapter):
    """A trained prompt context: class text features [K, D] with the learned prompts."""

    kind = "prompt"

    def __init__(self, model, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(model, info)
        p = info["params"]
        if "ctx" not in tensors:
            raise ValueError(f"adapter for {self.method} lacks its 'ctx' tensor")
        self.learner = PromptLearner(
            model,
            self.classnames,
            n_ctx=int(p["n_ctx"]),
            ctx_init=p.get("ctx_init") or None,
            csc=bool(p["csc"]),
            position=p.get("class_token_position", "end"),
        )
        ctx = tensors["ctx"].to(self.learner.ctx.device)
        if ctx.shape != self.learner.ctx.shape:
            raise ValueError(
                f"adapter ctx has shape {tuple(ctx.shape)}, expected {tuple(self.learner.ctx.shape)} "
                f"for {len(self.classnames)} classes"
            )
        with torch.no_grad():
            self.learner.ctx.copy_(ctx)
        self.learner.requires_grad_(False)
        self._text: np.ndarray | None = None
        self.text_chunk = p.get("text_chunk")

    def text_features_tensor(self) -> torch.Tensor:
        with torch.no_grad():
            chunk = auto_chunk(self.learner.n_classes, self.text_chunk)
            return self.learner.text_features(chunk=chunk, use_checkpoint=False)

    def text_features(self) -> np.ndarray:
        if self._text is None:
            self._text = self.text_features_tensor().float().cpu().numpy()
        return self._text

    def for_classes(self, classnames) -> PromptAdapter | None:
        if bool(self.params.get("csc")):
            return None  # class-specific contexts exist only for the trained classes
        info = {**self.info, "classnames": list(classnames)}
        ctx = self.learner.ctx.detach()
        return PromptAdapter(self.model, info, {"ctx": ctx})
