"""GL-MCM and L-MCM: global + local (patch) maximum concept matching (methods.md §7.3-7.4).

Patch features are the [N, P, D] *projected, L2-normalised* patch tokens of the model adapter
(they are used as given, not re-normalised). With cosines ``s_c`` of the global embedding and
``s_{p,c}`` of patch p:

- ``lmcm``  = max_{p,c} softmax_c(s_{p,.} / T)
- ``glmcm`` = max_c softmax_c(s / T) + lambda_local * lmcm

``lambda_local`` defaults to 1.0 as in LoCoOp's ``test_ood``; the GL-MCM ImageNet script passes
``--lambda_local 0.5``. T defaults to 1 (unscaled cosines).
"""

from __future__ import annotations

import numpy as np

from vlmood.scores._math import check_temperature, max_softmax_f32_
from vlmood.scores.base import register_score
from vlmood.scores.softmax import CosineScore, max_softmax

#: bound on the float32 [rows, P, K] patch-logit buffer (elements)
MAX_CHUNK_ELEMENTS = 1 << 24


def local_mcm(patch: np.ndarray, text_t: np.ndarray, temperature: float) -> np.ndarray:
    """max over patches and classes of softmax over classes of patch cosines / T; float64 [n]."""
    n, p, d = patch.shape
    z = patch.reshape(n * p, d) @ (text_t * np.float32(1.0 / temperature))  # new float32 buffer
    return np.max(max_softmax_f32_(z).reshape(n, p), axis=1)  # (the buffer is overwritten)


@register_score("glmcm")
class GLMCMScore(CosineScore):
    """Global-local MCM: MCM(global) + lambda_local * max_{patch,class} softmax(patch cos / T)."""

    reads = frozenset({"cosines", "patch", "text_features"})  # global cosines; patches vs [K, D] text

    def __init__(self, temperature: float = 1.0, lambda_local: float = 1.0) -> None:
        self.temperature = check_temperature(temperature)
        self.lambda_local = float(lambda_local)

    def _rows_per_chunk(self, image, patch) -> int:
        per_row = max(1, patch.shape[1] * self.text_features.shape[0])
        return max(1, min(self.chunk_size, MAX_CHUNK_ELEMENTS // per_row))

    def _global(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        cos = feats.get("cosines")
        cos = self.cosines(feats["image"]) if cos is None else cos
        return max_softmax(cos, self.temperature)

    def _local(self, patch: np.ndarray) -> np.ndarray:
        if patch.shape[2] != self._text_t.shape[0]:
            raise ValueError(
                f"patch features have dim {patch.shape[2]} but text features have dim {self._text_t.shape[0]}"
            )
        return local_mcm(patch, self._text_t, self.temperature)

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self._global(feats) + self.lambda_local * self._local(feats["patch"])


@register_score("lmcm")
class LMCMScore(GLMCMScore):
    """Local MCM only: max over patches and classes of softmax(patch cos / T)."""

    reads = frozenset({"patch", "text_features"})

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_temperature(temperature)

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self._local(feats["patch"])
