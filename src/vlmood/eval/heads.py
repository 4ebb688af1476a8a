"""Class heads: what an evaluated classifier supplies to the post-hoc scores.

Zero-shot CLIP and every adapter yield a **class head** (:meth:`vlmood.methods.base.Adapter.class_head`;
zero-shot: :class:`TextHead` on the template-ensemble class text features). A head declares what
it ``provides`` and each score declares what it ``reads`` (:attr:`vlmood.scores.base.Score.reads`),
both names from :data:`vlmood.scores.base.INPUTS`; a score runs through a head exactly when the
head provides everything it reads (:func:`unsupported` names what is missing otherwise). There
is no per-score code here: a new score works with every head that provides its inputs.

============================  ======================================================  =========
head                          provides                                                 scale
============================  ======================================================  =========
:class:`TextHead`             image, patch, train, cosines, positives, text_features  model's
(zero-shot, prompt, UEO)
:class:`ConditionalHead`      image, patch, train, cosines, positives                 model's
(CoCoOp)
:class:`ProbeHead`            image, patch, train, cosines (the probe's logits)       1
(linear probe, PLP)
============================  ======================================================  =========

``image``, ``patch`` and ``train`` are the evaluated data's (:data:`DATA_INPUTS`): every head
passes them through (whether a run has them is the run's business: patch features are extracted
when a score reads them, train features need a train split). ``cosines`` are the head's class
similarities ``[N, K]``: image-independent text features ``@`` image features (a text head,
computed on row slices, never kept whole), CoCoOp's per-image cosines, or a probe's logits on its
``feature_kind`` features, which are already scaled, so the head's ``logit_scale`` is 1 (a
temperature-1 softmax score is the probe's own MSP). ``positives`` are cosines in the text
embedding space (NegLabel compares them with negative labels), which a probe does not have.

:func:`score_with_head` is the one scoring path: ``score.score_inputs(head.inputs(feats))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmood.scores._math import map_cosines
from vlmood.scores.base import INPUTS, Score

#: inputs from the evaluated data itself, which every head passes through
DATA_INPUTS = frozenset({"image", "patch", "train"})


class TextCosines:
    """A text head's ``[N, K]`` cosines ``image @ text.T``, computed on row slices (float32, the
    same product as :meth:`vlmood.scores.softmax.CosineScore.cosines`) so no ``[N, K]`` matrix
    is kept. Supports ``len``, ``shape``, row slices and ``np.asarray`` (the whole matrix)."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, image: np.ndarray, text_t: np.ndarray) -> None:
        if image.ndim != 2 or image.shape[1] != text_t.shape[0]:
            raise ValueError(
                f"image features {image.shape} do not match class text features of dim {text_t.shape[0]}"
            )
        self.image, self.text_t = image, text_t
        self.shape = (image.shape[0], text_t.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("TextCosines takes row slices")
        return np.asarray(self.image[rows], dtype=np.float32) @ self.text_t

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = map_cosines(self.image, self.text_t)
        return out if dtype is None else out.astype(dtype, copy=False)


class ClassHead:
    """Base: ``kind``, ``provides`` (input names, :data:`~vlmood.scores.base.INPUTS`),
    ``lacks`` (why an input it does not provide is missing, for messages), ``logit_scale`` (the
    scale a softmax score uses with ``temperature=None``), ``feature_kind`` (what :meth:`matrix`
    reads), ``text_features`` ([K, D] or None) and ``needs_matrix`` (whether :meth:`inputs`
    wants the set's :meth:`matrix`, which the runner computes once per set for every score)."""

    kind: str = "text"
    feature_kind: str = "image"
    provides: frozenset[str] = DATA_INPUTS
    lacks: dict[str, str] = {}
    needs_matrix: bool = True
    text_features: np.ndarray | None = None

    def __init__(self, logit_scale: float) -> None:
        self.logit_scale = float(logit_scale)

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """float32 ``[N, K]`` class similarities (cosines, or logits for a probe)."""
        raise NotImplementedError

    def inputs(self, feats: dict[str, Any], matrix: np.ndarray | None = None) -> dict[str, Any]:
        """What this head supplies for one set: the set's ``image`` (and ``patch``) features from
        ``feats``, plus the head's own inputs (``cosines`` ...). ``matrix`` is this set's
        :meth:`matrix` when already computed (computed here otherwise, if the head needs it)."""
        out = {k: feats[k] for k in ("image", "patch") if feats.get(k) is not None}
        if self.needs_matrix and matrix is None:
            matrix = self.matrix(feats)
        own = self._own_inputs(feats, matrix)
        extra = sorted(set(own) - self.provides)
        if extra:  # pragma: no cover - a head's declaration and its inputs disagree
            raise AssertionError(f"{type(self).__name__} supplies {extra} but does not declare them")
        out.update(own)
        return out

    def _own_inputs(self, feats: dict[str, Any], matrix: np.ndarray | None) -> dict[str, Any]:
        raise NotImplementedError

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        """The head for other class names (held-out classes), or None when it cannot have one."""
        return None

    def describe(self) -> str:
        return self.kind


class TextHead(ClassHead):
    """Image-independent class text features ``[K, D]`` (zero-shot, prompt learning, UEO)."""

    kind = "text"
    provides = DATA_INPUTS | {"cosines", "positives", "text_features"}
    needs_matrix = False

    def __init__(self, text: np.ndarray, logit_scale: float, adapter=None) -> None:
        super().__init__(logit_scale)
        self.text = np.ascontiguousarray(text, dtype=np.float32)
        self.text_features = self.text
        self._text_t = np.ascontiguousarray(self.text.T)
        self.adapter = adapter

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return map_cosines(feats["image"], self._text_t)

    def _own_inputs(self, feats, matrix):
        cos = TextCosines(feats["image"], self._text_t)
        return {"cosines": cos, "positives": cos, "text_features": self.text}

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        if self.adapter is None:
            return None
        other = self.adapter.for_classes(classnames)
        return None if other is None else other.class_head(self.logit_scale)


class ConditionalHead(ClassHead):
    """CoCoOp: class text features depend on the image, so the head gives per-image cosines
    ``[N, K]`` (unscaled, at the model's logit scale like zero-shot cosines)."""

    kind = "conditional"
    provides = DATA_INPUTS | {"cosines", "positives"}
    lacks = {"text_features": "CoCoOp's class text features depend on the image"}

    def __init__(self, adapter, logit_scale: float) -> None:
        super().__init__(logit_scale)
        self.adapter = adapter

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.adapter.similarities(feats["image"])

    def _own_inputs(self, feats, matrix):
        return {"cosines": matrix, "positives": matrix}

    def for_classes(self, classnames: list[str]) -> ClassHead | None:
        other = self.adapter.for_classes(classnames)
        return None if other is None else other.class_head(self.logit_scale)


class ProbeHead(ClassHead):
    """A linear classifier on cached features of the adapter's ``feature_kind`` (linear probe,
    PLP); its logits are already scaled, so ``logit_scale`` is 1."""

    kind = "probe"
    provides = DATA_INPUTS | {"cosines"}
    lacks = {
        "positives": "a probe gives logits, not cosines in the text embedding space",
        "text_features": "a probe has a linear head, no class text features",
    }

    def __init__(self, adapter) -> None:
        super().__init__(1.0)
        self.adapter = adapter
        self.feature_kind = adapter.feature_kind

    def matrix(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.adapter.logits(feats[self.feature_kind]).astype(np.float32, copy=False)

    def _own_inputs(self, feats, matrix):
        return {"cosines": matrix}


#: head classes by kind (for checks by kind name alone)
HEAD_TYPES: dict[str, type[ClassHead]] = {h.kind: h for h in (TextHead, ConditionalHead, ProbeHead)}


def head_type(adapter) -> type[ClassHead]:
    """The head class an adapter evaluates through (None = zero-shot: :class:`TextHead`)."""
    return TextHead if adapter is None else adapter.head_type()


def head_kind(adapter) -> str:
    """The head kind an adapter evaluates through (None = zero-shot): text, conditional or probe."""
    return head_type(adapter).kind


def head_for_adapter(adapter, model) -> ClassHead:
    """The head of a loaded adapter (:func:`vlmood.methods.load_adapter`)."""
    return adapter.class_head(model.logit_scale)


def unsupported(score: Score, head: ClassHead | type[ClassHead] | str) -> str | None:
    """Why ``score`` cannot run through ``head`` (a head, a head class or a kind name), naming
    each input the score reads that the head does not provide; None when it can run."""
    h = HEAD_TYPES[head] if isinstance(head, str) else head
    missing = sorted(frozenset(score.reads) - h.provides)
    if not missing:
        return None
    parts = []
    for name in missing:
        why = h.lacks.get(name)
        parts.append(f"{name} ({INPUTS.get(name, 'unknown input')}{'; ' + why if why else ''})")
    return f"reads {', '.join(parts)}, which a {h.kind} head does not provide"


def unsupported_reason(score: Score, head_kind: str) -> str | None:
    """:func:`unsupported` by head kind (text / conditional / probe), so scores can be checked
    before any head exists."""
    return unsupported(score, head_kind)


def score_with_head(
    score: Score, feats: dict[str, np.ndarray], head: ClassHead, matrix: np.ndarray | None = None
) -> np.ndarray:
    """ID scores of one set through ``head``: ``feats`` holds the set's feature arrays by kind
    (``image``, ``patch`` where the score reads it, the head's ``feature_kind``); ``matrix`` is
    the head's ``[N, K]`` for that set when already computed (shared by all scores)."""
    reason = unsupported(score, head)
    if reason:
        raise ValueError(f"{type(score).__name__} through a {head.kind} head: {reason}")
    return score.score_inputs(head.inputs(feats, matrix))


def head_info(head: ClassHead) -> dict[str, Any]:
    return {"kind": head.kind, "feature_kind": head.feature_kind, "logit_scale": head.logit_scale}
