"""Numerically stable helpers shared by the scores (max-subtracted logsumexp, softmax)."""

from __future__ import annotations

import numpy as np


def logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """float64 log(sum(exp(z))) along ``axis`` with max subtraction; ``z`` is not modified."""
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    s = np.sum(np.exp(z - m), axis=axis)
    return np.log(s) + np.squeeze(m, axis=axis)


def shifted_exp_sums_f32(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite the float32 [n, C] buffer ``z`` with exp(z - rowmax); return (rowmax, rowsum).

    Both returned arrays are float64. The row sum is >= 1 (the max term is exactly 1), so it
    never underflows: softmax max = 1 / sum and logsumexp = max + log(sum).
    """
    m = np.max(z, axis=1, keepdims=True)
    np.subtract(z, m, out=z)
    np.exp(z, out=z)
    return m[:, 0].astype(np.float64), np.sum(z, axis=1, dtype=np.float64)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """float64 softmax along ``axis`` with max subtraction."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """A new float32 array with rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, eps)


def check_temperature(t: float, name: str = "temperature") -> float:
    t = float(t)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {t}")
    return t
