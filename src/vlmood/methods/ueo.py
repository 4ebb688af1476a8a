"""UEO: Universal Entropy Optimization (Liang et al., tim-learn/UEO ``demo.py``; methods.md 5).

Unsupervised tuning on unlabeled target data that may hold unknown classes; the model knows only
the known class names. Confidence weights ``w_i`` = zero-shot MCM (max softmax of raw cosines,
T = 1) with the initial prompt, computed **once** before training over the whole training set
(eval transform) and looked up by sample index. Per batch, with ``p_i`` the softmax at CLIP's
logit scale over the known classes:

    L = sum_i w_i H(p_i) / sum_i w_i  -  trade * H(pbar),
    pbar = sum_i (1/w_i) p_i / sum_i (1/w_i),   H(p) = -sum_c p_c log(p_c + 1e-5).

Trainable: the prompt context (init "a photo of a") and the affine parameters of every
normalisation layer of the visual tower (LayerNorm for ViT, BatchNorm for ResNet), which stays in
eval mode (running statistics frozen). SGD (no momentum, no weight decay) lr 1e-4, cosine; batch
64, 50 epochs; random resized crop (scale 0.5-1) + flip. Known/partial/open/open-partial settings
are class subsets of the training images (known classes = ``classnames``; other images have
label -1 or a label outside the known set, which UEO never reads).

Loading the adapter writes the tuned normalisation parameters into the model's visual tower in
place and marks the model identity (``extra["adapter"]``) so features are extracted again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmood.data.base import DataError
from vlmood.errors import UsageError
from vlmood.methods.base import (
    ImageTrainDataset,
    Method,
    TrainData,
    epoch_summary,
    frozen,
    mark_adapted,
    register_method,
    run_engine,
    train_transform,
)
from vlmood.methods.coop import PromptAdapter
from vlmood.methods.prompt import EvalModeModule, PromptLearner, auto_chunk
from vlmood.scores._math import map_cosines
from vlmood.scores._torch import class_logits, entropy
from vlmood.scores.softmax import max_softmax
from vlmood.train.engine import TrainConfig

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def ueo_loss(
    probs: torch.Tensor, weights: torch.Tensor, trade: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, weighted conditional entropy, marginal entropy) for probabilities [B, K] and MCM
    weights [B] (see the module docstring)."""
    w = weights.to(probs.dtype)
    cond = (w * entropy(probs)).sum() / w.sum()
    inv = 1.0 / w
    pbar = (inv.unsqueeze(1) * probs).sum(0) / inv.sum()
    marg = entropy(pbar)
    return cond - trade * marg, cond, marg


def norm_affine_names(visual: nn.Module) -> list[str]:
    """Names (relative to ``visual``) of the affine parameters of every normalisation layer."""
    out = []
    for mname, m in visual.named_modules():
        if isinstance(m, NORM_TYPES):
            for pname, _ in m.named_parameters(recurse=False):
                out.append(f"{mname}.{pname}" if mname else pname)
    return out


class UEOModule(EvalModeModule):
    frozen_children = ("visual",)

    def __init__(self, learner: PromptLearner, visual: nn.Module, model) -> None:
        super().__init__()
        self.prompt = learner
        self.visual = visual  # the model's own visual tower (its norm affine params train)
        self.model = [model]

    def forward(self, pixels: torch.Tensor, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised image features [B, D], class text features [K, D])."""
        image = self.model[0].encode_image_features(pixels, ("image",))["image"]
        return image, self.prompt(chunk)


def mcm_weights(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Zero-shot MCM (T = 1): max softmax over classes of raw cosines, per image (float32 [N])."""
    text_t = np.ascontiguousarray(np.asarray(text, dtype=np.float32).T)
    return map_cosines(image, text_t, max_softmax).astype(np.float32)


@dataclass
class UEOParams:
    ctx_init: str = "a photo of a"
    trade: float = 1.0
    text_chunk: int | None = None
    augment: bool = True  # RandomResizedCrop(scale 0.5-1) + flip, as the reference code
    weights: str = "mcm"  # mcm | uniform (the --noweight ablation: plain IM loss)


@register_method("ueo")
class UEO(Method):
    """UEO: entropy optimisation of the prompt and visual norm affines on unlabelled data with unknowns."""

    Params = UEOParams
    adapts_image_encoder = True  # its adapter rewrites the visual norms of the model it loads onto
    kinds = ("image",)
    needs_labels = False

    def validate(self) -> None:
        if self.params.weights not in ("mcm", "uniform"):
            raise UsageError(f"weights {self.params.weights!r}; choose mcm or uniform")

    @property
    def needs_images(self) -> bool:
        return True

    @property
    def images_need_features(self) -> bool:
        return self.params.weights == "mcm"  # the zero-shot weights read cached image features

    def default_config(self, **overrides: Any) -> TrainConfig:
        base = dict(
            epochs=50, batch_size=64, lr=1e-4, optimizer="sgd", momentum=0.0, weight_decay=0.0, seed=2023
        )
        base.update(overrides)
        return TrainConfig(**base)

    def zero_shot_weights(self, model, data: TrainData) -> np.ndarray:
        """w_i from the zero-shot model with the initial prompt, over all training images."""
        if self.params.weights == "uniform":
            return np.ones(len(data), dtype=np.float32)
        from vlmood.features.extract import extract_features

        if "image" in data.features:
            img = data.features["image"]
        else:
            fs = extract_features(
                model, data.source, ("image",), options=data.extract.replace(progress=False)
            )
            if not fs.valid.all():
                raise DataError(
                    f"{data.source.name}: {int((~fs.valid).sum())} training images are unreadable; "
                    f"train through fit_method (it drops them with skip_corrupt)"
                )
            img = fs.get("image")
        with torch.no_grad():
            text = self.learner.text_features(auto_chunk(data.n_classes, self.params.text_chunk), False)
        return mcm_weights(img, text.cpu().numpy())

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        if data.source is None:
            raise DataError("UEO runs the image encoder while training; give it an image source")
        model.to(device)
        self.learner = PromptLearner(model, data.classnames, ctx_init=self.params.ctx_init)
        visual = model.torch_module.visual
        self.norm_names = norm_affine_names(visual)
        if not self.norm_names:
            raise ValueError(f"visual tower {type(visual).__name__} has no normalisation layers to tune")
        w = torch.from_numpy(self.zero_shot_weights(model, data)).float()
        self.metrics = {"weights_mean": float(w.mean()), "weights_min": float(w.min())}
        scale = model.logit_scale
        chunk = auto_chunk(data.n_classes, self.params.text_chunk)
        trade = self.params.trade
        transform = train_transform(model, (0.5, 1.0)) if self.params.augment else model.preprocess
        dataset = ImageTrainDataset(data.source, transform, data.labels)
        self.effective_config = cfg

        def loss_fn(module, batch):
            f, text = module(batch["pixels"], chunk)
            probs = F.softmax(class_logits(f, text, scale), dim=1)
            loss, cond, marg = ueo_loss(probs, w.to(probs.device)[batch["index"]], trade)
            return loss, {"cond_entropy": float(cond.detach()), "marg_entropy": float(marg.detach())}

        params = dict(visual.named_parameters())
        original = {n: params[n].detach().clone() for n in self.norm_names}
        try:
            with frozen(model.torch_module):
                for n in self.norm_names:
                    params[n].requires_grad_(True)
                self.module = UEOModule(self.learner, visual, model)
                hist = run_engine(self.module, dataset, loss_fn, cfg, Path(out_dir), device, progress, resume)
            self.trained = {n: params[n].detach().clone() for n in self.norm_names}
        finally:
            # the base model leaves fit() as it came in: its identity (and so every feature cache
            # keyed by it) still describes the base weights; load_adapter applies the tuned norms
            with torch.no_grad():
                for n, v in original.items():
                    params[n].copy_(v)
        return {**self.metrics, **epoch_summary(hist)}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"ctx": self.learner.ctx.detach()}
        out.update({f"visual.{n}": v for n, v in self.trained.items()})
        return out

    def val_adapter(self, model, classnames):
        """Mid-training: the visual norms train in place in ``model``, so only the prompt is built."""
        info = {"method": self.name, "params": self.hparams(), "classnames": list(classnames)}
        return PromptAdapter(model, info, {"ctx": self.learner.ctx.detach()})

    def hparams(self) -> dict[str, Any]:
        d = super().hparams()
        # what PromptAdapter needs to rebuild the prompt
        d.update(n_ctx=int(self.learner.n_ctx) if hasattr(self, "learner") else 0, csc=False)
        d["class_token_position"] = "end"
        return d

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return UEOAdapter(model, info, tensors)


class UEOAdapter(PromptAdapter):
    """Tuned prompt (text features [K, D]) + tuned visual normalisation, written into the model."""

    adapts_image_encoder = True

    def __init__(self, model, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(model, info, {"ctx": tensors["ctx"]})
        visual = model.torch_module.visual
        own = dict(visual.named_parameters())
        vis = {k[len("visual.") :]: v for k, v in tensors.items() if k.startswith("visual.")}
        missing = sorted(set(vis) - set(own))
        if missing:
            raise ValueError(f"UEO adapter names visual parameters the model lacks: {missing[:5]}")
        with torch.no_grad():
            for n, v in vis.items():
                own[n].copy_(v.to(own[n].device, own[n].dtype))
        mark_adapted(model, self.key)


# ---------------------------------------------------------------------------------------------- settings, metrics
UEO_SETTINGS = ("closed", "partial", "open", "open-partial")


def class_subset(source, keep: Sequence[int], known: Sequence[int], name: str | None = None):
    """UEO's prior-knowledge settings as class subsets of a labelled source.

    Keeps the images whose label is in ``keep`` (the target classes present, e.g. OfficeHome ODA:
    0-59) and relabels them: the ``known`` classes become 0..len(known)-1 in that order (their
    names are the class names UEO knows), every other kept class becomes -1 (unknown). Closed:
    keep == known; partial: keep a subset of known; open: keep = known + unknown classes;
    open-partial: a subset of known + unknown classes.
    """
    from vlmood.data.base import ImageSample, ImageSource

    keep_set = {int(c) for c in keep}
    known = [int(c) for c in known]
    remap = {c: i for i, c in enumerate(known)}
    samples = [
        ImageSample(s.path, remap.get(s.label, -1), s.caption) for s in source.samples if s.label in keep_set
    ]
    if not samples:
        raise DataError(f"no image of {source.name!r} has a label in {sorted(keep_set)[:10]}")
    names = [source.classnames[c] for c in known] if source.classnames else None
    return ImageSource(
        name=name or f"{source.name}-ueo",
        samples=samples,
        classnames=names,
        kind=source.kind,
        origin=source.origin,
        meta=dict(source.meta, subset_of=source.name, keep=sorted(keep_set), known=known),
    )


def ueo_metrics(cosines: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """UEO's evaluation on cosines [N, K] over the known classes; ``labels`` -1 = unknown.

    ``gacc``: accuracy on known-class samples; ``pacc``: mean per-class accuracy over the known
    classes present; ``auroc``: known vs unknown with MCM at T = 1 (max softmax of raw cosines),
    NaN when one side is empty."""
    from vlmood.metrics import auroc

    z = np.asarray(cosines, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    pred = z.argmax(1)
    mcm = max_softmax(z)
    known = labels >= 0
    out = {"gacc": float("nan"), "pacc": float("nan"), "auroc": float("nan")}
    if known.any():
        correct = pred[known] == labels[known]
        out["gacc"] = float(correct.mean())
        out["pacc"] = float(np.mean([correct[labels[known] == c].mean() for c in np.unique(labels[known])]))
    if known.any() and (~known).any():
        out["auroc"] = float(auroc(mcm[known], mcm[~known]))
    return out
