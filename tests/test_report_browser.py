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
    out = tmp_path_factory.mktemp("report_browser") / "report"
    write_report([report_runs["a"], report_runs["b"]], out)
    return out


def test_tables_and_images_in_chromium(browser, report, tmp_path):
    dom = _run_chromium(browser, tmp_path, "--dump-dom", (report / "index.html").as_uri()).stdout
    for table_id in ("runs-table", "accuracy", "comparison", "metrics-run1", "metrics-run2"):
        assert f'id="{table_id}"' in dom, f"table {table_id} missing from the rendered page"
    n_img = len(list((report / "figures").glob("*.png")))
    assert n_img == 5
    m = re.search(r'<html[^>]*data-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run (no data-images on <html>)"
    assert (int(m.group(1)), int(m.group(2))) == (n_img, n_img), f"images loaded/total: {m.group(0)}"
    assert dom.count('data-loaded="1"') == n_img and 'data-loaded="0"' not in dom


def test_broken_image_is_detected(browser, report, tmp_path):
    """Negative control: the same check sees a missing figure."""
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    victim = sorted((broken / "figures").glob("*-roc.png"))[0]
    victim.unlink()
    dom = _run_chromium(browser, tmp_path, "--dump-dom", (broken / "index.html").as_uri()).stdout
    assert re.search(r'data-images="4/5"', dom), "a missing figure was not detected"
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
