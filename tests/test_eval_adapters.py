"""`run_eval` with every kind of adapter head: prompt (text features), conditional (CoCoOp: per-image
cosines) and probe (head logits). Scores through a head equal the score computed by hand from the
adapter's own outputs; scores a head cannot support are refused before any work; held-out
classes use the adapter on the new names where it transfers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlmood.data.example import write_example
from vlmood.eval.heads import ConditionalHead, TextHead, score_with_head
from vlmood.eval.runner import EvalOptions, LabelledSet, ScoreSpec, run_eval
from vlmood.eval.sets import sets_from_benchmark
from vlmood.features.extract import class_text_features, extract_features
from vlmood.methods import fit_method, load_adapter
from vlmood.methods.probe import probe_scores
from vlmood.models import load_model
from vlmood.scores import ScoreContext, create_score
from vlmood.scores.neglabel import NegLabelScore
from vlmood.train.engine import TrainConfig


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-test")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("ex")
    yaml = write_example(root / "data", per_class=6, size=32)
    rs = sets_from_benchmark(str(yaml), None)
    es = rs.eval_sets
    other = ["nil", "uno", "dos", "tres", "cuatro"]  # "new classes": the same images, other names
    es = dataclasses.replace(
        es,
        domain_shift=[LabelledSet("train-as-shift", es.train, list(es.classnames))],
        held_out=[LabelledSet("renamed", es.train, other)],
    )
    return es, rs.templates, root / "cache"


def _cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=0.05, optimizer="adam", schedule="constant", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def adapters(model, bench, tmp_path_factory):
    es, _, cache = bench
    d = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, params in (
        ("coop", {"n_ctx": 2}),
        ("cocoop", {"n_ctx": 2}),
        ("linear-probe", {}),
        ("plp", {}),
    ):
        cfg = _cfg(batch_size=8) if name in ("linear-probe", "plp") else _cfg()
        out[name] = fit_method(
            name,
            model,
            es.train,
            d / name,
            cfg=cfg,
            params=params,
            shots=2 if name != "plp" else None,
            seed=0,
            cache_root=cache,
            progress=False,
        )
    return out


def _opts(templates, cache, adapter=None):
    return EvalOptions(
        templates=templates, cache_dir=str(cache), progress=False, adapter=adapter, num_workers=0
    )


def _fs(model, source, cache, kinds=("image",)):
    return extract_features(model, source, list(kinds), cache_root=cache, progress=False, num_workers=0)


def test_conditional_head_scores_equal_hand_computation(model, bench, adapters, tmp_path):
    es, templates, cache = bench
    ad = load_adapter(adapters["cocoop"], model)
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "nouns.txt").write_text("\n".join(f"thing{i}" for i in range(200)))
    (voc / "adjectives.txt").write_text("\n".join(f"odd{i}" for i in range(40)))
    neg = ScoreSpec("neglabel", {"ngroup": 2, "vocabulary": str(voc)}, display="neglabel")
    specs = [ScoreSpec("mcm"), ScoreSpec("msp"), ScoreSpec("energy"), ScoreSpec("knn"), neg]
    res = run_eval(model, es, specs, tmp_path / "r", _opts(templates, cache, ad))
    assert res["head"]["kind"] == "conditional"
    id_img = _fs(model, es.id, cache).get("image")
    sims = ad.similarities(id_img)
    raw = np.load(tmp_path / "r" / res["scores"]["mcm"]["raw_scores"])
    e = np.exp(sims - sims.max(1, keepdims=True))
    np.testing.assert_allclose(raw["id"], 1.0 / e.sum(1), rtol=1e-5)
    z = sims * model.logit_scale
    e = np.exp(z - z.max(1, keepdims=True))
    msp = np.load(tmp_path / "r" / res["scores"]["msp"]["raw_scores"])["id"]
    np.testing.assert_allclose(msp, 1.0 / e.sum(1), rtol=1e-4)
    labels = _fs(model, es.id, cache).valid_labels()
    assert res["id_accuracy"] == pytest.approx(float((sims.argmax(1) == labels).mean()))
    # NegLabel: the per-image cosines are its positive side, the mined negatives score the image
    sc = NegLabelScore(ngroup=2, labels_file=res["scores"]["neglabel"]["artifacts"]["neglabel_labels_file"])
    sc.fit(
        ScoreContext(
            text_features=class_text_features(model, es.classnames, templates, cache),
            classnames=list(es.classnames),
            encode_text=lambda t: model.encode_text(t).numpy(),
        )
    )
    raw_neg = np.load(tmp_path / "r" / res["scores"]["neglabel"]["raw_scores"])["id"]
    np.testing.assert_allclose(raw_neg, sc.score_with_positive(id_img, sims), rtol=1e-5)
    # held-out classes: the meta-net and shared context applied to the new names
    assert res["held_out"]["renamed"]["classifier"] == "adapter on new class names"
    assert res["domain_shift"]["train-as-shift"]["classifier"] == "adapter"
    # KNN does not read the classifier: equal to a zero-shot run's
    zs = run_eval(model, es, [ScoreSpec("knn")], tmp_path / "zs", _opts(templates, cache))
    assert zs["scores"]["knn"]["per_set"] == res["scores"]["knn"]["per_set"]


def test_probe_head_scores_are_plps_scores(model, bench, adapters, tmp_path):
    es, templates, cache = bench
    ad = load_adapter(adapters["plp"], model)
    specs = [ScoreSpec("msp"), ScoreSpec("mcm"), ScoreSpec("energy"), ScoreSpec("l1"), ScoreSpec("maxlogit")]
    res = run_eval(model, es, specs, tmp_path / "r", _opts(templates, cache, ad))
    assert res["head"] == {"kind": "probe", "feature_kind": "preproj", "logit_scale": 1.0}
    assert "preproj" in res["options"]["feature_kinds"]
    pre = _fs(model, es.id, cache, ("image", "preproj")).get("preproj")
    want = probe_scores(ad.logits(pre))
    got = {k: np.load(tmp_path / "r" / res["scores"][k]["raw_scores"])["id"] for k in ("msp", "energy", "l1")}
    for k in ("msp", "energy", "l1"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    # at the probe's scale MSP and MCM at T=1 are the same softmax
    np.testing.assert_allclose(np.load(tmp_path / "r" / res["scores"]["mcm"]["raw_scores"])["id"], got["msp"])
    assert res["held_out"]["renamed"]["accuracy"] is None
    assert res["held_out"]["renamed"]["classifier"].startswith("none")
    assert res["domain_shift"]["train-as-shift"]["accuracy"] is not None


@pytest.mark.parametrize(
    "method,score,match",
    [
        ("plp", "neglabel", "a probe gives logits"),
        ("plp", "glmcm", "image-independent class text features"),
        ("cocoop", "glmcm", "image-independent class text features"),
    ],
)
def test_unsupported_scores_are_refused_before_work(model, bench, adapters, tmp_path, method, score, match):
    es, templates, cache = bench
    ad = load_adapter(adapters[method], model)
    with pytest.raises(ValueError, match=match):
        run_eval(model, es, [ScoreSpec(score)], tmp_path / "r", _opts(templates, cache, ad))
    assert not (tmp_path / "r" / "results.json").exists()


def test_adapter_for_other_classes_is_refused(model, bench, adapters, tmp_path):
    es, templates, cache = bench
    ad = load_adapter(adapters["coop"], model)
    other = dataclasses.replace(es, classnames=[c + "s" for c in es.classnames])
    with pytest.raises(ValueError, match="trained for 5 classes other than"):
        run_eval(model, other, [ScoreSpec("mcm")], tmp_path / "r", _opts(templates, cache, ad))


def test_prompt_adapter_transfers_to_new_class_names(model, bench, adapters, tmp_path):
    es, templates, cache = bench
    ad = load_adapter(adapters["coop"], model)
    res = run_eval(model, es, [ScoreSpec("mcm")], tmp_path / "r", _opts(templates, cache, ad))
    assert res["head"]["kind"] == "text"
    rec = res["held_out"]["renamed"]
    assert rec["classifier"] == "adapter on new class names"
    new = ad.for_classes(["nil", "uno", "dos", "tres", "cuatro"])
    fs = _fs(model, es.train, cache)
    want = float(((fs.get("image") @ new.text_features().T).argmax(1) == fs.valid_labels()).mean())
    assert rec["accuracy"] == pytest.approx(want)
    # same context, other names: the prompt for a trained name is unchanged
    same = ad.for_classes(es.classnames)
    np.testing.assert_allclose(same.text_features(), ad.text_features(), atol=1e-6)


def test_neglabel_with_given_positive_cosines_equals_plain(model, bench, tmp_path):
    """NegLabel's per-image positive path with positive = image @ text.T is the plain score."""
    es, templates, cache = bench
    text = class_text_features(model, es.classnames, templates, cache)
    voc = {"noun": [f"thing{i}" for i in range(300)], "adj": [f"odd{i}" for i in range(60)]}
    sc = NegLabelScore(ngroup=2, vocabulary=voc)
    sc.fit(
        ScoreContext(
            text_features=text,
            classnames=list(es.classnames),
            encode_text=lambda t: model.encode_text(t).numpy(),
        )
    )
    img = _fs(model, es.id, cache).get("image")
    plain = sc.score(img)
    pos = img @ sc.text_features.T
    np.testing.assert_allclose(sc.score_with_positive(img, pos), plain, rtol=2e-5)  # float32 rounding
    # through a conditional head whose matrix is the same cosines
    head = ConditionalHead(adapter=None, logit_scale=model.logit_scale)
    np.testing.assert_allclose(score_with_head(sc, {"image": img}, head, pos), plain, rtol=2e-5)
    with pytest.raises(ValueError, match="positive cosines must be"):
        sc.score_with_positive(img, pos[:, :2])
    # a text head is the plain path
    m = create_score("mcm").fit(ScoreContext(text_features=text))
    np.testing.assert_allclose(
        score_with_head(m, {"image": img}, TextHead(text, model.logit_scale), None), m.score(img)
    )
