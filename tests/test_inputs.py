"""Inputs you can trust (issue 8, data inputs): class names map to class folders by name, paths
stay under their root, --root applies to list files, listed files exist before any worker starts,
templates are safe, YAML aliases are refused, FIFOs and odd file names do not hang or crash, and
input warnings are recorded. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vlmood.data.base import CorruptImageError, DataError
from vlmood.data.benchmarks import check_benchmark, load_benchmark, load_benchmark_file
from vlmood.data.classnames import read_classnames
from vlmood.data.sources import image_folder, image_list, load_source, open_image
from vlmood.data.templates import (
    check_template,
    load_templates,
    parse_templates,
    render,
    render_prompts,
)
from vlmood.data.yamlsafe import load_yaml
from vlmood.eval.sets import sets_from_args

VLMOOD = Path(sys.executable).parent / "vlmood"


def _img(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((8, 8, 3), value, dtype=np.uint8)
    arr[value % 8] = 255 - value
    Image.fromarray(arr).save(path)
    return path


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    k = 0
    for c in classes:
        for j in range(per_class):
            _img(root / c / f"{j}.png", k)
            k += 1
    return root


def _labels_by_folder(src) -> dict[str, int]:
    out = {}
    for s in src.samples:
        out.setdefault(Path(s.path).parent.name, s.label)
    return out


def _bench(tmp_path: Path, **id_extra) -> dict:
    data = tmp_path / "data"
    _folder(data / "id", ["cat", "dog"])
    _img(data / "far" / "0.png", 7)
    _img(data / "far" / "1.png", 9)
    return {
        "name": "b",
        "id": {"folder": "id", **id_extra},
        "ood": {"far": [{"name": "far", "flat": "far"}]},
    }


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- class names by name


def test_example_benchmark_labels_by_name(tmp_path):
    """`vlmood data example`: folders four one three two zero (sorted) + classnames.txt zero..four.
    Before: label i = i-th sorted folder with the i-th name (four/ labelled "zero")."""
    from vlmood.data.example import write_example

    yml = write_example(tmp_path / "ex", per_class=3)
    sets = sets_from_args(benchmark=str(yml)).eval_sets
    names = sets.classnames
    assert names == ["zero", "one", "two", "three", "four"]
    by_folder = _labels_by_folder(sets.id)
    assert {f: names[lb] for f, lb in by_folder.items()} == {n: n for n in names}
    assert by_folder["four"] == names.index("four")
    assert sets.classnames_mapping == "by-name"
    assert {f: names[lb] for f, lb in _labels_by_folder(sets.train).items()} == {n: n for n in names}


def test_classnames_in_any_order_and_with_underscores(tmp_path):
    root = _folder(tmp_path / "ds", ["sea_turtle", "ant", "bee"])
    src = image_folder(root, classnames=["bee", "sea turtle", "ant"])
    assert src.classnames == ["bee", "sea turtle", "ant"]
    assert _labels_by_folder(src) == {"bee": 0, "sea_turtle": 1, "ant": 2}
    assert src.meta["classnames_mapping"] == "by-name"
    # default: the folder names
    assert image_folder(root).meta["classnames_mapping"] == "folder-names"


def test_explicit_mappings_tab_and_json(tmp_path):
    root = _folder(tmp_path / "ds", ["n02", "n01"])
    tab = tmp_path / "map.txt"
    tab.write_text("n02\tdog\nn01\tcat\n")
    src = image_folder(root, classnames=str(tab))
    assert src.classnames == ["dog", "cat"] and _labels_by_folder(src) == {"n02": 0, "n01": 1}
    assert src.meta["classnames_mapping"] == "mapping"
    js = tmp_path / "map.json"
    js.write_text(json.dumps({"n01": "cat", "n02": "dog"}))
    src = image_folder(root, classnames=str(js))
    assert src.classnames == ["cat", "dog"] and _labels_by_folder(src) == {"n01": 0, "n02": 1}
    assert read_classnames(js).mapping == {"n01": "cat", "n02": "dog"}
    # a folder missing from the mapping is named
    js.write_text(json.dumps({"n01": "cat"}))
    with pytest.raises(DataError, match="n02.*not in the mapping"):
        image_folder(root, classnames=str(js))
    # the index dict keeps meaning label order
    jd = tmp_path / "idx.json"
    jd.write_text(json.dumps({"1": "cat", "0": "dog"}))
    assert read_classnames(jd).names == ["dog", "cat"] and read_classnames(jd).mapping is None
    tab.write_text("n02\tdog\ncat\n")
    with pytest.raises(DataError, match=r"map.txt:2: expected 'folder<TAB>name'"):
        read_classnames(tab)


def test_wnid_lines_map_by_wnid(tmp_path):
    root = _folder(tmp_path / "ds", ["n00000002", "n00000001"])
    wn = tmp_path / "w.txt"
    wn.write_text("n00000002 big cat\nn00000001 dog\n")
    src = image_folder(root, classnames=str(wn))
    assert src.classnames == ["big cat", "dog"]
    assert _labels_by_folder(src) == {"n00000002": 0, "n00000001": 1}
    assert src.meta["classnames_mapping"] == "wnid"


def test_index_named_folders_map_by_index(tmp_path):
    """Folders 0..11 sort as 0, 1, 10, 11, 2, ...; before, folder 10 got the third name."""
    names = [f"class{i}" for i in range(12)]
    root = _folder(tmp_path / "ds", [str(i) for i in range(12)], per_class=1)
    src = image_folder(root, classnames=names)
    assert src.meta["classnames_mapping"] == "folder-index"
    assert all(src.classnames[lb] == f"class{f}" for f, lb in _labels_by_folder(src).items())
    # <index>_<slug> (vlmood data prepare fashion-mnist)
    root2 = _folder(tmp_path / "ds2", [f"{i}_{n}" for i, n in enumerate(names)], per_class=1)
    src2 = image_folder(root2, classnames=names)
    assert _labels_by_folder(src2)["10_class10"] == 10


def test_bare_list_refused_unless_sorted_order(tmp_path):
    yml = _write_yaml(tmp_path / "b.yaml", _bench(tmp_path, classnames="names.txt"))
    (tmp_path / "names.txt").write_text("kitty\npuppy\n")
    with pytest.raises(DataError, match=r"names.txt: class names \(kitty, puppy\) are not the class folder"):
        sets_from_args(benchmark=str(yml), root=tmp_path / "data")
    es = sets_from_args(benchmark=str(yml), root=tmp_path / "data", classnames_order="sorted").eval_sets
    assert es.classnames == ["kitty", "puppy"] and es.classnames_mapping == "sorted-order"
    data = _bench(tmp_path, classnames="names.txt", classnames_order="sorted")
    yml2 = _write_yaml(tmp_path / "b2.yaml", data)
    assert load_benchmark(yml2).resolve(tmp_path / "data")["id"].meta["classnames_mapping"] == "sorted-order"
    # CLI paths: the same rule
    with pytest.raises(DataError, match="--classnames-order sorted"):
        sets_from_args(
            id_data=str(tmp_path / "data" / "id"),
            classnames=str(tmp_path / "names.txt"),
            ood=[f"far={tmp_path / 'data' / 'far'}"],
        )


def test_duplicate_class_names_and_folders(tmp_path):
    # duplicate names are allowed (CLIP's ImageNet list has two 'missile'), warned and recorded
    root = _folder(tmp_path / "ds", ["n00000001", "n00000002", "n00000003"])
    wn = tmp_path / "w.txt"
    wn.write_text("n00000001 missile\nn00000002 cat\nn00000003 missile\n")
    _img(tmp_path / "far" / "0.png", 5)
    es = sets_from_args(id_data=str(root), classnames=str(wn), ood=[f"far={tmp_path / 'far'}"]).eval_sets
    assert es.classnames == ["missile", "cat", "missile"]
    assert any("'missile'" in w and "more than once" in w for w in es.warnings)
    # a duplicated name cannot map folders by name: a bare list is refused, not guessed
    root2 = _folder(tmp_path / "ds2", ["a", "b"])
    with pytest.raises(DataError, match="not the class folder names"):
        image_folder(root2, classnames=["a", "a"])
    # two folders mapped to the same name through an explicit mapping are two classes
    m = tmp_path / "m.txt"
    m.write_text("a\tthing\nb\tthing\n")
    src = image_folder(root2, classnames=str(m))
    assert src.classnames == ["thing", "thing"] and _labels_by_folder(src) == {"a": 0, "b": 1}


# ---------------------------------------------------------------------------- paths under the root


def test_yaml_set_path_outside_root_refused(tmp_path):
    data = _bench(tmp_path, classnames="names.txt")
    (tmp_path / "data" / "names.txt").write_text("cat\ndog\n")
    _img(tmp_path / "outside" / "x.png", 3)
    data["ood"]["far"].append({"name": "out", "flat": "../outside"})
    yml = _write_yaml(tmp_path / "data" / "b.yaml", data)
    with pytest.raises(DataError, match=r"'ood/far/out.flat': '../outside' leaves the data root"):
        load_benchmark(yml).resolve()
    assert "ood/far/out" in load_benchmark(yml).resolve(allow_outside_root=True)
    report = check_benchmark(load_benchmark(yml))
    assert not report.ok and "leaves the data root" in report.rows[-1].message


def test_yaml_classnames_file_outside_root_not_read(tmp_path):
    data = _bench(tmp_path, classnames="/etc/passwd")
    yml = _write_yaml(tmp_path / "data" / "b.yaml", data)
    with pytest.raises(DataError, match=r"'id.classnames': '/etc/passwd' leaves the benchmark folder"):
        load_benchmark(yml).resolve()
    data = _bench(tmp_path, classnames="cifar10")  # built-in names are not paths
    data["templates"] = "/etc/hostname"
    yml = _write_yaml(tmp_path / "data" / "b2.yaml", data)
    if Path("/etc/hostname").is_file():
        with pytest.raises(DataError, match=r"'templates'.*leaves the benchmark folder"):
            load_benchmark(yml).load_templates()


def test_list_and_csv_entries_outside_root_refused(tmp_path):
    _img(tmp_path / "root" / "a.png", 1)
    _img(tmp_path / "secret.png", 2)
    lst = tmp_path / "root" / "list.txt"
    lst.write_text("a.png 0\n../secret.png 0\n")
    with pytest.raises(DataError, match=r"list.txt:2: path '../secret.png' leaves the data root"):
        image_list(lst, classnames=["x"])
    lst.write_text(f"a.png 0\n{tmp_path / 'secret.png'} 0\n")
    with pytest.raises(DataError, match="list.txt:2.*leaves the data root"):
        image_list(lst, classnames=["x"])
    assert len(image_list(lst, classnames=["x"], allow_outside_root=True)) == 2
    # an absolute path under the root is fine
    lst.write_text(f"{tmp_path / 'root' / 'a.png'} 0\n")
    assert len(image_list(lst)) == 1
    csv = tmp_path / "root" / "x.csv"
    csv.write_text("path,label\na.png,0\n../secret.png,0\n")
    with pytest.raises(DataError, match=r"x.csv:3.*leaves the data root"):
        load_source(csv, classnames=["x"])


def test_relative_root_is_not_joined_twice(tmp_path, monkeypatch):
    """A relative --root: '../' entries must be refused as with an absolute one (the check used
    to join the relative root to itself, letting as many '..' as the root has parts through)."""
    _img(tmp_path / "data" / "imgs" / "a.png", 1)
    _img(tmp_path / "data" / "other" / "b.png", 2)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text("a.png\n../other/b.png\n")
    (lists / "l.csv").write_text("path\na.png\nx/../../other/b.png\n")
    monkeypatch.chdir(tmp_path)
    for f in ("lists/l.txt", "lists/l.csv"):
        with pytest.raises(DataError, match="leaves the data root"):
            load_source(f, root="data/imgs")
    assert len(load_source("lists/l.txt", root="data/imgs", allow_outside_root=True)) == 2


def test_text_template_lines_starting_with_a_brace_stay_templates(tmp_path):
    from vlmood.data.templates import load_templates

    for line in ("{} in the wild.", "{c} in the wild.", "{}"):
        f = tmp_path / "t.txt"
        f.write_text(line + "\n")
        assert load_templates(f)[0] == [line.replace("{c}", "{}")]
    f = tmp_path / "t.json"
    f.write_text("{} in the wild.")
    with pytest.raises(DataError, match="invalid JSON"):
        load_templates(f)


def test_symlink_outside_refused_and_loops_walked_once(tmp_path):
    root = _folder(tmp_path / "ds", ["cat", "dog"])
    _img(tmp_path / "elsewhere" / "e.png", 4)
    os.symlink(tmp_path / "elsewhere" / "e.png", root / "cat" / "link.png")
    with pytest.raises(DataError, match=r"link.png: symlink points outside.*--allow-outside-root"):
        image_folder(root)
    assert len(image_folder(root, allow_outside_root=True)) == 5
    os.remove(root / "cat" / "link.png")
    # a loop: dog/loop -> dog (before: os.walk followed it again and again, one folder read as
    # many times the images it holds)
    os.symlink(root / "dog", root / "dog" / "loop")
    src = image_folder(root)
    assert len(src) == 4 and len({s.path for s in src.samples}) == 4
    assert src.meta["walk"]["dirs_revisited_skipped"] == 1 and src.meta["walk"]["files"] == 4
    # a link to a sibling class folder leaves the class folder: refused, not read twice
    os.symlink(root / "cat", root / "dog" / "cats")
    with pytest.raises(DataError, match="symlinked folder points outside"):
        image_folder(root)


def test_fifo_in_class_folder_does_not_hang(tmp_path):
    root = _folder(tmp_path / "ds", ["cat"])
    fifo = root / "cat" / "x.png"
    os.mkfifo(fifo)
    src = image_folder(root)
    assert len(src) == 2 and src.meta["walk"]["non_regular_skipped"] == 1
    result: dict = {}

    def opener() -> None:
        try:
            open_image(fifo)
        except CorruptImageError as e:
            result["err"] = str(e)

    t = threading.Thread(target=opener, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("open_image blocked on a FIFO")
    assert "not a regular file" in result["err"]
    # --fingerprint content must not block either
    lst = tmp_path / "l.txt"
    lst.write_text(f"{fifo}\n")
    fp = {}
    t = threading.Thread(target=lambda: fp.setdefault("v", image_list(lst, root="/").fingerprint("content")))
    t.daemon = True
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("fingerprint('content') blocked on a FIFO")


def test_non_utf8_file_name_and_blockwise_content_fingerprint(tmp_path):
    root = tmp_path / "ds"
    name = os.fsdecode(b"caf\xe9.png")
    _img(root / "cat" / name, 1)
    _img(root / "cat" / "plain.png", 2)
    src = image_folder(root)
    assert len(src) == 2
    a, b = src.fingerprint("stat"), src.fingerprint("content")  # before: UnicodeEncodeError
    assert a != b and src.fingerprint("content") == b
    img = open_image(src.samples[0].path)
    assert img.mode == "RGB"
    # JSON with such a path round-trips (escaped surrogate)
    assert json.loads(json.dumps({"p": src.samples[0].path}))["p"] == src.samples[0].path


# ---------------------------------------------------------------------------- --root, existence, --sets


def _openood_like(tmp_path: Path) -> tuple[Path, Path]:
    lists = tmp_path / "benchmark_imglist"
    images = tmp_path / "images_largescale"
    for i in range(3):
        _img(images / "val" / f"{i}.png", i)
        _img(images / "ood" / f"{i}.png", 10 + i)
    (lists).mkdir(parents=True)
    (lists / "test.txt").write_text("".join(f"val/{i}.png {i % 2}\n" for i in range(3)))
    (lists / "ood.txt").write_text("".join(f"ood/{i}.png -1\n" for i in range(3)))
    return lists, images


def test_root_applies_to_list_files_and_missing_files_are_named(tmp_path):
    lists, images = _openood_like(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    kw = {"classnames": str(names), "ood": [f"far/o=list:{lists / 'ood.txt'}"]}
    # before: --root was ignored and a DataLoader worker failed on the first image
    with pytest.raises(DataError, match=r"0 of 3 images of set 'id' exist under .*benchmark_imglist.*--root"):
        sets_from_args(id_data=f"list:{lists / 'test.txt'}", **kw)
    es = sets_from_args(id_data=f"list:{lists / 'test.txt'}", root=images, **kw).eval_sets
    assert es.id.samples[0].path == str(images / "val" / "0.png")
    assert es.ood[0].source.samples[0].path == str(images / "ood" / "0.png")
    assert es.classnames_mapping == "label-index"
    os.remove(images / "val" / "1.png")
    with pytest.raises(DataError, match=r"1 of 3 images of set 'id' are missing.*--skip-corrupt"):
        sets_from_args(id_data=f"list:{lists / 'test.txt'}", root=images, **kw)
    es = sets_from_args(id_data=f"list:{lists / 'test.txt'}", root=images, skip_missing=True, **kw).eval_sets
    assert es.id.meta["n_missing"] == 1


def test_sets_selects_benchmark_sets(tmp_path):
    data = _bench(tmp_path, classnames="names.txt")
    (tmp_path / "data" / "names.txt").write_text("cat\ndog\n")
    data["ood"]["near"] = [{"name": "gone", "flat": "not-there"}]
    yml = _write_yaml(tmp_path / "data" / "b.yaml", data)
    with pytest.raises(DataError, match="--sets NAME"):
        sets_from_args(benchmark=str(yml))
    es = sets_from_args(benchmark=str(yml), only="far").eval_sets
    assert [o.name for o in es.ood] == ["far"]
    with pytest.raises(DataError, match=r"--sets: unknown set\(s\) nope.*valid: id, gone, far"):
        sets_from_args(benchmark=str(yml), only="far,nope")


# ---------------------------------------------------------------------------- warnings


def test_train_equal_to_id_and_ood_equal_to_id_warn(tmp_path):
    root = _folder(tmp_path / "ds", ["cat", "dog"])
    es = sets_from_args(id_data=str(root), ood=[f"same={root}"], train=str(root)).eval_sets
    text = "\n".join(es.warnings)
    assert "train set" in text and "is the ID test set" in text and "KNN AUROC" in text
    assert "OOD set 'same'" in text and "is the ID set" in text
    _img(tmp_path / "far" / "0.png", 6)
    clean = sets_from_args(id_data=str(root), ood=[f"far={tmp_path / 'far'}"]).eval_sets
    assert clean.warnings == []


# ---------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    "template, msg",
    [
        ("a photo of a {{}}.", "no class-name placeholder"),
        ("{x} photo", "field '{x}'"),
        ("{{}} {:>300000000}", "field '{:>300000000}'"),
        ("a {!r}", "field '{!r}'"),
        ("{0}", "field '{0}'"),
        ("{} and {}", "2 placeholders"),
        ("a {", "malformed"),
        ("x" * 1001 + "{}", "over the 1000 limit"),
    ],
)
def test_unsafe_templates_refused(tmp_path, template, msg):
    f = tmp_path / "t.txt"
    f.write_text(f"a photo of a {{}}.\n{template}\n")
    with pytest.raises(DataError) as ei:
        load_templates(f)
    assert msg in str(ei.value) and f"{f}:2" in str(ei.value)


def test_template_formats_clip_benchmark_and_cupl(tmp_path):
    assert check_template("a {c} photo") == "a {} photo"
    assert render("{{x}} {}", "dog") == "{x} dog"
    js = tmp_path / "t.json"
    js.write_text(json.dumps(["a photo of a {c}.", "art of the {c}."]))
    templates, _ = load_templates(js)
    assert templates == ["a photo of a {}.", "art of the {}."]
    assert render_prompts(["dog"], templates) == [["a photo of a dog.", "art of the dog."]]
    cupl = tmp_path / "cupl.json"
    cupl.write_text(
        json.dumps({"dog": ["A dog wags {its} tail.", "Dogs bark."], "sea turtle": ["A turtle."]})
    )
    prompts, h = load_templates(cupl)
    assert render_prompts(["sea_turtle", "dog"], prompts) == [
        ["A turtle."],
        ["A dog wags {its} tail.", "Dogs bark."],
    ]
    with pytest.raises(DataError, match="none for 1 class.*'cat'"):
        render_prompts(["dog", "cat"], prompts)
    assert parse_templates("# comment\n{c}\n") == ["{}"]


# ---------------------------------------------------------------------------- YAML


def test_yaml_alias_bomb_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    f = tmp_path / "bomb.yaml"
    f.write_text(bomb)
    with pytest.raises(DataError, match="aliases"):
        load_benchmark_file(f)
    with pytest.raises(DataError, match="aliases"):
        load_yaml("x: &v 1\ny: *v")
    assert load_yaml("x: 1") == {"x": 1}
    with pytest.raises(DataError, match="invalid YAML"):
        load_yaml("!!python/object/apply:os.system ['true']")


# ---------------------------------------------------------------------------- end to end


def test_cli_example_eval_records_by_name_mapping(tmp_path):
    """`vlmood data example` then `vlmood eval` through the real executable: results.json records
    the by-name mapping, and its ID fingerprint is that of the by-name labels (four/ -> "four")."""
    env = dict(os.environ, VLMOOD_CACHE=str(tmp_path / "cache"))
    ex = tmp_path / "example"
    r = subprocess.run(
        [str(VLMOOD), "data", "example", "--out", str(ex)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    # a non-UTF-8 file name in an OOD folder must simply work end to end
    odd = ex / "far" / "photo-crops" / os.fsdecode(b"caf\xe9.jpg")
    Image.open(ex / "far" / "photo-crops" / "000.jpg").save(odd)
    out = tmp_path / "run"
    r = subprocess.run(
        [
            str(VLMOOD),
            "eval",
            "--model",
            "tiny-test",
            "--benchmark",
            str(ex / "example.yaml"),
            "--scores",
            "mcm",
            "--workers",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["classnames"]["mapping"] == "by-name"
    assert res["classnames"]["names"] == ["zero", "one", "two", "three", "four"]
    assert isinstance(res["warnings"], list)
    assert res["datasets"]["id"]["class_folders"]["four"] == "four"  # recorded: which folder got which name
    sets = sets_from_args(benchmark=str(ex / "example.yaml")).eval_sets
    assert res["datasets"]["id"]["walk"]["files"] == len(sets.id)
    assert _labels_by_folder(sets.id)["four"] == res["classnames"]["names"].index("four")
    assert res["datasets"]["id"]["cache"]["fingerprint"] == sets.id.fingerprint("stat")
    assert res["datasets"]["ood"]["photo-crops"]["n"] == sets.ood[1].source.__len__()
