"""OOD-detection and classification metrics, named without ambiguity.

Every OOD metric is a function of ``(id_scores, ood_scores)`` where the scores are *ID scores*
(higher = more in-distribution). Label conventions never leak out: each function documents which
class it treats as positive. All arithmetic is float64 numpy (sorting + cumulative counts, so
O(n log n)); scikit-learn is not needed at runtime but every metric is tested against it.

Names:

- ``auroc``: P(ID score > OOD score) + 0.5 P(tie); equals ``roc_auc_score`` with ID positive.
- ``fpr95``: fraction of OOD accepted as ID at the *first* threshold (scanning from high scores
  down, tied scores forming one threshold) where at least 95% of ID samples are accepted.
  This is the quantity the VLM-OOD papers report.
- ``fpr95_interp``: ``np.interp(0.95, tpr, fpr)`` on scikit-learn's ``roc_curve`` (ID positive,
  ``drop_intermediate=True``), as in the CMA and PLP code.
- ``fpr95_nearest``: the Hendrycks ``fpr_and_fdr_at_recall`` rule used by MCM / GL-MCM: the
  threshold whose ID recall is nearest to 0.95 (``argmin |recall - 0.95|``, first minimum in that
  code's reversed scan, with its extra (recall 1, fp 0) end point).
- ``fpr95_openood``: OpenOOD v1.5 convention, OOD positive: fraction of ID samples flagged as OOD
  at the first point of scikit-learn's ``roc_curve`` (on negated scores) with OOD recall >= 95%.
- ``aupr_in`` / ``aupr_out``: average precision (``average_precision_score``) with ID positive,
  resp. OOD positive on negated scores. (CMA's code uses a trapezoid AUC of the PR curve instead;
  that variant is not provided.)
- ``detection_error``: ODIN-style minimum over thresholds of
  ``0.5 * (1 - tpr) + 0.5 * fpr`` (equal priors; accept-none and accept-all included).
- ``id_accuracy``: top-k accuracy from logits or from predicted labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "METRICS",
    "aupr_in",
    "aupr_out",
    "auroc",
    "detection_error",
    "fpr95",
    "fpr95_interp",
    "fpr95_nearest",
    "fpr95_openood",
    "id_accuracy",
    "ood_metrics",
]

RECALL_LEVEL = 0.95


def _check_scores(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric scores, got {type(x).__name__}: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one score")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{name} contains {idx.size} non-finite value(s) (NaN or inf), first at index {idx[0]}: {arr[idx[0]]}"
        )
    return arr


def _binary_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct threshold, high to low.

    Tied scores form one threshold. Both arrays are int64 and end at (len(pos), len(neg)).
    """
    scores = np.concatenate([pos, neg])
    is_pos = np.zeros(scores.size, dtype=np.int64)
    is_pos[: pos.size] = 1
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    last_of_group = np.flatnonzero(s[1:] != s[:-1])  # index of the last element of each tie group
    idx = np.r_[last_of_group, s.size - 1]
    tps = np.cumsum(is_pos[order])[idx]
    fps = idx + 1 - tps
    return tps, fps


def _sklearn_roc(tps: np.ndarray, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) exactly as ``sklearn.metrics.roc_curve(..., drop_intermediate=True)`` returns."""
    if tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps = tps[keep], fps[keep]
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    return fps / fps[-1], tps / tps[-1]


class _Curve:
    """Shared counts for one (positive, negative) pair; metrics are methods on it."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray) -> None:
        self.pos, self.neg = pos, neg
        self.n_pos, self.n_neg = pos.size, neg.size
        self.tps, self.fps = _binary_counts(pos, neg)
        self._flipped: _Curve | None = None

    @classmethod
    def build(cls, id_scores, ood_scores) -> _Curve:
        return cls(_check_scores(id_scores, "id_scores"), _check_scores(ood_scores, "ood_scores"))

    def flipped(self) -> _Curve:
        """The same data with OOD as positive and negated scores."""
        if self._flipped is None:
            self._flipped = _Curve(-self.neg, -self.pos)
        return self._flipped

    # --- metrics (ID positive unless stated) ---
    def auroc(self) -> float:
        tps = np.r_[0, self.tps].astype(np.float64)
        dfps = np.diff(np.r_[0, self.fps]).astype(np.float64)
        area = np.sum(dfps * (tps[1:] + tps[:-1]))
        return float(area / (2.0 * self.n_pos * self.n_neg))

    def fpr95(self) -> float:
        tpr = self.tps / self.n_pos
        i = int(np.argmax(tpr >= RECALL_LEVEL))  # tpr ends at 1.0, so a hit always exists
        return float(self.fps[i] / self.n_neg)

    def fpr95_interp(self) -> float:
        fpr, tpr = _sklearn_roc(self.tps, self.fps)
        return float(np.interp(RECALL_LEVEL, tpr, fpr))

    def fpr95_nearest(self) -> float:
        tps = self.tps.astype(np.float64)
        fps = self.fps.astype(np.float64)
        recall = tps / tps[-1]
        last_ind = int(tps.searchsorted(tps[-1]))
        sl = slice(last_ind, None, -1)
        recall = np.r_[recall[sl], 1.0]
        fps = np.r_[fps[sl], 0.0]
        cutoff = int(np.argmin(np.abs(recall - RECALL_LEVEL)))
        return float(fps[cutoff] / self.n_neg)

    def fpr95_openood(self) -> float:
        fpr, tpr = _sklearn_roc(self.flipped().tps, self.flipped().fps)
        return float(fpr[int(np.argmax(tpr >= RECALL_LEVEL))])

    def aupr_in(self) -> float:
        precision = self.tps / (self.tps + self.fps)
        recall = self.tps / self.n_pos
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))

    def aupr_out(self) -> float:
        return self.flipped().aupr_in()

    def detection_error(self) -> float:
        tpr = np.r_[0.0, self.tps / self.n_pos]
        fpr = np.r_[0.0, self.fps / self.n_neg]
        return float(np.min(0.5 * (1.0 - tpr) + 0.5 * fpr))


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive: P(ID > OOD) with ties counting half."""
    return _Curve.build(id_scores, ood_scores).auroc()


def fpr95(id_scores, ood_scores) -> float:
    """Fraction of OOD accepted at the first (highest) threshold accepting >= 95% of ID."""
    return _Curve.build(id_scores, ood_scores).fpr95()


def fpr95_interp(id_scores, ood_scores) -> float:
    """``np.interp(0.95, tpr, fpr)`` on scikit-learn's ROC curve, ID positive (CMA / PLP code)."""
    return _Curve.build(id_scores, ood_scores).fpr95_interp()


def fpr95_nearest(id_scores, ood_scores) -> float:
    """FPR at the threshold whose ID recall is nearest 0.95 (Hendrycks code, used by MCM)."""
    return _Curve.build(id_scores, ood_scores).fpr95_nearest()


def fpr95_openood(id_scores, ood_scores) -> float:
    """OpenOOD v1.5: OOD positive; fraction of ID flagged as OOD at 95% OOD recall."""
    return _Curve.build(id_scores, ood_scores).fpr95_openood()


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class."""
    return _Curve.build(id_scores, ood_scores).aupr_in()


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class (scores negated)."""
    return _Curve.build(id_scores, ood_scores).aupr_out()


def detection_error(id_scores, ood_scores) -> float:
    """min over thresholds of 0.5 * (1 - tpr) + 0.5 * fpr (ID positive, equal priors)."""
    return _Curve.build(id_scores, ood_scores).detection_error()


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    f.__name__: f
    for f in (auroc, fpr95, fpr95_interp, fpr95_nearest, fpr95_openood, aupr_in, aupr_out, detection_error)
}


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """Every metric in ``METRICS`` for one (ID, OOD) pair; sorting is shared between them."""
    curve = _Curve.build(id_scores, ood_scores)
    return {name: getattr(curve, name)() for name in METRICS}


def id_accuracy(logits_or_pred, labels, k: int = 1) -> float:
    """Top-k accuracy.

    ``logits_or_pred`` is either [N, C] logits/scores (top-k over C; for k=1 ties go to the
    lowest class index, as ``argmax``) or [N] predicted labels (only k=1 then).
    """
    labels = np.asarray(labels)
    x = np.asarray(logits_or_pred)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"{x.shape[0]} predictions but {labels.shape[0]} labels")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if x.ndim == 1:
        if k != 1:
            raise ValueError("top-k accuracy with k > 1 needs [N, C] logits, not predicted labels")
        return float(np.mean(x == labels))
    if x.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("logits contain NaN or inf")
    if k > x.shape[1]:
        raise ValueError(f"k={k} exceeds the number of classes {x.shape[1]}")
    if k == 1:
        return float(np.mean(np.argmax(x, axis=1) == labels))
    topk = np.argpartition(-x, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def modality_gap(image, text, labels) -> dict[str, float]:
    """The modality gap of a labelled image set against class text embeddings (CMA's measure).

    ``image`` [N, D], ``text`` [K, D] (both renormalised here), ``labels`` [N] (``< 0`` ignored):

    - ``gap``: ``|| mean_i img_i - mean_i txt_{y_i} ||``, the distance between the mean image
      embedding and the mean embedding of the images' own class texts (Liang et al.'s gap over
      (image, own class text) pairs);
    - ``own_cosine``: mean cosine of an image to its own class text;
    - ``other_cosine``: mean over images of the mean cosine to the other K - 1 class texts;
    - ``margin``: ``own_cosine - other_cosine``.

    Computed in float64 without an [N, K] matrix (the other-class mean comes from the sum of
    all class texts).
    """
    img = np.asarray(image, dtype=np.float64)
    txt = np.asarray(text, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"modality_gap: image {img.shape} and text {txt.shape} must be [N, D] and [K, D]")
    if len(y) != len(img):
        raise ValueError(f"modality_gap: {len(img)} images but {len(y)} labels")
    keep = y >= 0
    if not keep.any():
        raise ValueError("modality_gap: no labelled images")
    img, y = img[keep], y[keep]
    k = len(txt)
    if y.max() >= k:
        raise ValueError(f"modality_gap: label {int(y.max())} outside the {k} class texts")
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    gap = float(np.linalg.norm(img.mean(axis=0) - txt[y].mean(axis=0)))
    own = np.einsum("nd,nd->n", img, txt[y])
    txt_sum = txt.sum(axis=0)
    # mean cosine to the other classes: (sum over all classes - own) / (K - 1), no [N, K] matrix
    other = (img @ txt_sum - own) / (k - 1) if k > 1 else np.full(len(img), np.nan)
    return {
        "gap": gap,
        "own_cosine": float(own.mean()),
        "other_cosine": float(other.mean()),
        "margin": float(own.mean() - other.mean()),
        "n": int(len(img)),
    }
