"""`vlmood zoo` / `vlmood.zoo`: many models on one benchmark, ID accuracy against AUROC per score.

The fit against numpy's least squares and correlation; model lists (files, comma lists, names);
three tiny random models on the sklearn-digits example benchmark through the CLI (resume without
re-evaluation, the report on the zoo folder) and the API; every bad input as one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vlmood
from vlmood.cli import main
from vlmood.data.example import write_example
from vlmood.errors import UsageError
from vlmood.zoos import linear_fit, parse_models, read_model_list

MODELS = "tiny-test,open_clip:vlmood-tiny-test@random:1,open_clip:vlmood-tiny-test@random:2"
NAMES = ["tiny-test", "vlmood-tiny-test-random1", "vlmood-tiny-test-random2"]
WORDS = "apple river chair cloud engine forest guitar hammer island jacket kettle lamp mountain needle"


# ---------------------------------------------------------------------------------------------- the fit
def _reference(x, y):
    A = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ np.array([slope, intercept])
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    return slope, intercept, r2, np.corrcoef(x, y)[0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_fit_matches_lstsq_and_corrcoef(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    x = rng.uniform(0.2, 0.9, n)
    sign = -1.0 if seed % 2 else 1.0  # negative slopes too
    y = 0.5 + sign * 0.4 * x + rng.normal(0, 0.05, n)
    fit = linear_fit(x, y)
    slope, intercept, r2, r = _reference(x, y)
    assert fit["n"] == n
    assert fit["slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert fit["intercept"] == pytest.approx(intercept, rel=1e-9, abs=1e-12)
    assert fit["r2"] == pytest.approx(r2, rel=1e-9, abs=1e-12)
    assert fit["pearson"] == pytest.approx(r, rel=1e-9, abs=1e-12)
    assert fit["r2"] == pytest.approx(fit["pearson"] ** 2, rel=1e-9, abs=1e-12)  # a line with intercept
    assert np.sign(fit["slope"]) == sign or abs(fit["slope"]) < 0.2
    stats = pytest.importorskip("scipy.stats")
    assert fit["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_fit_perfect_lines_ties_and_refusals():
    x = np.array([0.1, 0.4, 0.5, 0.8])
    up = linear_fit(x, 0.3 + 2.0 * x)
    assert up["r2"] == pytest.approx(1.0) and up["pearson"] == pytest.approx(1.0)
    assert up["slope"] == pytest.approx(2.0) and up["intercept"] == pytest.approx(0.3)
    down = linear_fit(x, 1.0 - 0.5 * x)
    assert down["slope"] == pytest.approx(-0.5) and down["r2"] == pytest.approx(1.0)
    assert down["pearson"] == pytest.approx(-1.0) and down["spearman"] == pytest.approx(-1.0)
    stats = pytest.importorskip("scipy.stats")
    xt, yt = [0.2, 0.2, 0.5, 0.7, 0.7], [0.6, 0.5, 0.5, 0.9, 0.8]  # ties: average ranks
    assert linear_fit(xt, yt)["spearman"] == pytest.approx(stats.spearmanr(xt, yt).statistic)
    # non-finite pairs are left out of every value and of n
    part = linear_fit([0.1, np.nan, 0.4, 0.5, 0.8], [0.5, 0.6, 1.1, 1.3, 1.9])
    assert part["n"] == 4 and part["slope"] == pytest.approx(_reference(x, np.array([0.5, 1.1, 1.3, 1.9]))[0])
    for xs, ys, why in (
        ([0.1, 0.2], [0.3, 0.4], "at least 3 models"),
        ([0.5, 0.5, 0.5], [0.3, 0.4, 0.9], "same ID accuracy"),
        ([0.1, 0.2, 0.3], [0.7, 0.7, 0.7], "same AUROC"),
    ):
        fit = linear_fit(xs, ys)
        assert why in fit["n/a"] and fit["r2"] is None and fit["slope"] is None


# ---------------------------------------------------------------------------------------------- model lists
def test_model_list_file_names_and_relative_paths(tmp_path):
    for d in ("zoo/a/model", "zoo/b/model"):
        (tmp_path / d).mkdir(parents=True)
    f = tmp_path / "zoo" / "zoo.txt"
    f.write_text(
        "# vlmood zoo members: name=model spec\n\nvlmood-tiny=vlmood-tiny\n"
        "small=vlmood-small   # the default\nlocal-dir:a/model\nlocal-dir:b/model\n"
        "open_clip:vlmood-tiny-test@random:3\n"
    )
    ms = read_model_list(f)
    assert [m.name for m in ms] == ["vlmood-tiny", "small", "a-model", "b-model", "vlmood-tiny-test-random3"]
    assert ms[1].spec == "vlmood-small" and ms[1].origin == f"{f}:4"
    assert ms[2].spec == f"local-dir:{tmp_path / 'zoo' / 'a' / 'model'}"  # against the file's folder
    # the same through --models FILE, and a comma list (names from the specs, optionally name=spec)
    assert [m.spec for m in parse_models(str(f))] == [m.spec for m in ms]
    ms = parse_models("tiny-test, t1=open_clip:vlmood-tiny-test@random:1 ,open_clip:ViT-B-32@openai")
    assert [m.name for m in ms] == ["tiny-test", "t1", "ViT-B-32-openai"]
    ms = parse_models("tiny-test,tiny-test-random1=open_clip:x@random:9,open_clip:x@random:1")
    assert len({m.name for m in ms}) == 3


@pytest.mark.parametrize(
    "text,msg",
    [
        ("tiny-test", "needs at least 2"),
        ("a=tiny-test,a=vlmood-tiny", "names must be unique, repeated: a at"),
        ("tiny-test,x=tiny-test", "listed twice"),
        ("tiny-test,bad name=vlmood-tiny", "is not a folder name"),
        ("missing/zoo.txt", "does not exist"),
        ("zoo.txt", "does not exist"),
    ],
)
def test_model_list_refusals(text, msg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=msg):
        parse_models(text)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("zoo")
    yaml = write_example(root / "data", per_class=4, size=32)
    (root / "vocab.txt").write_text("\n".join(WORDS.split()) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMOOD_CACHE", str(root / "cache"))
        yield {"root": root, "yaml": yaml, "vocab": root / "vocab.txt"}


def _zoo(env, out, *extra, models=MODELS):
    return main(
        [
            "zoo",
            "--models",
            models,
            "--benchmark",
            str(env["yaml"]),
            "--scores",
            "mcm,knn,energy",
            "--score",
            f"neglabel:ngroup=2,vocabulary={env['vocab']}",
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


def _stamps(out):
    return {p: p.stat().st_mtime_ns for p in (out / "models").rglob("results.json")}


def test_zoo_cli_resume_and_report(env, capsys):
    out = env["root"] / "z"
    assert _zoo(env, out) == 0
    text = capsys.readouterr().out
    assert "least squares" in text and "R²" in text and "vlmood-tiny-test-random2" in text
    zoo = json.loads((out / "zoo.json").read_text())
    assert zoo["schema"] == "vlmood.zoo/1" and zoo["benchmark"] == "example-digits"
    assert [m["name"] for m in zoo["models"]] == NAMES
    assert len({m["identity"]["weights"] for m in zoo["models"]}) == 3
    labels = ["mcm", "knn", "energy", f"neglabel(ngroup=2,vocabulary={env['vocab']})"]
    assert zoo["scores"] == labels and zoo["skipped_scores"] == {}
    for m in zoo["models"]:  # each model's own eval folder, labelled by its name, summarised as is
        res = json.loads((out / m["results"]).read_text())
        assert res["label"] == m["name"] and res["id_accuracy"] == m["id_accuracy"]
        for lbl in labels:
            assert m["scores"][lbl]["auroc"] == res["scores"][lbl]["mean"]["auroc"]
            assert m["scores"][lbl]["far_fpr95"] == res["scores"][lbl]["far_mean"]["fpr95"]
        # NegLabel mined its negatives with this model's text encoder, into this model's folder
        neg = res["scores"][labels[3]]["artifacts"]["neglabel_labels_file"]
        assert neg.startswith(str(out / "models" / m["name"] / "artifacts"))
    x = [m["id_accuracy"] for m in zoo["models"]]
    for lbl in labels:
        for target in ("auroc", "near_auroc", "far_auroc"):
            want = linear_fit(x, [m["scores"][lbl][target] for m in zoo["models"]])
            assert zoo["fits"][lbl][target] == want
    for name in zoo["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(zoo["figures"]) == sorted(labels)
    assert "| score | AUROC over | n | slope |" in (out / "zoo.md").read_text()

    # a rerun evaluates nothing again: same results files, same numbers
    stamps = _stamps(out)
    assert _zoo(env, out) == 0
    capsys.readouterr()
    assert _stamps(out) == stamps
    again = json.loads((out / "zoo.json").read_text())

    def numbers(z):
        return [{k: v for k, v in m.items() if k != "wall_s"} for m in z["models"]], z["fits"]

    assert numbers(again) == numbers(zoo)
    # a killed zoo (one model's folder missing): only that model is evaluated again
    import shutil

    shutil.rmtree(out / "models" / NAMES[1])
    assert _zoo(env, out) == 0
    capsys.readouterr()
    new = _stamps(out)
    assert all(new[p] == t for p, t in stamps.items() if NAMES[1] not in str(p))
    assert json.loads((out / "zoo.json").read_text())["fits"] == zoo["fits"]

    # the report on the zoo folder: its section first (table, fits, one scatter per score), then the runs
    assert main(["report", str(out), "--out", str(out / "report")]) == 0
    capsys.readouterr()
    page = (out / "report" / "index.html").read_text()
    assert 'id="zoo-1"' in page and "Fits: AUROC against ID accuracy" in page
    assert page.index('id="zoo-1"') < page.index('id="summary-section"')
    scatters = sorted((out / "report" / "figures").glob("zoo1-scatter-*.png"))
    assert len(scatters) == 4 and all(f'src="figures/{p.name}"' in page for p in scatters)
    assert all(f'title="{n}"' in page for n in NAMES)  # every model's run, named by the zoo
    assert (out / "report" / "tables" / "zoo1-models.csv").is_file()
    assert "## Zoo: example-digits" in (out / "report" / "report.md").read_text()


def test_zoo_api_table_fits_and_loaded_models(env, tmp_path):
    bench = vlmood.load_benchmark(env["yaml"])
    models = {"a": "tiny-test", "b": vlmood.load_model("open_clip:vlmood-tiny-test@random:1")}
    models["c"] = "open_clip:vlmood-tiny-test@random:2"
    z = vlmood.zoo(models, bench, scores=["mcm", "energy"], out=tmp_path / "z", num_workers=0, progress=False)
    assert z.models == ["a", "b", "c"] and z.scores == ["mcm", "energy"]
    t = z.table()
    assert list(t.columns) == ["model", "spec", "accuracy", "mcm", "energy"]
    assert list(t["model"]) == ["a", "b", "c"] and t.loc[1, "spec"] == "open_clip:vlmood-tiny-test@random:1"
    f = z.fits()
    assert list(f["score"]) == ["mcm", "energy"]
    assert {"slope", "intercept", "r2", "pearson", "spearman", "n"} <= set(f.columns)
    slope, intercept, r2, r = _reference(t["accuracy"].to_numpy(), t["mcm"].to_numpy())
    assert f.loc[0, "slope"] == pytest.approx(slope) and f.loc[0, "r2"] == pytest.approx(r2)
    assert f.loc[0, "pearson"] == pytest.approx(r) and f.loc[0, "n"] == 3
    near = z.fits("near_auroc")
    assert near.loc[0, "slope"] == pytest.approx(
        _reference(t["accuracy"].to_numpy(), z.table(group="near")["mcm"].to_numpy())[0]
    )
    assert z.table("fpr95")["energy"].between(0, 1).all()
    assert z.results("b").accuracy == t.loc[1, "accuracy"]
    assert vlmood.Zoo.load(tmp_path / "z").table().equals(t)
    assert "least squares" in str(z) and (tmp_path / "z" / "scatter-mcm.png").is_file()
    with pytest.raises(UsageError, match="needs at least 2"):
        vlmood.zoo(["tiny-test"], bench, out=tmp_path / "y")


def test_zoo_without_train_split_leaves_knn_out(env, tmp_path, capsys):
    data = env["yaml"].parent
    rc = main(
        [
            "zoo",
            "--models",
            MODELS,
            "--id",
            str(data / "id"),
            "--ood",
            f"near/digits={data / 'near' / 'digits-5-9'}",
            "--scores",
            "mcm,knn",
            "--out",
            str(tmp_path / "z"),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "knn left out" in text and "train split" in text
    zoo = json.loads((tmp_path / "z" / "zoo.json").read_text())
    assert zoo["scores"] == ["mcm"] and "train split" in zoo["skipped_scores"]["knn"]
    assert set(zoo["fits"]["mcm"]) == {"auroc", "near_auroc"}


def test_default_scores_agree():
    from vlmood.cli.zoo import DEFAULT_ZOO_SCORES
    from vlmood.zoos import DEFAULT_ZOO_SCORES as RUN_DEFAULT

    assert DEFAULT_ZOO_SCORES.split(",") == list(RUN_DEFAULT) == ["mcm", "knn", "neglabel", "energy"]


def test_import_keeps_vlmood_zoo_a_function():
    code = (
        "import vlmood; from vlmood.zoos import run_zoo; "
        "assert callable(vlmood.zoo) and vlmood.zoo.__module__ == 'vlmood.api'; "
        "assert vlmood.Zoo.__name__ == 'Zoo'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------- bad input
def test_zoo_bad_input_is_one_line_exit_2(env, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "open_clip_config.json").write_text("{not json")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "open_clip_config.json").write_text("{}")
    (broken / "open_clip_model.safetensors").write_bytes(b"not weights")
    (tmp_path / "one.txt").write_text("# only one\nvlmood-tiny\n")
    (tmp_path / "dup.txt").write_text("a=tiny-test\nb=vlmood-tiny\na=vlmood-small\n")
    cases = [
        ("missing.txt", [], "missing.txt: the model-list file does not exist"),
        (str(tmp_path / "dup.txt"), [], "repeated: a at"),
        (str(tmp_path / "one.txt"), [], "needs at least 2"),
        (
            "tiny-test,nosuch-model",
            [],
            "model 'nosuch-model' (nosuch-model, --models item 2): no registered model",
        ),
        ("tiny-test,gone=local-dir:/nonexistent/m", [], "model 'gone'"),
        ("tiny-test,open_clip:NoSuchArch@random:0", [], "open_clip has no architecture 'NoSuchArch'"),
        (f"tiny-test,u=local-dir:{unfinished}", [], "holds no weights"),
        (
            f"bad=local-dir:{broken},tiny-test",
            [],
            "model 'bad' (local-dir:",
        ),  # passes the check, fails to load
        (MODELS, ["--scores", "mcm,nosuchscore"], "unknown score 'nosuchscore'"),
        (MODELS, ["--out", str(tmp_path / "junk")], "holds files that are not a zoo's (scatter-mine.png)"),
    ]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "scatter-mine.png").write_text("mine")
    for models, extra, msg in cases:
        out = tmp_path / "out"
        rc = main(
            [
                "zoo",
                "--models",
                models,
                "--benchmark",
                str(env["yaml"]),
                "--out",
                str(out),
                "--workers",
                "0",
                *extra,
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, (models, err)
        assert msg in err and err.startswith("vlmood zoo: error:"), (models, err)
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        assert not (out / "zoo.json").exists()
    assert (tmp_path / "junk" / "scatter-mine.png").read_text() == "mine"  # nothing deleted
