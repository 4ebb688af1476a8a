"""One identity key per artifact: results.json and adapter.json carry what decided them, and
``run_eval(..., reuse=True)`` / ``fit_method(..., reuse=True)`` reuse exactly what matches."""

from __future__ import annotations

import json

import pytest

from conftest import write_digit_images
from vlmood.errors import UsageError
from vlmood.eval.runner import EvalOptions, ScoreSpec, eval_identity, run_eval
from vlmood.eval.sets import sets_from_args
from vlmood.methods import fit_method, read_adapter_info
from vlmood.models import load_model
from vlmood.train.engine import TrainConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    write_digit_images(root / "id", [0, 1, 2], per_class=4)
    write_digit_images(root / "ood", [7, 8], per_class=4, flat=True)
    sets = sets_from_args(id_data=str(root / "id"), ood=[f"far/d={root / 'ood'}"], train=str(root / "id"))
    return {"root": root, "sets": sets.eval_sets, "model": load_model("tiny-test")}


def _opts(tmp_path, **kw):
    return EvalOptions(
        templates=["a photo of a {}."], cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False, **kw
    )


def test_results_carry_an_identity_and_reuse_only_matches(env, tmp_path):
    out = tmp_path / "run"
    specs = [ScoreSpec("mcm"), ScoreSpec("energy")]
    res = run_eval(env["model"], env["sets"], specs, out, _opts(tmp_path))
    ident = eval_identity(env["model"], env["sets"], _opts(tmp_path))
    assert res["identity"]["key"] == ident["key"]
    assert json.loads((out / "results.json").read_text())["identity"] == ident
    stamp = (out / "results.json").stat().st_mtime_ns
    # same inputs, a subset of the scores: returned as it is, nothing written
    again = run_eval(env["model"], env["sets"], specs[:1], out, _opts(tmp_path), reuse=True)
    assert again["identity"]["key"] == ident["key"] and (out / "results.json").stat().st_mtime_ns == stamp
    # another score, or other templates: evaluated again
    more = run_eval(env["model"], env["sets"], [ScoreSpec("maxlogit")], out, _opts(tmp_path), reuse=True)
    assert "maxlogit" in more["scores"]
    o2 = _opts(tmp_path)
    o2.templates = ["itap of a {}."]
    assert eval_identity(env["model"], env["sets"], o2)["key"] != ident["key"]
    # the model's spec text is how it was named, not what it is
    other_name = load_model("tiny-test")
    assert eval_identity(other_name, env["sets"], _opts(tmp_path))["key"] == ident["key"]


def test_fit_reuses_the_same_settings_and_refuses_others(env, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, optimizer="sgd", seed=0)
    out = tmp_path / "ad"
    kw = dict(
        cfg=cfg,
        shots=2,
        seed=0,
        classnames=env["sets"].classnames,
        progress=False,
        extract_options={"num_workers": 0},
    )
    fit_method("linear-probe", env["model"], env["sets"].train, out, **kw)
    info = read_adapter_info(out)
    assert info["fit_identity"]["method"] == "linear-probe" and info["fit_identity"]["shots"] == 2
    assert set(info["environment"]) >= {"git_sha", "versions", "device"}  # the record results carry
    stamp = (out / "adapter.json").stat().st_mtime_ns
    fit_method("linear-probe", env["model"], env["sets"].train, out, **kw, reuse=True)
    assert (out / "adapter.json").stat().st_mtime_ns == stamp  # reused, not retrained
    # run-only settings (workers, logging) do not change what is computed
    import dataclasses

    kw2 = dict(kw, cfg=dataclasses.replace(cfg, log_every=7, num_workers=0))
    fit_method("linear-probe", env["model"], env["sets"].train, out, **kw2, reuse=True)
    with pytest.raises(UsageError, match=r"other settings.*train\.epochs: 1 -> 2"):
        kw3 = dict(kw, cfg=dataclasses.replace(cfg, epochs=2))
        fit_method("linear-probe", env["model"], env["sets"].train, out, **kw3, reuse=True)
    with pytest.raises(UsageError, match=r"shots: 2 -> 3"):
        fit_method("linear-probe", env["model"], env["sets"].train, out, **dict(kw, shots=3), reuse=True)
