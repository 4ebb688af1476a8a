"""Class heads as first-class objects: every registered score through every head kind.

A score declares what it reads, a head what it provides; a score runs through a head exactly when
the head provides everything it reads, and is refused otherwise with a message naming what is
missing. Heads are built on synthetic arrays (D=32, K=5): a zero-shot text head, a prompt
adapter's head, a conditional (CoCoOp-like, per-image class features) head and a real
:class:`~vlmood.methods.probe.ProbeAdapter`'s head on a second feature kind. ID images lie near
their class text features, OOD images are random, so every supported score must rank ID above
OOD on average."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from vlmood.eval.heads import (
    DATA_INPUTS,
    HEAD_TYPES,
    ClassHead,
    ConditionalHead,
    ProbeHead,
    TextHead,
    head_kind,
    head_type,
    score_with_head,
    unsupported,
)
from vlmood.methods.base import Adapter
from vlmood.methods.cocoop import CoCoOpAdapter
from vlmood.methods.coop import PromptAdapter
from vlmood.methods.probe import ProbeAdapter
from vlmood.methods.probe import ProbeHead as ProbeModule
from vlmood.methods.ueo import UEOAdapter
from vlmood.scores import SCORES, Score, ScoreContext, create_score
from vlmood.scores.base import INPUTS

D, K, N, P = 32, 5, 40, 4
CLASSNAMES = [f"cls{i}" for i in range(K)]
HEAD_KINDS = ["zero-shot", "prompt", "conditional", "probe"]
LOGIT_SCALE = 100.0
#: parameters a score needs on tiny synthetic data (NegLabel: a small vocabulary, 2 groups)
PARAMS = {
    "neglabel": {
        "vocabulary": {"noun": [f"thing{i}" for i in range(300)], "adj": [f"odd{i}" for i in range(60)]},
        "ngroup": 2,
    }
}
BUILTIN = {"energy", "entropy", "glmcm", "knn", "l1", "lmcm", "mahalanobis", "maxlogit", "mcm", "msp"}
BUILTIN |= {"neglabel", "variance"}
#: the support matrix of the built-in scores: (score, head kind) refused; all others run
REFUSED = {
    ("glmcm", "conditional"),
    ("glmcm", "probe"),
    ("lmcm", "conditional"),
    ("lmcm", "probe"),
    ("neglabel", "probe"),
}


def _norm(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    text = _norm(rng.standard_normal((K, D)))
    y = np.arange(N) % K
    ood = _norm(rng.standard_normal((N, D)))
    ids = _norm(text[y] + 0.15 * rng.standard_normal((N, D)))
    ytr = np.arange(3 * N) % K
    train = _norm(text[ytr] + 0.15 * rng.standard_normal((3 * N, D)))
    patch_id = _norm(text[y][:, None, :] + 0.3 * rng.standard_normal((N, P, D)))
    patch_ood = _norm(rng.standard_normal((N, P, D)))
    return {
        "text": text,
        "id": {"image": ids, "patch": patch_id, "preproj": _preproj(ids)},
        "ood": {"image": ood, "patch": patch_ood, "preproj": _preproj(ood)},
        "train": train,
        "train_labels": ytr,
    }


def _preproj(image: np.ndarray) -> np.ndarray:
    """A second feature kind (what a probe reads): [image, image] / sqrt(2), dim 2D."""
    return np.concatenate([image, image], axis=1) / np.float32(np.sqrt(2.0))


def _encode_text(texts: list[str]) -> np.ndarray:
    """A deterministic text encoder: prompts naming an ID class land near its text features
    (NegLabel re-encodes the class names in zero-shot), anything else is a random direction."""
    text = _norm(np.random.default_rng(0).standard_normal((K, D)))  # same draw as data()'s
    out = []
    for t in texts:
        rng = np.random.default_rng(zlib.crc32(t.encode()))
        c = next((i for i, n in enumerate(CLASSNAMES) if t.endswith(" " + n)), None)
        v = rng.standard_normal(D)
        out.append(v if c is None else text[c] * 8 + 0.1 * v)
    return _norm(np.asarray(out))


class _FakePrompt(Adapter):
    """A prompt adapter: learned class text features near the zero-shot ones (the base
    :meth:`Adapter.class_head` gives its text head)."""

    kind = "prompt"

    def __init__(self, text: np.ndarray) -> None:
        super().__init__(None, {"method": "fake-prompt", "classnames": CLASSNAMES})
        rng = np.random.default_rng(1)
        self._text = _norm(text + 0.05 * rng.standard_normal(text.shape))

    def text_features(self) -> np.ndarray:
        return self._text


class _FakeConditional:
    """CoCoOp-like: class features shifted by each image, t_c(x) = norm(t_c + 0.1 x)."""

    def __init__(self, text: np.ndarray) -> None:
        self.text = text

    def similarities(self, image: np.ndarray) -> np.ndarray:
        x = np.asarray(image, dtype=np.float32)
        t = _norm(self.text[None, :, :] + 0.1 * x[:, None, :])  # [N, K, D]
        return np.einsum("nd,nkd->nk", x, t).astype(np.float32)


def _probe(text: np.ndarray) -> ProbeAdapter:
    """A real probe adapter on ``preproj`` features whose logits are 10 x the cosines."""
    mod = ProbeModule(2 * D, K)
    with torch.no_grad():
        mod.linear.weight.copy_(torch.from_numpy(10 * _preproj(text)))  # W_c . [x, x]/2**.5 = 10 x.t_c
        mod.linear.bias.zero_()
    info = {"method": "linear-probe", "classnames": CLASSNAMES, "params": {"feature": "preproj"}}
    return ProbeAdapter(None, info, mod.state_dict())


def make_head(kind: str, data) -> ClassHead:
    text = data["text"]
    if kind == "zero-shot":
        return TextHead(text, LOGIT_SCALE)
    if kind == "prompt":
        return _FakePrompt(text).class_head(LOGIT_SCALE)
    if kind == "conditional":
        return ConditionalHead(_FakeConditional(text), LOGIT_SCALE)
    if kind == "probe":
        return _probe(text).class_head(LOGIT_SCALE)
    raise AssertionError(kind)


def _context(head: ClassHead, data) -> ScoreContext:
    """What the runner gives a score: the head's text features where it has them (else the base
    zero-shot ones), its logit scale, ID train features, a text encoder."""
    has_text = head.text_features is not None
    return ScoreContext(
        text_features=head.text_features if has_text else data["text"],
        classnames=CLASSNAMES,
        encode_text=_encode_text,
        train_features=data["train"],
        train_labels=data["train_labels"],
        logit_scale=head.logit_scale,
        extra={
            "id_features_given": has_text and getattr(head, "adapter", None) is not None,
            "progress": False,
        },
    )


def _scores(sc: Score, head: ClassHead, data) -> tuple[np.ndarray, np.ndarray]:
    return score_with_head(sc, data["id"], head), score_with_head(sc, data["ood"], head)


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("name", SCORES.list())
def test_every_score_through_every_head(name, kind, data):
    head = make_head(kind, data)
    sc = create_score(name, **PARAMS.get(name, {}))
    assert sc.reads and sc.reads <= INPUTS.keys()
    missing = sorted(sc.reads - head.provides)
    why = unsupported(sc, head)
    # the same answer from the head, its class and its kind name (checks before a head exists)
    assert unsupported(sc, type(head)) == unsupported(sc, head.kind) == why
    assert (why is None) == (not missing)
    if name in BUILTIN:
        assert (why is not None) == ((name, head.kind) in REFUSED)
    if missing:
        for m in missing:
            assert m in why
        with pytest.raises(ValueError, match=missing[0]):
            score_with_head(sc, data["id"], head)
        return
    sc.fit(_context(head, data))
    s_id, s_ood = _scores(sc, head, data)
    for s in (s_id, s_ood):
        assert s.shape == (N,) and s.dtype == np.float64
        assert np.all(np.isfinite(s))
    assert s_id.mean() > s_ood.mean(), f"{name} through a {kind} head is not ID-high"


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_a_new_score_reading_only_cosines_works_with_every_head(kind, data, monkeypatch):
    """Defined here, registered for the test only: nothing in heads.py knows it."""

    class TopTwoMargin(Score):
        """Margin between the two largest class similarities."""

        reads = frozenset({"cosines"})

        def _score_chunk(self, feats):
            top = np.sort(feats["cosines"], axis=1)[:, -2:]
            return (top[:, 1] - top[:, 0]).astype(np.float64)

    monkeypatch.setitem(SCORES._entries, "test-margin", TopTwoMargin)
    assert TopTwoMargin.requires == ("image",) and not TopTwoMargin.needs_train
    head = make_head(kind, data)
    sc = create_score("test-margin")
    assert unsupported(sc, head) is None
    sc.fit(_context(head, data))
    s_id, s_ood = _scores(sc, head, data)
    assert s_id.shape == s_ood.shape == (N,) and np.all(np.isfinite(s_id)) and np.all(np.isfinite(s_ood))
    assert s_id.mean() > s_ood.mean()
    # it read the head's own similarities (a probe's logits are 10 x the cosines)
    cos = np.asarray(head.inputs(data["id"])["cosines"])
    top = np.sort(cos, axis=1)[:, -2:]
    np.testing.assert_allclose(s_id, top[:, 1] - top[:, 0], rtol=1e-6)


def test_a_score_reading_what_no_head_has_is_refused_everywhere_but_runs_on_text_heads(data):
    """A score written against the base class (default reads: image + text features) runs
    through text heads and is refused, by name of the missing input, by the others."""

    class Nearest(Score):
        def _score_chunk(self, feats):
            return (feats["image"] @ self.text_features.T).max(axis=1).astype(np.float64)

    assert Nearest.reads == {"image", "text_features"}
    for kind in HEAD_KINDS:
        head = make_head(kind, data)
        why = unsupported(Nearest(), head)
        if head.text_features is None:
            assert why is not None and "text_features" in why
        else:
            assert why is None
            sc = Nearest().fit(_context(head, data))
            s_id, s_ood = _scores(sc, head, data)
            assert s_id.mean() > s_ood.mean()


def test_reads_vocabulary_is_checked_and_derives_requires():
    with pytest.raises(TypeError, match="unknown inputs"):

        class Bad(Score):  # noqa: F841
            reads = frozenset({"cosine"})

            def _score_chunk(self, feats):  # pragma: no cover
                return feats["cosine"]

    class Legacy(Score):  # declared the old way: requires / needs_train
        requires = ("image", "patch")
        needs_train = True

        def _score_chunk(self, feats):  # pragma: no cover
            return feats["image"][:, 0]

    assert Legacy.reads == {"image", "text_features", "patch", "train"}
    for name in SCORES.list():
        cls = SCORES.get(name)
        assert ("patch" in cls.requires) == ("patch" in cls.reads), name
        assert cls.needs_train == ("train" in cls.reads), name


def test_head_declarations(data):
    """Each head provides the data inputs plus its own; what it supplies is what it declares;
    an input it lacks has a reason."""
    for kind in HEAD_KINDS:
        head = make_head(kind, data)
        assert DATA_INPUTS <= head.provides <= INPUTS.keys()
        supplied = set(head.inputs(data["id"])) - {"image", "patch"}
        assert supplied == head.provides - DATA_INPUTS, kind
        assert set(head.lacks) == INPUTS.keys() - head.provides, kind
        assert HEAD_TYPES[head.kind] is type(head)
    assert make_head("probe", data).logit_scale == 1.0
    assert make_head("conditional", data).logit_scale == LOGIT_SCALE


def test_every_adapter_class_yields_its_head():
    assert head_type(None) is TextHead and head_kind(None) == "text"
    for cls, want in (
        (PromptAdapter, TextHead),
        (UEOAdapter, TextHead),
        (CoCoOpAdapter, ConditionalHead),
        (ProbeAdapter, ProbeHead),
    ):
        assert cls.head_type() is want, cls


def test_text_head_scores_equal_the_plain_scores_exactly(data):
    """Through a text head a score computes exactly what score(image, patch) does (same row
    chunks, same float32 products): heads change no zero-shot number."""
    head = make_head("zero-shot", data)
    for name in SCORES.list():
        sc = create_score(name, **PARAMS.get(name, {})).fit(_context(head, data))
        feats = data["ood"]
        plain = sc.score(feats["image"], feats["patch"] if "patch" in sc.requires else None)
        np.testing.assert_array_equal(score_with_head(sc, feats, head), plain, err_msg=name)


def test_conditional_head_with_the_zero_shot_cosines_is_the_zero_shot_score(data):
    """A conditional head whose per-image cosines are the zero-shot ones scores like zero-shot."""

    class Static:
        def similarities(self, image):
            return np.asarray(image, dtype=np.float32) @ data["text"].T

    cond, text = ConditionalHead(Static(), LOGIT_SCALE), make_head("zero-shot", data)
    for name in SCORES.list():
        sc = create_score(name, **PARAMS.get(name, {}))
        if unsupported(sc, cond):
            continue
        ctx = _context(text, data)
        ctx.extra["id_features_given"] = True  # NegLabel: the same ID side as the cosines
        sc.fit(ctx)
        np.testing.assert_allclose(
            score_with_head(sc, data["id"], cond), score_with_head(sc, data["id"], text), rtol=2e-5
        )
