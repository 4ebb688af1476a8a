"""ExtractOptions (the one extraction options object) and the score math written once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vlmood.eval.runner import EvalOptions
from vlmood.features.options import ExtractOptions
from vlmood.scores import ScoreContext, create_score
from vlmood.scores._math import argmax_classes, map_cosines
from vlmood.scores.softmax import energy, l1_norm, max_logit, max_softmax, neg_entropy, softmax_variance


def test_extract_options_of_and_replace():
    o = ExtractOptions.of({"cache_dir": "/c", "num_workers": 0}, batch_size=8, skip_corrupt=None)
    assert o == ExtractOptions(cache_root="/c", num_workers=0, batch_size=8)
    assert ExtractOptions.of(o) is o and o.replace(progress=None) is o
    assert o.kwargs()["cache_root"] == "/c" and set(o.record()) == {
        "batch_size",
        "skip_corrupt",
        "fingerprint",
    }
    with pytest.raises(TypeError):
        ExtractOptions.of({"bogus": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.batch_size = 2  # type: ignore[misc]


def test_eval_options_carry_one_extract_object():
    o = EvalOptions(templates=["a {}"], cache_dir="/c", num_workers=0, progress=False)
    assert o.extract == ExtractOptions(cache_root="/c", num_workers=0, progress=False)
    assert (o.cache_dir, o.num_workers, o.progress, o.batch_size) == ("/c", 0, False, 64)
    x = ExtractOptions(batch_size=4, fingerprint="content")
    o2 = EvalOptions(templates=["a {}"], extract=x, skip_corrupt=True)  # a keyword given over extract
    assert o2.extract == dataclasses.replace(x, skip_corrupt=True)
    assert dataclasses.replace(o2, save_scores=False).extract == o2.extract
    with pytest.raises(TypeError, match="bogus"):
        EvalOptions(templates=[], bogus=1)


def test_score_functions_are_the_scores():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, (50, 7)).astype(np.float32)
    ctx = ScoreContext(text_features=np.eye(7, dtype=np.float32), classnames=list("abcdefg"))
    fns = {
        "mcm": lambda c: max_softmax(c, 0.5),
        "maxlogit": max_logit,
        "energy": lambda c: energy(c, 0.5),
        "entropy": lambda c: neg_entropy(c, 0.5),
        "variance": lambda c: softmax_variance(c, 0.5),
        "l1": l1_norm,
    }
    for name, fn in fns.items():
        kw = {} if name in ("maxlogit", "l1") else {"temperature": 0.5}
        sc = create_score(name, **kw).fit(ctx)
        np.testing.assert_array_equal(sc.score_inputs({"image": cos, "cosines": cos}), fn(cos), err_msg=name)


def test_chunked_cosines_match_the_product():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(37, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    t = np.ascontiguousarray(text.T)
    np.testing.assert_allclose(map_cosines(image, t, rows=8), image @ t, rtol=1e-6)
    assert map_cosines(image[:0], t).shape == (0, 4)
    np.testing.assert_array_equal(argmax_classes(image, text, rows=5), np.argmax(image @ t, axis=1))
