"""Post-hoc OOD score interface. Every score returns an ID score: higher = more in-distribution.

Scores are feature-first: they take L2-normalised image embeddings (and, where needed, patch
features) and work in chunks so memory stays bounded for millions of samples. Text-side inputs
are unscaled, normalised class embeddings; temperatures are explicit parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmood.registry import Registry


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
    """Base class. Subclasses set ``requires`` (feature kinds of the evaluated set) and
    ``needs_train`` (ID training features), implement ``fit`` and ``_score_chunk``."""

    requires: tuple[str, ...] = ("image",)
    needs_train: bool = False
    chunk_size: int = 8192

    def fit(self, ctx: ScoreContext) -> Score:
        self.text_features = np.ascontiguousarray(ctx.text_features, dtype=np.float32)
        return self

    def params(self) -> dict[str, Any]:
        """Score parameters recorded in results."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """Extra things the score produced at fit time that results should carry (e.g. mined labels file)."""
        return {}

    @abstractmethod
    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray: ...

    def score(self, image: np.ndarray, patch: np.ndarray | None = None) -> np.ndarray:
        """ID scores (float64, higher = more ID) for [N, D] image features, chunked."""
        n = image.shape[0]
        out = np.empty(n, dtype=np.float64)
        for s in range(0, n, self.chunk_size):
            e = min(n, s + self.chunk_size)
            feats = {"image": np.asarray(image[s:e], dtype=np.float32)}
            if patch is not None:
                feats["patch"] = np.asarray(patch[s:e], dtype=np.float32)
            out[s:e] = self._score_chunk(feats)
        return out


SCORES: Registry[Score] = Registry("score")
register_score = SCORES.register


def create_score(name: str, **kwargs: Any) -> Score:
    return SCORES.create(name, **kwargs)


def list_scores(pattern: str = "*") -> list[str]:
    return SCORES.list(pattern)
