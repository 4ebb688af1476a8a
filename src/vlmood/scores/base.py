"""Post-hoc OOD score interface. Every score returns an ID score: higher = more in-distribution.

Scores are feature-first: they take L2-normalised image embeddings (and, where needed, patch
features) and work in chunks so memory stays bounded for millions of samples. Text-side inputs
are unscaled, normalised class embeddings; temperatures are explicit parameters.
"""

from __future__ import annotations

import inspect
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
        n = image.shape[0]
        out = np.empty(n, dtype=np.float64)
        rows = max(1, int(self._rows_per_chunk(image, patch)))
        for s in range(0, n, rows):
            e = min(n, s + rows)
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
