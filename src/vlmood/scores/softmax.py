"""Zero-shot scores on the [N, K] cosine similarities to the ID class embeddings.

Cosines come from a float32 matmul; the exponentials are float32 after max subtraction and
every sum, log and ratio is float64 (``variance`` is float64 throughout, to avoid cancellation
near uniform distributions). ``CosineScore.from_cosines`` applies a score to precomputed cosines
(an evaluation running several scores can compute the [N, K] cosines once).

All take *unscaled* cosines ``s_c(x) = f(x) . t_c`` and an explicit temperature (MCM code,
methods.md §1.1). Written as ID scores (higher = more ID):

- ``mcm`` (T=1): max_c softmax(s/T)_c.
- ``msp`` (T=None): softmax at the model's own logit scale, max_c softmax(logit_scale * s)_c;
  a given ``temperature`` overrides it (softmax(s/T)).
- ``maxlogit``: max_c s_c (no temperature).
- ``energy`` (T=1): T * logsumexp_c(s_c / T).
- ``entropy`` (T=1): -H(softmax(s/T)) = sum_c p_c log p_c.
- ``variance`` (T=1): population variance over classes of softmax(s/T) (as ``np.var``).
- ``l1``: sum_c |s_c - min_c' s_c'|, the L1 norm of the min-shifted similarities (PLP's L1 score
  on a probe's logits; on cosines it is K x (mean - min)).

Each is also a plain function of [n, K] similarities (:func:`max_softmax`, :func:`max_logit`,
:func:`energy`, :func:`neg_entropy`, :func:`softmax_variance`, :func:`l1_norm`): the one place
this math is written. The score classes, GL-MCM's global term, the probes' own scores and UEO's
confidence weights and metrics all call them.
"""

from __future__ import annotations

import numpy as np

from vlmood.scores._math import check_temperature, logsumexp, max_softmax_f32_, shifted_exp_sums_f32
from vlmood.scores.base import Score, ScoreContext, register_score


class CosineScore(Score):
    """Base for scores that are a function of the class similarities [N, K] alone (``reads``
    cosines): the cosines to the ID text embeddings given at fit time (:meth:`score`), or
    whatever similarities a class head supplies (:meth:`score_inputs`: a CoCoOp head's
    per-image cosines, a probe's logits)."""

    reads = frozenset({"cosines"})

    def fit(self, ctx: ScoreContext) -> CosineScore:
        super().fit(ctx)
        if self.text_features.ndim != 2:
            raise ValueError(f"text_features must be [K, D], got shape {self.text_features.shape}")
        self._text_t = np.ascontiguousarray(self.text_features.T)
        return self

    def cosines(self, image: np.ndarray) -> np.ndarray:
        """float32 [n, K] cosines (a new array)."""
        if image.shape[1] != self._text_t.shape[0]:
            raise ValueError(
                f"image features have dim {image.shape[1]} but text features have dim {self._text_t.shape[0]}"
            )
        return image @ self._text_t

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        cos = feats.get("cosines")
        return self.from_cosines(self.cosines(feats["image"]) if cos is None else cos)

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float64 [n] ID scores from [n, K] cosines; ``cos`` is not modified."""
        raise NotImplementedError


def _scaled(cos: np.ndarray, temperature: float) -> np.ndarray:
    """A new float32 array cos / T."""
    return np.multiply(cos, np.float32(1.0 / temperature), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- the math
# float64 [n] ID scores of [n, K] similarities (cosines or logits); the input is never modified.


def max_softmax(cos: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """max_c softmax(cos / T)_c (MCM; MSP at T = 1 / logit scale; a probe's MSP at T = 1)."""
    return max_softmax_f32_(_scaled(cos, temperature))


def max_logit(cos: np.ndarray) -> np.ndarray:
    """max_c cos_c."""
    return np.max(cos, axis=1).astype(np.float64)


def energy(cos: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy T * logsumexp_c(cos_c / T)."""
    m, total = shifted_exp_sums_f32(_scaled(cos, temperature))
    return temperature * (m + np.log(total))


def neg_entropy(cos: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """-H(softmax(cos / T)) = sum_c p_c log p_c."""
    # sum_c p_c log p_c = sum_c e_c d_c / S - log S with d = z - max z, e = exp(d), S = sum e
    d = _scaled(cos, temperature)
    np.subtract(d, np.max(d, axis=1, keepdims=True), out=d)
    e = np.exp(d)
    total = np.sum(e, axis=1, dtype=np.float64)
    np.multiply(e, d, out=e)
    return np.sum(e, axis=1, dtype=np.float64) / total - np.log(total)


def softmax_variance(cos: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Population variance over classes of softmax(cos / T) (float64 throughout)."""
    z = np.asarray(cos, dtype=np.float64) / temperature
    p = np.exp(z - logsumexp(z, axis=1)[:, None])
    return np.var(p, axis=1)


def l1_norm(cos: np.ndarray) -> np.ndarray:
    """sum_c (cos_c - min_c' cos_c'), the L1 norm of the min-shifted similarities."""
    z = np.asarray(cos, dtype=np.float64)
    return np.sum(z - z.min(axis=1, keepdims=True), axis=1)


# ---------------------------------------------------------------------------------------------- scores
class _TemperatureScore(CosineScore):
    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_temperature(temperature)


@register_score("mcm")
class MCMScore(_TemperatureScore):
    """Maximum concept matching: max_c softmax(cos / T)_c (Ming et al. 2022), T=1 by default."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return max_softmax(cos, self.temperature)


@register_score("msp")
class MSPScore(CosineScore):
    """Maximum softmax probability at the model's logit scale (``temperature=None``), i.e.
    max_c softmax(logit_scale * cos)_c; an explicit temperature T gives softmax(cos / T)."""

    def __init__(self, temperature: float | None = None) -> None:
        self.temperature = None if temperature is None else check_temperature(temperature)

    def fit(self, ctx: ScoreContext) -> MSPScore:
        super().fit(ctx)
        if self.temperature is None:
            scale = float(ctx.logit_scale)
            if not np.isfinite(scale) or scale <= 0:
                raise ValueError(f"ctx.logit_scale must be positive, got {ctx.logit_scale}")
            self.effective_temperature = 1.0 / scale
        else:
            self.effective_temperature = self.temperature
        return self

    def params(self) -> dict:
        p = super().params()
        if hasattr(self, "effective_temperature"):
            p["effective_temperature"] = self.effective_temperature
        return p

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return max_softmax(cos, self.effective_temperature)


@register_score("maxlogit")
class MaxLogitScore(CosineScore):
    """Maximum cosine similarity max_c cos_c (no temperature)."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return max_logit(cos)


@register_score("energy")
class EnergyScore(_TemperatureScore):
    """Negative free energy T * logsumexp_c(cos_c / T)."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return energy(cos, self.temperature)


@register_score("entropy")
class EntropyScore(_TemperatureScore):
    """Negative entropy of softmax(cos / T): sum_c p_c log p_c (higher = more confident = ID)."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return neg_entropy(cos, self.temperature)


@register_score("variance")
class VarianceScore(_TemperatureScore):
    """Population variance over classes of softmax(cos / T) (MCM code's ``var``)."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return softmax_variance(cos, self.temperature)


@register_score("l1")
class L1Score(CosineScore):
    """L1 norm of the min-shifted similarities: sum_c (s_c - min s) (PLP on probe logits)."""

    def from_cosines(self, cos: np.ndarray) -> np.ndarray:
        return l1_norm(cos)
