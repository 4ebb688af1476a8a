"""Mahalanobis score with class means and a shared covariance (Lee et al. 2018; MCM's ``maha``).

fit: class means mu_c and the shared covariance Sigma of the class-centred ID training features
(``np.cov`` semantics, ddof=1, like ``torch.cov``), accumulated in float64 over chunks so the
training features may be a memory map. Features are used as given (``normalize=False``, MCM's
default); ``normalize=True`` L2-normalises training and query features.

score(x) = max_c -0.5 (x - mu_c)^T P (x - mu_c), with P = pinv(Sigma + ridge * I). The
pseudo-inverse (``hermitian=True``) equals the inverse when Sigma is invertible and stays defined
when it is singular (e.g. fewer training samples than dimensions); ``ridge`` > 0 regularises
instead. Computed in float64 as ||W x - W mu_c||^2 with P = W^T W.
"""

from __future__ import annotations

import numpy as np

from vlmood.scores._math import l2_normalize
from vlmood.scores.base import Score, ScoreContext, register_score


@register_score("mahalanobis")
class MahalanobisScore(Score):
    """max over classes of the negative half squared Mahalanobis distance (shared covariance)."""

    reads = frozenset({"image", "train"})
    chunk_size = 4096

    def __init__(self, normalize: bool = False, ridge: float = 0.0, fit_chunk_size: int = 16384) -> None:
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.normalize = bool(normalize)
        self.ridge = float(ridge)
        self.fit_chunk_size = int(fit_chunk_size)

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.normalize:
            x = l2_normalize(x)
        return x.astype(np.float64)

    def fit(self, ctx: ScoreContext) -> MahalanobisScore:
        super().fit(ctx)
        x, y = ctx.train_features, ctx.train_labels
        if x is None or y is None:
            raise ValueError(
                "mahalanobis needs ID training features and labels (ctx.train_features, ctx.train_labels)"
            )
        y = np.asarray(y)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"train_features [N, D] and train_labels [N] expected, got {x.shape} and {y.shape}"
            )
        classes, y_idx = np.unique(y, return_inverse=True)
        c, d = classes.size, x.shape[1]
        if x.shape[0] <= c:
            raise ValueError(f"mahalanobis needs more training samples ({x.shape[0]}) than classes ({c})")
        step = self.fit_chunk_size
        sums = np.zeros((c, d))
        for s in range(0, x.shape[0], step):
            lab = y_idx[s : s + step]
            order = np.argsort(lab, kind="stable")
            present, starts = np.unique(lab[order], return_index=True)
            sums[present] += np.add.reduceat(self._prep(x[s : s + step])[order], starts, axis=0)
        counts = np.bincount(y_idx, minlength=c).astype(np.float64)
        means = sums / counts[:, None]
        # covariance of the centred features, np.cov / torch.cov semantics (mean removed, ddof=1)
        csum = np.zeros(d)
        gram = np.zeros((d, d))
        for s in range(0, x.shape[0], step):
            r = self._prep(x[s : s + step]) - means[y_idx[s : s + step]]
            csum += r.sum(axis=0)
            gram += r.T @ r
        n = x.shape[0]
        cov = (gram - np.outer(csum, csum) / n) / (n - 1)
        if self.ridge > 0:
            cov = cov + self.ridge * np.eye(d)
        precision = np.linalg.pinv(cov, hermitian=True)
        # P = W^T W with W = diag(sqrt(max(eig, 0))) V^T
        evals, evecs = np.linalg.eigh((precision + precision.T) / 2)
        self._w_t = evecs * np.sqrt(np.clip(evals, 0.0, None))  # [D, D]; x @ _w_t == (W x)^T
        self._means_w = means @ self._w_t  # [C, D]
        self._means_sq = np.sum(self._means_w**2, axis=1)
        self.classes = classes
        self.class_means = means
        self.precision = precision
        return self

    def _score_chunk(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        x = feats["image"]
        if x.shape[1] != self._w_t.shape[0]:
            raise ValueError(
                f"image features have dim {x.shape[1]} but the fit used dim {self._w_t.shape[0]}"
            )
        g = self._prep(x) @ self._w_t
        d2 = np.sum(g**2, axis=1)[:, None] - 2.0 * (g @ self._means_w.T) + self._means_sq[None, :]
        return -0.5 * np.min(np.maximum(d2, 0.0), axis=1)
