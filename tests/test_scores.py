"""Post-hoc OOD scores: hand-computed values, sign on a separable case, chunking, memmaps,
NegLabel mining/grouping/label files, kNN and Mahalanobis vs brute force."""

from __future__ import annotations

import importlib
import json
import pkgutil
import warnings
import zlib

import numpy as np
import pytest

import vlmood.scores as scores_pkg
from vlmood.metrics import auroc
from vlmood.scores import ScoreContext, create_score, list_scores
from vlmood.scores.base import SCORES
from vlmood.scores.neglabel import NegLabelScore, linear_quantile_rows, load_labels, load_wordnet_vocabulary

D = 32


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fake_encode_text(texts, dim=D):
    """Deterministic per-string random unit vectors (a stand-in for a CLIP text encoder)."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(t.lower().encode())).normal(size=dim)
    return unit(out).astype(np.float32)


CLASSNAMES = ["cat", "dog", "car", "ship", "frog"]
VOCAB = {
    "noun": [f"noun{i}" for i in range(240)] + ["Cat", "noun3"],  # an ID name (other case) and a duplicate
    "adj": [f"adj{i}" for i in range(60)],
}


def make_setup(seed=0, n=60, n_patch=4):
    rng = np.random.default_rng(seed)
    text = fake_encode_text([f"the nice {c}" for c in CLASSNAMES])
    k = len(CLASSNAMES)
    y_id = rng.integers(0, k, n)
    id_img = unit(text[y_id] + 0.15 * rng.normal(size=(n, D))).astype(np.float32)
    ood_img = unit(rng.normal(size=(n, D))).astype(np.float32)
    id_patch = unit(text[y_id][:, None, :] + 0.3 * rng.normal(size=(n, n_patch, D))).astype(np.float32)
    ood_patch = unit(rng.normal(size=(n, n_patch, D))).astype(np.float32)
    y_tr = np.repeat(np.arange(k), 40)
    train = unit(text[y_tr] + 0.15 * rng.normal(size=(y_tr.size, D))).astype(np.float32)
    ctx = ScoreContext(
        text_features=text,
        classnames=CLASSNAMES,
        encode_text=fake_encode_text,
        train_features=train,
        train_labels=y_tr,
        logit_scale=100.0,
    )
    return ctx, (id_img, id_patch), (ood_img, ood_patch)


SCORE_KWARGS = {"neglabel": dict(vocabulary=VOCAB, neg_fraction=0.5, ngroup=4)}


def build(name, ctx, **kw):
    return create_score(name, **{**SCORE_KWARGS.get(name, {}), **kw}).fit(ctx)


def run(score, img, patch):
    return score.score(img, patch if "patch" in score.requires else None)


# ------------------------------------------------------------------ registry coverage


#: scores meant for a probe's logits (on raw cosines of a 5-class toy they separate weakly)
LOGIT_SCORES = {"l1"}


@pytest.mark.parametrize("name", [n for n in list_scores() if n not in LOGIT_SCORES])
def test_sign_on_separable_case(name):
    ctx, (id_img, id_patch), (ood_img, ood_patch) = make_setup()
    s = build(name, ctx)
    a, b = run(s, id_img, id_patch), run(s, ood_img, ood_patch)
    assert a.dtype == np.float64 and a.shape == (id_img.shape[0],)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert auroc(a, b) > 0.9, f"{name}: ID must score higher than OOD"


HAND_TESTED = {
    "mcm",
    "msp",
    "maxlogit",
    "energy",
    "entropy",
    "variance",
    "glmcm",
    "lmcm",
    "neglabel",
    "knn",
    "mahalanobis",
    "l1",
}


def test_every_registered_score_has_a_hand_test():
    assert set(list_scores()) <= HAND_TESTED, set(list_scores()) - HAND_TESTED
    assert len(list_scores()) >= 11


def test_every_score_module_registers_something():
    registered_modules = {obj.__module__ for _, obj in SCORES.items()}
    for mod in pkgutil.iter_modules(scores_pkg.__path__):
        if mod.name.startswith("_") or mod.name == "base":
            continue
        full = f"vlmood.scores.{mod.name}"
        importlib.import_module(full)
        assert full in registered_modules, f"{full} registers no score"


# ------------------------------------------------------------------ hand-computed values

E3 = np.eye(3, dtype=np.float32)


def test_l1_hand_value_and_sign_on_logits():
    s = create_score("l1").fit(ScoreContext(text_features=np.eye(3, dtype=np.float32)))
    # rows [1, 0, 0] and [0.6, 0.8, 0]: sum of (s - min) = 1 and 1.4
    np.testing.assert_allclose(s.score(np.array([[1, 0, 0], [0.6, 0.8, 0]], np.float32)), [1.0, 1.4])
    # on a probe's logits (one large class logit for ID, flat for OOD) ID scores higher
    rng = np.random.default_rng(0)
    id_logits = rng.normal(size=(50, 10)) + 8.0 * np.eye(10)[rng.integers(0, 10, 50)]
    ood_logits = rng.normal(size=(50, 10))
    assert auroc(s.from_cosines(id_logits), s.from_cosines(ood_logits)) > 0.85


def ctx3(**kw):
    return ScoreContext(text_features=E3, **kw)


IMG = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)
COS = IMG.astype(np.float64)  # cosines with the identity basis


def softmax_ref(z):
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("t", [1.0, 0.5, 0.05])
def test_softmax_family_hand_values(t):
    p = softmax_ref(COS / t)
    np.testing.assert_allclose(create_score("mcm", temperature=t).fit(ctx3()).score(IMG), p.max(1), rtol=1e-6)
    np.testing.assert_allclose(
        create_score("energy", temperature=t).fit(ctx3()).score(IMG),
        t * np.log(np.exp(COS / t).sum(1)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        create_score("entropy", temperature=t).fit(ctx3()).score(IMG),
        (p * np.log(p)).sum(1),
        rtol=1e-6,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        create_score("variance", temperature=t).fit(ctx3()).score(IMG), p.var(1), rtol=1e-5
    )
    np.testing.assert_allclose(create_score("msp", temperature=t).fit(ctx3()).score(IMG), p.max(1), rtol=1e-6)


def test_first_row_exact_values():
    e = np.e
    assert create_score("mcm").fit(ctx3()).score(IMG)[0] == pytest.approx(e / (e + 2))
    assert create_score("maxlogit").fit(ctx3()).score(IMG).tolist() == pytest.approx([1.0, 0.8])
    assert create_score("energy").fit(ctx3()).score(IMG)[0] == pytest.approx(np.log(e + 2))


def test_msp_uses_logit_scale():
    s = create_score("msp").fit(ctx3(logit_scale=2.0))
    assert s.score(IMG)[0] == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert s.params()["effective_temperature"] == 0.5
    s100 = create_score("msp").fit(ctx3())
    assert s100.score(IMG)[1] == pytest.approx(softmax_ref(COS * 100)[1].max())


def test_extreme_temperatures_are_stable():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("mcm", "energy", "entropy", "variance", "msp"):
            v = create_score(name, temperature=1e-5).fit(ctx3()).score(IMG)
            assert np.all(np.isfinite(v)), name
        assert create_score("mcm", temperature=1e-5).fit(ctx3()).score(IMG)[0] == 1.0


def glmcm_ref(img, patch, text, t, lam):
    glob = softmax_ref(img.astype(np.float64) @ text.T.astype(np.float64) / t).max(1)
    loc = np.empty(len(img))
    for i in range(len(img)):
        best = -1.0
        for p in range(patch.shape[1]):
            best = max(best, softmax_ref((patch[i, p].astype(np.float64) @ text.T)[None] / t).max())
        loc[i] = best
    return glob + lam * loc, loc


def test_glmcm_hand_case():
    patch = np.array(
        [
            [[0.0, 1.0, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]],
            [[0.0, 0.0, 1.0], [0.5, 0.5, np.sqrt(0.5)], [0.0, 0.8, 0.6]],
        ],
        dtype=np.float32,
    )
    # row 0: global cos [1,0,0] -> e/(e+2); best patch is a basis vector -> e/(e+2) too
    g = create_score("glmcm").fit(ctx3())
    assert g.score(IMG, patch)[0] == pytest.approx(2 * np.e / (np.e + 2))
    for t, lam in ((1.0, 1.0), (0.1, 0.5)):
        ref, loc = glmcm_ref(IMG, patch, E3, t, lam)
        np.testing.assert_allclose(
            create_score("glmcm", temperature=t, lambda_local=lam).fit(ctx3()).score(IMG, patch),
            ref,
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            create_score("lmcm", temperature=t).fit(ctx3()).score(IMG, patch), loc, rtol=1e-6
        )
    with pytest.raises(ValueError, match="patch"):
        g.score(IMG)


def test_unfitted_and_bad_params():
    with pytest.raises(RuntimeError, match="fit"):
        create_score("mcm").score(IMG)
    with pytest.raises(ValueError):
        create_score("mcm", temperature=0.0)
    with pytest.raises(ValueError):
        create_score("knn", k=0)
    with pytest.raises(ValueError, match="dim"):
        create_score("mcm").fit(ctx3()).score(np.ones((2, 4), np.float32))


# ------------------------------------------------------------------ chunking, memmaps, inputs untouched


@pytest.mark.parametrize("name", list_scores())
def test_chunked_equals_unchunked_and_memmap(name, tmp_path):
    ctx, (img, patch), _ = make_setup(seed=1, n=53)
    full = build(name, ctx)
    ref = run(full, img, patch)
    small = build(name, ctx)
    small.chunk_size = 7
    if hasattr(small, "bank_chunk_size"):
        small.bank_chunk_size = 11
    np.testing.assert_allclose(run(small, img, patch), ref, rtol=1e-6, atol=1e-9)
    # memory-mapped float32 inputs, read-only
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "patch.npy", patch)
    mm_img = np.load(tmp_path / "img.npy", mmap_mode="r")
    mm_patch = np.load(tmp_path / "patch.npy", mmap_mode="r")
    np.testing.assert_allclose(run(full, mm_img, mm_patch), ref, rtol=1e-6, atol=1e-9)
    # float64 inputs are not modified
    img64, patch64 = img.astype(np.float64) * 2.0, patch.astype(np.float64)
    c1, c2 = img64.copy(), patch64.copy()
    run(full, img64, patch64)
    np.testing.assert_array_equal(img64, c1)
    np.testing.assert_array_equal(patch64, c2)


# ------------------------------------------------------------------ NegLabel


def mining_reference(vocab, classnames, id_feats, frac, q=0.95):
    banned = {c.lower() for c in classnames}
    out = []
    for kind, tpl in (("noun", "the nice {}"), ("adj", "This is a {} photo")):
        words = [w for w in dict.fromkeys(vocab[kind]) if w.lower() not in banned]
        feats = fake_encode_text([tpl.format(w) for w in words]).astype(np.float64)
        d = np.array([np.quantile(f @ id_feats.T.astype(np.float64), q) for f in feats])
        order = sorted(range(len(words)), key=lambda i: (d[i], i))[: int(np.floor(frac * len(words)))]
        out += [(words[i], kind, tpl.format(words[i])) for i in order]
    return out


def test_neglabel_mining_matches_reference():
    ctx, _, _ = make_setup()
    s = NegLabelScore(vocabulary=VOCAB, neg_fraction=0.3, ngroup=1).fit(ctx)
    ref = mining_reference(VOCAB, CLASSNAMES, s.text_features, 0.3)
    assert list(zip(s.labels, s.kinds, s.prompts)) == ref
    assert "Cat" not in s.labels and len(set(s.labels)) == len(s.labels)
    assert s.kinds.count("noun") == int(0.3 * 241) and s.kinds.count("adj") == int(0.3 * 60)
    # the ID side was re-encoded with "the nice {}"
    np.testing.assert_allclose(
        s.text_features, fake_encode_text([f"the nice {c}" for c in CLASSNAMES]), atol=1e-6
    )


def test_neglabel_id_side_falls_back_to_text_features():
    ctx, _, _ = make_setup()
    other = unit(np.random.default_rng(5).normal(size=(5, D))).astype(np.float32)
    ctx.text_features = other
    s = NegLabelScore(vocabulary=VOCAB, ngroup=1, id_template=None).fit(ctx)
    np.testing.assert_allclose(s.text_features, other, atol=1e-6)
    assert s.artifacts()["neglabel_id_encoding"] == "ctx.text_features"


def neglabel_ref(img, pos, neg, t, ngroup, seed):
    img = img.astype(np.float64)
    m = len(neg)
    if ngroup > 1:
        order = np.random.default_rng(seed).permutation(m - m % ngroup)
        groups = np.split(order, ngroup)
    else:
        groups = [np.arange(m)]
    out = np.zeros(len(img))
    for gidx in groups:
        z = np.concatenate([img @ pos.T, img @ neg[gidx].T], axis=1) / t
        e = np.exp(z)  # |z| <= 100 for unit vectors at t=0.01: no overflow in float64
        out += e[:, : len(pos)].sum(1) / e.sum(1)
    return out / len(groups)


@pytest.mark.parametrize("ngroup,t", [(1, 0.01), (4, 0.01), (7, 0.05), (3, 1.0)])
def test_neglabel_score_matches_reference(ngroup, t):
    ctx, (id_img, _), (ood_img, _) = make_setup()
    s = NegLabelScore(vocabulary=VOCAB, neg_fraction=0.4, ngroup=ngroup, temperature=t, group_seed=3).fit(ctx)
    neg = fake_encode_text(s.prompts).astype(np.float64)
    pos = s.text_features.astype(np.float64)
    img = np.concatenate([id_img, ood_img])
    np.testing.assert_allclose(s.score(img), neglabel_ref(img, pos, neg, t, ngroup, 3), rtol=2e-4, atol=1e-7)
    assert s.artifacts()["neglabel_num_used"] == len(s.labels) - len(s.labels) % ngroup


def test_neglabel_tiny_temperature_is_stable():
    ctx, (id_img, _), _ = make_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = NegLabelScore(vocabulary=VOCAB, ngroup=2, temperature=1e-5).fit(ctx).score(id_img)
    assert np.all((v >= 0) & (v <= 1))


def test_neglabel_max_negatives_and_errors():
    ctx, _, _ = make_setup()
    s = NegLabelScore(vocabulary=VOCAB, neg_fraction=0.5, ngroup=1, max_negatives=30).fit(ctx)
    assert len(s.labels) == 30
    assert s.kinds.count("adj") == 30 * 30 // 150  # proportional: 120 nouns, 30 adjs mined
    with pytest.raises(ValueError, match="fewer than ngroup"):
        NegLabelScore(vocabulary=VOCAB, neg_fraction=0.5, ngroup=100, max_negatives=30).fit(ctx)
    no_enc = ScoreContext(text_features=ctx.text_features, classnames=CLASSNAMES)
    with pytest.raises(ValueError, match="encode_text"):
        NegLabelScore(vocabulary=VOCAB).fit(no_enc)


def test_neglabel_labels_save_and_reload(tmp_path):
    ctx, (id_img, _), _ = make_setup()
    ctx.cache_dir = str(tmp_path / "cache")
    s = NegLabelScore(vocabulary=VOCAB, neg_fraction=0.3, ngroup=3).fit(ctx)
    art = s.artifacts()
    path = art["neglabel_labels_file"]
    assert path.startswith(ctx.cache_dir) and path.endswith(".json") and "neglabel_" in path
    assert art["neglabel_num_negatives"] == len(s.labels)
    data = json.loads(open(path).read())
    assert data["labels"] == s.labels and data["kinds"] == s.kinds and data["prompts"] == s.prompts
    assert data["params"]["temperature"] == 0.01 and data["num_id_classes"] == 5
    # explicit save + reload gives identical labels and scores without mining
    p2 = tmp_path / "labels.json"
    s.save_labels(p2)
    ctx2, _, _ = make_setup()
    r = NegLabelScore(labels_file=str(p2), ngroup=3, vocabulary={"noun": [], "adj": []}).fit(ctx2)
    assert r.labels == s.labels
    np.testing.assert_array_equal(r.score(id_img), s.score(id_img))
    # other ID classes are refused
    ctx3_ = ScoreContext(
        text_features=fake_encode_text(["a", "b"]), classnames=["a", "b"], encode_text=fake_encode_text
    )
    with pytest.raises(ValueError, match="other ID classes"):
        NegLabelScore(labels_file=str(p2)).fit(ctx3_)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a vlmood NegLabel"):
        load_labels(tmp_path / "bad.json")


@pytest.mark.parametrize("k", [1, 2, 5, 1000, 1001])
@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.95, 0.999, 1.0])
def test_linear_quantile_matches_numpy(k, q):
    x = np.random.default_rng(k).normal(size=(7, k))
    x[:, : k // 2] = np.round(x[:, : k // 2], 1)  # ties
    np.testing.assert_array_equal(linear_quantile_rows(x, q), np.quantile(x, q, axis=1))
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(
        linear_quantile_rows(x32, q), np.quantile(x32.astype(np.float64), q, axis=1)
    )


def test_packaged_wordnet_vocabulary():
    voc = load_wordnet_vocabulary()
    assert len(voc["noun"]) > 100_000 and len(voc["adj"]) > 20_000
    assert "dog" in voc["noun"] and "able" in voc["adj"]
    assert not any("_" in w for w in voc["noun"][:5000])
    assert not any(w.endswith(("(a)", "(p)", "(ip)")) for w in voc["adj"])
    assert len(set(voc["noun"])) == len(voc["noun"])


# ------------------------------------------------------------------ kNN and Mahalanobis vs brute force


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_brute_force(k, tmp_path):
    rng = np.random.default_rng(k)
    bank = rng.normal(size=(57, 8)).astype(np.float32) * 3.0  # not unit-norm
    q = rng.normal(size=(13, 8)).astype(np.float32)
    sims = unit(q) @ unit(bank).T
    ref = -np.sort(-sims, axis=1)[:, k - 1]
    np.save(tmp_path / "bank.npy", bank)
    mm = np.load(tmp_path / "bank.npy", mmap_mode="r")
    ctx = ScoreContext(text_features=E3, train_features=mm)
    s = create_score("knn", k=k, bank_chunk_size=10).fit(ctx)
    np.testing.assert_allclose(s.score(q), ref, rtol=1e-5, atol=1e-6)
    # a unit-norm memmap bank is used in place, not copied
    np.save(tmp_path / "ubank.npy", unit(bank).astype(np.float32))
    umm = np.load(tmp_path / "ubank.npy", mmap_mode="r")
    s2 = create_score("knn", k=k).fit(ScoreContext(text_features=E3, train_features=umm))
    assert s2.bank is umm
    np.testing.assert_allclose(s2.score(q), ref, rtol=1e-5, atol=1e-6)


def test_knn_needs_train():
    assert create_score("knn").needs_train and create_score("mahalanobis").needs_train
    with pytest.raises(ValueError, match="train"):
        create_score("knn").fit(ctx3())
    with pytest.raises(ValueError, match="train"):
        create_score("mahalanobis").fit(ctx3())


def maha_ref(x, y, q):
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    prec = np.linalg.inv(np.cov(centred.T))
    out = np.full(len(q), -np.inf)
    for mu in means:
        diff = q - mu
        out = np.maximum(out, -0.5 * np.einsum("nd,de,ne->n", diff, prec, diff))
    return out


def test_mahalanobis_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200) + 10  # arbitrary label values
    x = (rng.normal(size=(200, 6)) + (y[:, None] - 10) * 0.7).astype(np.float32)
    q = rng.normal(size=(17, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ctx = ScoreContext(
        text_features=E3, train_features=np.load(tmp_path / "x.npy", mmap_mode="r"), train_labels=y
    )
    s = create_score("mahalanobis", fit_chunk_size=33).fit(ctx)
    np.testing.assert_allclose(s.score(q), maha_ref(x.astype(np.float64), y, q.astype(np.float64)), rtol=1e-6)
    # normalize=True equals the brute force on normalised features
    sn = create_score("mahalanobis", normalize=True).fit(ctx)
    np.testing.assert_allclose(sn.score(q), maha_ref(unit(x), y, unit(q)), rtol=1e-5)


def test_mahalanobis_singular_covariance():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 4)
    x = rng.normal(size=(12, 20)).astype(np.float32)  # fewer samples than dims -> singular
    s = create_score("mahalanobis").fit(ScoreContext(text_features=E3, train_features=x, train_labels=y))
    v = s.score(rng.normal(size=(5, 20)).astype(np.float32))
    assert np.all(np.isfinite(v)) and np.all(v <= 0)
    # a training point scores higher than a far-away point
    far = (x[:1] + 50 * rng.normal(size=(1, 20))).astype(np.float32)
    assert s.score(x[:1])[0] > s.score(far)[0]
