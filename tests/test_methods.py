"""Adaptation methods: losses against hand-computed values, chunked text encoding equal to the plain
computation, a few steps lower the loss, only intended parameters change, adapter artifacts
reload to the same outputs, and bad input fails clearly. Tiny random model, tiny tensors."""

from __future__ import annotations

import importlib
import json
import math
import pkgutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlmood.methods as methods_pkg
from vlmood.data.base import DataError
from vlmood.methods import (
    AdapterError,
    AdapterMismatchError,
    TrainData,
    create_method,
    fit_method,
    list_methods,
    load_adapter,
)
from vlmood.methods.cocoop import CoCoOpModule, cocoop_logits
from vlmood.methods.coop import coop_loss
from vlmood.methods.locoop import locoop_entropy_term, locoop_loss
from vlmood.methods.probe import probe_scores, pseudo_labels
from vlmood.methods.prompt import PromptLearner, encode_prompts
from vlmood.methods.ueo import norm_affine_names, ueo_loss
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig

NAMES = ["dog", "cat", "car"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-test")


def _features(model, n_per_class=4, k=3, seed=0, patches=False):
    g = torch.Generator().manual_seed(seed)
    d = model.embed_dim
    centers = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    x = F.normalize(centers[labels] + 0.3 * torch.randn(len(labels), d, generator=g), dim=-1)
    feats = {"image": x.numpy()}
    if patches:
        p = F.normalize(torch.randn(len(labels), 4, d, generator=g), dim=-1)
        feats["patch"] = p.numpy().astype(np.float16)
    return feats, labels.numpy()


def _state(model):
    return {k: v.detach().clone() for k, v in model.torch_module.state_dict().items()}


def _changed(before, after, atol=0.0):
    return sorted(
        k for k in before if not torch.allclose(before[k].float(), after[k].float(), atol=atol, rtol=0)
    )


# ---------------------------------------------------------------------------------------------- registry
def test_every_method_module_registers_and_is_tested():
    expected = {"coop", "cocoop", "locoop", "linear-probe", "plp", "ueo"}
    expected |= {"ft", "lp-ft", "flyp", "cma", "wise-ft"}  # tested in test_finetune.py
    expected |= {"arf"}  # tested in test_arf.py
    assert set(list_methods()) == expected
    infra = {"base", "prompt", "losses"}
    mods = {m.name for m in pkgutil.iter_modules(methods_pkg.__path__)} - infra
    registered_modules = {methods_pkg.METHODS.get(n).__module__.rsplit(".", 1)[-1] for n in list_methods()}
    assert mods == registered_modules
    with pytest.raises(KeyError, match="registered: arf, cma, cocoop"):
        create_method("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        create_method("coop", n_ctxx=3)
    with pytest.raises(ValueError, match="class_token_position"):
        create_method("coop", class_token_position="left")
    for name in expected:
        importlib.import_module(methods_pkg.METHODS.get(name).__module__)


# ---------------------------------------------------------------------------------------------- hand values
def test_coop_loss_hand_value():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1])
    s = 2.0
    # sample 0: logits 2, 0, -2 -> -log(e^2/(e^2+1+e^-2)); sample 1: 1.2, 1.6, -1.2
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    l1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6) + math.exp(-1.2)))
    assert coop_loss(img, text, y, s).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_locoop_loss_hand_value():
    # one image, two patches, three classes; local logits = scale * patch @ text.T with scale 1
    text = torch.eye(3)
    patch = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    img = torch.tensor([[1.0, 0.0, 0.0]])
    y = torch.tensor([0])
    # top-1 of patch 0 is class 0 (= label): excluded; patch 1's top-1 is class 1: kept
    p1 = np.exp([0.0, 1.0, 0.0]) / np.exp([0.0, 1.0, 0.0]).sum()
    h1 = -(p1 * np.log(p1 + 1e-5)).sum()
    ce = -math.log(math.e / (math.e + 2))
    total, ce_t, h = locoop_loss(img, patch, text, y, 1.0, 0.25, 1)
    assert h.item() == pytest.approx(h1, rel=1e-6)
    assert ce_t.item() == pytest.approx(ce, rel=1e-6)
    assert total.item() == pytest.approx(ce - 0.25 * h1, rel=1e-6)
    # top-K = K: every top-K holds the label -> no patch selected -> term 0
    assert locoop_entropy_term(patch, y, 200).item() == 0.0
    # top-2 of patch 1 is {1, 0 or 2}: (0 and 2 tie) -> must not count label 0 if not in top-2
    assert locoop_entropy_term(torch.tensor([[[0.0, 5.0, 4.0]]]), y, 2).item() > 0


def test_ueo_loss_hand_value():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    w = torch.tensor([0.8, 0.4])

    def h(p):
        return -sum(q * math.log(q + 1e-5) for q in p)

    cond = (0.8 * h([0.9, 0.1]) + 0.4 * h([0.3, 0.7])) / 1.2
    pbar = [(0.9 / 0.8 + 0.3 / 0.4) / (1 / 0.8 + 1 / 0.4), (0.1 / 0.8 + 0.7 / 0.4) / (1 / 0.8 + 1 / 0.4)]
    loss, c, m = ueo_loss(probs, w, trade=1.0)
    assert c.item() == pytest.approx(cond, rel=1e-6)
    assert m.item() == pytest.approx(h(pbar), rel=1e-6)
    assert loss.item() == pytest.approx(cond - h(pbar), rel=1e-6)
    assert ueo_loss(probs, w, trade=0.5)[0].item() == pytest.approx(cond - 0.5 * h(pbar), rel=1e-6)


def test_probe_scores_hand_value():
    z = np.array([[1.0, 2.0, -1.0]])
    e = np.exp(z[0])
    s = probe_scores(z)
    assert s["msp"][0] == pytest.approx(e.max() / e.sum(), rel=1e-6)
    assert s["energy"][0] == pytest.approx(math.log(e.sum()), rel=1e-6)
    assert s["l1"][0] == pytest.approx(2.0 + 3.0 + 0.0)
    assert pseudo_labels(np.array([[1.0, 0.0], [0.2, 0.9]]), np.eye(2)).tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------- prompts
def test_prompt_layouts_equal_plain_text_encoding(model):
    # word-initialised context at each class-token position equals encoding the same sentence
    for pos, fmt in [
        ("end", "a photo of a {}."),
        ("front", "{} a photo of a."),
        ("middle", "a photo {} of a."),
    ]:
        pl = PromptLearner(model, ["dog", "sports car"], ctx_init="a photo of a", position=pos)
        assert pl.n_ctx == 4
        with torch.no_grad():
            got = pl.text_features()
        want = model.encode_text([fmt.format(c) for c in ["dog", "sports car"]])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    csc = PromptLearner(model, NAMES, n_ctx=3, csc=True)
    assert tuple(csc.ctx.shape) == (3, 3, model.token_embedding.weight.shape[1])
    assert float(PromptLearner(model, NAMES, n_ctx=16).ctx.detach().std()) == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="do not fit the context length"):
        PromptLearner(model, ["a " * 40], n_ctx=4)


@pytest.mark.parametrize("csc,pos", [(False, "end"), (True, "middle")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_checkpointed_text_encoding_equals_plain(csc, pos, dtype):
    """Chunks of 7 of 50 classes under checkpointing (+ truncation after the EOT token) give the
    plain full-batch loss and gradients: to 1e-6 in float64 (the two are the same computation up
    to summation order), and to float32 rounding in float32."""
    model = load_model("tiny-test")
    model.torch_module.to(dtype)
    names = [f"thing {i}" for i in range(50)]
    pl = PromptLearner(model, names, n_ctx=4, csc=csc, position=pos, seed=1).to(dtype)
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, model.embed_dim, generator=g, dtype=dtype), dim=-1)
    y = torch.randint(0, 50, (6,), generator=g)
    scale = model.logit_scale

    def plain():  # the reference formulation: every class in one full-length forward
        x, t = pl.embed(torch.arange(50))
        return model.encode_text_embeddings(x, t)

    losses, grads = [], []
    for fn in (plain, lambda: encode_prompts(model, pl.embed, torch.arange(50), chunk=7)):
        pl.ctx.grad = None
        loss = coop_loss(img, fn().to(dtype), y, scale)
        loss.backward()
        losses.append(loss.detach())
        grads.append(pl.ctx.grad.clone())
    top = grads[0].abs().max().item()
    assert top > 0
    if dtype == torch.float64:
        assert abs(losses[0].item() - losses[1].item()) < 1e-6
        torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)
    else:
        assert abs(losses[0].item() - losses[1].item()) < 1e-5
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * top, rtol=0)


def test_chunked_encoding_holds_no_activations_between_forward_and_backward(model):
    """Under checkpointing the tensors kept for backward are the chunk outputs only (activations
    are recomputed one chunk at a time), so memory no longer grows with the number of classes."""
    pl = PromptLearner(model, [f"thing {i}" for i in range(60)], n_ctx=4)
    img = F.normalize(torch.randn(4, model.embed_dim), dim=-1)
    y = torch.zeros(4, dtype=torch.long)

    def saved_bytes(fn):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = coop_loss(img, fn(), y, 10.0)
        loss.backward()
        return total[0]

    plain = saved_bytes(lambda: model.encode_text_embeddings(*pl.embed(torch.arange(60))))
    chunked = saved_bytes(lambda: encode_prompts(model, pl.embed, torch.arange(60), chunk=7))
    assert chunked < plain / 100


def test_cocoop_logits_match_per_image_loop(model):
    torch.manual_seed(0)
    pl = PromptLearner(model, NAMES, ctx_init="a photo of a")
    mod = CoCoOpModule(pl, model.embed_dim)
    assert mod.meta_net.linear1.out_features == model.embed_dim // 16
    assert mod.meta_net.linear2.out_features == pl.ctx.shape[-1]
    img = F.normalize(torch.randn(2, model.embed_dim), dim=-1)
    text = mod.conditional_text_features(img, chunk=2)
    with torch.no_grad():
        bias = mod.meta_net(img)
        for b in range(2):
            t_b = encode_prompts(
                model, lambda i, b=b: pl.embed(i, bias=bias[b].expand(len(i), -1)), torch.arange(3)
            )
            torch.testing.assert_close(text[b], t_b, atol=1e-6, rtol=0)
    logits = cocoop_logits(img, text, 3.0)
    want = torch.stack([3.0 * text[b] @ img[b] for b in range(2)])
    torch.testing.assert_close(logits, want)


# ---------------------------------------------------------------------------------------------- training
def _cfg(**kw):
    base = dict(epochs=4, batch_size=4, lr=0.05, optimizer="adam", schedule="constant", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out_dir):
    rows = [json.loads(x) for x in (out_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "epoch"]


@pytest.mark.parametrize("name,params", [("coop", {"n_ctx": 4}), ("locoop", {"n_ctx": 4, "top_k": 1})])
def test_prompt_method_trains_only_context_and_reloads(model, tmp_path, name, params):
    feats, labels = _features(model, patches=name == "locoop")
    data = TrainData(NAMES, labels, feats)
    before = _state(model)
    out = fit_method(name, model, data, tmp_path / name, cfg=_cfg(), params=params, progress=False)
    losses = _losses(out)
    assert losses[-1] < losses[0]
    assert _changed(before, _state(model)) == []  # the base model is untouched
    assert all(p.requires_grad for p in model.torch_module.parameters())  # flags restored
    info = json.loads((out / "adapter.json").read_text())
    assert info["method"] == name and info["params"]["n_ctx"] == 4
    assert info["base_model"]["spec"] == "tiny-test" and info["classnames"] == NAMES
    assert (out / "adapter.safetensors").is_file()
    ad = load_adapter(out, model)
    t1 = ad.text_features()
    assert t1.shape == (3, model.embed_dim)
    # the same artifact loaded on a fresh copy of the base model gives the same text features
    t2 = load_adapter(out, load_model("tiny-test")).text_features()
    np.testing.assert_allclose(t1, t2, atol=1e-6)
    # the learned context differs from its init, so the features differ from the zero-shot ones
    init = PromptLearner(model, NAMES, n_ctx=4, seed=0)
    with torch.no_grad():
        assert not np.allclose(init.text_features().numpy(), t1, atol=1e-4)
    with pytest.raises(AdapterMismatchError, match="trained on base model 'tiny-test'"):
        load_adapter(out, load_model("tiny-test", seed=1))


def test_cocoop_trains_and_reloads(model, tmp_path):
    feats, labels = _features(model)
    data = TrainData(NAMES, labels, feats)
    before = _state(model)
    out = fit_method(
        "cocoop",
        model,
        data,
        tmp_path / "cc",
        cfg=_cfg(batch_size=2, epochs=3),
        params={"text_chunk": 4},
        progress=False,
    )
    losses = _losses(out)
    assert losses[-1] < losses[0]
    assert _changed(before, _state(model)) == []
    ad = load_adapter(out, model)
    assert ad.kind == "conditional"
    sims = ad.similarities(feats["image"][:5])
    assert sims.shape == (5, 3) and np.abs(sims).max() <= 1.0 + 1e-5
    text = ad.text_features_for(feats["image"][:2])
    np.testing.assert_allclose(sims[:2], np.einsum("bd,bkd->bk", feats["image"][:2], text), atol=1e-5)
    with pytest.raises(NotImplementedError):
        ad.text_features()


def test_probes_train_and_reload(model, tmp_path):
    g = np.random.default_rng(0)
    k, n = 3, 30
    labels = np.repeat(np.arange(k), n // k)
    pre = (g.normal(size=(k, 16)) * 3)[labels] + g.normal(size=(n, 16))
    feats, _ = _features(model, n_per_class=n // k)
    data = TrainData(NAMES, labels, {"preproj": pre.astype(np.float32), "image": feats["image"]})
    cfg = create_method("linear-probe").default_config(batch_size=8, epochs=10)
    assert cfg.lr == pytest.approx(1e-3 * 8 / 256) and cfg.optimizer == "adam" and cfg.weight_decay == 1e-3
    out = fit_method(
        "linear-probe",
        model,
        data,
        tmp_path / "lp",
        cfg=cfg.__class__(**{**cfg.__dict__, "lr": 0.05}),
        progress=False,
    )
    info = json.loads((out / "adapter.json").read_text())
    assert info["train"]["warmup_steps"] == 4  # 10% of 10 epochs x 4 steps
    assert info["metrics"]["train_accuracy_labels"] > 0.9
    ad = load_adapter(out, model)
    assert ad.kind == "probe" and ad.feature_kind == "preproj"
    logits = ad.logits(pre)
    assert (logits.argmax(1) == labels).mean() > 0.9
    np.testing.assert_allclose(ad.scores(pre)["energy"], probe_scores(logits)["energy"])

    # PLP: pseudo-labels from the 5-template text ensemble (labels unused, may be -1)
    plp_data = TrainData(NAMES, np.full(n, -1), {"preproj": pre.astype(np.float32), "image": feats["image"]})
    out2 = fit_method(
        "plp",
        model,
        plp_data,
        tmp_path / "plp",
        cfg=_cfg(batch_size=8, epochs=3),
        cache_root=tmp_path / "cache",
        progress=False,
    )
    assert _losses(out2)[-1] < _losses(out2)[0]
    info2 = json.loads((out2 / "adapter.json").read_text())
    assert info2["params"]["templates"] == "plp5" and "pseudo_label_classes" in info2["metrics"]
    assert load_adapter(out2, model).logits(pre).shape == (n, 3)
    # the pseudo-label classifier: per class, the renormalised mean of 5 normalised prompts
    from vlmood.data.templates import load_templates
    from vlmood.methods.probe import pseudo_label_text

    tpl, _ = load_templates("plp5")
    assert len(tpl) == 5
    enc = model.encode_text([t.format(c) for c in NAMES for t in tpl]).reshape(3, 5, -1).mean(1)
    want = F.normalize(enc, dim=-1).numpy()
    np.testing.assert_allclose(pseudo_label_text(model, NAMES, tpl, tmp_path / "cache"), want, atol=1e-5)
    with pytest.raises(DataError, match="no label"):
        fit_method("linear-probe", model, plp_data, tmp_path / "lp2", cfg=_cfg(), progress=False)


# ---------------------------------------------------------------------------------------------- images
def _image_folder(root, per_class=(3, 3, 2)):
    from PIL import Image

    g = np.random.default_rng(0)
    for c, n in zip(NAMES, per_class, strict=True):
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = g.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    from vlmood.data.sources import image_folder

    return image_folder(root)


def test_few_shot_from_images_and_bad_shots(model, tmp_path):
    src = _image_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="3-shot sampling needs 3 images per class.*'car'.* has 2"):
        fit_method(
            "coop",
            model,
            src,
            tmp_path / "bad",
            cfg=_cfg(),
            shots=3,
            cache_root=tmp_path / "c",
            progress=False,
        )
    out = fit_method(
        "coop",
        model,
        src,
        tmp_path / "ok",
        cfg=_cfg(batch_size=2, epochs=1),
        params={"n_ctx": 2},
        shots=2,
        seed=1,
        cache_root=tmp_path / "c",
        progress=False,
    )
    info = json.loads((out / "adapter.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert info["split_file"] == str((out / "split.json").absolute())
    assert split["shots"] == 2 and split["seed"] == 1 and len(split["samples"]) == 6
    assert info["data"]["n"] == 6
    # augment=True runs the frozen image encoder on random crops each step (no cached features)
    aug = fit_method(
        "coop",
        model,
        src,
        tmp_path / "aug",
        cfg=_cfg(batch_size=2, epochs=1),
        params={"n_ctx": 2, "augment": True},
        split_file=out / "split.json",
        progress=False,
    )
    assert json.loads((aug / "adapter.json").read_text())["split_file"] == str(
        (out / "split.json").absolute()
    )


def test_resume_continues_and_rejects_changed_config(model, tmp_path):
    from vlmood.train.engine import ResumeError

    feats, labels = _features(model)
    data = TrainData(NAMES, labels, feats)
    out = fit_method(
        "coop", model, data, tmp_path / "r", cfg=_cfg(epochs=2), params={"n_ctx": 2}, progress=False
    )
    t_full = load_adapter(out, model).text_features()
    # a resume of a finished run restores the trained context from the checkpoint (no retraining)
    again = fit_method(
        "coop",
        model,
        data,
        tmp_path / "r",
        cfg=_cfg(epochs=2),
        params={"n_ctx": 2},
        progress=False,
        resume=True,
    )
    np.testing.assert_array_equal(load_adapter(again, model).text_features(), t_full)
    with pytest.raises(ResumeError, match="different training settings"):
        fit_method(
            "coop",
            model,
            data,
            tmp_path / "r",
            cfg=_cfg(epochs=2, lr=0.1),
            params={"n_ctx": 2},
            progress=False,
            resume=True,
        )
    with pytest.raises(ResumeError, match="already holds a checkpoint"):
        fit_method(
            "coop", model, data, tmp_path / "r", cfg=_cfg(epochs=2), params={"n_ctx": 2}, progress=False
        )


def test_adapter_errors(model, tmp_path):
    with pytest.raises(AdapterError, match="adapter.json is missing"):
        load_adapter(tmp_path, model)
    (tmp_path / "adapter.json").write_text('{"format": "other"}')
    with pytest.raises(AdapterError, match="not a vlmood.adapter/1 file"):
        load_adapter(tmp_path, model)


def test_ueo_trains_prompt_and_visual_norms_only(tmp_path):
    m = load_model("tiny-test")
    src = _image_folder(tmp_path / "imgs", per_class=(3, 3, 3))
    visual_norms = {f"visual.{n}" for n in norm_affine_names(m.torch_module.visual)}
    assert (
        "visual.ln_pre.weight" in visual_norms and "visual.transformer.resblocks.1.ln_2.bias" in visual_norms
    )
    before = _state(m)
    method = create_method("ueo")
    assert method.default_config().optimizer == "sgd" and method.default_config().lr == 1e-4
    cfg = TrainConfig(epochs=4, batch_size=9, lr=0.5, optimizer="sgd", momentum=0.0, schedule="constant")
    out = fit_method(
        "ueo",
        m,
        src,
        tmp_path / "ueo",
        cfg=cfg,
        params={"augment": False},
        cache_root=tmp_path / "c",
        progress=False,
    )
    losses = _losses(out)
    assert losses[-1] < losses[0]
    # fit leaves the base model as it came (its identity keys feature caches of the base weights)
    assert _changed(before, _state(m)) == []
    info = json.loads((out / "adapter.json").read_text())
    assert 0 < info["metrics"]["weights_min"] <= info["metrics"]["weights_mean"] <= 1
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        img_base = m.encode_image(x)

    fresh = load_model("tiny-test")
    key0 = fresh.identity.key
    ad = load_adapter(out, fresh)
    assert ad.adapts_image_encoder and fresh.identity.key != key0  # caches will not mix
    changed = set(_changed(before, _state(fresh)))
    assert changed and changed <= visual_norms  # nothing outside the visual normalisation layers
    with torch.no_grad():
        assert not torch.allclose(fresh.encode_image(x), img_base)
    t = ad.text_features()
    assert t.shape == (3, m.embed_dim)
    load_adapter(out, fresh)  # loading again onto the adapted model is still the same base model
    with pytest.raises(DataError, match="image source"):
        fit_method(
            "ueo",
            m,
            TrainData(NAMES, [0, 1, 2], {"image": np.zeros((3, 32), np.float32)}),
            tmp_path / "x",
            cfg=cfg,
            progress=False,
        )


def test_array_dataset_batched_reads_equal_per_item():
    from torch.utils.data import default_collate

    from vlmood.methods.base import ArrayDataset, batch_collate

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    idx = [7, 2, 9, 2]
    batches = []
    for limit in (2 << 30, 0):  # read into memory / left memory-mapped
        ds = ArrayDataset({"preproj": x}, np.arange(10) % 3, max_in_memory=limit)
        assert ds.in_memory == (limit > 0)
        want = default_collate([ds[i] for i in idx])
        got = batch_collate(ds.__getitems__(idx))
        for k in want:
            torch.testing.assert_close(got[k], want[k])
        batches.append(got)
    for k in batches[0]:
        torch.testing.assert_close(batches[0][k], batches[1][k])
    ds = ArrayDataset({"preproj": x}, np.arange(10) % 3)
    ds.__getitems__([7])["preproj"][0, 0] = -1.0  # a batch is a copy: the dataset is not changed
    assert ds[7]["preproj"][0] == 28.0 and x[7, 0] == 28.0


def test_ueo_settings_and_metrics(tmp_path):
    from vlmood.methods.ueo import class_subset, ueo_metrics

    src = _image_folder(tmp_path / "imgs", per_class=(2, 2, 2))
    # open-partial: known classes {0, 1}, target holds 1 (known) and 2 (unknown)
    sub = class_subset(src, keep=[1, 2], known=[0, 1])
    assert sub.classnames == ["car", "cat"] and len(sub) == 4  # folders sort: car, cat, dog
    assert sorted(sub.labels) == [-1, -1, 1, 1]
    cos = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.6], [0.5, 0.5]], dtype=np.float32)
    m = ueo_metrics(cos, np.array([0, 0, 1, -1]))
    assert m["gacc"] == pytest.approx(2 / 3) and m["pacc"] == pytest.approx((0.5 + 1.0) / 2)
    mcm = [1 / (1 + math.exp(-abs(a - b))) for a, b in cos]  # 2-class softmax max
    assert mcm[3] < min(mcm[:3])
    assert m["auroc"] == 1.0


def test_warmup_covering_the_whole_run_is_reported(caplog):
    from vlmood.methods.coop import resolve_config

    cfg = create_method("coop").default_config(epochs=1, batch_size=4)
    with caplog.at_level("WARNING"):
        out = resolve_config(cfg, 20)
    assert out.warmup_steps == 5 and "covers the whole run" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        resolve_config(create_method("coop").default_config(epochs=3, batch_size=4), 20)
    assert "covers the whole run" not in caplog.text
