"""Full fine-tuning (FT, LP-FT, FLYP, CMA) and WiSE-FT: losses against hand-computed values, CMA at
lambda 0 equal to FLYP, WiSE-FT endpoints reproduced exactly, only the intended parameters
change, adapters that `vlmood eval --adapter`, `vlmood.evaluate` and `study` load, clear errors,
and the gathered loss on 2 gloo ranks equal to the 1-process loss. Tiny random model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write_digit_images
from vlmood.cli import main
from vlmood.data.example import write_example
from vlmood.data.sources import load_source
from vlmood.errors import UsageError
from vlmood.methods import AdapterMismatchError, create_method, fit_method, load_adapter
from vlmood.methods.finetune import (
    HEAD_KEY,
    MODEL_PREFIX,
    image_tower_names,
    template_text_features,
    zero_shot_head,
)
from vlmood.methods.losses import (
    clip_contrastive_loss,
    cma_loss,
    cma_regularizer,
    gather_with_grad,
    linear_head_loss,
)
from vlmood.methods.wise_ft import interpolate, wise_ft_adapters
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-test")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    folder = write_digit_images(root / "digits", [0, 1, 2], per_class=4)
    return {"source": load_source(str(folder)), "root": root}


def _cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=1e-3, optimizer="adamw", weight_decay=0.1, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.detach().clone() for k, v in model.torch_module.state_dict().items()}


def _changed(before, after):
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


@pytest.fixture(scope="module")
def trained(model, digits):
    """ft, flyp and cma (lam 0.5) adapters trained on 12 digit images; the base state before."""
    before = _state(model)
    out = {}
    for name, params in [("ft", {}), ("flyp", {}), ("cma", {"lam": 0.5})]:
        out[name] = fit_method(
            name,
            model,
            digits["source"],
            digits["root"] / name,
            _cfg(),
            params,
            cache_root=digits["root"] / "cache",
            progress=False,
        )
    return {"dirs": out, "before": before}


# ---------------------------------------------------------------------------------------------- losses
def _ce(row, target):
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_clip_contrastive_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = 2.0
    logits = [[2.0, 1.2], [0.0, 1.6]]  # s * img @ txt.T
    cols = [[2.0, 0.0], [1.2, 1.6]]
    want = 0.5 * ((_ce(logits[0], 0) + _ce(logits[1], 1)) / 2 + (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2)
    assert float(clip_contrastive_loss(img, txt, torch.tensor(s))) == pytest.approx(want, rel=1e-6)


def test_repeated_class_is_a_negative():
    """Two images of one class with the same caption: each caption is a negative for the other
    image (FLYP), so the loss is log 2, not 0."""
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(clip_contrastive_loss(img, txt, 1.0)) == pytest.approx(math.log(2), rel=1e-6)


def test_cma_regularizer_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s, lam, b = 2.0, 0.5, 2
    logits = [[2.0, 1.2], [0.0, 1.6]]
    cols = [[2.0, 0.0], [1.2, 1.6]]
    # (lam / 2B) sum_k (L_img,k + L_txt,k), L = -logsumexp of the scaled similarities
    want = lam / (2 * b) * sum(-_lse(logits[k]) - _lse(cols[k]) for k in range(b))
    got = cma_regularizer(img, txt, torch.tensor(s), lam)
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert want < 0  # raising every similarity lowers it
    total, clip, reg = cma_loss(img, txt, torch.tensor(s), lam)
    assert float(reg) == pytest.approx(want, rel=1e-6)
    assert float(total) == pytest.approx(float(clip_contrastive_loss(img, txt, s)) + want, rel=1e-6)


def test_cma_loss_at_lambda_zero_is_the_clip_loss():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    assert torch.equal(cma_loss(img, txt, 7.0, 0.0)[0], clip_contrastive_loss(img, txt, 7.0))


def test_linear_head_loss_by_hand():
    f = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # logits [2, 0]
    assert float(linear_head_loss(f, w, torch.tensor([1]))) == pytest.approx(math.log(1 + math.e**2))
    b = torch.tensor([0.0, 2.0])  # logits [2, 2]
    assert float(linear_head_loss(f, w, torch.tensor([1]), b)) == pytest.approx(math.log(2))


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    y, offset = gather_with_grad(x)
    assert y is x and offset == 0


def test_contrastive_loss_refuses_unpaired_features():
    with pytest.raises(ValueError, match="paired"):
        clip_contrastive_loss(torch.zeros(3, 2), torch.zeros(2, 2), 1.0)


# ---------------------------------------------------------------------------------------------- parameters
def test_cma_lambda_must_be_explicit_and_valid():
    with pytest.raises(UsageError, match="lam=0.001"):
        create_method("cma")
    with pytest.raises(UsageError, match=">= 0"):
        create_method("cma", lam=-0.1)
    with pytest.raises(UsageError, match="allow_zero_lambda"):
        create_method("cma", lam=0)
    assert create_method("cma", lam=0, allow_zero_lambda=True).params.lam == 0
    assert create_method("cma", lam=0.001).params.lam == 0.001


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_wise_ft_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        create_method("wise-ft", endpoint="x", alpha=alpha)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        interpolate({"a": torch.zeros(1)}, {"a": torch.ones(1)}, alpha)


def test_wise_ft_needs_an_endpoint():
    with pytest.raises(UsageError, match="endpoint"):
        create_method("wise-ft", alpha=0.5)


# ---------------------------------------------------------------------------------------------- training
def test_fit_leaves_the_model_as_it_came(model, trained):
    assert _changed(trained["before"], _state(model)) == []
    assert "adapter" not in model.identity.extra


def test_ft_changes_only_the_image_tower(model, trained):
    m = copy.deepcopy(model)
    ad = load_adapter(trained["dirs"]["ft"], m)
    changed = _changed(trained["before"], _state(m))
    visual = set(image_tower_names(m.torch_module))
    assert changed and set(changed) <= visual, changed
    assert m.logit_scale == model.logit_scale
    from safetensors.torch import load_file

    tensors = load_file(str(trained["dirs"]["ft"] / "adapter.safetensors"))
    assert set(tensors) == {MODEL_PREFIX + n for n in changed} | {HEAD_KEY}  # the changed tensors only
    # the head moved away from its zero-shot start; class features are W / s
    zs = zero_shot_head(model, ad.classnames, ["a photo of a {}."])
    assert not torch.equal(tensors[HEAD_KEY], zs)
    assert torch.allclose(torch.from_numpy(ad.text_features()), tensors[HEAD_KEY] / model.logit_scale)
    assert m.identity.extra["adapter"] == ad.key  # caches of base and fine-tuned features never mix
    # new class names: the text tower (unchanged by FT) on the adapter's templates
    other = ad.for_classes(["cat", "dog"])
    assert other.text_features() == pytest.approx(
        template_text_features(model, ["cat", "dog"], ["a photo of a {}."]), abs=1e-6
    )


def test_flyp_changes_both_towers_and_the_logit_scale(model, trained):
    m = copy.deepcopy(model)
    load_adapter(trained["dirs"]["flyp"], m)
    changed = set(_changed(trained["before"], _state(m)))
    visual = set(image_tower_names(m.torch_module))
    assert changed & visual and changed - visual
    assert "logit_scale" in changed and "text_projection" in changed
    assert m.logit_scale != model.logit_scale


def test_cma_at_lambda_zero_equals_flyp(model, digits, trained, tmp_path):
    out = fit_method(
        "cma",
        model,
        digits["source"],
        tmp_path / "cma0",
        _cfg(),
        {"lam": 0.0, "allow_zero_lambda": True},
        cache_root=digits["root"] / "cache",
        progress=False,
    )
    from safetensors.torch import load_file

    a = load_file(str(out / "adapter.safetensors"))
    b = load_file(str(trained["dirs"]["flyp"] / "adapter.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(str(trained["dirs"]["cma"] / "adapter.safetensors"))  # lam 0.5 trains otherwise
    assert any(not torch.equal(c[k], b[k]) for k in b)


def test_lp_ft_trains_the_head_first(model, digits, tmp_path):
    out = fit_method(
        "lp-ft",
        model,
        digits["source"],
        tmp_path / "lpft",
        _cfg(epochs=1),
        {"lp_epochs": 2},
        cache_root=digits["root"] / "cache",
        progress=False,
    )
    info = json.loads((out / "adapter.json").read_text())
    assert info["metrics"]["lp"]["epochs"] == 2 and info["metrics"]["epochs"] == 1
    assert (out / "train" / "lp" / "last.pt").is_file()
    m = copy.deepcopy(model)
    load_adapter(out, m)
    changed = _changed(_state(model), _state(m))
    assert changed and set(changed) <= set(image_tower_names(m.torch_module))


# ---------------------------------------------------------------------------------------------- WiSE-FT
def test_wise_ft_reproduces_both_endpoints_exactly(model, trained, tmp_path):
    from safetensors.torch import load_file

    endpoint = trained["dirs"]["ft"]
    dirs = wise_ft_adapters(model, endpoint, [0.0, 1.0, 0.5], tmp_path / "wise", progress=False)
    ft = load_file(str(endpoint / "adapter.safetensors"))
    at = [load_file(str(d / "adapter.safetensors")) for d in dirs]
    assert all(set(t) == set(ft) for t in at)
    base = dict(model.torch_module.named_parameters())
    names = json.loads((endpoint / "adapter.json").read_text())["classnames"]
    zs_head = zero_shot_head(model, names, ["a photo of a {}."])
    for k, v in at[0].items():  # alpha 0: the zero-shot weights
        want = zs_head if k == HEAD_KEY else base[k[len(MODEL_PREFIX) :]].detach()
        assert torch.equal(v, want), k
    assert all(torch.equal(at[1][k], ft[k]) for k in ft)  # alpha 1: the fine-tuned weights
    k = next(iter(ft))
    zs = zs_head if k == HEAD_KEY else base[k[len(MODEL_PREFIX) :]].detach()
    assert torch.allclose(at[2][k], 0.5 * zs + 0.5 * ft[k])
    # loaded: alpha 0 is the base model, alpha 1 the fine-tuned one, weight for weight
    m0, m1, mft = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    load_adapter(dirs[0], m0)
    a1 = load_adapter(dirs[1], m1)
    aft = load_adapter(endpoint, mft)
    assert _changed(trained["before"], _state(m0)) == []
    assert _changed(_state(mft), _state(m1)) == []
    assert (a1.text_features() == aft.text_features()).all()


def test_wise_ft_of_a_contrastive_fine_tune(model, trained, tmp_path):
    """FLYP endpoint: every tensor, the logit scale included, interpolated; alpha 0 = base."""
    (d0,) = wise_ft_adapters(model, trained["dirs"]["flyp"], [0], tmp_path / "w", progress=False)
    m = copy.deepcopy(model)
    ad = load_adapter(d0, m)
    assert _changed(trained["before"], _state(m)) == []
    want = template_text_features(model, ad.classnames, ["a photo of a {}."])
    assert (ad.text_features() == want).all()


def test_wise_ft_endpoint_of_another_base_model_is_refused(trained, tmp_path):
    other = load_model("open_clip:vlmood-tiny-test@random:1")
    with pytest.raises(AdapterMismatchError, match="fine-tuned from base model"):
        wise_ft_adapters(other, trained["dirs"]["ft"], [0.5], tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "alpha0.5").exists()


def test_wise_ft_refuses_an_endpoint_that_is_no_full_fine_tune(model, digits, tmp_path):
    coop = fit_method(
        "coop",
        model,
        digits["source"],
        tmp_path / "coop",
        TrainConfig(epochs=1, batch_size=4),
        {"n_ctx": 2},
        cache_root=digits["root"] / "cache",
        progress=False,
    )
    with pytest.raises(UsageError, match="full fine-tune"):
        wise_ft_adapters(model, coop, [0.5], tmp_path / "w", progress=False)


# ---------------------------------------------------------------------------------------------- CLI, API, study
@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("example") / "data", per_class=8, size=32)


def _run(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _common(example):
    return ["--model", "tiny-test", "--benchmark", str(example), "--workers", "0", "--no-progress"]


@pytest.mark.parametrize("method, params", [("ft", []), ("flyp", []), ("cma", ["--param", "lam=0.001"])])
def test_cli_fit_then_eval_with_adapter(method, params, example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    ad = tmp_path / "ad"
    fit = ["fit", method, *_common(example), "--shots", "2", "--epochs", "1", "--train-batch-size", "4"]
    rc, _, err = _run([*fit, "--lr", "1e-3", *params, "--out", str(ad)], capsys)
    assert rc == 0, err
    info = json.loads((ad / "adapter.json").read_text())
    assert info["method"] == method and info["base_model"]["spec"] == "tiny-test"
    ev = ["eval", *_common(example), "--scores", "mcm,energy,maxlogit"]
    rc, _, err = _run([*ev, "--adapter", str(ad), "--out", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["adapter"]["method"] == method and res["adapter"]["kind"] == "finetune"
    assert res["datasets"]["id"]["cache"]["encoded_now"] > 0  # the fine-tuned encoder's own features
    rc, _, err = _run([*ev, "--out", str(tmp_path / "zs")], capsys)
    assert rc == 0, err
    zs = json.loads((tmp_path / "zs" / "results.json").read_text())
    assert res["scores"]["mcm"]["per_set"] != zs["scores"]["mcm"]["per_set"]


def test_api_evaluate_and_study_load_full_fine_tunes(model, example, tmp_path):
    import vlmood

    bench = vlmood.load_benchmark(example)
    ad = vlmood.fit(
        "ft", model, bench, out=tmp_path / "ft", shots=2, epochs=1, batch_size=4, lr=1e-3,
        cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert ad.model is not model and "adapter" not in model.identity.extra
    before = _state(model)
    res = vlmood.evaluate(
        model, bench, ["mcm"], adapter=tmp_path / "ft", cache_dir=tmp_path / "cache", progress=False
    )
    assert res.to_dict()["adapter"]["method"] == "ft"
    assert _changed(before, _state(model)) == [] and "adapter" not in model.identity.extra
    st = vlmood.study(
        model, bench, ["zero-shot", "ft"], [0], out=tmp_path / "study", shots=2, scores=["mcm"],
        epochs=1, batch_size=4, lr=1e-3, cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert "ft" in json.dumps(st.to_dict()["runs"])
    assert _changed(before, _state(model)) == []


def _one_line(rc, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.startswith("vlmood ")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "method, params, needles",
    [
        ("cma", [], ["lam=0.001"]),
        ("cma", ["lam=-1"], ["lam", ">= 0"]),
        ("cma", ["lam=0"], ["allow_zero_lambda"]),
        ("wise-ft", ["endpoint=x", "alpha=1.5"], ["alpha", "[0, 1]"]),
        ("wise-ft", ["endpoint=x", "alpha=-0.5"], ["alpha", "[0, 1]"]),
    ],
)
def test_cli_bad_parameters_give_one_line(method, params, needles, example, tmp_path, capsys):
    args = ["fit", method, *_common(example), "--out", str(tmp_path / "ad")]
    for p in params:
        args += ["--param", p]
    rc, _, err = _run(args, capsys)
    _one_line(rc, err, *needles)
    assert not (tmp_path / "ad").exists()


def test_cli_wise_ft_endpoint_of_another_base_model(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    ids = write_digit_images(tmp_path / "id", [0, 1, 2], per_class=2)
    base = ["fit", "wise-ft", "--id", str(ids), "--workers", "0", "--no-progress"]
    endpoint = f"endpoint={trained['dirs']['ft']}"
    other = [*base, "--model", "open_clip:vlmood-tiny-test@random:1", "--param", endpoint]
    rc, _, err = _run([*other, "--out", str(tmp_path / "bad")], capsys)
    _one_line(rc, err, "fine-tuned from base model")
    assert not (tmp_path / "bad").exists()
    good = [*base, "--model", "tiny-test", "--param", endpoint, "--param", "alpha=0.25"]
    rc, _, err = _run([*good, "--out", str(tmp_path / "w")], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "w" / "adapter.json").read_text())["params"]["alpha"] == 0.25


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.dist
def test_gathered_contrastive_loss_on_two_ranks_equals_one_process(tmp_path):
    """Each of 2 gloo ranks computes its rows' loss against the gathered global batch; their mean is
    the 1-process loss, and with DDP's gradient averaging the gradients equal it too."""
    from conftest import torchrun

    out = tmp_path / "ranks.pt"
    res = torchrun([str(Path(__file__).parent / "dist_finetune_worker.py"), str(out)], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    world = len(got["ranks"])
    assert world == 2
    for name in ("clip", "cma"):
        img = got["image"].clone().requires_grad_(True)
        txt = got["text"].clone().requires_grad_(True)
        scale = torch.tensor(3.0, requires_grad=True)
        loss = clip_contrastive_loss(img, txt, scale) if name == "clip" else cma_loss(img, txt, scale, 0.3)[0]
        loss.backward()
        ranks = [r[name] for r in got["ranks"]]
        assert sum(r["loss"] for r in ranks) / world == pytest.approx(float(loss.detach()), abs=1e-6)
        b = img.shape[0] // world
        for r, rec in enumerate(ranks):  # DDP averages the ranks' gradients: divide by the world size
            assert torch.allclose(rec["image_grad"] / world, img.grad[r * b : (r + 1) * b], atol=1e-6)
            assert torch.allclose(rec["text_grad"] / world, txt.grad[r * b : (r + 1) * b], atol=1e-6)
        assert sum(r["scale_grad"] for r in ranks) / world == pytest.approx(float(scale.grad), abs=1e-6)
