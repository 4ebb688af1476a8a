"""The modality gap in results: the function against a loop, and run_eval / the study record it."""

from __future__ import annotations

import numpy as np
import pytest

from vlmood.metrics import modality_gap


def _loop(image, text, labels):
    img = image / np.linalg.norm(image, axis=1, keepdims=True)
    txt = text / np.linalg.norm(text, axis=1, keepdims=True)
    keep = labels >= 0
    img, y = img[keep], labels[keep]
    gap = np.linalg.norm(img.mean(0) - np.stack([txt[c] for c in y]).mean(0))
    own, other = [], []
    for i, c in enumerate(y):
        cos = [float(img[i] @ txt[k]) for k in range(len(txt))]
        own.append(cos[c])
        other.append(np.mean([v for k, v in enumerate(cos) if k != c]))
    return gap, np.mean(own), np.mean(other)


def test_modality_gap_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 8)).astype(np.float32) + 2.0  # a shifted cone: a real gap
    text = rng.normal(size=(5, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=40)
    labels[3] = -1  # unlabelled rows are ignored
    got = modality_gap(image, text, labels)
    gap, own, other = _loop(image, text, labels)
    assert got["gap"] == pytest.approx(gap, abs=1e-6)
    assert got["own_cosine"] == pytest.approx(own, abs=1e-6)
    assert got["other_cosine"] == pytest.approx(other, abs=1e-6)
    assert got["margin"] == pytest.approx(own - other, abs=1e-6)
    assert got["n"] == 39


def test_modality_gap_is_zero_when_images_are_their_class_texts():
    text = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 2])
    got = modality_gap(text[labels] * 3.0, text, labels)  # scale does not matter (renormalised)
    assert got["gap"] == pytest.approx(0.0, abs=1e-9)
    assert got["own_cosine"] == pytest.approx(1.0)
    assert got["other_cosine"] == pytest.approx(0.0)


def test_modality_gap_refuses_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        modality_gap(np.ones((3, 4)), np.ones((2, 5)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="outside"):
        modality_gap(np.ones((3, 4)), np.ones((2, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="no labelled"):
        modality_gap(np.ones((2, 4)), np.ones((2, 4)), np.array([-1, -1]))
