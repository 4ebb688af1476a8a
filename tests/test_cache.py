"""Feature cache: keys, reuse, resume after a kill, corruption detection, text cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import FakeVLM, write_digit_images
from vlmood.data.sources import load_source
from vlmood.features.cache import ImageEntry, image_cache_key
from vlmood.features.extract import class_text_features, encode_texts, extract_features


def _extract(model, src, tmp_path, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    kw.setdefault("chunk_size", 5)
    return extract_features(model, src, cache_root=tmp_path / "cache", progress=False, **kw)


def test_extract_matches_direct_forward_and_is_reused(digit_folder, tmp_path):
    model = FakeVLM()
    src = load_source(str(digit_folder))
    fs = _extract(model, src, tmp_path, kinds=("image", "preproj", "patch"))
    assert fs.arrays["image"].shape == (15, 16)
    assert fs.arrays["preproj"].shape == (15, 24)
    assert fs.arrays["patch"].shape == (15, 4, 16)
    assert isinstance(fs.arrays["image"], np.memmap)
    # same numbers as a direct forward on the same preprocessed images
    import torch
    from PIL import Image

    x = torch.stack([model.preprocess(Image.open(s.path).convert("RGB")) for s in src.samples])
    ref = FakeVLM().encode_image_features(x, ("image", "preproj"))
    np.testing.assert_allclose(fs.arrays["image"], ref["image"].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fs.arrays["preproj"], ref["preproj"].numpy(), rtol=1e-5, atol=1e-5)
    assert model.images_seen == 15 and fs.encoded == 15
    # warm cache: nothing is encoded again, for any subset of kinds
    model2 = FakeVLM()
    fs2 = _extract(model2, src, tmp_path, kinds=("image",))
    assert model2.images_seen == 0 and fs2.encoded == 0
    np.testing.assert_array_equal(fs2.arrays["image"], fs.arrays["image"])
    assert fs.valid.all() and list(fs.labels) == [0] * 5 + [1] * 5 + [2] * 5


def test_cache_key_changes_with_model_preprocessing_data_and_kind(digit_folder, tmp_path):
    import dataclasses

    m = FakeVLM()
    src = load_source(str(digit_folder))
    fp = src.fingerprint()
    base = image_cache_key(m.identity.key_dict(), fp, "image", False)
    other_model = FakeVLM(seed=1)
    assert image_cache_key(other_model.identity.key_dict(), fp, "image", False) != base
    pre = dataclasses.replace(m.identity.preprocess, interpolation="bicubic")
    ident = dataclasses.replace(m.identity, preprocess=pre)
    assert image_cache_key(ident.key_dict(), fp, "image", False) != base
    prec = dataclasses.replace(m.identity, precision="bf16")
    assert image_cache_key(prec.key_dict(), fp, "image", False) != base
    assert image_cache_key(m.identity.key_dict(), fp, "patch", False) != base
    assert image_cache_key(m.identity.key_dict(), fp, "image", True) != base
    # the spec string is informational only
    spec = dataclasses.replace(m.identity, spec="something-else")
    assert image_cache_key(spec.key_dict(), fp, "image", False) == base
    # data: touching a file (new mtime) and changing its content both change the fingerprint
    f = src.samples[0].path
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_source(str(digit_folder)).fingerprint() != fp
    fp_content = load_source(str(digit_folder)).fingerprint("content")
    with open(f, "ab") as fh:
        fh.write(b"\0")
    assert load_source(str(digit_folder)).fingerprint("content") != fp_content


def test_changed_data_is_reencoded(digit_folder, tmp_path):
    m = FakeVLM()
    _extract(m, load_source(str(digit_folder)), tmp_path)
    write_digit_images(digit_folder, [3], per_class=2)
    m2 = FakeVLM()
    fs = _extract(m2, load_source(str(digit_folder)), tmp_path)
    assert m2.images_seen == 17 and fs.arrays["image"].shape[0] == 17


def test_resume_after_kill_encodes_only_missing_chunks(digit_folder, tmp_path):
    src = load_source(str(digit_folder))
    killed = FakeVLM(fail_after=5)  # dies in the second batch -> only chunk 0 (5 images) is done
    with pytest.raises(KeyboardInterrupt):
        _extract(killed, src, tmp_path, kinds=("image", "patch"), batch_size=5)
    entry_dirs = list((tmp_path / "cache" / "images").iterdir())
    assert entry_dirs and not any((d / "manifest.json").exists() for d in entry_dirs)
    resumed = FakeVLM()
    fs = _extract(resumed, src, tmp_path, kinds=("image", "patch"), batch_size=5)
    assert resumed.images_seen == 10  # chunks 1 and 2 only
    fresh = _extract(FakeVLM(), src, tmp_path / "other", kinds=("image", "patch"), batch_size=5)
    np.testing.assert_array_equal(fs.arrays["image"], fresh.arrays["image"])
    np.testing.assert_array_equal(fs.arrays["patch"], fresh.arrays["patch"])
    assert not any((d / "chunks").exists() for d in (tmp_path / "cache" / "images").iterdir())


def test_truncated_or_mismatched_cache_is_rebuilt(digit_folder, tmp_path, caplog):
    src = load_source(str(digit_folder))
    fs = _extract(FakeVLM(), src, tmp_path)
    ref = np.array(fs.arrays["image"])
    entry_dir = tmp_path / "cache" / "images" / fs.keys["image"]
    del fs
    data = entry_dir / "data.npy"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 7)
    m = FakeVLM()
    with caplog.at_level("WARNING"):
        fs2 = _extract(m, src, tmp_path)
    assert "unusable" in caplog.text and m.images_seen == 15
    np.testing.assert_array_equal(fs2.arrays["image"], ref)
    # a manifest from another key is not trusted either
    man = json.loads((entry_dir / "manifest.json").read_text())
    man["key"] = "0" * 64
    (entry_dir / "manifest.json").write_text(json.dumps(man))
    m3 = FakeVLM()
    _extract(m3, src, tmp_path)
    assert m3.images_seen == 15


def test_partial_chunks_from_other_chunk_size_are_discarded(digit_folder, tmp_path):
    src = load_source(str(digit_folder))
    with pytest.raises(KeyboardInterrupt):
        _extract(FakeVLM(fail_after=8), src, tmp_path, chunk_size=5)
    m = FakeVLM()
    fs = _extract(m, src, tmp_path, chunk_size=3)
    assert m.images_seen == 15 and fs.arrays["image"].shape == (15, 16)


def test_corrupt_image_error_and_skip(digit_folder, tmp_path):
    from vlmood.data.base import CorruptImageError

    bad = digit_folder / "one" / "broken.png"
    bad.write_bytes(b"this is not a png")
    src = load_source(str(digit_folder))
    with pytest.raises(CorruptImageError, match="broken.png"):
        _extract(FakeVLM(), src, tmp_path)
    fs = _extract(FakeVLM(), src, tmp_path, skip_corrupt=True)
    assert fs.skipped == [str(bad)]
    assert fs.get("image").shape[0] == 15 and len(fs.valid_labels()) == 15
    # no half-written entry is left by the failed strict run
    ok = [d for d in (tmp_path / "cache" / "images").iterdir() if (d / "manifest.json").exists()]
    assert len(ok) == 1


def test_text_cache_and_class_features(tmp_path):
    m = FakeVLM()
    calls = []
    orig = m.encode_text

    def counting(texts, batch_size=256):
        calls.append(len(texts))
        return orig(texts, batch_size)

    m.encode_text = counting
    a = class_text_features(m, ["cat", "dog"], ["a {}.", "the {}"], tmp_path)
    b = class_text_features(m, ["cat", "dog"], ["a {}.", "the {}"], tmp_path)
    assert calls == [4]  # one batched call for all class x template prompts; second run cached
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    e = orig(["a cat.", "the cat"]).numpy()
    mean = e.mean(0)
    np.testing.assert_allclose(a[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # a corrupted text entry is detected and recomputed
    for p in (tmp_path / "text").glob("*.npy"):
        p.write_bytes(b"garbage")
    c = encode_texts(m, ["a cat.", "a dog."], tmp_path)
    assert c.shape == (2, 16)


def test_entry_validate_rejects_wrong_shape(digit_folder, tmp_path):
    src = load_source(str(digit_folder))
    fs = _extract(FakeVLM(), src, tmp_path)
    entry = ImageEntry(tmp_path / "cache", fs.keys["image"], "image")
    np.save(entry.dir / "data.npy", np.zeros((3, 3), dtype=np.float32))
    assert not entry.is_complete()
    assert not entry.dir.exists()
