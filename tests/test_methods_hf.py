"""Prompt learning on a Hugging Face text tower (``vlmood-tiny``: open_clip ``HFTextEncoder`` over a
BERT): word-initialised context reproduces plain text encoding, chunked + checkpointed encoding
equals the plain computation, and CoOp trains only the context."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlmood.methods import TrainData, fit_method, load_adapter
from vlmood.methods.coop import coop_loss
from vlmood.methods.prompt import PromptLearner, encode_embedded, encode_prompts
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig

NAMES = ["dog", "cat", "sports car"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("vlmood-tiny")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_hf_word_init_equals_plain_text_encoding(model):
    pl = PromptLearner(model, ["dog"], ctx_init="a photo of a")
    assert pl.n_ctx == 4
    with torch.no_grad():
        got = pl.text_features()
    want = model.encode_text(["a photo of a dog."])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_hf_prompt_layouts_equal_plain_text_encoding(model):
    for pos, fmt in [
        ("end", "a photo of a {}."),
        ("front", "{} a photo of a."),
        ("middle", "a photo {} of a."),
    ]:
        pl = PromptLearner(model, NAMES, ctx_init="a photo of a", position=pos)
        with torch.no_grad():
            got = pl.text_features()
            untruncated = encode_embedded(model, *pl.embed(torch.arange(3)), truncate=False)
        want = model.encode_text([fmt.format(c) for c in NAMES])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(untruncated, want, atol=1e-5, rtol=0)
    width = model.model.text.transformer.embeddings.word_embeddings.weight.shape[1]
    assert tuple(PromptLearner(model, NAMES, n_ctx=3, csc=True).ctx.shape) == (3, 3, width)
    with pytest.raises(ValueError, match="do not fit the context length"):
        PromptLearner(model, ["a " * 40], n_ctx=4)


@pytest.mark.parametrize("csc,pos", [(False, "end"), (True, "middle")])
def test_hf_chunked_checkpointed_encoding_equals_plain(model, csc, pos):
    names = [f"thing {i}" for i in range(20)] + ["a much longer class name here"]
    pl = PromptLearner(model, names, n_ctx=4, csc=csc, position=pos, seed=1)
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, model.embed_dim, generator=g), dim=-1)
    y = torch.randint(0, len(names), (6,), generator=g)
    idx = torch.arange(len(names))

    def plain():  # every class in one full-length forward
        return encode_embedded(model, *pl.embed(idx), truncate=False)

    losses, grads = [], []
    for fn in (plain, lambda: encode_prompts(model, pl.embed, idx, chunk=6)):
        pl.ctx.grad = None
        loss = coop_loss(img, fn(), y, model.logit_scale)
        loss.backward()
        losses.append(loss.detach())
        grads.append(pl.ctx.grad.clone())
    top = grads[0].abs().max().item()
    assert top > 0
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * top, rtol=0)


def test_hf_coop_trains_only_context(model, tmp_path):
    from PIL import Image

    colours = {"dog": (200, 30, 30), "cat": (30, 200, 30), "sports car": (30, 30, 200)}
    paths, labels = [], []
    for k, rgb in enumerate(colours.values()):
        for i in range(4):
            p = tmp_path / "img" / f"{k}_{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            shade = tuple(min(255, c + 10 * i) for c in rgb)
            Image.new("RGB", (64, 64), shade).save(p)
            paths.append(p)
            labels.append(k)
    pre = model.preprocess
    with torch.no_grad():
        pixels = torch.stack([pre(Image.open(p).convert("RGB")) for p in paths])
        feats = model.encode_image_features(pixels, ("image",))["image"].float().cpu().numpy()
    data = TrainData(list(colours), labels, {"image": feats})
    before = _state(model.torch_module)
    flags = [p.requires_grad for p in model.torch_module.parameters()]
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.05, optimizer="adam", schedule="constant", log_every=1)
    out = fit_method("coop", model, data, tmp_path / "coop", cfg=cfg, params={"n_ctx": 4}, progress=False)
    rows = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "epoch"]
    assert losses[-1] < losses[0]
    after = _state(model.torch_module)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base model is untouched
    assert [p.requires_grad for p in model.torch_module.parameters()] == flags  # flags restored
    from safetensors.torch import load_file

    ctx = load_file(str(out / "adapter.safetensors"))["ctx"]
    init = PromptLearner(model, list(colours), n_ctx=4, seed=cfg.seed).ctx.detach()
    assert ctx.shape == init.shape and not torch.allclose(ctx, init, atol=1e-4)
    text = load_adapter(out, model).text_features()  # the artifact reloads onto the HF tower
    assert text.shape == (3, model.embed_dim)
