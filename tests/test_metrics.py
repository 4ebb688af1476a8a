"""Metrics vs scikit-learn and vs straightforward reference implementations, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vlmood import metrics as M

# ---------------------------------------------------------------- reference implementations


def ref_fpr95(id_s, ood_s):
    """Scan distinct thresholds from high to low; first where >=95% of ID is accepted."""
    for t in np.unique(np.r_[id_s, ood_s])[::-1]:
        if np.mean(id_s >= t) >= 0.95:
            return float(np.mean(ood_s >= t))
    raise AssertionError("unreachable")


def ref_fpr95_interp(id_s, ood_s):
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    fpr, tpr, _ = roc_curve(y, np.r_[id_s, ood_s])
    return float(np.interp(0.95, tpr, fpr))


def ref_fpr95_nearest(id_s, ood_s, recall_level=0.95):
    """A re-statement of the Hendrycks / MCM ``get_measures`` -> ``fpr_and_fdr_at_recall`` code."""
    y_true = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))].astype(bool)
    y_score = np.r_[id_s, ood_s]
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    thr_idx = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[thr_idx]
    fps = 1 + thr_idx - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return float(fps[cutoff] / np.sum(~y_true))


def ref_fpr95_openood(id_s, ood_s):
    conf = np.r_[id_s, ood_s]
    ood_ind = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    fpr, tpr, _ = roc_curve(ood_ind, -conf)
    return float(fpr[np.argmax(tpr >= 0.95)])


def ref_auroc_pairs(id_s, ood_s):
    d = id_s[:, None] - ood_s[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def ref_detection_error(id_s, ood_s):
    best = 0.5  # accept nothing
    for t in np.unique(np.r_[id_s, ood_s]):
        best = min(best, 0.5 * (1 - np.mean(id_s >= t)) + 0.5 * np.mean(ood_s >= t))
    return best


def sk_aupr(id_s, ood_s):
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s, ood_s]
    return average_precision_score(y, s), average_precision_score(1 - y, -s)


# ---------------------------------------------------------------- data generators


def _cases(n_cases=150, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        n_id, n_ood = rng.integers(1, 120, size=2)
        kind = i % 4
        if kind == 0:  # continuous, overlapping
            a, b = rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)
        elif kind == 1:  # heavy ties: few distinct values
            a, b = rng.integers(0, 4, n_id) * 1.0, rng.integers(0, 3, n_ood) * 1.0
        elif kind == 2:  # ties across classes, rounded
            a, b = np.round(rng.normal(0.5, 1, n_id), 1), np.round(rng.normal(0, 1, n_ood), 1)
        else:  # two values only
            a, b = rng.integers(0, 2, n_id) * 1.0, rng.integers(0, 2, n_ood) * 1.0
        yield a, b


CASES = list(_cases())


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("case", range(len(CASES)))
def test_all_metrics_match_references(case):
    a, b = CASES[case]
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    s = np.r_[a, b]
    got = M.ood_metrics(a, b)
    if len(np.unique(y)) == 2:
        assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["auroc"] == pytest.approx(ref_auroc_pairs(a, b), abs=1e-12)
    assert got["fpr95"] == ref_fpr95(a, b)
    assert got["fpr95_interp"] == pytest.approx(ref_fpr95_interp(a, b), abs=1e-12)
    assert got["fpr95_nearest"] == ref_fpr95_nearest(a, b)
    assert got["fpr95_openood"] == pytest.approx(ref_fpr95_openood(a, b), abs=1e-12)
    ap_in, ap_out = sk_aupr(a, b)
    assert got["aupr_in"] == pytest.approx(ap_in, abs=1e-12)
    assert got["aupr_out"] == pytest.approx(ap_out, abs=1e-12)
    assert got["detection_error"] == pytest.approx(ref_detection_error(a, b), abs=1e-12)
    # the single functions agree with ood_metrics
    for name, fn in M.METRICS.items():
        assert fn(a, b) == got[name], name


def test_metrics_names_and_types():
    assert set(M.METRICS) == {
        "auroc",
        "fpr95",
        "fpr95_interp",
        "fpr95_nearest",
        "fpr95_openood",
        "aupr_in",
        "aupr_out",
        "detection_error",
    }
    out = M.ood_metrics([1.0, 2.0], [0.0])
    assert all(type(v) is float for v in out.values())


def test_all_equal_scores():
    a, b = np.full(37, 0.3), np.full(11, 0.3)
    out = M.ood_metrics(a, b)
    assert out["auroc"] == 0.5
    assert out["fpr95"] == 1.0
    assert out["fpr95_nearest"] == 1.0
    assert out["fpr95_openood"] == 1.0
    assert out["fpr95_interp"] == pytest.approx(0.95)
    assert out["aupr_in"] == pytest.approx(37 / 48)
    assert out["aupr_out"] == pytest.approx(11 / 48)
    assert out["detection_error"] == 0.5


def test_hand_cases():
    # perfect separation
    out = M.ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0])
    assert out["auroc"] == 1.0 and out["fpr95"] == 0.0 and out["aupr_in"] == 1.0
    assert out["aupr_out"] == 1.0 and out["detection_error"] == 0.0
    # reversed
    out = M.ood_metrics([0.0, 1.0], [3.0, 4.0])
    assert out["auroc"] == 0.0 and out["fpr95"] == 1.0
    # one tie between ID and OOD: AUROC = (3 + 0.5) / 4
    assert M.auroc([1.0, 2.0], [1.0, 0.0]) == pytest.approx(3.5 / 4)
    # 20 ID: the 19th highest ID (recall 0.95) sits above 1 of 4 OOD
    id_s = np.arange(20, dtype=float) + 10  # 10..29
    ood_s = np.array([0.0, 1.0, 2.0, 11.5])
    assert M.fpr95(id_s, ood_s) == 0.25  # threshold 11 accepts 19/20 ID and OOD 11.5
    # tied group crossing 95%: ID recall jumps 0.9 -> 1.0 at a tie with an OOD sample
    id_s = np.r_[np.arange(18) + 10.0, 5.0, 5.0]
    ood_s = np.array([5.0, 0.0])
    assert M.fpr95(id_s, ood_s) == 0.5


def test_fpr95_is_monotone_in_threshold_not_interpolated():
    # distinguish the three ID-positive FPR95 variants on a small case
    id_s = np.linspace(1, 2, 10)  # recall steps of 0.1
    ood_s = np.linspace(0.95, 1.95, 10)
    assert M.fpr95(id_s, ood_s) == ref_fpr95(id_s, ood_s)
    assert M.fpr95_interp(id_s, ood_s) <= M.fpr95(id_s, ood_s)


def test_input_order_and_dtype_do_not_matter():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50).astype(np.float32), rng.normal(size=40).astype(np.float32)
    p, q = rng.permutation(50), rng.permutation(40)
    assert M.ood_metrics(a, b) == M.ood_metrics(a[p], b[q])
    assert M.ood_metrics(a, b) == M.ood_metrics(list(a.astype(float)), b.astype(np.float64))
    a0 = a.copy()
    M.ood_metrics(a, b)
    np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize(
    "bad",
    [np.array([]), np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.array([-np.inf]), np.ones((2, 2))],
)
@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_bad_inputs_raise(bad, name):
    with pytest.raises(ValueError):
        M.METRICS[name](bad, np.array([0.0, 1.0]))
    with pytest.raises(ValueError):
        M.METRICS[name](np.array([0.0, 1.0]), bad)


def test_error_messages_are_clear():
    with pytest.raises(ValueError, match="ood_scores is empty"):
        M.auroc([1.0], [])
    with pytest.raises(ValueError, match="id_scores contains 1 non-finite"):
        M.auroc([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="numeric"):
        M.auroc(["a", "b"], [0.0])


def test_large_input_is_fast_and_correct():
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(1, 1, 200_000), 3)
    b = np.round(rng.normal(0, 1, 100_000), 3)
    out = M.ood_metrics(a, b)
    y = np.r_[np.ones(a.size), np.zeros(b.size)]
    assert out["auroc"] == pytest.approx(roc_auc_score(y, np.r_[a, b]), abs=1e-12)
    assert out["fpr95_nearest"] == ref_fpr95_nearest(a, b)


def test_id_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = np.array([1, 0, 1, 2])
    assert M.id_accuracy(logits, labels) == 0.5
    assert M.id_accuracy(logits, labels, k=2) == 0.75
    assert M.id_accuracy(logits, labels, k=3) == 1.0
    assert M.id_accuracy(np.array([1, 0, 2, 2]), labels) == 0.75
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(500, 20))
    lb = rng.integers(0, 20, 500)
    from sklearn.metrics import top_k_accuracy_score

    for k in (1, 3, 5):
        assert M.id_accuracy(lg, lb, k=k) == pytest.approx(
            top_k_accuracy_score(lb, lg, k=k, labels=np.arange(20))
        )
    with pytest.raises(ValueError):
        M.id_accuracy(np.array([1, 0]), np.array([1, 0]), k=2)
    with pytest.raises(ValueError):
        M.id_accuracy(logits, labels[:3])
    with pytest.raises(ValueError):
        M.id_accuracy(logits, labels, k=4)
