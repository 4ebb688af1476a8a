"""Numerically stable helpers shared by the scores (max-subtracted logsumexp, softmax) and the
one chunked ``image @ text.T`` product (:func:`cosine_blocks`, :func:`map_cosines`) that every
head, accuracy and method uses on (possibly memory-mapped) features."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

#: rows per block of a chunked ``image @ text.T`` (bounds the float32 [rows, K] intermediate)
COSINE_ROWS = 8192


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


def max_softmax_f32_(z: np.ndarray) -> np.ndarray:
    """float64 [n] max_c softmax(z)_c of the float32 [n, C] buffer ``z``, which is overwritten
    (:func:`shifted_exp_sums_f32`: the max term is exactly 1, so the max softmax is 1 / sum)."""
    return 1.0 / shifted_exp_sums_f32(z)[1]


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


def cosine_blocks(
    image: np.ndarray, text_t: np.ndarray, rows: int = COSINE_ROWS
) -> Iterator[tuple[slice, np.ndarray]]:
    """``(row slice, float32 image[slice] @ text_t)`` over row blocks of ``image`` [N, D] (any
    row-sliceable array: memory maps stay on disk); ``text_t`` is the [D, K] transposed class
    matrix. No [N, K] matrix is kept; an empty ``image`` gives one empty block."""
    n = len(image)
    rows = max(1, int(rows))
    for s in range(0, max(n, 1), rows):
        sl = slice(s, min(n, s + rows))
        yield sl, np.asarray(image[sl], dtype=np.float32) @ text_t


def map_cosines(
    image: np.ndarray,
    text_t: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray] | None = None,
    rows: int = COSINE_ROWS,
) -> np.ndarray:
    """``fn`` applied to each float32 block of :func:`cosine_blocks`, the results stacked in row
    order: ``fn=None`` gives the float32 [N, K] cosines, a per-row reduction (an argmax, a
    score) gives [N]."""
    out: np.ndarray | None = None
    for sl, block in cosine_blocks(image, text_t, rows):
        r = block if fn is None else np.asarray(fn(block))
        if out is None:
            out = np.empty((len(image), *r.shape[1:]), dtype=r.dtype)
        out[sl] = r
    assert out is not None
    return out


def argmax_classes(image: np.ndarray, text: np.ndarray, rows: int = COSINE_ROWS) -> np.ndarray:
    """int64 [N] argmax over classes of ``image @ text.T`` for class features ``text`` [K, D]
    (any positive logit scale gives the same argmax)."""
    t = np.ascontiguousarray(np.asarray(text, dtype=np.float32).T)
    return map_cosines(image, t, lambda b: np.argmax(b, axis=1), rows).astype(np.int64, copy=False)
