"""Post-hoc OOD score interface. Every score returns an ID score: higher = more in-distribution.

Scores are feature-first: they take L2-normalised image embeddings (and, where needed, patch
features) and work in chunks so memory stays bounded for millions of samples. Text-side inputs
are unscaled, normalised class embeddings; temperatures are explicit parameters.

Every score declares what it **reads** (:attr:`Score.reads`, names from :data:`INPUTS`); a class
head (:mod:`vlmood.eval.heads`) declares what it provides, and a score runs through a head
exactly when the head provides everything the score reads. :meth:`Score.score_inputs` scores
what a head supplies; :meth:`Score.score` is the zero-shot shortcut on image (and patch)
features with the class text features given at fit time.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmood.registry import Registry

#: The vocabulary of :attr:`Score.reads` and ``ClassHead.provides``: what a score may read.
INPUTS: dict[str, str] = {
    "image": "image features [N, D] of the evaluated set",
    "patch": "patch features [N, P, D] of the evaluated set",
    "train": "ID training image features and labels (at fit time)",
    "cosines": "class similarities [N, K] (cosines; a probe's logits, at logit scale 1)",
    "positives": "per-image cosines [N, K] to the ID classes in the text embedding space",
    "text_features": "image-independent class text features [K, D]",
}
#: inputs given per image (row-sliced with the image features); the others are used at fit time
PER_IMAGE_INPUTS = frozenset({"image", "patch", "cosines", "positives"})


@dataclass
class ScoreContext:
    """What a score may need at fit time. Only ``text_features`` is always present.

    - ``text_features``: [K, D] normalised ID class embeddings (float32).
    - ``classnames``: the K ID class names.
    - ``encode_text``: callable(list[str]) -> np.ndarray [N, D] normalised (NegLabel mining).
    - ``train_features`` / ``train_labels``: ID training embeddings (KNN, Mahalanobis); may be
      a memory map.
    - ``logit_scale``: the model's exp'd logit scale (MSP).
    - ``cache_dir``: where a score may persist artefacts (e.g. mined negative labels).
    """

    text_features: np.ndarray
    classnames: Sequence[str] | None = None
    encode_text: Callable[[list[str]], np.ndarray] | None = None
    train_features: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    logit_scale: float = 100.0
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Score(ABC):
    """Base class. Subclasses declare ``reads`` (names from :data:`INPUTS`), implement ``fit``
    and ``_score_chunk``. ``requires`` (feature kinds of the evaluated set to extract) and
    ``needs_train`` (ID training features) follow from ``reads`` unless a subclass sets them
    (then ``reads`` gains ``patch`` / ``train`` accordingly).

    The default ``reads`` ({image, text_features}) suits a score that uses the image features
    and the class text features given at fit time, as a score written against this base does;
    such a score runs only through heads with image-independent text features."""

    reads: frozenset[str] = frozenset({"image", "text_features"})
    requires: tuple[str, ...] = ("image",)
    needs_train: bool = False
    chunk_size: int = 8192

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reads = set(cls.reads)
        if "requires" in cls.__dict__ and "patch" in cls.requires:
            reads.add("patch")
        if cls.__dict__.get("needs_train"):
            reads.add("train")
        unknown = sorted(reads - INPUTS.keys())
        if unknown:
            raise TypeError(f"{cls.__name__}.reads names unknown inputs {unknown}; known: {sorted(INPUTS)}")
        cls.reads = frozenset(reads)
        if "requires" not in cls.__dict__:
            cls.requires = ("image", "patch") if "patch" in reads else ("image",)
        if "needs_train" not in cls.__dict__:
            cls.needs_train = "train" in reads

    def fit(self, ctx: ScoreContext) -> Score:
        self.text_features = np.ascontiguousarray(ctx.text_features, dtype=np.float32)
        return self

    def params(self) -> dict[str, Any]:
        """Score parameters recorded in results.

        Default: every constructor argument that the instance stores under the same name.
        """
        out: dict[str, Any] = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self" and hasattr(self, name):
                out[name] = getattr(self, name)
        return out

    def artifacts(self) -> dict[str, Any]:
        """Extra things the score produced at fit time that results should carry (e.g. mined labels file)."""
        return {}

    @abstractmethod
    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray: ...

    def _rows_per_chunk(self, image: np.ndarray, patch: np.ndarray | None) -> int:
        """Rows scored at once; subclasses with wide intermediates bound memory here."""
        return self.chunk_size

    def _check_inputs(self, image: np.ndarray, patch: np.ndarray | None) -> None:
        if not hasattr(self, "text_features"):
            raise RuntimeError(f"{type(self).__name__}: call fit(ctx) before score()")
        if image.ndim != 2:
            raise ValueError(f"image features must be [N, D], got shape {image.shape}")
        if "patch" in self.requires:
            if patch is None:
                raise ValueError(f"{type(self).__name__} needs patch features [N, P, D] (patch=...)")
            if patch.ndim != 3 or patch.shape[0] != image.shape[0]:
                raise ValueError(
                    f"patch features must be [N, P, D] with N={image.shape[0]}, got shape {patch.shape}"
                )

    def score(self, image: np.ndarray, patch: np.ndarray | None = None) -> np.ndarray:
        """ID scores (float64, higher = more ID) for [N, D] image features, chunked.

        Inputs (possibly memory maps, any float dtype) are never modified.
        """
        self._check_inputs(image, patch)
        return self._score_rows(image, patch, {})

    def _score_rows(self, image: Any, patch: Any, per_image: Mapping[str, Any]) -> np.ndarray:
        """The chunked loop of :meth:`score` and :meth:`score_inputs`: ``_score_chunk`` on float32
        row slices of the image features, the patch features and every ``per_image`` input."""
        n = image.shape[0]
        out = np.empty(n, dtype=np.float64)
        rows = max(1, int(self._rows_per_chunk(image, patch)))
        for s in range(0, n, rows):
            e = min(n, s + rows)
            feats = {"image": np.asarray(image[s:e], dtype=np.float32)}
            if patch is not None:
                feats["patch"] = np.asarray(patch[s:e], dtype=np.float32)
            for k, v in per_image.items():
                feats[k] = np.asarray(v[s:e], dtype=np.float32)
            out[s:e] = self._score_chunk(feats)
        return out

    def score_inputs(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """ID scores (float64 [N], higher = more ID) from what a class head supplies for one set
        (``ClassHead.inputs``): ``inputs["image"]`` [N, D] always, and the per-image inputs
        this score reads (:data:`PER_IMAGE_INPUTS`: ``patch``, ``cosines``, ``positives``) as
        [N, ...] arrays or row-sliceable array-likes (memory maps, lazily computed products);
        ``text_features`` [K, D] is present when the head has them. Scored in the same row
        chunks as :meth:`score`; ``_score_chunk`` gets float32 rows of every per-image input it
        reads."""
        image = inputs["image"]
        patch = inputs.get("patch") if "patch" in self.reads else None
        self._check_inputs(image, patch)
        n = image.shape[0]
        names = sorted((self.reads & PER_IMAGE_INPUTS) - {"image", "patch"})
        for k in names:
            if k not in inputs:
                raise ValueError(f"{type(self).__name__} reads {k!r}, which the given inputs lack")
            if len(inputs[k]) != n:
                raise ValueError(f"{k} has {len(inputs[k])} rows, the image features {n}")
        return self._score_rows(image, patch, {k: inputs[k] for k in names})


SCORES: Registry[Score] = Registry("score")
register_score = SCORES.register


def create_score(name: str, **kwargs: Any) -> Score:
    return SCORES.create(name, **kwargs)


def list_scores(pattern: str = "*") -> list[str]:
    return SCORES.list(pattern)
