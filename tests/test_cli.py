"""`vlmood eval` end to end on a tiny random model over real images written to a temporary folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmood.cli import main, parse_score_arg
from vlmood.data.example import write_example

SCORES = "mcm,msp,maxlogit,energy,entropy,variance,glmcm,knn,mahalanobis"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    return write_example(root / "data", per_class=8, size=32)


def _eval(args, capsys):
    rc = main(["eval", "--model", "tiny-test", "--no-progress", "--workers", "0", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _small_vocabulary(folder):
    """A 600-noun / 150-adjective slice of the packaged WordNet lists (mining all 140k is slow on CPU)."""
    from vlmood.scores.neglabel import load_wordnet_vocabulary

    voc = load_wordnet_vocabulary()
    folder.mkdir()
    (folder / "nouns.txt").write_text("\n".join(voc["noun"][::200][:600]))
    (folder / "adjectives.txt").write_text("\n".join(voc["adj"][::100][:150]))
    return folder


def test_eval_end_to_end_then_cached(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    out1 = tmp_path / "run1"
    voc = _small_vocabulary(tmp_path / "voc")
    rc, out, err = _eval(
        [
            "--benchmark",
            str(example),
            "--scores",
            SCORES,
            "--score",
            f"neglabel:ngroup=2,vocabulary={voc}",
            "--out",
            str(out1),
        ],
        capsys,
    )
    assert rc == 0, err
    assert "== mcm ==" in out and f"== neglabel(ngroup=2,vocabulary={voc}) ==" in out and "far mean" in out
    res = json.loads((out1 / "results.json").read_text())
    assert res["schema"] == "vlmood.results/1"
    assert set(res["datasets"]["ood"]) == {"digits-5-9", "photo-crops"}
    assert res["datasets"]["ood"]["digits-5-9"]["group"] == "near"
    assert res["datasets"]["id"]["n"] == 40 and res["datasets"]["id"]["cache"]["encoded_now"] == 40
    assert res["model"]["weights"] == "random:0" and res["model"]["precision"] == "fp32"
    assert res["classnames"]["names"] == ["zero", "one", "two", "three", "four"]
    assert len(res["classnames"]["sha256"]) == 64 and res["templates"]["templates"] == ["a photo of a {}."]
    assert res["environment"]["versions"]["torch"]
    neg = res["scores"][f"neglabel(ngroup=2,vocabulary={voc})"]
    assert (
        80 <= neg["artifacts"]["neglabel_num_nouns"] <= 90
        and 15 <= neg["artifacts"]["neglabel_num_adjs"] <= 22
    )
    assert (out1 / "artifacts").is_dir()
    for label in ["mcm", "knn", "glmcm", f"neglabel(ngroup=2,vocabulary={voc})"]:
        entry = res["scores"][label]
        for key in ("per_set", "mean", "near_mean", "far_mean", "params"):
            assert key in entry, (label, key)
        m = entry["per_set"]["photo-crops"]
        assert set(m) >= {
            "auroc",
            "fpr95",
            "fpr95_interp",
            "fpr95_nearest",
            "fpr95_openood",
            "aupr_in",
            "aupr_out",
        }
        assert 0.0 <= m["auroc"] <= 1.0
    # raw scores are saved and reproduce the metrics
    from vlmood.metrics import auroc

    z = np.load(out1 / res["scores"]["energy"]["raw_scores"])
    assert auroc(z["id"], z["ood/photo-crops"]) == pytest.approx(
        res["scores"]["energy"]["per_set"]["photo-crops"]["auroc"]
    )
    assert 0.0 <= res["id_accuracy"] <= 1.0
    # a second evaluation with another score encodes no image
    out2 = tmp_path / "run2"
    rc, out, err = _eval(["--benchmark", str(example), "--scores", "energy", "--out", str(out2)], capsys)
    assert rc == 0, err
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["datasets"]["id"]["cache"]["encoded_now"] == 0
    assert all(d["cache"]["encoded_now"] == 0 for d in res2["datasets"]["ood"].values())
    assert res2["scores"]["energy"]["per_set"] == res["scores"]["energy"]["per_set"]


def test_eval_with_explicit_paths_and_skip_corrupt(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    data = example.parent
    bad = data / "far" / "photo-crops" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    try:
        args = [
            "--id",
            str(data / "id"),
            "--ood",
            f"near/digits={data / 'near' / 'digits-5-9'}",
            "--ood",
            f"far/photos={data / 'far' / 'photo-crops'}",
            "--scores",
            "mcm,maxlogit",
        ]
        rc, out, err = _eval([*args, "--out", str(tmp_path / "strict")], capsys)
        assert rc == 2 and "zz_broken.jpg" in err and "--skip-corrupt" in err
        assert not (tmp_path / "strict" / "results.json").exists()
        rc, out, err = _eval([*args, "--skip-corrupt", "--out", str(tmp_path / "skip")], capsys)
        assert rc == 0, err
        res = json.loads((tmp_path / "skip" / "results.json").read_text())
        assert res["datasets"]["ood"]["photos"]["skipped"] == [str(bad)]
        assert res["options"]["skip_corrupt"] is True
        assert res["classnames"]["names"] == ["four", "one", "three", "two", "zero"]  # sorted folder names
    finally:
        bad.unlink()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scores", "nosuchscore"], "unknown score 'nosuchscore'"),
        (["--scores", "knn"], "need ID training features"),
        (["--score", "mcm:temp=0.5"], "score 'mcm' has no parameter 'temp'; its parameters: temperature"),
        (["--score", "mcm:temperature=-1"], "score mcm(temperature=-1)"),
        ([], "no OOD sets"),
    ],
)
def test_eval_bad_input_gives_clear_error(example, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    data = example.parent
    ood = [] if message == "no OOD sets" else ["--ood", str(data / "near" / "digits-5-9")]
    rc, out, err = _eval(["--id", str(data / "id"), *ood, *args, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and message in err


def test_missing_weights_file_error(example, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--model",
            f"open_clip:ViT-B-32@{tmp_path}/nope.safetensors",
            "--benchmark",
            str(example),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "nope.safetensors" in err


def test_listing_commands(capsys, example):
    assert main(["models"]) == 0
    assert "tiny-test" in capsys.readouterr().out
    assert main(["scores"]) == 0
    out = capsys.readouterr().out
    for name in ("mcm", "neglabel", "glmcm", "knn", "mahalanobis", "energy"):
        assert name in out
    assert main(["data", "list"]) == 0
    assert "imagenet-mos" in capsys.readouterr().out
    assert main(["data", "check", str(example)]) == 0  # a user YAML: paths relative to its folder
    assert "digits-5-9" in capsys.readouterr().out


def test_data_check_reports_missing(tmp_path, capsys):
    rc = main(["data", "check", "cifar10-vs-cifar100", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "cifar10" in out.lower()


def test_parse_score_arg_types():
    (spec,) = parse_score_arg("neglabel:ngroup=10,temperature=0.01,labels_file=null")
    assert spec.params == {"ngroup": 10, "temperature": 0.01, "labels_file": None}
    assert [s.name for s in parse_score_arg("mcm, energy")] == ["mcm", "energy"]
    assert spec.label == "neglabel(labels_file=None,ngroup=10,temperature=0.01)"
    (spec,) = parse_score_arg("neglabel:percentile=9e-1,ngroup=1e2")  # YAML 1.1 reads 9e-1 as a string
    assert spec.params == {"percentile": 0.9, "ngroup": 100.0}


def test_results_json_is_strict(tmp_path):
    from vlmood.utils import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"acc": float("nan"), "xs": [1.0, float("inf")]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"acc": None, "xs": [1.0, None]}


def test_cache_command_precomputes_then_eval_encodes_nothing(example, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    rc = main(
        [
            "cache",
            "--model",
            "tiny-test",
            "--benchmark",
            str(example),
            "--kinds",
            "image,patch",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "encoded 40" in out
    rc, out, err = _eval(
        ["--benchmark", str(example), "--scores", "glmcm,knn", "--out", str(tmp_path / "r")], capsys
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert all(
        d["cache"]["encoded_now"] == 0 for d in [res["datasets"]["id"], *res["datasets"]["ood"].values()]
    )


def test_fit_then_eval_with_adapter(example, tmp_path, capsys, monkeypatch):
    """`vlmood fit coop` writes an adapter; `vlmood eval --adapter` scores with its class features."""
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    common = ["--model", "tiny-test", "--benchmark", str(example), "--workers", "0", "--no-progress"]
    rc = main(
        [
            "fit",
            "coop",
            *common,
            "--shots",
            "2",
            "--epochs",
            "2",
            "--train-batch-size",
            "4",
            "--param",
            "n_ctx=4",
            "--out",
            str(tmp_path / "ad"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (tmp_path / "ad" / "adapter.json").is_file() and (tmp_path / "ad" / "split.json").is_file()
    rc, out, err = _eval(
        [
            "--benchmark",
            str(example),
            "--scores",
            "mcm,energy",
            "--adapter",
            str(tmp_path / "ad"),
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["adapter"]["method"] == "coop" and res["adapter"]["key"]
    zs = tmp_path / "zs"
    rc, _, err = _eval(["--benchmark", str(example), "--scores", "mcm", "--out", str(zs)], capsys)
    assert rc == 0, err
    zres = json.loads((zs / "results.json").read_text())
    assert (
        res["scores"]["mcm"]["per_set"] != zres["scores"]["mcm"]["per_set"]
    )  # the adapter changed the classifier
    # an adapter for another base model is refused with a clear message
    rc = main(
        [
            "eval",
            "--model",
            "open_clip:vlmood-tiny-test@random:1",
            "--benchmark",
            str(example),
            "--scores",
            "mcm",
            "--adapter",
            str(tmp_path / "ad"),
            "--out",
            str(tmp_path / "bad"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 2 and "trained on base model" in capsys.readouterr().err
