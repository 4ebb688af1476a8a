"""Text encoding: the length-sorted, padding-trimmed path equals a plain full-padding loop (tiny-test
and vlmood-tiny's MiniLM tower), progress and log lines for large encodings, NegLabel mining
selects the same negatives as a straightforward reference, and NegLabel label files (vlmood JSON
and the released one-prompt-per-line text files)."""

from __future__ import annotations

import hashlib
import logging
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmood.features import text as T
from vlmood.features.extract import class_text_features as reexported_ctf
from vlmood.features.extract import encode_texts as reexported_encode
from vlmood.models import load_model
from vlmood.scores import ScoreContext
from vlmood.scores.neglabel import NegLabelScore, load_labels, load_wordnet_vocabulary


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-test")


@pytest.fixture(scope="module")
def minilm():
    return load_model("vlmood-tiny")


def vocab_sample(n_noun=240, n_adj=60, seed=0):
    voc = load_wordnet_vocabulary()
    rng = np.random.default_rng(seed)
    return {
        "noun": [voc["noun"][i] for i in rng.choice(len(voc["noun"]), n_noun, replace=False)],
        "adj": [voc["adj"][i] for i in rng.choice(len(voc["adj"]), n_adj, replace=False)],
    }


def plain_encode(vlm, prompts, batch_size=64):
    """The obvious implementation: fixed batches in order, tokenized to the full context."""
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            tokens = vlm.tokenize(prompts[s : s + batch_size])
            out.append(F.normalize(vlm.torch_module.encode_text(tokens).float(), dim=-1))
    return torch.cat(out).numpy()


def mixed_prompts(n=60, seed=1):
    v = vocab_sample(n, 10, seed)
    long = "a photo of a very small and rather old " + " and ".join(v["noun"][:4])
    return [f"the nice {w}" for w in v["noun"]] + [f"This is a {w} photo" for w in v["adj"]] + [long, "x"]


def test_reexports_keep_old_imports():
    assert reexported_encode is T.encode_texts and reexported_ctf is T.class_text_features


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_sorted_trimmed_encoding_equals_plain_loop(name, request, tmp_path):
    vlm = request.getfixturevalue(name)
    prompts = mixed_prompts(200 if name == "tiny" else 60)
    tokens = vlm.tokenize(prompts)
    lengths = (tokens != 0).sum(1)
    # trimming matters: most prompts are far shorter than the context
    assert int(lengths.max()) < tokens.shape[1] and float(lengths.float().median()) < tokens.shape[1] / 3
    ref = plain_encode(vlm, prompts)
    got = T.encode_texts(vlm, prompts, tmp_path, batch_size=32, progress=False)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    # order of the input is the order of the output (sorting is internal)
    rev = T.encode_texts(vlm, prompts[::-1], tmp_path / "rev", batch_size=7, progress=False)
    np.testing.assert_allclose(rev[::-1], ref, atol=1e-5, rtol=0)


def test_minilm_batches_are_cut_at_their_longest_prompt(minilm, monkeypatch):
    """The MiniLM tower runs each batch only as wide as its longest prompt (sorted batches)."""
    widths = []
    tower = minilm.torch_module.text
    orig = tower.forward

    def spy(x, *a, **k):
        widths.append(int(x.shape[1]))
        return orig(x, *a, **k)

    monkeypatch.setattr(tower, "forward", spy)
    prompts = mixed_prompts(30)
    minilm.encode_text(prompts, batch_size=8)
    full = minilm.tokenize(prompts).shape[1]
    assert max(widths) < full and widths == sorted(widths) and min(widths) <= 6


def test_progress_bar_and_log_line_for_large_encodings(tiny, tmp_path, caplog, capsys):
    prompts = [f"the nice word{i}" for i in range(T.PROGRESS_MIN)]
    calls = []
    orig = tiny.encode_text

    def counting(texts, batch_size=256, progress=None):
        calls.append(progress)
        return orig(texts, batch_size=batch_size, progress=progress)

    tiny.encode_text = counting
    try:
        with caplog.at_level(logging.INFO, logger="vlmood.features.text"):
            T.encode_texts(tiny, prompts, tmp_path, batch_size=500, desc="enc")
    finally:
        del tiny.encode_text
    assert calls and calls[0] is not None  # one call with a progress callback (one sorted pass)
    assert f"enc: encoding {T.PROGRESS_MIN:,} prompts with tiny-test" in caplog.text
    assert f"/{T.PROGRESS_MIN} [" in capsys.readouterr().err  # the bar
    # cached now: no encoding, no bar; progress=False: no bar
    T.encode_texts(tiny, prompts, tmp_path, batch_size=500, desc="enc")
    T.encode_texts(tiny, prompts[:-1], tmp_path, batch_size=500, progress=False)
    assert "prompt" not in capsys.readouterr().err
    # small encodings stay silent
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmood.features.text"):
        T.encode_texts(tiny, prompts[:10], tmp_path)
    assert "encoding" not in caplog.text


def test_class_text_features_many_prompts_logs(fake_model, tmp_path, caplog, capsys):
    """Many classes x templates: a log line and a bar, also for a backend without a progress hook."""
    classes = [f"class{i}" for i in range(250)]
    templates = [f"a photo {i} of a {{}}." for i in range(8)]
    with caplog.at_level(logging.INFO, logger="vlmood.features.text"):
        feats = T.class_text_features(fake_model, classes, templates, tmp_path)
    assert feats.shape == (250, fake_model.embed_dim)
    assert "encoding 2,000 prompts" in caplog.text and "250 classes x 8 templates" in caplog.text
    assert "class prompts (250 classes x 8 templates)" in capsys.readouterr().err  # the bar
    emb = fake_model.encode_text([t.format(c) for c in classes for t in templates]).numpy()
    mean = emb.reshape(250, 8, -1).mean(1)
    np.testing.assert_allclose(feats, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)


# ------------------------------------------------------------------ NegLabel mining selection


def mining_reference(vlm, vocab, classnames, id_feats, frac, q=0.95):
    """Straightforward NegLabel mining: per kind, plain encoding in vocabulary order, np.quantile."""
    banned = {c.lower() for c in classnames}
    out = []
    for kind, tpl in (("noun", "the nice {}"), ("adj", "This is a {} photo")):
        words = [w for w in dict.fromkeys(vocab[kind]) if w.lower() not in banned]
        feats = plain_encode(vlm, [tpl.format(w) for w in words]).astype(np.float64)
        d = np.quantile(feats @ id_feats.T.astype(np.float64), q, axis=1)
        order = np.argsort(d, kind="stable")[: int(np.floor(frac * len(words)))]
        out += [(words[i], kind) for i in order]
    return out, d


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_neglabel_mining_same_selection_as_reference(name, request, tmp_path, caplog):
    vlm = request.getfixturevalue(name)
    classnames = ["cat", "dog", "car", "ship", "frog", "apple"]
    n_noun, n_adj = (240, 60) if name == "tiny" else (80, 20)
    vocab = vocab_sample(n_noun, n_adj)
    vocab["noun"] += ["Dog", vocab["noun"][0]]  # an ID name in another case and a duplicate
    text = T.class_text_features(vlm, classnames, ["a photo of a {}."], tmp_path)
    enc = T.TextEncoder(vlm, tmp_path, progress=False)
    ctx = ScoreContext(text_features=text, classnames=classnames, encode_text=enc)
    with caplog.at_level(logging.INFO, logger="vlmood.scores.neglabel"):
        s = NegLabelScore(vocabulary=vocab, neg_fraction=0.3, ngroup=1).fit(ctx)
    line = f"encoding {n_noun + n_adj} candidate labels ({n_noun} nouns + {n_adj} adjectives) with {vlm.identity.spec}"
    assert line in caplog.text
    ref, _ = mining_reference(vlm, vocab, classnames, s.text_features, 0.3)
    assert list(zip(s.labels, s.kinds)) == ref
    # the negatives' features are those of their prompts
    np.testing.assert_allclose(s._neg_features, plain_encode(vlm, s.prompts), atol=1e-5)
    # a plain callable (slices in order of prompt length) selects the same negatives
    plain = NegLabelScore(vocabulary=vocab, neg_fraction=0.3, ngroup=1, encode_batch_size=37).fit(
        ScoreContext(
            text_features=text,
            classnames=classnames,
            encode_text=lambda texts: T.encode_texts(vlm, texts, tmp_path / "plain", progress=False),
        )
    )
    assert plain.labels == s.labels and plain.kinds == s.kinds


# ------------------------------------------------------------------ NegLabel label files


def fake_encode_text(texts, dim=16):
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(" ".join(t.lower().split()).encode())).normal(size=dim)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def fake_ctx(classnames=("cat", "dog", "car")):
    return ScoreContext(
        text_features=fake_encode_text([f"the nice {c}" for c in classnames]),
        classnames=list(classnames),
        encode_text=fake_encode_text,
    )


RELEASED = """the nice yellow clintonia
the nice silvery spleenwort

# a comment line
the nice genus caladenia
The nice  yellow clintonia
this is a  grey photo
marsh marigold
the nice bladder campion
"""


def test_neglabel_released_text_labels_file(tmp_path):
    p = tmp_path / "selected_neg_labels_in1k_10k.txt"
    p.write_text(RELEASED, encoding="utf-8")
    data = load_labels(p)
    assert data["format_kind"] == "text" and data["duplicates"] == 1 and data["id_sha256"] is None
    assert data["prompts"] == [
        "the nice yellow clintonia",
        "the nice silvery spleenwort",
        "the nice genus caladenia",
        "this is a  grey photo",
        "marsh marigold",
        "the nice bladder campion",
    ]
    assert data["labels"][:3] == ["yellow clintonia", "silvery spleenwort", "genus caladenia"]
    assert data["kinds"] == ["noun", "noun", "noun", "adj", "given", "noun"] and data["labels"][3] == "grey"
    s = NegLabelScore(labels_file=str(p), ngroup=2).fit(fake_ctx())
    assert s.prompts == data["prompts"]
    np.testing.assert_allclose(s._neg_features, fake_encode_text(s.prompts), atol=1e-6)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    assert s.params()["labels_file_sha256"] == sha
    art = s.artifacts()
    assert art["neglabel_labels_file_format"] == "text" and art["neglabel_labels_duplicates"] == 1
    assert art["neglabel_num_negatives"] == 6
    # a text file names no ID classes: any ID set may use it
    s2 = NegLabelScore(labels_file=str(p), ngroup=1).fit(fake_ctx(("plane", "tree")))
    assert s2.labels == s.labels
    img = fake_encode_text(["the nice cat", "the nice plane", "zzz"])
    assert np.all(np.isfinite(s.score(img)))
    # a file with nothing but comments is refused
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no labels"):
        NegLabelScore(labels_file=str(tmp_path / "empty.txt")).fit(fake_ctx())


def test_neglabel_json_labels_file_records_sha256(tmp_path):
    ctx = fake_ctx()
    vocab = {"noun": [f"noun{i}" for i in range(40)], "adj": [f"adj{i}" for i in range(10)]}
    mined = NegLabelScore(vocabulary=vocab, neg_fraction=0.5, ngroup=2).fit(ctx)
    p = tmp_path / "labels.json"
    mined.save_labels(p)
    s = NegLabelScore(labels_file=str(p), ngroup=2).fit(fake_ctx())
    assert s.labels == mined.labels and s.kinds == mined.kinds
    assert s.params()["labels_file_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert s.artifacts()["neglabel_labels_file_format"] == "json"
    assert "labels_file_sha256" not in mined.params()
    with pytest.raises(ValueError, match="other ID classes"):
        NegLabelScore(labels_file=str(p)).fit(fake_ctx(("plane", "tree")))


# ------------------------------------------------------------------ Hugging Face CLIP backend


@pytest.mark.parametrize("tokenizer_files", [False, True])
def test_hf_backend_trimmed_encoding_equals_full_context(tmp_path, tokenizer_files):
    from conftest import tiny_hf_clip
    from vlmood.models.hf_backend import write_clip_tokenizer_files

    d = tmp_path / "hfclip"
    model = tiny_hf_clip(d)
    if tokenizer_files:
        write_clip_tokenizer_files(d)
    vlm = load_model(f"hf:{d}")
    prompts = mixed_prompts(40)
    ids, mask = vlm._tokenizer(prompts)  # full context, as a plain loop would run it
    with torch.no_grad():
        out = model.text_model(input_ids=ids, attention_mask=mask)
        ref = F.normalize(model.text_projection(out.pooler_output), dim=-1).numpy()
    widths = []
    orig = vlm.model.text_model.forward

    def spy(*a, input_ids=None, **k):
        widths.append(int(input_ids.shape[1]))
        return orig(*a, input_ids=input_ids, **k)

    vlm.model.text_model.forward = spy
    calls = []
    got = vlm.encode_text(prompts, batch_size=8, progress=calls.append).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert sum(calls) == len(prompts) and max(widths) < ids.shape[1] and widths == sorted(widths)


def test_pooled_memo_for_large_vocabularies_is_exact_and_shared(minilm, monkeypatch):
    """A large prompt list through a Hugging Face tower keeps the pooled transformer outputs in
    memory: the same embeddings as the batched forward, another projection over the same locked
    transformer reuses them (no transformer forward), and changed transformer weights do not."""
    import copy

    from vlmood.models import open_clip_backend as ocb

    prompts = mixed_prompts(60)
    ref = minilm.encode_text(prompts, batch_size=16).numpy()  # below the threshold: the plain path
    monkeypatch.setattr(ocb, "POOLED_MEMO_MIN", 10)
    ocb._POOLED_MEMO.clear()
    got = minilm.encode_text(prompts, batch_size=16).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert len(ocb._POOLED_MEMO) == 1

    other = copy.deepcopy(minilm)  # same transformer, another projection
    with torch.no_grad():
        for p in other.torch_module.text.proj.parameters():
            p.mul_(-0.5).add_(0.01)
    calls = []
    orig = other.torch_module.text.transformer.forward
    monkeypatch.setattr(
        other.torch_module.text.transformer, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k)
    )
    got2 = other.encode_text(prompts, batch_size=16).numpy()
    assert calls == []  # reused the pooled outputs
    monkeypatch.setattr(ocb, "POOLED_MEMO_MIN", 10**9)
    np.testing.assert_allclose(got2, other.encode_text(prompts, batch_size=16).numpy(), atol=1e-5, rtol=0)

    monkeypatch.setattr(ocb, "POOLED_MEMO_MIN", 10)
    with torch.no_grad():  # a fine-tuned transformer: a new key, encoded again
        next(other.torch_module.text.transformer.parameters()).add_(0.01)
    other.encode_text(prompts, batch_size=16)
    assert len(calls) > 0
    ocb._POOLED_MEMO.clear()
