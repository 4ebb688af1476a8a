"""The torch forms of the score math, for training losses that must be differentiable (UEO,
LoCoOp, the CoOp family): the one place they are written. Evaluation uses the numpy forms in
:mod:`vlmood.scores.softmax`."""

from __future__ import annotations

import torch


def class_logits(features: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * features @ text.T``: logits [..., K] of normalised features [..., D] against class
    text features [K, D] at the logit ``scale`` (image [B, D] or patch [B, P, D] features)."""
    return scale * features @ text.t()


def entropy(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``-sum p log(p + eps)`` over the last dimension (UEO's and LoCoOp's reference convention;
    :func:`vlmood.scores.softmax.neg_entropy` is the exact score form, without ``eps``)."""
    return -(p * torch.log(p + eps)).sum(dim=-1)
