"""vlmood.report views: run labels, study folders, the per-image failure view, exports, sorting."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from test_report import Page, _body_rows  # noqa: E402
from vlmood import metrics as M  # noqa: E402
from vlmood.report import load_runs, write_report  # noqa: E402
from vlmood.report.failures import fpr95_threshold  # noqa: E402


def _res(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _with_adapter(src: Path, dst: Path, method: str, seed: int, key: str = "0123456789abcdef") -> Path:
    shutil.copytree(src, dst)
    res = _res(dst)
    res["adapter"] = {"method": method, "kind": "prompt", "key": key, "data": {"seed": seed}, "train": {}}
    (dst / "results.json").write_text(json.dumps(res))
    return dst


def test_raw_scores_carry_paths_and_predictions(report_runs):
    run = report_runs["a"]
    res = _res(run)
    with np.load(run / res["scores"]["mcm"]["raw_scores"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    n_id = res["datasets"]["id"]["n"]
    assert arrays["paths/id"].shape == arrays["pred/id"].shape == arrays["labels/id"].shape == (n_id,)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in arrays["paths/id"])
    # the predictions are the head's: their accuracy is the run's ID accuracy
    assert np.mean(arrays["pred/id"] == arrays["labels/id"]) == pytest.approx(res["id_accuracy"])
    for name in res["datasets"]["ood"]:
        assert arrays[f"paths/ood/{name}"].shape == arrays[f"ood/{name}"].shape
        assert arrays[f"pred/ood/{name}"].min() >= 0


def test_default_labels_name_method_seed_model(report_runs, tmp_path):
    a = _with_adapter(report_runs["a"], tmp_path / "c1", "coop", 1)
    b = _with_adapter(report_runs["a"], tmp_path / "c2", "coop", 2)
    labels = [r.label for r in load_runs([report_runs["a"], a, b])]
    assert labels == ["tiny-test", "coop · seed 1 · tiny-test", "coop · seed 2 · tiny-test"]
    # same method and seed, different adapters: the adapter key tells them apart
    c = _with_adapter(report_runs["a"], tmp_path / "c3", "coop", 1, key="fedcba9876543210")
    labels = [r.label for r in load_runs([a, c])]
    assert labels == ["coop · seed 1 · tiny-test [01234567]", "coop · seed 1 · tiny-test [fedcba98]"]
    res = _res(c)
    res["label"] = "my run"  # --label wins
    (c / "results.json").write_text(json.dumps(res))
    assert [r.label for r in load_runs([a, c])] == ["coop · seed 1 · tiny-test", "my run"]


def _study(report_runs, root: Path) -> Path:
    runs = root / "runs"
    shutil.copytree(report_runs["a"], runs / "zero-shot")
    for seed in (1, 2):
        _with_adapter(report_runs["a"], runs / "coop" / f"seed{seed}", "coop", seed, key=f"{seed}" * 16)
    study = {
        "schema": "vlmood.study/1",
        "runs": {
            "zero-shot": {"seeds": {"-": {"results": "runs/zero-shot/results.json"}}},
            "coop": {"seeds": {str(s): {"results": f"runs/coop/seed{s}/results.json"} for s in (1, 2)}},
        },
    }
    (root / "study.json").write_text(json.dumps(study))
    return root


def test_study_folder(report_runs, tmp_path):
    from vlmood.cli import main

    study = _study(report_runs, tmp_path / "study")
    out = tmp_path / "rep"
    assert main(["report", str(study), "--out", str(out)]) == 0
    page = Page((out / "index.html").read_text())
    runs = {r[0][1] for r in _body_rows(page.tables["summary"])}
    assert runs == {"zero-shot · tiny-test", "coop · seed 1 · tiny-test", "coop · seed 2 · tiny-test"}
    assert {"metrics-run1", "metrics-run2", "metrics-run3"} <= set(page.tables)
    # without study.json's run list, the runs/ folders are found
    (study / "study.json").write_text("{}")
    labels = [r.label for r in load_runs([study])]
    assert labels[0] == "zero-shot · tiny-test" and len(labels) == 3
    (study / "runs" / "coop" / "seed2" / "results.json").unlink()
    _study_json = {"runs": {"coop": {"seeds": {"2": {"results": "runs/coop/seed2/results.json"}}}}}
    (study / "study.json").write_text(json.dumps(_study_json))
    with pytest.raises(ValueError, match="results are missing"):
        load_runs([study])


def test_fpr95_threshold_matches_metric():
    rng = np.random.default_rng(0)
    for n in (1, 7, 20, 101):
        idv = np.round(rng.normal(1, 1, n), 1)  # ties
        oodv = np.round(rng.normal(0, 1, 50), 1)
        thr = fpr95_threshold(idv)
        assert np.mean(idv >= thr) >= 0.95 and np.mean(idv > thr) < 0.95
        assert np.mean(oodv >= thr) == pytest.approx(M.fpr95(idv, oodv))


def test_failure_view_and_class_accuracy(report_runs, tmp_path):
    out = tmp_path / "rep"
    info = write_report([report_runs["a"]], out)
    res = _res(report_runs["a"])
    html = (out / "index.html").read_text()
    page = Page(html)
    thumbs = [s for s in page.imgs if s.startswith("thumbs/")]
    assert thumbs and info["thumbnails"] == len({*thumbs})
    from PIL import Image

    for src in set(thumbs):  # small copies under the report folder, never the originals
        with Image.open(out / src) as im:
            assert max(im.size) <= 96
    assert not [s for s in page.imgs if Path(s).is_absolute() or s.startswith(("file:", ".."))]
    for label, entry in res["scores"].items():
        with np.load(report_runs["a"] / entry["raw_scores"]) as z:
            thr = fpr95_threshold(z["id"])
            n_acc = sum(int(np.sum(z[f"ood/{s}"] >= thr)) for s in res["datasets"]["ood"])
            n_ood = sum(z[f"ood/{s}"].size for s in res["datasets"]["ood"])
        assert f"{label} <span" in html and f"({n_acc} of {n_ood}," in html
    # per-class accuracy from the predictions
    with np.load(report_runs["a"] / res["scores"]["mcm"]["raw_scores"]) as z:
        lab, pred = z["labels/id"], z["pred/id"]
    rows = _body_rows(page.tables["class-accuracy"])
    names = res["classnames"]["names"]
    assert [r[0][1] for r in rows] == names
    for k, r in enumerate(rows):
        assert r[1][1] == str(int(np.sum(lab == k)))
        assert float(r[2][2]["data-value"]) == pytest.approx(np.mean(pred[lab == k] == k))


def test_missing_images_and_old_raw_files(report_runs, tmp_path):
    run = shutil.copytree(report_runs["a"], tmp_path / "run")
    mcm = run / _res(run)["scores"]["mcm"]["raw_scores"]
    with np.load(mcm) as z:
        arrays = {k: z[k] for k in z.files}
    arrays = {
        k: (np.array([f"/nonexistent/{i}.png" for i in range(v.size)]) if k.startswith("paths/") else v)
        for k, v in arrays.items()
    }
    np.savez(mcm, **arrays)
    energy = run / _res(run)["scores"]["energy"]["raw_scores"]
    with np.load(energy) as z:  # an older raw file: scores and index only
        old = {k: z[k] for k in z.files if k == "id" or k.startswith(("ood/", "index/"))}
    np.savez(energy, **old)
    out = tmp_path / "rep"
    write_report([run], out)
    html = (out / "index.html").read_text()
    page = Page(html)
    assert "thumbs/missing.png" in page.imgs and (out / "thumbs" / "missing.png").is_file()
    assert "image missing: /nonexistent/" in html
    assert "no per-image view for energy" in html
    assert "metrics-run1" in page.tables  # tables and figures unaffected
    assert len([s for s in page.imgs if s.startswith("figures/")]) == 3


def test_exports_and_sortable_tables(report_runs, tmp_path):
    out = tmp_path / "rep"
    info = write_report([report_runs["a"], report_runs["b"]], out)
    html = (out / "index.html").read_text()
    page = Page(html)
    assert len(page.scripts) == 1 and "vlmoodSort" in page.scripts[0] and "http" not in page.scripts[0]
    for tid in page.tables:
        for ext in ("csv", "tex"):
            f = out / "tables" / f"{tid}.{ext}"
            assert f.is_file() and f"tables/{tid}.{ext}" in html, f
            assert str(f) in info["tables"]
    rows = list(csv.reader(io.StringIO((out / "tables" / "summary.csv").read_text())))
    assert rows[0][:3] == ["run", "score", "ID acc. ↑"]
    res = _res(report_runs["a"])
    mcm = next(r for r in rows if r[:2] == ["tiny-test [run_a]", "mcm"])
    assert float(mcm[-1]) == pytest.approx(100 * res["scores"]["mcm"]["mean"]["auroc"], abs=1e-4)
    tex = (out / "tables" / "summary.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex and "tiny-test [run\\_a]" in tex
    assert "$\\downarrow$" in tex and "\\multicolumn{2}{c}{all OOD}" in tex
    body = [ln for ln in tex.splitlines() if ln.startswith("tiny-test")]
    assert len(body) == 5 and all(ln.count("&") == 8 for ln in body)
    # every value heading is sortable; per-set detail is folded
    head = page.tables["summary"][1]
    assert all("data-col" in c[2] for c in head)
    assert html.count('<details class="fold"><summary>Per-set detail') == 2


def test_histograms_mark_threshold(report_runs, tmp_path, monkeypatch):
    from vlmood.report import figures as F

    seen = {}
    orig = F.plot_histograms

    def spy(raw, sets, path, **kw):
        seen.update(kw.get("thresholds") or {})
        return orig(raw, sets, path, **kw)

    monkeypatch.setattr(F, "plot_histograms", spy)
    write_report([report_runs["a"]], tmp_path / "rep")
    res = _res(report_runs["a"])
    assert set(seen) == set(res["scores"])
    with np.load(report_runs["a"] / res["scores"]["knn"]["raw_scores"]) as z:
        assert seen["knn"] == fpr95_threshold(z["id"])
