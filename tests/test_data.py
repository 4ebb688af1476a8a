"""Data layer: readers, decoding, fingerprints, few-shot splits, class names, templates, benchmarks."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vlmood.data.base import CorruptImageError, DataError, ImageSource
from vlmood.data.benchmarks import (
    BENCHMARKS,
    check_benchmark,
    format_check_report,
    list_benchmarks,
    load_benchmark,
    load_benchmark_file,
)
from vlmood.data.classnames import BUILTIN_CLASSNAMES, load_classnames, load_wnids, read_classnames
from vlmood.data.fewshot import few_shot_indices, load_split, read_split, save_split
from vlmood.data.sources import (
    ImageDataset,
    csv_source,
    image_folder,
    image_list,
    load_source,
    open_image,
)
from vlmood.data.templates import list_templates, load_templates

# ---------------------------------------------------------------------------- real images


def _digits() -> np.ndarray:
    """sklearn's 8x8 digit images (real handwriting), scaled to 0..255 uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0 * 255).astype(np.uint8), d.target


DIGITS, DIGIT_LABELS = _digits()


def write_digit(path: Path, i: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(DIGITS[i], mode="L").resize((size, size), Image.NEAREST).convert("RGB")
    img.save(path)
    return path


def make_folder(root: Path, classes: dict[str, int], ext: str = ".png", start: int = 0) -> Path:
    k = start
    for cls, n in classes.items():
        for j in range(n):
            write_digit(root / cls / f"img{j:02d}{ext}", k)
            k += 1
    return root


# ---------------------------------------------------------------------------- image folder


def test_image_folder_labels_and_classnames(tmp_path):
    root = make_folder(tmp_path / "ds", {"b_class": 2, "a_class": 3})
    (root / "a_class" / "notes.txt").write_text("not an image")
    (root / "a_class" / ".hidden.png").write_bytes(b"x")
    write_digit(root / "b_class" / "nested" / "deep.JPG", 9)
    src = image_folder(root)
    assert src.classnames == ["a class", "b class"]
    assert src.labels == [0, 0, 0, 1, 1, 1]
    assert all(os.path.isabs(s.path) for s in src.samples)
    assert src.samples[-1].path.endswith("deep.JPG")  # nested and upper-case suffix
    assert src.kind == "folder" and src.meta["root"] == str(root.absolute())
    # a bare list that is not the folder names is refused unless sorted-folder order is asked for
    with pytest.raises(DataError, match="not the class folder names.*--classnames-order sorted"):
        image_folder(root, classnames=["alpha", "beta"])
    named = image_folder(root, classnames=["alpha", "beta"], name="x", classnames_order="sorted")
    assert named.classnames == ["alpha", "beta"] and named.name == "x"
    assert named.meta["classnames_mapping"] == "sorted-order"
    with pytest.raises(DataError, match="2 class subfolders but 3 class names"):
        image_folder(root, classnames=["a", "b", "c"])


def test_image_folder_class_subset_order(tmp_path):
    root = make_folder(tmp_path / "ds", {"n02": 1, "n01": 2, "n03": 1})
    src = image_folder(root, classes=["n03", "n01"])
    assert src.labels == [0, 1, 1]
    assert src.classnames == ["n03", "n01"]
    with pytest.raises(DataError, match="n09"):
        image_folder(root, classes=["n01", "n09"])


def test_image_folder_errors_name_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        image_folder(tmp_path / "empty")
    (tmp_path / "e2" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"e2/cat has no images"):
        image_folder(tmp_path / "e2")


def test_load_source_guesses_kind(tmp_path):
    cls = make_folder(tmp_path / "cls", {"x": 1, "y": 1})
    flat = tmp_path / "flat"
    for i in range(3):
        write_digit(flat / f"{i}.png", i)
    assert load_source(cls).classnames == ["x", "y"]
    f = load_source(str(flat))
    assert f.labels == [-1, -1, -1] and f.classnames is None and f.meta["flat"]
    # forcing flat on a class folder (no top-level images) is an error naming the folder
    with pytest.raises(DataError, match="has no images"):
        load_source(f"flat:{cls}")
    with pytest.raises(DataError, match="does not exist"):
        load_source(tmp_path / "missing")
    (tmp_path / "weird.bin").write_bytes(b"")
    with pytest.raises(DataError, match="cannot tell"):
        load_source(tmp_path / "weird.bin")


# ---------------------------------------------------------------------------- image list


def test_image_list_parsing(tmp_path):
    for i in range(3):
        write_digit(tmp_path / "imgs" / f"{i}.png", i)
    lst = tmp_path / "lists" / "test.txt"
    lst.parent.mkdir()
    lst.write_text('# comment\nimgs/0.png 2\n\nimgs/1.png 0 {"extra": 1}\nimgs/2.png\n')
    src = image_list(lst, root=tmp_path, classnames=["a", "b", "c"])
    assert src.labels == [2, 0, -1]
    assert src.samples[0].path == str((tmp_path / "imgs" / "0.png").absolute())
    assert src.name == "test" and src.kind == "list"
    # root defaults to the list's own folder
    assert image_list(lst).samples[0].path == str((lst.parent / "imgs" / "0.png").absolute())
    # the list: prefix through load_source
    assert load_source(f"list:{lst}", root=tmp_path).labels == [2, 0, -1]


def test_image_list_bad_lines(tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_text("a.png 1\nb.png 1\nc.png cat\n")
    with pytest.raises(DataError, match=rf"{lst}:3"):
        image_list(lst)
    lst.write_text("a.png 5\n")
    with pytest.raises(DataError, match=rf"{lst}:1: label 5 is out of range"):
        image_list(lst, classnames=["a", "b"])
    lst.write_text("# only a comment\n")
    with pytest.raises(DataError, match="no entries"):
        image_list(lst)
    with pytest.raises(DataError, match="does not exist"):
        image_list(tmp_path / "none.txt")


# ---------------------------------------------------------------------------- csv


def test_csv_source(tmp_path):
    for i in range(3):
        write_digit(tmp_path / f"{i}.png", i)
    c = tmp_path / "pairs.csv"
    c.write_text('filepath,label,title\n0.png,dog,"a dog, sitting"\n1.png,cat,\n2.png,,a thing\n')
    src = csv_source(c)
    assert src.classnames == ["cat", "dog"]  # sorted distinct strings
    assert src.labels == [1, 0, -1]
    assert [s.caption for s in src.samples] == ["a dog, sitting", None, "a thing"]
    mapped = csv_source(c, classnames=["dog", "cat"])
    assert mapped.labels == [0, 1, -1]
    with pytest.raises(DataError, match=r"pairs.csv:2: label 'dog' is not one of"):
        csv_source(c, classnames=["cat", "bird"])
    c2 = tmp_path / "ints.csv"
    c2.write_text("path,label\n0.png,1\n1.png,0\n")
    assert load_source(c2).labels == [1, 0]
    c3 = tmp_path / "nopath.csv"
    c3.write_text("image_id,label\n0.png,1\n")
    with pytest.raises(DataError, match="no path column"):
        csv_source(c3)


# ---------------------------------------------------------------------------- decoding


def test_open_image_decodes_real_image(tmp_path):
    p = write_digit(tmp_path / "d.png", 5, size=16)
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (16, 16)
    expect = np.asarray(Image.fromarray(DIGITS[5]).resize((16, 16), Image.NEAREST))
    assert np.array_equal(np.asarray(img)[..., 0], expect)


def test_corrupt_images_raise_naming_file(tmp_path):
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = write_digit(tmp_path / "good.png", 3, size=64)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpg = tmp_path / "good.jpg"
    Image.open(good).save(jpg, quality=95)
    trunc_jpg = tmp_path / "trunc.jpg"
    trunc_jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    for bad in (garbage, empty, truncated, trunc_jpg, tmp_path / "missing.png"):
        with pytest.raises(CorruptImageError) as ei:
            open_image(bad)
        assert ei.value.path == str(bad)
        assert str(bad) in str(ei.value) and "--skip-corrupt" in str(ei.value)


def test_transparency_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    rgba.save(tmp_path / "a.png")
    out = np.asarray(open_image(tmp_path / "a.png"))
    assert tuple(out[3, 3]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 1])
    la = Image.new("LA", (2, 2), (0, 0))
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(open_image(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(open_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 20, 30)


# ---------------------------------------------------------------------------- dataset


def _transform(img):
    import torch

    arr = np.asarray(img.resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def test_image_dataset_strict_and_skip(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2})
    (root / "a" / "zz_bad.png").write_bytes(b"garbage")
    src = image_folder(root)
    ds = ImageDataset(src, transform=_transform)
    x, i, ok = ds[0]
    assert tuple(x.shape) == (3, 8, 8) and i == 0 and ok is True and float(x.max()) > 0
    with pytest.raises(CorruptImageError, match="zz_bad.png"):
        ds[2]
    skip = ImageDataset(src, transform=_transform, skip_corrupt=True)
    x, i, ok = skip[2]
    assert ok is False and i == 2 and tuple(x.shape) == (3, 8, 8) and float(x.abs().sum()) == 0
    # picklable (DataLoader workers) and usable through a DataLoader with workers
    clone = pickle.loads(pickle.dumps(skip))
    assert clone[1][2] is True
    from torch.utils.data import DataLoader

    batches = list(DataLoader(skip, batch_size=3, num_workers=1))
    xs, idx, oks = batches[0]
    assert xs.shape == (3, 3, 8, 8) and idx.tolist() == [0, 1, 2] and oks.tolist() == [True, True, False]


def test_image_dataset_without_transform(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 1})
    x, _, ok = ImageDataset(image_folder(root))[0]
    assert ok and tuple(x.shape) == (3, 32, 32) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0


# ---------------------------------------------------------------------------- fingerprints


def test_fingerprint_tracks_content_mtime_and_labels(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    src = image_folder(root)
    fp_stat, fp_content = src.fingerprint("stat"), src.fingerprint("content")
    assert image_folder(root).fingerprint("stat") == fp_stat  # stable
    assert image_folder(root).fingerprint("content") == fp_content
    target = Path(src.samples[0].path)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert src.fingerprint("stat") != fp_stat
    assert src.fingerprint("content") == fp_content  # same bytes
    write_digit(target, 100)  # new content
    assert src.fingerprint("content") != fp_content
    relabelled = ImageSource(src.name, [type(s)(s.path, 1 - s.label) for s in src.samples], src.classnames)
    assert relabelled.fingerprint("content") != src.fingerprint("content")


# ---------------------------------------------------------------------------- few-shot


def test_few_shot_indices_deterministic():
    labels = [i % 4 for i in range(40)] + [-1] * 5
    a = few_shot_indices(labels, shots=3, seed=1)
    assert a == few_shot_indices(labels, shots=3, seed=1)
    assert a == sorted(a) and len(a) == 12
    assert sorted(np.bincount([labels[i] for i in a]).tolist()) == [3, 3, 3, 3]
    assert all(labels[i] >= 0 for i in a)
    assert few_shot_indices(labels, shots=3, seed=2) != a
    # the result depends on labels/shots/seed only: same as a direct default_rng draw
    rng = np.random.default_rng(1)
    arr = np.asarray(labels)
    direct = sorted(int(j) for c in range(4) for j in rng.choice(np.flatnonzero(arr == c), 3, replace=False))
    assert a == direct


def test_few_shot_errors_name_class():
    labels = [0] * 5 + [1] * 2
    with pytest.raises(DataError, match=r"class 1 \('cat'\) has 2"):
        few_shot_indices(labels, shots=4, seed=0, classnames=["dog", "cat"])
    with pytest.raises(DataError, match="shots must be"):
        few_shot_indices(labels, shots=0, seed=0)
    with pytest.raises(DataError, match="all labels are -1"):
        few_shot_indices([-1, -1], shots=1, seed=0)


def test_split_save_load(tmp_path):
    root = make_folder(tmp_path / "ds", {"a": 4, "b": 4})
    src = image_folder(root)
    idx = few_shot_indices(src.labels, shots=2, seed=0)
    split = tmp_path / "splits" / "s.json"
    save_split(split, src, idx, {"seed": 0, "shots": 2, "note": "x"})
    raw = read_split(split)
    assert raw["seed"] == 0 and raw["shots"] == 2 and raw["meta"] == {"note": "x"}
    assert all(not os.path.isabs(s["path"]) for s in raw["samples"])
    assert load_split(split, src) == idx
    assert not list(split.parent.glob(".*.tmp"))  # atomic write leaves no temp file
    # the same data elsewhere (copied) still matches: paths are relative
    import shutil

    shutil.copytree(root, tmp_path / "copy")
    assert load_split(split, image_folder(tmp_path / "copy")) == idx
    # an extra image shifts indices: the split is remapped onto the same files
    write_digit(root / "a" / "img00a.png", 50)
    src2 = image_folder(root)
    remapped = load_split(split, src2)
    assert [src2.samples[i].path for i in remapped] == [src.samples[i].path for i in idx]
    # a removed file is refused
    os.remove(src.samples[idx[0]].path)
    with pytest.raises(DataError, match="does not match"):
        load_split(split, image_folder(root))
    with pytest.raises(DataError, match="out of range"):
        save_split(split, src, [99])


# ---------------------------------------------------------------------------- templates


def test_builtin_templates():
    assert {"simple", "mcm", "imagenet80", "imagenet7", "plp5", "neglabel"} <= set(list_templates())
    assert load_templates("simple")[0] == ["a photo of a {}."]
    assert load_templates("mcm")[0] == ["a photo of a {}"]
    assert load_templates("neglabel")[0] == ["the nice {}"]
    assert len(load_templates("imagenet7")[0]) == 7 and load_templates("imagenet7")[0][0] == "itap of a {}."
    assert load_templates("plp5")[0][1] == "a blurry photo of a {}."
    t80, h80 = load_templates("imagenet80")
    assert len(t80) == 80 and len(set(t80)) == 80 and all("{}" in t for t in t80)
    assert t80[0] == "a bad photo of a {}."
    assert h80 == hashlib.sha256("\n".join(t80).encode()).hexdigest()
    assert load_templates("simple")[1] != load_templates("mcm")[1]


def test_imagenet80_matches_open_clip():
    z = pytest.importorskip("open_clip.zero_shot_metadata")
    assert load_templates("imagenet80")[0] == [t("{}") for t in z.OPENAI_IMAGENET_TEMPLATES]


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\na drawing of a {}.\n\nan emoji of a {}.\n")
    t, h = load_templates(f)
    assert t == ["a drawing of a {}.", "an emoji of a {}."]
    assert h == hashlib.sha256(b"a drawing of a {}.\nan emoji of a {}.").hexdigest()
    f.write_text("a {}\nno placeholder\n")
    with pytest.raises(DataError, match=rf"{f}:2"):
        load_templates(f)
    with pytest.raises(DataError, match="unknown template set"):
        load_templates("no-such-set")


# ---------------------------------------------------------------------------- class names


def test_builtin_classnames():
    names, h = load_classnames("imagenet1k")
    assert len(names) == 1000 and names[0] == "tench" and len(h) == 64
    assert len(load_wnids("imagenet1k")) == 1000 and load_wnids("imagenet1k")[0] == "n01440764"
    c10, _ = load_classnames("cifar10")
    assert c10 == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    c100, _ = load_classnames("cifar100")
    assert len(c100) == 100 and c100[1] == "aquarium fish" and c100[-1] == "worm"
    in10, _ = load_classnames("imagenet10")
    w10 = load_wnids("imagenet10")
    assert len(in10) == 10 and w10 == sorted(w10)
    assert dict(zip(w10, in10))["n04552348"] == "warplane"
    w20 = load_wnids("imagenet20")
    assert len(w20) == 20 and not set(w10) & set(w20)
    assert set(w10 + w20) <= set(load_wnids("imagenet1k"))
    with pytest.raises(DataError, match="no WordNet ids"):
        load_wnids("cifar10")


def test_classname_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"dog\ncat\n\nsea turtle\n")
    names, h = load_classnames(txt)
    assert names == ["dog", "cat", "sea turtle"]
    assert h == hashlib.sha256(b"dog\ncat\n\nsea turtle\n").hexdigest()
    js = tmp_path / "c.json"
    js.write_text(json.dumps(["dog", "cat"]))
    assert load_classnames(js)[0] == ["dog", "cat"]
    jd = tmp_path / "d.json"
    jd.write_text(json.dumps({"1": "cat", "0": "dog"}))
    assert load_classnames(jd)[0] == ["dog", "cat"]
    assert load_classnames(js)[1] != load_classnames(jd)[1]
    jd.write_text(json.dumps({"0": "dog", "2": "cat"}))
    with pytest.raises(DataError, match="without gaps"):
        load_classnames(jd)
    wn = tmp_path / "w.txt"
    wn.write_text("n00000002 big cat\nn00000001 dog\n")
    cn = read_classnames(wn)
    assert cn.names == ["big cat", "dog"] and cn.wnids == ["n00000002", "n00000001"]
    with pytest.raises(DataError, match="unknown class-name set"):
        load_classnames("no-such")
    # a class-name file through a reader records its hash
    root = make_folder(tmp_path / "ds", {"cat": 1, "dog": 1})
    src = image_folder(root, classnames=str(js))
    assert src.meta["classnames_sha256"] == load_classnames(js)[1]
    # by name: label = index of the folder's name in the file ("dog" first), not the sorted position
    assert src.classnames == ["dog", "cat"] and src.meta["classnames_mapping"] == "by-name"
    assert {Path(s.path).parent.name: s.label for s in src.samples} == {"dog": 0, "cat": 1}


# ---------------------------------------------------------------------------- benchmarks

PACKAGED = [
    "imagenet-mos",
    "openood-v15-imagenet",
    "cifar10-vs-cifar100",
    "cifar100-vs-cifar10",
    "imagenet10-vs-imagenet20",
    "imagenet20-vs-imagenet10",
]


def test_packaged_benchmarks_load():
    assert set(PACKAGED) <= set(list_benchmarks())
    for name in list_benchmarks():
        b = load_benchmark(name)
        assert b.name == name and b.packaged
        if (b.id.classnames or "").lower() in BUILTIN_CLASSNAMES:  # else a file under the data root
            names, h = b.classnames()
            assert names and len(h) == 64
        assert b.load_templates()[0]
        assert b.near or b.far
    mos = load_benchmark("imagenet-mos")
    assert [s.name for s in mos.far] == ["inaturalist", "sun", "places", "textures"] and not mos.near
    oo = load_benchmark("openood-v15-imagenet")
    assert [s.name for s in oo.near] == ["ssb_hard", "ninco"]
    assert [s.path.rsplit("/", 1)[1] for s in oo.far] == [
        "test_inaturalist.txt",
        "test_textures.txt",
        "test_openimage_o.txt",
    ]
    assert oo.id.root == "images_largescale" and oo.far[1].root == "images_classic"
    assert load_benchmark("imagenet10-vs-imagenet20").load_templates()[0] == ["a photo of a {}"]


def test_unknown_benchmark_lists_choices():
    with pytest.raises(KeyError, match="imagenet-mos"):
        load_benchmark("nope")


@pytest.mark.parametrize("name", PACKAGED)
def test_check_empty_root_reports_missing(tmp_path, name):
    report = check_benchmark(name, tmp_path)
    assert not report.ok
    assert all(r.status == "missing" and not r.exists for r in report.rows)
    assert all(r.path.startswith(str(tmp_path)) for r in report.rows)
    text = format_check_report(report)
    assert "MISSING" in text and "INCOMPLETE" in text and str(tmp_path) in text
    with pytest.raises(DataError, match="missing or unreadable"):
        load_benchmark(name).resolve(tmp_path)


def test_packaged_benchmark_needs_root():
    with pytest.raises(DataError, match="--root"):
        check_benchmark("imagenet-mos")


def _fake_imagenet(root: Path, wnids: list[str], split: str, per_class: int = 1) -> None:
    k = 0
    for w in wnids:
        for j in range(per_class):
            write_digit(root / "imagenet" / split / w / f"{w}_{j}.JPEG", k % len(DIGITS))
            k += 1


def test_check_and_resolve_imagenet10_layout(tmp_path):
    w10, w20 = load_wnids("imagenet10"), load_wnids("imagenet20")
    _fake_imagenet(tmp_path, w10 + w20 + ["n01440764"], "val", per_class=2)
    report = check_benchmark("imagenet10-vs-imagenet20", tmp_path)
    rows = {r.key: r for r in report.rows}
    assert rows["id"].ready and rows["id"].n_images == 20
    assert rows["id"].status == "warn"  # expected 500 images
    assert rows["ood/near/imagenet20-val"].n_images == 40
    assert rows["train"].status == "missing" and rows["train"].optional
    assert report.ok
    assert "OK" in format_check_report(report)
    sets = load_benchmark("imagenet10-vs-imagenet20").resolve(tmp_path)
    assert set(sets) == {"id", "ood/near/imagenet20-val"}  # the optional train set is skipped
    idset = sets["id"]
    assert idset.classnames == load_classnames("imagenet10")[0]
    assert sorted(set(idset.labels)) == list(range(10)) and idset.meta["role"] == "id"
    assert Path(idset.samples[0].path).parent.name == w10[0]
    # the reverse direction uses ImageNet-10 *train* as OOD
    _fake_imagenet(tmp_path, w10, "train")
    rev = load_benchmark("imagenet20-vs-imagenet10").resolve(tmp_path)
    assert "/train/" in rev["ood/near/imagenet10-train"].samples[0].path


def test_check_cifar_and_openood_layouts(tmp_path):
    c10 = [c.replace(" ", "_") for c in load_classnames("cifar10")[0]]
    c100 = [c.replace(" ", "_") for c in load_classnames("cifar100")[0]]
    make_folder(tmp_path / "cifar10" / "test", dict.fromkeys(c10, 1))
    make_folder(tmp_path / "cifar100" / "test", dict.fromkeys(c100, 1))
    report = check_benchmark("cifar10-vs-cifar100", tmp_path)
    assert report.ok and [r.n_images for r in report.rows if r.ready] == [10, 100]
    assert check_benchmark("cifar100-vs-cifar10", tmp_path).ok
    src = load_benchmark("cifar100-vs-cifar10").resolve(tmp_path)["id"]
    assert src.classnames == load_classnames("cifar100")[0] and len(src) == 100

    # OpenOOD: lists under benchmark_imglist/imagenet, images under images_largescale / images_classic
    lists = tmp_path / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    for name, folder in [
        ("test_imagenet", "images_largescale/imagenet_1k/val"),
        ("test_ssb_hard", "images_largescale/ssb_hard"),
        ("test_ninco", "images_largescale/ninco"),
        ("test_inaturalist", "images_largescale/inaturalist"),
        ("test_textures", "images_classic/texture"),
        ("test_openimage_o", "images_largescale/openimage_o"),
    ]:
        base, sub = folder.split("/", 1)
        write_digit(tmp_path / base / sub / "a.jpg", 0)
        write_digit(tmp_path / base / sub / "b.jpg", 1)
        label = "7" if name == "test_imagenet" else "-1"
        (lists / f"{name}.txt").write_text(f"{sub}/a.jpg {label}\n{sub}/b.jpg {label}\n")
    (lists / "test_ninco.txt").write_text("ninco/a.jpg -1\nninco/gone.jpg -1\n")
    report = check_benchmark("openood-v15-imagenet", tmp_path)
    rows = {r.key: r for r in report.rows}
    assert rows["id"].ready and rows["id"].n_images == 2
    assert rows["ood/far/textures"].ready
    assert rows["ood/near/ninco"].status == "incomplete" and rows["ood/near/ninco"].n_missing_files == 1
    assert not report.ok
    assert "gone.jpg" in format_check_report(report)


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _user_bench(tmp_path: Path) -> dict:
    make_folder(tmp_path / "data" / "id", {"cat": 2, "dog": 2})
    for i in range(2):
        write_digit(tmp_path / "data" / "far" / f"{i}.png", i)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    return {
        "name": "mine",
        "data_root": "data",
        "id": {"folder": "id", "classnames": "names.txt"},
        "ood": {"far": [{"name": "far", "source": "far"}]},
        "domain_shift": [{"name": "shifted", "folder": "shifted", "label_space": "id", "optional": True}],
    }


def test_user_yaml_relative_paths(tmp_path):
    data = _user_bench(tmp_path)
    f = _write_yaml(tmp_path / "mine.yaml", data)
    b = load_benchmark(str(f))
    assert not b.packaged and "mine" not in BENCHMARKS
    sets = b.resolve()  # no root: data_root relative to the YAML
    assert set(sets) == {"id", "ood/far/far"}
    assert sets["id"].classnames == ["cat", "dog"] and sets["ood/far/far"].labels == [-1, -1]
    assert b.classnames()[1] == hashlib.sha256(b"cat\ndog\n").hexdigest()
    # an explicit root wins; without data_root the YAML's folder is the root
    assert b.resolve(tmp_path / "data")["id"].name == "id"
    del data["data_root"]
    f2 = _write_yaml(
        tmp_path / "data" / "b2.yaml", dict(data, id={"folder": "id", "classnames": "../names.txt"})
    )
    # ../names.txt leaves both the YAML's folder and the data root: refused unless allowed
    with pytest.raises(
        DataError, match=r"'id.classnames'.*leaves the benchmark folder.*--allow-outside-root"
    ):
        load_benchmark(f2).resolve()
    assert len(load_benchmark(f2).resolve(allow_outside_root=True)["id"]) == 4


def test_label_space_id_maps_domain_shift(tmp_path):
    data = _user_bench(tmp_path)
    # a shifted domain whose class folders are ID class indices (as ImageNetV2's 0..999)
    make_folder(tmp_path / "data" / "shifted", {"1": 1, "0": 2})
    b = load_benchmark(_write_yaml(tmp_path / "mine.yaml", data))
    s = b.resolve()["domain_shift/shifted"]
    assert s.classnames == ["cat", "dog"]
    assert s.labels == [0, 0, 1]  # folder "0" -> cat, folder "1" -> dog


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.pop("id"), "'id'"),
        (lambda d: d.pop("name"), "'name'"),
        (lambda d: d["id"].update(flat="x"), "'id'"),
        (lambda d: d["id"].update(colour="red"), "colour"),
        (lambda d: d["ood"]["far"][0].pop("name"), "'ood.far[0].name'"),
        (lambda d: d["ood"].update(medium=[]), "'ood'"),
        (lambda d: d["ood"]["far"].append({"name": "far", "flat": "x"}), "'ood/far/far'"),
        (lambda d: d["ood"]["far"][0].update(classes_from="cifar10"), "'ood.far[0].classes_from'"),
        (lambda d: d["ood"]["far"][0].update(optional="yes"), "'ood.far[0].optional'"),
        (lambda d: d["ood"]["far"][0].update(source="/abs/path"), "'ood.far[0].source'"),
        (lambda d: d.update(ood={"far": []}), "'ood'"),
        (lambda d: d["id"].pop("classnames"), "'id.classnames'"),
    ],
)
def test_yaml_validation_errors_name_file_and_field(tmp_path, mutate, field):
    data = _user_bench(tmp_path)
    mutate(data)
    f = _write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(DataError) as ei:
        load_benchmark_file(f)
    msg = str(ei.value)
    assert str(f) in msg and field in msg


def test_invalid_yaml_syntax(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML"):
        load_benchmark_file(f)


def test_sklearn_data_without_sklearn_names_the_extra(tmp_path, monkeypatch):
    """scikit-learn is an extra (`examples`): its absence is a DataError naming the install command."""
    import sys

    from vlmood.data.example import write_example
    from vlmood.data.prepare import prepare

    for mod in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import sklearn` raises ImportError
    with pytest.raises(DataError, match=r"pip install 'vlmood\[examples\]'"):
        write_example(tmp_path / "example")
    assert not (tmp_path / "example").exists()
    with pytest.raises(DataError, match=r"pip install 'vlmood\[examples\]'"):
        prepare("sklearn-digits", tmp_path / "sklearn-digits")
