"""The report page in a real headless Chromium: tables render and every figure loads.

Uses the Chromium binary directly (``--headless=new --dump-dom`` / ``--screenshot``), no driver or
pip package: the page's own load script writes ``data-images="loaded/total"`` on ``<html>`` and
``data-loaded`` on each ``<img>``, which ``--dump-dom`` returns. Needs Debian's ``chromium``
(``apt-get install -y --no-install-recommends chromium chromium-driver``); set
``VLMOOD_SKIP_BROWSER=1`` to skip where no browser can be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from vlmood.report import write_report  # noqa: E402

INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$VLMOOD_CHROMIUM, else the first Chromium/Chrome on PATH, else Debian's /usr/bin/chromium."""
    for name in (os.environ.get("VLMOOD_CHROMIUM"), *CANDIDATES):
        if name and (path := shutil.which(name)):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@pytest.fixture(scope="module")
def browser() -> str:
    if os.environ.get("VLMOOD_SKIP_BROWSER") == "1":
        pytest.skip("VLMOOD_SKIP_BROWSER=1")
    path = find_chromium()
    if path is None:
        pytest.fail(
            f"headless Chromium not found; install it with `{INSTALL}` (or set VLMOOD_SKIP_BROWSER=1 to skip)",
            pytrace=False,
        )
    return path


def _run_chromium(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",  # let the load event (and its script) run before dumping
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def report(browser, report_runs, tmp_path_factory) -> Path:
    # ``browser`` first: without chromium the test skips before any evaluation runs
    import json

    root = tmp_path_factory.mktemp("report_browser")
    # a third run with a long label: the summary must still fit 1400 px without sideways scrolling
    long = shutil.copytree(report_runs["a"], root / "run_long")
    res = json.loads((long / "results.json").read_text())
    res["label"] = (
        "coop · seed 1 · open_clip:ViT-B-16@/data/weights/some/very/long/path/vit_b16_laion2b.safetensors"
    )
    (long / "results.json").write_text(json.dumps(res))
    out = root / "report"
    write_report([report_runs["a"], report_runs["b"], long], out)
    return out


# Test-only: open every folded section, then record what rendered and what a click on a heading does.
PROBE = """<script>
window.addEventListener("load", function () {
  var ds = document.querySelectorAll("details");
  for (var i = 0; i < ds.length; i++) { ds[i].open = true; }
  var ts = document.querySelectorAll("table");
  for (var j = 0; j < ts.length; j++) {
    var t = ts[j];
    t.setAttribute("data-rendered", t.offsetWidth > 0 && t.tBodies[0].rows.length > 0 ? "1" : "0");
  }
  var table = document.getElementById("summary"), th = table.querySelector('th[data-col="8"]');
  th.click();
  var vals = [];
  for (var k = 0; k < table.tBodies[0].rows.length; k++) {
    vals.push(table.tBodies[0].rows[k].cells[8].getAttribute("data-value"));
  }
  document.documentElement.setAttribute("data-sorted", vals.join(","));
});
</script></head>"""


def _n_images(report: Path) -> int:
    return (report / "index.html").read_text().count("<img ")


def test_tables_and_images_in_chromium(browser, report, tmp_path):
    probed = tmp_path / "probed"
    shutil.copytree(report, probed)
    page = probed / "index.html"
    page.write_text(page.read_text().replace("</head>", PROBE, 1))
    dom = _run_chromium(browser, tmp_path, "--window-size=1400,1000", "--dump-dom", page.as_uri()).stdout
    ids = (
        "summary",
        "runs-table",
        "accuracy",
        "class-accuracy",
        "metrics-run1",
        "metrics-run2",
        "metrics-run3",
    )
    for table_id in ids:
        m = re.search(rf'<table[^>]* id="{table_id}"[^>]*data-rendered="(\d)"', dom)
        assert m, f"table {table_id} missing from the rendered page"
        assert m.group(1) == "1", f"table {table_id} did not render"
    assert len(list((report / "figures").glob("*.png"))) == 7
    n_img = _n_images(report)
    assert n_img > 7 and "thumbs/" in dom  # figures and failure thumbnails
    m = re.search(r'<html[^>]*data-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run (no data-images on <html>)"
    assert (int(m.group(1)), int(m.group(2))) == (n_img, n_img), f"images loaded/total: {m.group(0)}"
    assert dom.count('data-loaded="1"') == n_img and 'data-loaded="0"' not in dom
    # sorting: one click on "all OOD AUROC" sorts ascending, missing values last
    vals = re.search(r'data-sorted="([^"]*)"', dom).group(1).split(",")
    nums = [float(v) for v in vals if v]
    assert nums == sorted(nums) and len(nums) == 8


def test_summary_fits_1400px(browser, report, tmp_path):
    dom = _run_chromium(
        browser, tmp_path, "--window-size=1400,1000", "--dump-dom", (report / "index.html").as_uri()
    ).stdout
    m = re.search(r'<div class="table-wrap" data-hscroll="(\d)"><table id="summary"', dom)
    assert m, "the load script did not measure the summary table"
    assert m.group(1) == "0", "the summary table scrolls sideways at 1400 px"
    assert re.search(r'<html[^>]*data-page-hscroll="0"', dom), "the page scrolls sideways at 1400 px"


def test_broken_image_is_detected(browser, report, tmp_path):
    """Negative control: the same check sees a missing figure and a missing thumbnail."""
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    sorted((broken / "figures").glob("*-roc.png"))[0].unlink()
    thumb = next(p for p in (broken / "thumbs").iterdir() if p.suffix == ".jpg")
    n_lost = (broken / "index.html").read_text().count(f"thumbs/{thumb.name}")
    thumb.unlink()
    dom = _run_chromium(browser, tmp_path, "--dump-dom", (broken / "index.html").as_uri()).stdout
    n = _n_images(report)
    assert re.search(rf'data-images="{n - 1 - n_lost}/{n}"', dom), "a missing image was not detected"
    assert 'class="broken"' in dom


def test_screenshot_is_not_blank(browser, report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _run_chromium(
        browser, tmp_path, "--window-size=1400,2000", f"--screenshot={shot}", (report / "index.html").as_uri()
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1400, 2000)
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 20, "screenshot looks blank"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50, "screenshot has too few colours to be the page"
