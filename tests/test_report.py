"""vlmood.report: HTML/Markdown/figures from real (tiny) evaluation runs."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from vlmood.report import ReportError, roc_curve, write_report  # noqa: E402


# ---------------------------------------------------------------- fixtures: two real tiny runs
@pytest.fixture(scope="module")
def runs(report_runs) -> dict[str, Path]:
    """Two real tiny runs (shared ``report_runs`` fixture in conftest.py)."""
    return report_runs


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- a small HTML reader
class Page(HTMLParser):
    """Tables by id (rows of (tag, text, attrs) cells), img sources, script texts, all text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[tuple[str, str, dict]]]] = {}
        self.imgs: list[str] = []
        self.scripts: list[str] = []
        self._table: str | None = None
        self._row: list | None = None
        self._cell: list | None = None
        self._in_script = False
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [tag, "", a]
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append((self._cell[0], self._cell[1].strip(), self._cell[2]))
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell[1] += data


def _body_rows(table):
    """Rows with at least one td (data rows), as lists of (tag, text, attrs)."""
    return [r for r in table if any(c[0] == "td" for c in r)]


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 150
        arr = np.asarray(im.convert("L"))
        assert arr.std() > 5, f"{path} looks blank"


# ---------------------------------------------------------------- tests
def test_single_run_report(runs, tmp_path):
    out = tmp_path / "rep"
    info = write_report([runs["a"]], out)
    assert Path(info["index"]) == out / "index.html" and Path(info["markdown"]) == out / "report.md"
    names = sorted(Path(f).name for f in info["figures"])
    assert names == ["compare-bars.png", "run1-tiny-test-hist.png", "run1-tiny-test-roc.png"]
    for f in info["figures"]:
        _check_png(Path(f))
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging left behind"

    res = _results(runs["a"])
    page = Page((out / "index.html").read_text())
    # every <img> points at a file written beside the page, relatively: 3 figures, then thumbnails
    assert len([s for s in page.imgs if s.startswith("figures/")]) == 3
    assert all(s.startswith(("figures/", "thumbs/")) for s in page.imgs)
    for src in page.imgs:
        assert not Path(src).is_absolute() and (out / src).is_file()

    # metric table: rows = scores; 4 metrics for each OOD set then near/far/mean
    table = page.tables["metrics-run1"]
    groups = [c[1] for c in table[0] if c[2].get("class") == "group"]
    assert groups == ["digits-5-9", "photo-crops", "near mean", "far mean", "mean"]
    rows = _body_rows(table)
    assert [r[0][1] for r in rows] == ["mcm", "energy", "knn"]
    metrics = ("fpr95", "auroc", "aupr_in", "aupr_out")
    for row in rows:
        entry = res["scores"][row[0][1]]
        tds = [c for c in row if c[0] == "td"]
        assert len(tds) == 5 * 4
        blocks = [entry["per_set"]["digits-5-9"], entry["per_set"]["photo-crops"]]
        blocks += [entry["near_mean"], entry["far_mean"], entry["mean"]]
        expected = [_pct(b[m]) for b in blocks for m in metrics]
        assert [c[1] for c in tds] == expected
        # the exact value is kept in data-value
        assert float(tds[1][2]["data-value"]) == pytest.approx(entry["per_set"]["digits-5-9"]["auroc"])

    # best per column: highest mean AUROC and lowest mean FPR95 are highlighted
    col_auroc, col_fpr = 4 * 4 + 1, 4 * 4
    best_auroc = max(res["scores"], key=lambda s: round(100 * res["scores"][s]["mean"]["auroc"], 2))
    best_fpr = min(res["scores"], key=lambda s: round(100 * res["scores"][s]["mean"]["fpr95"], 2))
    for row in rows:
        tds = [c for c in row if c[0] == "td"]
        assert ("best" in tds[col_auroc][2]["class"].split()) == (row[0][1] == best_auroc)
        assert ("best" in tds[col_fpr][2]["class"].split()) == (row[0][1] == best_fpr)

    # accuracy + provenance
    acc = _body_rows(page.tables["accuracy"])
    assert acc[0][0][1] == "tiny-test" and acc[0][1][1] == _pct(res["id_accuracy"])
    prov = {r[0][1]: r[1][1] for r in _body_rows(page.tables["runs-table"])}
    for key in (
        "model",
        "weights",
        "benchmark",
        "ID set",
        "class names",
        "templates",
        "device",
        "date",
        "git SHA",
    ):
        assert key in prov
    assert prov["model"] == "tiny-test" and prov["benchmark"].startswith("example-digits")
    assert res["classnames"]["sha256"][:12] in prov["class names"]
    assert res["templates"]["sha256"][:12] in prov["templates"]
    summary = _body_rows(page.tables["summary"])  # the summary table comes first, even for one run
    assert [r[1][1] for r in summary] == ["mcm", "energy", "knn"]
    html = (out / "index.html").read_text()
    assert html.index('id="summary"') < html.index('id="metrics-run1"')

    md = (out / "report.md").read_text()
    mcm = res["scores"]["mcm"]["per_set"]["digits-5-9"]
    assert f"| mcm | {_pct(mcm['fpr95'])} | {_pct(mcm['auroc'])} |" in md.replace("**", "")
    assert "digits-5-9 · AUROC ↑" in md
    for n in names:
        assert f"(figures/{n})" in md


def test_two_runs_side_by_side(runs, tmp_path):
    out = tmp_path / "rep2"
    info = write_report([runs["a"] / "results.json", runs["b"]], out, title="Two <runs>")
    labels = [r["label"] for r in info["runs"]]
    assert labels == ["tiny-test [run_a]", "tiny-test [run_b]"]  # same model: folder makes them unique
    assert len(info["figures"]) == 5
    html = (out / "index.html").read_text()
    assert "<title>Two &lt;runs&gt;</title>" in html
    page = Page(html)
    assert {"metrics-run1", "metrics-run2", "summary", "accuracy"} <= set(page.tables)
    rows = _body_rows(page.tables["summary"])
    pairs = [(r[0][1], r[1][1]) for r in rows]
    assert pairs == [
        ("tiny-test [run_a]", "mcm"),
        ("tiny-test [run_a]", "energy"),
        ("tiny-test [run_a]", "knn"),
        ("tiny-test [run_b]", "maxlogit"),
        ("tiny-test [run_b]", "mcm"),
    ]
    res_b = _results(runs["b"])
    row = rows[3]
    tds = [c[1] for c in row if c[0] == "td"]
    assert tds[0] == _pct(res_b["id_accuracy"])
    assert tds[-2:] == [
        _pct(res_b["scores"]["maxlogit"]["mean"]["fpr95"]),
        _pct(res_b["scores"]["maxlogit"]["mean"]["auroc"]),
    ]
    assert tds[1:3] == [
        _pct(res_b["scores"]["maxlogit"]["near_mean"]["fpr95"]),
        _pct(res_b["scores"]["maxlogit"]["near_mean"]["auroc"]),
    ]
    # the same model and data: mcm gives the same numbers in both runs
    assert [c[1] for c in rows[0] if c[0] == "td"] == [c[1] for c in rows[4] if c[0] == "td"]
    md = (out / "report.md").read_text()
    assert "| run | score | ID · acc. ↑ | near OOD · FPR95 ↓ | near OOD · AUROC ↑ |" in md
    assert (
        "## OOD detection, run 2: tiny-test \\[run\\_b\\]" in md
        or "## OOD detection, run 2: tiny-test \\[run_b\\]" in md
    )


def test_missing_raw_scores_keeps_tables(runs, tmp_path):
    run = _copy_run(runs["a"], tmp_path / "run_noraw")
    (run / "scores" / "knn.npz").unlink()
    out = tmp_path / "rep"
    info = write_report([run], out)
    assert any("knn" in n and "missing" in n for n in info["runs"][0]["notes"])
    page = Page((out / "index.html").read_text())
    assert [r[0][1] for r in _body_rows(page.tables["metrics-run1"])] == ["mcm", "energy", "knn"]
    text = " ".join(page.text)
    assert "figures leave out score(s) without raw scores: knn" in text

    shutil.rmtree(run / "scores")  # no raw scores at all: tables, a note, only the bar chart
    info = write_report([run], out)
    assert [Path(f).name for f in info["figures"]] == ["compare-bars.png"]
    page = Page((out / "index.html").read_text())
    assert "metrics-run1" in page.tables and len(page.imgs) == 1
    assert "no figures for this run" in " ".join(page.text)
    assert not (out / "figures" / "run1-tiny-test-roc.png").exists()  # the old figures were replaced
    assert "no figures for this run" in (out / "report.md").read_text()


def test_bad_inputs(runs, tmp_path):
    out = tmp_path / "rep"
    missing = tmp_path / "nope" / "results.json"
    with pytest.raises(ReportError, match=r"nope.*no such file"):
        write_report([missing], out)
    with pytest.raises(ReportError, match=r"empty_dir.*no results\.json"):
        (tmp_path / "empty_dir").mkdir()
        write_report([tmp_path / "empty_dir"], out)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ReportError, match=r"bad\.json.*not valid JSON"):
        write_report([bad_json], out)
    other = _copy_run(runs["a"], tmp_path / "run_v2")
    res = _results(other)
    res["schema"] = "vlmood.results/2"
    (other / "results.json").write_text(json.dumps(res))
    with pytest.raises(ReportError, match=r"run_v2/results\.json.*'vlmood\.results/2' is not supported"):
        write_report([runs["a"], other], out)
    no_schema = tmp_path / "plain.json"
    no_schema.write_text(json.dumps({"a": 1}))
    with pytest.raises(ReportError, match=r"plain\.json.*not a vlmood results file"):
        write_report([no_schema], out)
    with pytest.raises(ReportError, match="no results given"):
        write_report([], out)
    assert not out.exists()  # inputs are checked before anything is written
    assert issubclass(ReportError, ValueError)  # the CLI reports ValueErrors as clean errors


def test_escaping(runs, tmp_path):
    evil = "<script>alert('x')</script>"
    run = _copy_run(runs["a"], tmp_path / "run_evil")
    res = _results(run)
    res["classnames"]["names"][0] = evil
    res["benchmark"] = f"bench {evil}"
    res["model"]["spec"] = f'tiny"{evil}'
    # an OOD set name and a score label with markup, raw scores file renamed consistently
    entry = res["scores"].pop("energy")
    res["scores"]["<b>energy</b>"] = entry
    for e in res["scores"].values():
        e["per_set"]["<i>near</i>"] = e["per_set"].pop("digits-5-9")
    res["datasets"]["ood"]["<i>near</i>"] = res["datasets"]["ood"].pop("digits-5-9")
    for npz in (run / "scores").glob("*.npz"):
        with np.load(npz) as z:
            arrays = {("ood/<i>near</i>" if k == "ood/digits-5-9" else k): z[k] for k in z.files}
        np.savez(npz, **arrays)
    (run / "results.json").write_text(json.dumps(res))
    out = tmp_path / "rep"
    write_report([run], out)
    html = (out / "index.html").read_text()
    assert "<script>alert" not in html and "<b>energy" not in html and "<i>near" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    page = Page(html)
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]  # only the page's own script
    assert "<b>energy</b>" in [r[0][1] for r in _body_rows(page.tables["metrics-run1"])]
    assert "<i>near</i>" in [c[1] for c in page.tables["metrics-run1"][0]]
    assert all(not Path(s).is_absolute() and (out / s).is_file() for s in page.imgs)
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "<b>" not in md and "&lt;b&gt;energy&lt;/b&gt;" in md


def test_rewrite_same_folder(runs, tmp_path):
    out = tmp_path / "rep"
    write_report([runs["a"]], out)
    (out / "keep.txt").write_text("mine")
    write_report([runs["a"], runs["b"]], out)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [
        "figures",
        "index.html",
        "keep.txt",
        "report.md",
        "tables",
        "thumbs",
    ]
    assert len(list((out / "figures").iterdir())) == 5


def test_roc_curve_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    from vlmood import metrics as M

    rng = np.random.default_rng(0)
    id_s = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    ood_s = np.round(rng.normal(0.0, 1.0, 200), 1)
    fpr, tpr = roc_curve(id_s, ood_s)
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    sk_fpr, sk_tpr, _ = sk_roc(y, np.r_[id_s, ood_s])
    assert fpr.dtype == np.float64 and fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert area == pytest.approx(M.auroc(id_s, ood_s), abs=1e-12)
    with pytest.raises(ValueError):
        roc_curve([], [1.0])
