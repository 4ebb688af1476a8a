"""Class heads: how an evaluated model turns a set's features into ``[N, K]`` class similarities.

Every post-hoc score reads the ID classifier through a head, so zero-shot CLIP and each kind of
adapter are evaluated by the same scores:

- :class:`TextHead` (zero-shot, prompt learning, UEO): image-independent class text features
  ``[K, D]``; scores run unchanged on image features (``kind = "text"``).
- :class:`ConditionalHead` (CoCoOp): class text features depend on the image, so the head gives
  per-image cosines ``[N, K]`` (unscaled, at the model's logit scale like zero-shot cosines).
- :class:`ProbeHead` (linear probe, PLP): a linear classifier on cached features of the
  adapter's ``feature_kind``; its logits are already scaled, so the effective logit scale is 1
  and a temperature-1 softmax score is the head's own MSP (PLP's scores: ``msp``, ``energy``,
  ``l1``).

:func:`score_with_head` applies a score through a head. Scores that are functions of the class
similarities (:class:`~vlmood.scores.softmax.CosineScore`: MCM, MSP, max-logit, energy, entropy,
variance, L1) run on the head's matrix; NegLabel takes the head's per-image positive cosines
against negatives encoded by the base text encoder (not on probes: logits are not cosines);
feature scores (KNN, Mahalanobis) ignore the head; GL-MCM / L-MCM need image-independent text
features and are refused for conditional and probe heads (:func:`unsupported_reason`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmood.scores.base import Score

#: rows per block when computing a head's matrix or applying a score to it
ROWS = 8192


class ClassHead:
    """Base: ``kind``, ``logit_scale`` (the scale a softmax score uses with ``temperature=None``),
    ``feature_kind`` (what :meth:`matrix` reads) and :meth:`matrix`."""

    kind: str = "text"
    feature_kind: str = "image"

    def __init__(self, logit_scale: float) -> None:
        self.logit_scale = float(logit_scale)

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """float32 ``[N, K]`` class similarities (cosines, or logits for a probe)."""
        raise NotImplementedError

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        """The head for other class names (held-out classes), or None when it cannot have one."""
        return None

    def describe(self) -> str:
        return self.kind


class TextHead(ClassHead):
    kind = "text"

    def __init__(self, text: np.ndarray, logit_scale: float, adapter=None) -> None:
        super().__init__(logit_scale)
        self.text = np.ascontiguousarray(text, dtype=np.float32)
        self.adapter = adapter

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        image = feats["image"]
        out = np.empty((image.shape[0], self.text.shape[0]), dtype=np.float32)
        for s in range(0, image.shape[0], ROWS):
            out[s : s + ROWS] = np.asarray(image[s : s + ROWS], dtype=np.float32) @ self.text.T
        return out

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        if self.adapter is None:
            return None
        other = self.adapter.for_classes(classnames)
        return None if other is None else TextHead(other.text_features(), self.logit_scale, other)


class ConditionalHead(ClassHead):
    kind = "conditional"

    def __init__(self, adapter, logit_scale: float) -> None:
        super().__init__(logit_scale)
        self.adapter = adapter

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.adapter.similarities(feats["image"])

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        other = self.adapter.for_classes(classnames)
        return None if other is None else ConditionalHead(other, self.logit_scale)


class ProbeHead(ClassHead):
    kind = "probe"

    def __init__(self, adapter) -> None:
        super().__init__(1.0)
        self.adapter = adapter
        self.feature_kind = adapter.feature_kind

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.adapter.logits(feats[self.feature_kind]).astype(np.float32, copy=False)


def head_kind(adapter) -> str:
    """The head kind an adapter evaluates through (None = zero-shot): text, conditional or probe."""
    if adapter is None or adapter.kind == "prompt":
        return "text"
    return adapter.kind


def head_for_adapter(adapter, model) -> ClassHead:
    """The head of a loaded adapter (:func:`vlmood.methods.load_adapter`)."""
    if adapter.kind == "prompt":
        return TextHead(adapter.text_features(), model.logit_scale, adapter)
    if adapter.kind == "conditional":
        return ConditionalHead(adapter, model.logit_scale)
    if adapter.kind == "probe":
        return ProbeHead(adapter)
    raise ValueError(f"unknown adapter kind {adapter.kind!r}")


def unsupported_reason(score: Score, head_kind: str) -> str | None:
    """Why ``score`` cannot run through a head of kind ``head_kind`` (text / conditional / probe;
    None when it can). Takes the kind alone so scores can be checked before any head exists."""
    from vlmood.scores.glmcm import GLMCMScore
    from vlmood.scores.neglabel import NegLabelScore
    from vlmood.scores.softmax import CosineScore

    if head_kind == "text":
        return None
    if isinstance(score, GLMCMScore):
        return (
            "needs image-independent class text features to score patches (not a conditional or probe head)"
        )
    if isinstance(score, NegLabelScore) and head_kind == "probe":
        return "needs cosines in the text embedding space; a probe gives logits"
    from vlmood.scores.knn import KNNScore
    from vlmood.scores.mahalanobis import MahalanobisScore

    if isinstance(score, CosineScore | NegLabelScore | KNNScore | MahalanobisScore):
        return None  # class-similarity scores run on the head's matrix; feature scores ignore it
    return f"{type(score).__name__} reads class text features directly; it has no head-aware path"


def score_with_head(
    score: Score, feats: dict[str, np.ndarray], head: ClassHead, matrix: np.ndarray | None
) -> np.ndarray:
    """ID scores of one set through ``head``; ``matrix`` is the head's ``[N, K]`` for that set
    (computed once per set and shared by all scores; unused for text heads)."""
    from vlmood.scores.neglabel import NegLabelScore
    from vlmood.scores.softmax import CosineScore

    image = feats["image"]
    reason = unsupported_reason(score, head.kind)
    if reason:
        raise ValueError(f"{type(score).__name__} through a {head.kind} head: {reason}")
    if head.kind == "text" or not isinstance(score, CosineScore | NegLabelScore):
        return score.score(image, feats.get("patch") if "patch" in score.requires else None)
    if matrix is None:
        raise ValueError(f"a {head.kind} head needs its class-similarity matrix for this set")
    if isinstance(score, NegLabelScore):
        return score.score_with_positive(image, matrix)
    n = matrix.shape[0]
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, ROWS):
        out[s : s + ROWS] = score.from_cosines(np.asarray(matrix[s : s + ROWS], dtype=np.float32))
    return out


def head_info(head: ClassHead) -> dict[str, Any]:
    return {"kind": head.kind, "feature_kind": head.feature_kind, "logit_scale": head.logit_scale}
