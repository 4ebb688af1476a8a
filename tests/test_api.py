"""The Python API (vlmood.load_model / load_benchmark / evaluate / fit / study): the README's Python
block run as written on tiny-test and the example benchmark, result tables, Score objects, in-memory
runs that write nothing, adapters as objects or folders, a lazy `import vlmood`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import vlmood
from vlmood.data.example import write_example
from vlmood.errors import UsageError
from vlmood.scores import Score

README = Path(__file__).resolve().parents[1] / "README.md"
METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")


class MaxCos(Score):
    """Test score: max cosine over a temperature (an unregistered Score subclass)."""

    def __init__(self, t: float = 1.0):
        self.t = t

    def _score_chunk(self, feats):
        return (feats["image"] @ self.text_features.T).max(axis=1) / self.t


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The example benchmark, the tiny-test model and its sets, with a private feature cache."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("api")
    yaml = write_example(root / "data", per_class=4, size=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMOOD_CACHE", str(root / "cache"))
        model = vlmood.load_model("tiny-test")
        bench = vlmood.load_benchmark(yaml, root=yaml.parent)
        yield {"root": root, "yaml": yaml, "model": model, "bench": bench}


def _python_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README.md: the Python section has no ```python block"
    return m.group(1)


def _sub(code: str, old: str, new: str) -> str:
    assert old in code, f"README's Python block no longer contains {old!r}; update this test"
    return code.replace(old, new)


def test_readme_python_block_runs_on_tiny_test(env, tmp_path, monkeypatch):
    """The README example as a researcher writes it; only the model, the data and the sizes
    (shots, epochs, seeds, methods) are swapped for tiny ones."""
    monkeypatch.chdir(tmp_path)  # runs/coop and runs/s land here
    yaml = env["yaml"]
    code = _python_block()
    code = _sub(code, '"open_clip:ViT-B-16@/w/vit_b16.safetensors"', '"tiny-test"')
    code = _sub(code, '"imagenet-mos", root="/data"', f"{str(yaml)!r}, root={str(yaml.parent)!r}")
    code = _sub(code, '"neglabel"', '"neglabel:ngroup=2,max_negatives=100"')
    code = _sub(code, "shots=16, seed=1,", 'shots=2, seed=1, epochs=1, batch_size=4, params={"n_ctx": 2},')
    code = _sub(
        code,
        'methods=["zero-shot", "coop", "plp"], seeds=[1, 2, 3],',
        'methods=["zero-shot", "linear-probe"], seeds=[1],',
    )
    code = _sub(
        code, 'out="runs/s")', 'out="runs/s", shots=2, epochs=1, batch_size=4, scores=["mcm", "energy"])'
    )
    ns: dict = {"__name__": "readme"}
    exec(compile(code, "README.md[python]", "exec"), ns)

    res, res2, study = ns["res"], ns["res2"], ns["study"]
    table = res.table()
    assert len(table) == 3 * 2  # 3 scores x 2 OOD sets
    assert set(table["score"]) == {"mcm", "neglabel(max_negatives=100,ngroup=2)", "MyScore(t=2)"}
    assert 0.0 <= res.accuracy <= 1.0
    assert ns["ad"].method == "coop" and (tmp_path / "runs" / "coop" / "adapter.json").is_file()
    assert res2.to_dict()["adapter"]["method"] == "coop"
    st = study.table()
    assert list(st["method"].unique()) == ["zero-shot", "linear-probe"]
    assert (tmp_path / "runs" / "s" / "study.json").is_file()
    # in memory: only the fit and the study wrote anything
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["coop", "s"]


def test_results_table_and_summary(env):
    res = vlmood.evaluate(env["model"], env["bench"], scores=["mcm", "energy"], num_workers=0, progress=False)
    t = res.table()
    assert list(t.columns[:3]) == ["score", "ood_set", "group"]
    assert set(METRICS) <= set(t.columns)
    assert len(t) == 2 * len(env["bench"].ood)
    assert list(t["ood_set"].unique()) == [o.name for o in env["bench"].ood]
    assert set(t["group"]) == {"near", "far"}
    d = res.to_dict()
    row = t[(t["score"] == "energy") & (t["ood_set"] == "digits-5-9")].iloc[0]
    for m in METRICS:  # the results.json numbers, as fractions
        assert row[m] == pytest.approx(d["scores"]["energy"]["per_set"]["digits-5-9"][m])
        assert ((t[m] >= 0) & (t[m] <= 1)).all()
    s = res.summary()
    assert list(s.index) == ["mcm", "energy"]
    assert s.loc["mcm", "auroc"] == pytest.approx(d["scores"]["mcm"]["mean"]["auroc"])
    assert s.loc["mcm", "near_fpr95"] == pytest.approx(d["scores"]["mcm"]["near_mean"]["fpr95"])
    assert res.accuracy == d["id_accuracy"] and res.scores == ["mcm", "energy"]
    assert "ID accuracy" in str(res)


def test_score_objects_and_texts(env):
    from vlmood.scores.softmax import MCMScore

    mine = MaxCos(t=2)
    res = vlmood.evaluate(
        env["model"],
        env["bench"],
        scores=[mine, MCMScore(temperature=0.5), "energy:temperature=2"],
        num_workers=0,
        progress=False,
    )
    assert res.scores == ["MaxCos(t=2)", "mcm(temperature=0.5)", "energy(temperature=2)"]
    entry = res.to_dict()["scores"]["MaxCos(t=2)"]
    assert entry["class"] == f"{__name__}.MaxCos" and entry["params"] == {"t": 2}
    assert entry["name"] == "MaxCos"
    assert res.to_dict()["scores"]["mcm(temperature=0.5)"]["name"] == "mcm"
    assert not hasattr(mine, "text_features")  # a copy was fitted, the caller's object is untouched
    # the score: max cosine / t over the ID images, higher = more ID
    vals = res.score_values("MaxCos(t=2)")
    ref = vlmood.evaluate(env["model"], env["bench"], scores=[MaxCos(t=1)], num_workers=0, progress=False)
    np.testing.assert_allclose(vals["id"], ref.score_values("MaxCos(t=1)")["id"] / 2, rtol=1e-6)
    with pytest.raises(UsageError, match="is a class"):
        vlmood.evaluate(env["model"], env["bench"], scores=[MaxCos], progress=False)
    with pytest.raises(UsageError, match="not a score name"):
        vlmood.evaluate(env["model"], env["bench"], scores=[3], progress=False)


def test_out_none_writes_nothing_out_writes_the_run(env, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    temp = tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    res = vlmood.evaluate(
        env["model"],
        env["bench"],
        scores=["mcm", "neglabel:ngroup=2,max_negatives=100"],  # NegLabel writes an artifact
        num_workers=0,
        progress=False,
    )
    assert res.out is None
    assert list(work.iterdir()) == [] and list(temp.iterdir()) == []
    neg = res.to_dict()["scores"]["neglabel(max_negatives=100,ngroup=2)"]
    assert neg["artifacts"]["neglabel_labels_file"] is None  # its folder is gone; no dangling path
    assert "raw_scores" not in neg
    assert set(res.score_values("mcm")) >= {"id", "ood/digits-5-9", "ood/photo-crops"}

    out = tmp_path / "run"
    res2 = vlmood.evaluate(
        env["model"], env["bench"], scores=["mcm"], out=out, label="mine", num_workers=0, progress=False
    )
    assert res2.out == out and (out / "results.json").is_file() and (out / "scores").is_dir()
    on_disk = vlmood.Results.load(out)
    assert on_disk.to_dict()["label"] == "mine"
    assert on_disk.table().equals(res2.table())
    np.testing.assert_array_equal(on_disk.score_values("mcm")["id"], res.score_values("mcm")["id"])


def test_adapter_object_or_folder(env, tmp_path):
    model, bench = env["model"], env["bench"]
    ad = vlmood.fit(
        "linear-probe",
        model,
        bench,
        shots=2,
        seed=0,
        epochs=1,
        batch_size=4,
        out=tmp_path / "probe",
        num_workers=0,
        progress=False,
    )
    assert ad.method == "linear-probe" and ad.path == str(tmp_path / "probe")
    assert list(ad.classnames) == bench.classnames
    by_obj = vlmood.evaluate(
        model, bench, scores=["msp", "energy"], adapter=ad, num_workers=0, progress=False
    )
    by_dir = vlmood.evaluate(
        model, bench, scores=["msp", "energy"], adapter=tmp_path / "probe", num_workers=0, progress=False
    )
    assert by_obj.table().equals(by_dir.table())
    assert by_obj.to_dict()["adapter"]["key"] == by_dir.to_dict()["adapter"]["key"] == ad.key
    assert by_obj.to_dict()["adapter"]["path"] == str(tmp_path / "probe")
    assert (
        by_obj.to_dict()["head"]
        != vlmood.evaluate(model, bench, scores=["msp"], num_workers=0, progress=False).to_dict()["head"]
    )
    with pytest.raises(UsageError, match="expected an Adapter"):
        vlmood.evaluate(model, bench, scores=["msp"], adapter=42, progress=False)
    with pytest.raises(UsageError, match="no train split"):
        no_train = vlmood.load_benchmark(
            id=env["yaml"].parent / "id", ood=[f"far/x={env['yaml'].parent / 'far' / 'photo-crops'}"]
        )
        vlmood.fit("coop", model, no_train, out=tmp_path / "x")


def test_load_benchmark_by_path_and_templates(env):
    d = env["yaml"].parent
    b = vlmood.load_benchmark(
        id=d / "id", ood={"near/n": d / "near" / "digits-5-9"}, templates=["a drawing of the digit {}."]
    )
    assert b.name is None and b.classnames == sorted(b.classnames) and len(b.classnames) == 5
    assert [(o.group, o.name) for o in b.ood] == [("near", "n")]
    assert b.templates == ["a drawing of the digit {}."] and b.train is None
    assert env["bench"].templates and env["bench"].train is not None
    assert "example-digits" in repr(env["bench"])
    from vlmood.data.base import DataError

    with pytest.raises(DataError):
        vlmood.load_benchmark(id=d / "id", ood=[str(d / "far")], templates=["no placeholder"])


def test_import_vlmood_is_lazy_and_typed():
    code = (
        "import sys, vlmood; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'pandas' not in sys.modules; "
        "from vlmood.studies import run_study; "
        "assert callable(vlmood.study) and vlmood.study.__module__ == 'vlmood.api'; "
        "assert all(getattr(vlmood, n) is not None for n in vlmood.__all__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert (Path(vlmood.__file__).parent / "py.typed").is_file()
    for name in vlmood.__all__:
        obj = getattr(vlmood, name)
        if name != "__version__":
            assert obj.__doc__, f"vlmood.{name} has no docstring"
    pyproject = (README.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"py.typed"' in pyproject
    core = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"pandas>=' in core


def test_study_object(env, tmp_path):
    st = vlmood.study(
        env["model"],
        env["bench"],
        methods=["zero-shot", "linear-probe"],
        seeds=[0, 1],
        shots=2,
        epochs=1,
        batch_size=4,
        scores=["mcm", MaxCos(t=2)],
        out=tmp_path / "s",
        num_workers=0,
        progress=False,
    )
    t = st.table()
    assert list(zip(t["method"], t["score"])) == [
        ("zero-shot", "mcm"),
        ("zero-shot", "MaxCos(t=2)"),
        ("linear-probe", "mcm"),
        ("linear-probe", "MaxCos(t=2)"),
    ]
    assert {"id_accuracy", "id_accuracy_std", "near_fpr95", "near_auroc_std", "far_auroc", "n_seeds"} <= set(
        t.columns
    )
    assert list(t["n_seeds"]) == [1, 1, 2, 2]
    table = json.loads((tmp_path / "s" / "study.json").read_text())["table"]
    assert t.loc[2, "near_auroc"] == pytest.approx(
        table["linear-probe"]["scores"]["mcm"]["near_auroc"]["mean"]
    )
    # a probe has no class text features for the unregistered score: n/a with the reason
    assert np.isnan(t.loc[3, "near_auroc"]) and isinstance(t.loc[3, "note"], str)
    assert st.results("linear-probe", seed=1).to_dict()["adapter"]["method"] == "linear-probe"
    assert vlmood.Study.load(tmp_path / "s").table().equals(t)
    plan = st.to_dict()["plan"]["scores"]
    assert plan[1]["class"] == f"{__name__}.MaxCos"
