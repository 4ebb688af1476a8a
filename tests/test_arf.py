"""ARF (anchor-based robust fine-tuning): lam1 = lam2 = 0 is FLYP exactly, each anchor term against
a hand-computed value, FAISS retrieval equal to brute force (text and image modes, flat and IVF),
pool features cached, the captions builder, clear one-line errors for bad inputs, `vlmood fit arf`
end to end with load_adapter, and an exact resume. Tiny random model, small real images."""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlmood.cli import main
from vlmood.data.base import DataError
from vlmood.data.captions import (
    build_captions,
    emoji_caption,
    match_captions,
    openclipart_caption,
    read_captions_file,
    read_pool,
    tuxpaint_caption,
)
from vlmood.data.example import write_example
from vlmood.data.sources import load_source
from vlmood.errors import UsageError
from vlmood.features.extract import extract_features
from vlmood.features.options import ExtractOptions
from vlmood.features.retrieval import array_blocks, dense_top_k, top_k_by_max_similarity
from vlmood.features.text import class_text_features, encode_texts
from vlmood.methods import TrainData, create_method, fit_method, load_adapter
from vlmood.methods.arf import ANCHORS_FILE, retrieve_anchors
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-test")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The example benchmark (digits 0-4 train/ID; 5-9 and photo crops as OOD), a captions file of
    its train images (paths relative to the data folder, two captions for the 'zero' images), and
    a candidate pool of two files over the OOD images."""
    root = tmp_path_factory.mktemp("arf")
    bench = write_example(root / "data", per_class=8, size=32)
    d = bench.parent
    caps = []
    for p in sorted((d / "train").rglob("*.png")):
        rel = p.relative_to(d).as_posix()
        caps.append([rel, f"a handwritten digit {p.parent.name}"])
        if p.parent.name == "zero":
            caps.append([rel, "a round digit drawn with a pen"])
    near = sorted((d / "near").rglob("*.png"))
    far = sorted((d / "far").rglob("*.jpg"))
    words = ["five", "six", "seven", "eight", "nine"]
    pool1 = [
        [p.relative_to(d).as_posix(), f"a digit {words[i % 5]} drawn by hand, no. {i}"]
        for i, p in enumerate(near)
    ]
    pool2 = [[p.relative_to(d / "far").as_posix(), f"a photo crop number {i}"] for i, p in enumerate(far)]
    return {
        "root": root,
        "bench": bench,
        "data": d,
        "captions": _write_csv(d / "caps.csv", ["path", "caption"], caps),
        "pool1": _write_csv(d / "pool1.csv", ["path", "caption"], pool1),
        "pool2": _write_csv(d / "far" / "pool2.csv", ["path", "caption"], pool2),
        "n_pool": len(pool1) + len(pool2),
        "train": load_source(str(d / "train"), classnames=str(d / "classnames.txt")),
    }


def _pools(world) -> str:
    return f"{world['pool1']},{world['pool2']}"


def _params(world, **kw):
    base = {"captions": str(world["captions"]), "pool": _pools(world), "top_k": 10, "anchor_batch_size": 4}
    base.update(kw)
    return base


def _cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=1e-3, optimizer="adamw", weight_decay=0.1, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- FLYP at 0
def test_arf_with_zero_lambdas_is_flyp(model, world, tmp_path):
    kw = dict(cache_root=tmp_path / "cache", progress=False, shots=2)
    flyp = fit_method("flyp", model, world["train"], tmp_path / "flyp", _cfg(), {}, **kw)
    arf = fit_method(
        "arf", model, world["train"], tmp_path / "arf0", _cfg(), {"lam1": 0.0, "lam2": 0.0}, **kw
    )
    assert _same(_tensors(flyp), _tensors(arf))
    assert create_method("arf", lam1=0, lam2=0).extra_loss(model, None) is None
    # with the anchors switched on the same run trains otherwise
    arf1 = fit_method("arf", model, world["train"], tmp_path / "arf1", _cfg(), _params(world), **kw)
    assert not _same(_tensors(flyp), _tensors(arf1))


# ---------------------------------------------------------------------------------------------- terms by hand
def _ce(row, target):
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def _clip_by_hand(img, txt, s):
    """Symmetric InfoNCE from plain Python lists of 2-d vectors."""
    b = len(img)
    dot = [[s * (img[i][0] * txt[j][0] + img[i][1] * txt[j][1]) for j in range(b)] for i in range(b)]
    rows = sum(_ce(dot[i], i) for i in range(b)) / b
    cols = sum(_ce([dot[j][i] for j in range(b)], i) for i in range(b)) / b
    return 0.5 * (rows + cols)


class _FakeModel:
    """tokenize: one id per known text."""

    def __init__(self, vocab):
        self.vocab = vocab

    def tokenize(self, texts):
        return torch.tensor([[self.vocab.index(t)] for t in texts])


class _FakeModule:
    """image: the 'pixels' are already 2-d features; text: a fixed unit vector per token id."""

    def __init__(self, table):
        self.table = table

    def image(self, pixels):
        return F.normalize(pixels.float(), dim=-1)

    def text(self, tokens):
        return self.table[tokens[:, 0]]


def test_each_anchor_term_against_a_hand_computed_value(world):
    m = create_method("arf", **_params(world, lam1=0.5, lam2=2.0, anchor_batch_size=2))
    vocab = ["cap0", "cap1a", "cap1b", "anc0", "anc1", "anc2"]
    angles = [0.1, 1.2, 2.0, 0.7, 2.8, 4.0]
    table = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    anchor_pixels = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    m._captions = [["cap0"], ["cap1a", "cap1b"]]  # image 1 has two captions: one drawn per step
    m._anchor_paths = ["a0", "a1", "a2"]
    m._anchor_captions = ["anc0", "anc1", "anc2"]
    m._anchor_batch = m._anchor_rank_batch = 2
    m._anchor_loader = lambda idx: anchor_pixels[idx]
    extra = m.extra_loss(_FakeModel(vocab), None)
    f = torch.tensor([[0.8, 0.6], [-0.6, 0.8]])  # the batch's image features (normalised)
    s = torch.tensor(3.0)
    batch = {"index": torch.tensor([1, 0])}
    torch.manual_seed(5)
    total, logs = extra(_FakeModule(table), batch, f, s)
    # the same draws by hand: the caption of image 1, then the anchor batch
    torch.manual_seed(5)
    u = torch.rand(2).tolist()
    cap1 = ["cap1a", "cap1b"][int(u[0] * 2)]
    drawn = torch.randperm(3)[:2].tolist()
    fl = f.tolist()
    t_cap = [table[vocab.index(cap1)].tolist(), table[vocab.index("cap0")].tolist()]
    want_cap = _clip_by_hand(fl, t_cap, 3.0)
    fa = F.normalize(anchor_pixels[drawn], dim=-1).tolist()
    t_anc = [table[vocab.index(f"anc{i}")].tolist() for i in drawn]
    want_anc = _clip_by_hand(fa, t_anc, 3.0)
    assert logs["caption_loss"] == pytest.approx(want_cap, rel=1e-5)
    assert logs["anchor_loss"] == pytest.approx(want_anc, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * want_cap + 2.0 * want_anc, rel=1e-5)


# ---------------------------------------------------------------------------------------------- retrieval
def _check_equal(got, want):
    assert got.index.tolist() == want.index.tolist()
    assert np.allclose(got.score, want.score, atol=1e-5)
    assert got.query.tolist() == want.query.tolist()


@pytest.mark.parametrize("k", [1, 7, 50])
def test_faiss_top_k_equals_brute_force(k):
    g = np.random.default_rng(0)
    queries = g.normal(size=(6, 8)).astype(np.float32)
    pool = g.normal(size=(50, 8)).astype(np.float32)
    want = dense_top_k(queries, pool, k)
    # the pool in uneven blocks, each searched in chunks of 7 rows
    blocks = [(0, pool[:13]), (13, pool[13:40]), (40, pool[40:])]
    _check_equal(top_k_by_max_similarity(queries, blocks, k, chunk=7), want)
    # an IVF index over the queries that probes every list is exact too
    ivf = top_k_by_max_similarity(queries, array_blocks(pool, 9), k, chunk=5, ivf_min=1, nprobe=10**6)
    assert ivf.info["index"] == "IndexIVFFlat"
    _check_equal(ivf, want)
    with pytest.raises(UsageError, match="top_k=51"):
        top_k_by_max_similarity(queries, [(0, pool)], 51)


@pytest.mark.parametrize("mode", ["text", "image"])
def test_retrieval_through_the_model_equals_brute_force(model, world, tmp_path, mode):
    xo = ExtractOptions(cache_root=tmp_path / "cache", num_workers=0, progress=False)
    src = world["train"]
    data = TrainData(src.classnames, src.labels, source=src, extract=xo)
    templates = ["a photo of a {}."]
    res = retrieve_anchors(model, data, _pools(world), None, mode, 9, templates, progress=False, chunk=4)
    pool = read_pool(_pools(world))
    if mode == "text":
        queries = class_text_features(model, src.classnames, templates, xo.cache_root, progress=False)
        feats = encode_texts(model, pool.captions, xo.cache_root, progress=False)
        names = list(src.classnames)
    else:
        queries = extract_features(model, src, ("image",), options=xo).get("image")
        feats = extract_features(model, pool.source(), ("image",), options=xo).get("image")
        names = [s.path for s in src.samples]
    want = dense_top_k(np.asarray(queries), np.asarray(feats), 9)
    rows = res["rows"]
    assert [r["path"] for r in rows] == [pool.paths[i] for i in want.index]
    assert [r["caption"] for r in rows] == [pool.captions[i] for i in want.index]
    assert [r["query"] for r in rows] == [names[q] for q in want.query]
    assert np.allclose([r["score"] for r in rows], want.score, atol=1e-5)
    assert [r["rank"] for r in rows] == list(range(1, 10))
    assert {r["pool"] for r in rows} <= {str(world["pool1"]), str(world["pool2"])}


def test_pool_features_are_encoded_once(model, world, tmp_path, monkeypatch):
    xo = ExtractOptions(cache_root=tmp_path / "cache", num_workers=0, progress=False)
    src = world["train"]
    data = TrainData(src.classnames, src.labels, source=src, extract=xo)
    args = (model, data, _pools(world), None)
    first = retrieve_anchors(*args, "image", 5, ["{}"], progress=False)
    assert first["encoded_now"] == {"train_images": len(src), "pool_images": world["n_pool"]}
    again = retrieve_anchors(*args, "image", 5, ["{}"], progress=False)
    assert again["encoded_now"] == {"train_images": 0, "pool_images": 0}
    assert again["rows"] == first["rows"]
    # text mode: the second run encodes no caption (class prompts and pool captions are cached)
    m = copy.deepcopy(model)
    calls = []
    real = m.encode_text

    def counting(texts, *a, **k):
        calls.append(len(texts))
        return real(texts, *a, **k)

    monkeypatch.setattr(m, "encode_text", counting)
    one = retrieve_anchors(m, *args[1:], "text", 5, ["{}"], progress=False)
    assert sum(calls) == world["n_pool"] + len(src.classnames)
    calls.clear()
    two = retrieve_anchors(m, *args[1:], "text", 5, ["{}"], progress=False)
    assert calls == [] and two["rows"] == one["rows"]


# ---------------------------------------------------------------------------------------------- captions
def _prepared_root(tmp_path: Path) -> Path:
    root = tmp_path / "prepared"
    _write_csv(
        root / "emoji" / "emoji.csv",
        ["path", "style", "codepoint", "name", "category", "subcategory", "tags", "caption"],
        [
            ["twitter/animals-nature/1f436.png", "twitter", "1f436", "dog face", "Animals & Nature",
             "animal-mammal", "dog, face, pet, Dog face", "dog face"],
            ["openmoji-black/food-drink/1f34e.png", "openmoji-black", "1f34e", "red apple", "Food & Drink",
             "food-fruit", "", "red apple"],
        ],
    )  # fmt: skip
    _write_csv(
        root / "openclipart" / "captions.csv",
        ["path", "caption", "title", "description", "keywords", "category"],
        [
            ["images/animals/frog.png", "2 dead frogs", "2 dead frogs", "Two frogs,\nlying  down.",
             "frog; dead; Frog; 2 dead frogs", "animals"],
            ["images/food/pear.png", "pear", "", "", "", "food"],
        ],
    )  # fmt: skip
    _write_csv(
        root / "tuxpaint" / "stamps.csv",
        ["path", "caption", "kind", "category", "name"],
        [["photos/animals/amphibians/frog.png", "A frog.", "photo", "animals/amphibians", "frog"]],
    )
    return root


def test_captions_builder_composes_rich_deterministic_captions(tmp_path, capsys):
    root = _prepared_root(tmp_path)
    res = build_captions(root, tmp_path / "caps.csv")
    assert res["rows"] == 5 and res["sources"] == {"emoji": 2, "openclipart": 2, "tuxpaint": 1}
    with open(tmp_path / "caps.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["path", "caption"],
        ["emoji/twitter/animals-nature/1f436.png", "a Twitter emoji of dog face, animal mammal, tags: dog, face, pet"],
        ["emoji/openmoji-black/food-drink/1f34e.png", "an OpenMoji black line-art emoji of red apple, food fruit"],
        ["openclipart/images/animals/frog.png",
         "a clip art of 2 dead frogs, animals. Two frogs, lying down. keywords: frog, dead"],
        ["openclipart/images/food/pear.png", "a clip art of pear, food."],
        ["tuxpaint/photos/animals/amphibians/frog.png", "A frog. (photo: animals, amphibians)"],
    ]  # fmt: skip
    first = (tmp_path / "caps.csv").read_bytes()
    # the CLI: default output ROOT/captions.csv, the same bytes
    assert main(["data", "captions", "--root", str(root)]) == 0
    assert "5 images" in capsys.readouterr().out
    assert (root / "captions.csv").read_bytes() == first
    # the file matches images named relative to the root
    cf = read_captions_file(root / "captions.csv")
    assert match_captions(cf, [str(root / "tuxpaint/photos/animals/amphibians/frog.png")]) == [
        ["A frog. (photo: animals, amphibians)"]
    ]
    assert (
        main(
            [
                "data",
                "captions",
                "--root",
                str(root),
                "--source",
                "tuxpaint",
                "--out",
                str(tmp_path / "t.csv"),
            ]
        )
        == 0
    )
    assert (tmp_path / "t.csv").read_text().count("\n") == 2
    # pieces on their own
    assert (
        emoji_caption({"style": "google", "name": "cat", "subcategory": "", "tags": ""})
        == "a Google emoji of cat"
    )
    assert openclipart_caption({"title": "", "caption": "x"}) == "a clip art of x."
    assert tuxpaint_caption({"caption": "A cat.", "kind": "", "category": ""}) == "A cat."


def test_captions_builder_without_prepared_data(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="vlmood data prepare emoji"):
        build_captions(tmp_path / "empty")
    rc = main(["data", "captions", "--root", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and len([ln for ln in err.splitlines() if ln.startswith("vlmood ")]) == 1


def test_captions_of_the_emoji_ood_train_split_match_the_builder_paths(tmp_path):
    """A train image listed as `twitter/...` under ROOT/emoji is found under the key `emoji/twitter/...`
    that the builder writes (paths relative to the data root)."""
    root = _prepared_root(tmp_path)
    build_captions(root)
    img = root / "emoji" / "twitter" / "animals-nature" / "1f436.png"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"")
    lst = root / "emoji" / "splits" / "train_id.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text("twitter/animals-nature/1f436.png 0\n")
    src = load_source(str(lst), root=root / "emoji")
    got = match_captions(read_captions_file(root / "captions.csv"), [s.path for s in src.samples])
    assert got == [["a Twitter emoji of dog face, animal mammal, tags: dog, face, pet"]]


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"lam1": -0.1}, "'lam1' must be >= 0"),
        ({"lam2": -1.0}, "'lam2' must be >= 0"),
        ({"top_k": 0}, "'top_k' must be >= 1"),
        ({"retrieve": "both"}, "'retrieve' must be one of text, image"),
        ({"anchor_batch_size": -1}, "anchor_batch_size"),
        ({"anchor_batch_size": 20}, "more than the top_k=10"),
        ({"captions": ""}, "vlmood data captions --root DATA_ROOT"),
        ({"pool": ""}, "needs a candidate pool"),
        ({"captioner": "/no/such/dir"}, "give captions=FILE or captioner"),
        ({"captions": "", "captioner": "/no/such/dir"}, "does not exist"),
        ({"captions": "/no/such/caps.csv"}, "does not exist"),
        ({"pool": "/no/such/pool.csv"}, "does not exist"),
    ],
)
def test_bad_parameters_are_refused(world, kw, needle):
    with pytest.raises((UsageError, DataError), match=None) as e:
        create_method("arf", **_params(world, **kw))
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_faiss_missing_gives_the_install_command(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(UsageError, match="pip install faiss-cpu"):
        create_method("arf", **_params(world))
    create_method("arf", **_params(world, lam2=0.0))  # no retrieval, no faiss needed


def _fit_error(model, world, tmp_path, **kw) -> str:
    out = tmp_path / "bad"
    with pytest.raises((UsageError, DataError)) as e:
        fit_method(
            "arf", model, world["train"], out, _cfg(epochs=1), _params(world, **kw),
            cache_root=tmp_path / "cache", progress=False, shots=1,
        )  # fmt: skip
    assert not out.exists()  # nothing left behind
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"path,caption\n", "is empty"),
        (b"", "is empty"),
        (b"file,text\nx.png,a\n", "no path or caption column"),
        (b"path\nx.png\n", "no caption column"),
        (b"\xff\xfe\x00\x01binary\x00garbage", "not a readable UTF-8 CSV"),
        (b"path,caption\nnear/none.png,a\n", "images are missing"),
        (b"path,caption\nnear/x.png,\n", "empty caption"),
        (b"path,caption\n../outside.png,a\n", "leaves the pool root"),
    ],
)
def test_bad_candidate_pools_are_refused(model, world, tmp_path, content, needle):
    bad = world["data"] / f"bad_pool_{abs(hash(content))}.csv"
    bad.write_bytes(content)
    try:
        msg = _fit_error(model, world, tmp_path, pool=f"{world['pool1']},{bad}")
    finally:
        bad.unlink()
    assert needle in msg and str(bad) in msg, msg


def test_parquet_pool(world):
    import pandas as pd

    rows = list(csv.reader(open(world["pool1"], encoding="utf-8")))[1:]
    df = pd.DataFrame({"Path": [r[0] for r in rows], "caption": [r[1] for r in rows]})
    p = world["data"] / "pool.parquet"
    try:
        try:
            df.to_parquet(p)
        except ImportError:  # no parquet engine: reading a parquet pool gives the install command
            p.write_bytes(b"PAR1")
            with pytest.raises(UsageError, match="pip install pyarrow"):
                read_pool(str(p))
            return
        pool = read_pool(str(p))
        assert pool.captions == [r[1] for r in rows] and len(pool) == len(rows)
    finally:
        p.unlink(missing_ok=True)


def test_top_k_above_the_pool_size_is_refused(model, world, tmp_path):
    msg = _fit_error(model, world, tmp_path, top_k=1000, anchor_batch_size=4)
    assert "top_k=1000" in msg and f"{world['n_pool']} pairs" in msg


def test_missing_captions_name_the_first_image_and_the_fix(model, world, tmp_path):
    lines = world["captions"].read_text().splitlines()
    partial = world["data"] / "partial_caps.csv"
    partial.write_text("\n".join(ln for ln in lines if "/one/" not in ln) + "\n")
    msg = _fit_error(model, world, tmp_path, captions=str(partial))
    assert str(partial) in msg and "train/one/" in msg and "vlmood data captions" in msg
    assert "captions_root" in msg
    # paths relative to another folder: captions_root says where
    moved = tmp_path / "elsewhere" / "caps.csv"
    moved.parent.mkdir()
    moved.write_text(world["captions"].read_text())
    assert "has no caption for" in _fit_error(model, world, tmp_path, captions=str(moved))
    cf = read_captions_file(moved, world["data"])
    assert len(match_captions(cf, [s.path for s in world["train"].samples])) == len(world["train"])


def test_bad_captioner_folder_is_one_line(model, world, tmp_path):
    from vlmood.models.base import ModelLoadError

    d = tmp_path / "captioner"
    d.mkdir()
    with pytest.raises(UsageError, match="has no config.json"):
        create_method("arf", **_params(world, captions="", captioner=str(d)))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot be loaded as a Hugging Face image-to-text model") as e:
        fit_method(
            "arf", model, world["train"], tmp_path / "ad", _cfg(epochs=1),
            _params(world, captions="", captioner=str(d), lam2=0.0),
            cache_root=tmp_path / "cache", progress=False, shots=1,
        )  # fmt: skip
    assert "\n" not in str(e.value)


def _tiny_blip(path: Path) -> Path:
    """A tiny random BLIP captioner whose decoder always says 'dog' (saved with save_pretrained)."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat"]
    tmp = path.parent / "vocab"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(str(tmp / "vocab.txt"))
    proc = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    cfg = transformers.BlipConfig(
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
        ),
        text_config=dict(
            vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, sep_token_id=3, pad_token_id=0,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    m = transformers.BlipForConditionalGeneration(cfg)
    with torch.no_grad():
        head = m.text_decoder.cls.predictions
        head.decoder.weight.zero_()
        head.bias.zero_()
        head.bias[vocab.index("dog")] = 10.0
    m.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_a_local_captioner_captions_the_training_images(model, world, tmp_path):
    cap = _tiny_blip(tmp_path / "blip")
    out = fit_method(
        "arf", model, world["train"], tmp_path / "ad", _cfg(epochs=1),
        {"captioner": str(cap), "lam2": 0.0},
        cache_root=tmp_path / "cache", progress=False, shots=1,
    )  # fmt: skip
    rows = list(csv.reader(open(out / "train" / "arf_captions.csv", encoding="utf-8")))
    assert rows[0] == ["path", "caption"] and len(rows) == 1 + 5
    assert {w for r in rows[1:] for w in r[1].split()} == {"dog"}
    info = json.loads((out / "adapter.json").read_text())
    assert info["metrics"]["arf"]["captions"]["source"] == "captioner"


# ---------------------------------------------------------------------------------------------- end to end
def _common(world):
    return ["--model", "tiny-test", "--benchmark", str(world["bench"]), "--workers", "0", "--no-progress"]


def test_cli_fit_arf_then_load_and_eval(model, world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    ad = tmp_path / "ad"
    args = ["fit", "arf", *_common(world), "--shots", "2", "--epochs", "1", "--train-batch-size", "4"]
    params = [f"captions={world['captions']}", f"pool={_pools(world)}", "top_k=6", "retrieve=image"]
    args += ["--lr", "1e-3", *[x for p in params for x in ("--param", p)], "--out", str(ad)]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    info = json.loads((ad / "adapter.json").read_text())
    assert info["method"] == "arf" and info["params"]["retrieve"] == "image"
    arf = info["metrics"]["arf"]
    assert "unverified against official code" in arf["implementation"]
    assert arf["anchors"]["n"] == 6 and arf["anchors"]["file"] == f"train/{ANCHORS_FILE}"
    assert arf["captions"]["images"] == 10 and arf["captions"]["images_with_several"] == 2
    assert {"caption_loss", "anchor_loss", "clip_loss"} <= set(info["metrics"]["last"])
    with open(ad / "train" / ANCHORS_FILE, newline="", encoding="utf-8") as f:
        anchors = list(csv.DictReader(f))
    assert [a["rank"] for a in anchors] == ["1", "2", "3", "4", "5", "6"]
    assert all(Path(a["path"]).is_file() and a["caption"] for a in anchors)
    scores = [float(a["score"]) for a in anchors]
    assert scores == sorted(scores, reverse=True)
    # the adapter: both towers changed, loaded onto a copy of the base model
    m = copy.deepcopy(model)
    adapter = load_adapter(ad, m)
    assert adapter.kind == "finetune" and m.identity.extra["adapter"] == adapter.key
    assert m.logit_scale != model.logit_scale
    assert adapter.text_features().shape == (5, model.embed_dim)
    rc = main(
        ["eval", *_common(world), "--scores", "mcm", "--adapter", str(ad), "--out", str(tmp_path / "r")]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["adapter"]["method"] == "arf"


@pytest.mark.parametrize(
    "param, needle",
    [
        ("lam1=-1", "'lam1' must be >= 0"),
        ("top_k=0", "'top_k' must be >= 1"),
        ("retrieve=both", "'retrieve'"),
    ],
)
def test_cli_bad_parameters_give_one_line(world, tmp_path, capsys, param, needle):
    args = ["fit", "arf", *_common(world), "--param", f"captions={world['captions']}"]
    args += ["--param", f"pool={_pools(world)}", "--param", param, "--out", str(tmp_path / "ad")]
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("vlmood ")]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "ad").exists()


def test_resume_reproduces_the_uninterrupted_run(model, world, tmp_path, monkeypatch):
    from vlmood.train import engine

    kw = dict(cache_root=tmp_path / "cache", progress=False, shots=2)
    params = _params(world, top_k=8)
    cfg = _cfg(epochs=2, warmup_steps=1, log_every=1)
    full = fit_method("arf", model, world["train"], tmp_path / "full", cfg, params, **kw)

    class Killed(Exception):
        pass

    real = engine.Trainer.save_checkpoint

    def save_then_die(self):
        real(self)
        raise Killed

    monkeypatch.setattr(engine.Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        fit_method("arf", model, world["train"], tmp_path / "cut", cfg, params, **kw)
    monkeypatch.setattr(engine.Trainer, "save_checkpoint", real)
    assert not (tmp_path / "cut" / "adapter.json").exists()
    anchors = (tmp_path / "cut" / "train" / ANCHORS_FILE).read_bytes()
    cut = fit_method("arf", model, world["train"], tmp_path / "cut", cfg, params, resume=True, **kw)
    assert _same(_tensors(full), _tensors(cut))
    assert (tmp_path / "cut" / "train" / ANCHORS_FILE).read_bytes() == anchors
    steps = [json.loads(ln) for ln in (full / "train" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(ln) for ln in (cut / "train" / "metrics.jsonl").read_text().splitlines()]
    pick = [(r["step"], r.get("loss"), r.get("anchor_loss")) for r in steps if r.get("kind") == "step"]
    assert pick == [
        (r["step"], r.get("loss"), r.get("anchor_loss")) for r in again if r.get("kind") == "step"
    ]
    info = json.loads((cut / "adapter.json").read_text())
    assert info["metrics"]["arf"]["anchors"]["reused"] is True


def test_api_fit_and_study_run_arf(model, world, tmp_path):
    import vlmood

    bench = vlmood.load_benchmark(world["bench"])
    params = _params(world, top_k=6)
    ad = vlmood.fit(
        "arf", model, bench, out=tmp_path / "arf", shots=1, epochs=1, batch_size=4, lr=1e-3,
        params=params, cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert ad.method == "arf" and "adapter" not in model.identity.extra
    st = vlmood.study(
        model, bench, ["zero-shot", "arf"], [0], out=tmp_path / "study", shots=1, scores=["mcm"],
        params={"arf": params}, epochs=1, batch_size=4, lr=1e-3, cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert "arf" in json.dumps(st.to_dict()["runs"])
