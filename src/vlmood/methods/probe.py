"""Probes on cached features: a supervised linear probe and PLP (pseudo-label probing).

**PLP** (Adaloglou et al. 2024, HHU-MMBS/plp-official-tmlr2024; methods.md 6): pseudo-labels are
the argmax of the zero-shot classifier built from 5 templates (``plp5``: per class the mean of
the normalised template embeddings, renormalised) over the training images; a linear head
``Linear(W, K)`` is trained with cross-entropy on the **standardised pre-projection** features
(train mean / std). Adam, lr 1e-3 x batch/256, weight decay 1e-3, cosine with 10% linear warmup
from 0 (step-based), 100 epochs, batch 256. OOD scores on the head's logits at T = 1: MSP, energy
(logsumexp) and the L1 norm of the min-shifted logits (:func:`probe_scores`).

**Linear probe**: the same head trained on the ground-truth labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmood.data.base import DataError
from vlmood.errors import UsageError
from vlmood.methods.base import (
    Adapter,
    ArrayDataset,
    Method,
    TrainData,
    epoch_summary,
    register_method,
    run_engine,
)
from vlmood.methods.coop import resolve_config
from vlmood.scores._math import argmax_classes
from vlmood.scores.softmax import energy, l1_norm, max_softmax
from vlmood.train.engine import TrainConfig


def probe_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """PLP's OOD scores on head logits (T = 1), all ID-high: ``msp`` (max softmax), ``energy``
    (logsumexp) and ``l1`` (L1 norm of the min-shifted logits)."""
    fns = {"msp": max_softmax, "energy": energy, "l1": l1_norm}  # the registered scores' math
    return {k: f(logits).astype(np.float32) for k, f in fns.items()}


def feature_stats(x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std per dimension, in float64 chunks (memory maps stay on disk)."""
    n = len(x)
    s = np.zeros(x.shape[1])
    ss = np.zeros(x.shape[1])
    for i in range(0, n, chunk):
        b = np.asarray(x[i : i + chunk], dtype=np.float64)
        s += b.sum(0)
        ss += (b * b).sum(0)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


class ProbeHead(nn.Module):
    """``Linear(W, K)`` on ``(x - mean) / std`` (mean/std are fixed buffers)."""

    def __init__(
        self, dim: int, k: int, mean: np.ndarray | None = None, std: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, k)
        mean = torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.ones(dim) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(1e-6).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


@dataclass
class ProbeParams:
    feature: str = "preproj"  # cached feature kind the head reads
    standardize: bool = True
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256
    templates: str = "plp5"  # PLP: template set for the pseudo-labels


class _ProbeBase(Method):
    Params = ProbeParams

    @property
    def kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.params.feature,)

    @property
    def val_kinds(self) -> tuple[str, ...]:
        return (self.params.feature,)  # the head reads these features

    def validate(self) -> None:
        if self.params.feature not in ("image", "preproj"):
            raise UsageError(f"probe feature {self.params.feature!r}; choose image or preproj")

    def default_config(self, **overrides: Any) -> TrainConfig:
        bs = int(overrides.get("batch_size", 256))
        base = dict(
            epochs=100,
            batch_size=bs,
            lr=self.params.base_lr * bs / 256,
            optimizer="adam",
            weight_decay=1e-3,
            schedule="cosine",
            drop_last=False,
            extra={"warmup_frac": 0.1},
        )
        base.update(overrides)
        return TrainConfig(**base)

    def targets(self, model, data: TrainData) -> np.ndarray:
        return data.labels

    def fit(self, model, data, cfg, out_dir, device, progress=True, resume=False):
        kind = self.params.feature
        if kind not in data.features:
            raise ValueError(f"probe needs cached {kind!r} features")
        x = data.features[kind]
        y = np.asarray(self.targets(model, data), dtype=np.int64)
        if (y < 0).any():
            raise DataError(f"{self.name}: {int((y < 0).sum())} training samples have no label")
        if self.params.standardize:
            mean, std = feature_stats(x)
        else:
            mean = std = None
        torch.manual_seed(cfg.seed)
        self.head = ProbeHead(x.shape[1], data.n_classes, mean, std)
        cfg = resolve_config(cfg, len(y))
        self.effective_config = cfg

        def loss_fn(module, batch):
            return nn.functional.cross_entropy(module(batch[kind]), batch["label"]), {}

        hist = run_engine(
            self.head, ArrayDataset({kind: x}, y), loss_fn, cfg, Path(out_dir), device, progress, resume
        )
        out = epoch_summary(hist)
        with torch.no_grad():
            pred = self._predict(x, device)
        out["train_accuracy_targets"] = float((pred == y).mean())
        if (data.labels >= 0).all():
            out["train_accuracy_labels"] = float((pred == data.labels).mean())
        return {**self.metrics, **out}

    def _predict(self, x: np.ndarray, device, chunk: int = 65536) -> np.ndarray:
        preds = []
        self.head.eval()
        for i in range(0, len(x), chunk):
            b = torch.from_numpy(np.array(x[i : i + chunk], dtype=np.float32)).to(device)
            preds.append(self.head(b).argmax(1).cpu().numpy())
        return np.concatenate(preds)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.head.state_dict().items()}

    @classmethod
    def build_adapter(cls, model, info, tensors):
        return ProbeAdapter(model, info, tensors)


@register_method("linear-probe")
class LinearProbe(_ProbeBase):
    """Supervised linear probe on standardised cached features."""


@register_method("plp")
class PLP(_ProbeBase):
    """Pseudo-label probing: the head learns the zero-shot 5-template classifier's argmax."""

    needs_labels = False

    @property
    def kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys(("image", self.params.feature)))

    def targets(self, model, data: TrainData) -> np.ndarray:
        from vlmood.data.templates import load_templates

        if "image" not in data.features:
            raise ValueError("PLP needs cached 'image' features for the pseudo-labels")
        templates, _ = load_templates(self.params.templates)
        text = pseudo_label_text(model, data.classnames, templates, data.cache_root)
        labels = pseudo_labels(data.features["image"], text)
        self.metrics["pseudo_label_classes"] = int(np.unique(labels).size)
        if (data.labels >= 0).all():
            self.metrics["pseudo_label_accuracy"] = float((labels == data.labels).mean())
        return labels


def pseudo_label_text(model, classnames, templates, cache_root=None) -> np.ndarray:
    """PLP's zero-shot classifier [K, D]: mean of normalised template embeddings, renormalised."""
    from vlmood.features.extract import class_text_features

    return class_text_features(model, list(classnames), list(templates), cache_root=cache_root)


def pseudo_labels(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """argmax over classes of ``image @ text.T`` (the logit scale does not change the argmax)."""
    return argmax_classes(image, text)


class ProbeAdapter(Adapter):
    """A linear head on cached ``feature_kind`` features: :meth:`logits`, :meth:`scores`."""

    kind = "probe"

    def __init__(self, model, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(model, info)
        self.feature_kind = self.params.get("feature", "preproj")
        w = tensors["linear.weight"]
        self.head = ProbeHead(w.shape[1], w.shape[0])
        self.head.load_state_dict(tensors, strict=True)
        self.head.eval().requires_grad_(False)

    @classmethod
    def head_type(cls):
        from vlmood.eval.heads import ProbeHead

        return ProbeHead

    def class_head(self, logit_scale: float = 1.0):
        """Logits on ``feature_kind`` features at scale 1 (:class:`~vlmood.eval.heads.ProbeHead`);
        ``logit_scale`` is ignored (the logits are already scaled)."""
        from vlmood.eval.heads import ProbeHead

        return ProbeHead(self)

    def logits(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(features), chunk):
                b = torch.from_numpy(np.array(features[i : i + chunk], dtype=np.float32))
                out.append(self.head(b).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classnames)), np.float32)

    def scores(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return probe_scores(self.logits(features))

    def similarities(self, image_features, patch_features=None):
        raise NotImplementedError("probe adapters classify with logits(features of kind feature_kind)")
