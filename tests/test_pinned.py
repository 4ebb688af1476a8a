"""Pinned outputs: every score's raw values and every metric on fixed images, against tests/pinned/.

A seeded tiny-test model evaluates the example benchmark (scikit-learn's bundled digits and photo
crops) with every registered score through ``run_eval``; the run is compared with
``tests/pinned/outputs.json`` (tolerances and checks: ``scripts/regen_pinned.py``, which also
computes the run, so the test and the pins always describe the same thing).

When an output change is intended, regenerate deliberately, review what it prints, and commit the
new file with the change::

    .venv/bin/python scripts/regen_pinned.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "pinned" / "outputs.json"


def _load_regen():
    spec = importlib.util.spec_from_file_location("vlmood_regen_pinned", ROOT / "scripts" / "regen_pinned.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


regen = _load_regen()


def _fail(problems: list[str], what: str) -> None:
    shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
    pytest.fail(
        f"{what} differ from the pins in {PINNED.relative_to(ROOT)}:\n  "
        + "\n  ".join(shown)
        + "\nIf this change is intended, regenerate the pins deliberately, review the printed summary "
        f"and commit the file:\n  .venv/bin/python {regen.REGEN.split(' ', 1)[1]}",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def pinned() -> dict:
    assert PINNED.is_file(), f"{PINNED} is missing; create it with: python scripts/regen_pinned.py"
    return json.loads(PINNED.read_text())


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("pinned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMOOD_CACHE", str(work / "cache"))  # nothing reaches the user's cache
        return regen.compute(work)


def test_pinned_file_is_small_and_complete(pinned):
    from vlmood.scores import SCORES

    assert PINNED.stat().st_size < 300_000
    assert pinned["schema"] == regen.SCHEMA
    assert sorted(pinned["scores"]) == sorted(SCORES.list()), (
        "every registered score is pinned; a new score needs: python scripts/regen_pinned.py"
    )
    for label, entry in pinned["scores"].items():
        assert set(entry["raw"]) == set(pinned["n"]), label
        assert all(len(entry["raw"][s]) == n for s, n in pinned["n"].items()), label
        assert entry["metrics"]["per_set"] and entry["metrics"]["mean"], label


def test_metric_code_on_pinned_scores(pinned):
    """The metric functions, exactly, on the pinned raw scores (no model run; machine-independent)."""
    problems = []
    for label, entry in pinned["scores"].items():
        got = regen._flat(regen._metrics_from_raw(entry["raw"], pinned["ood_groups"]))
        want = regen._flat(entry["metrics"])
        for k in sorted(set(got) | set(want)):
            if k not in got or k not in want:
                problems.append(f"{label}/{k}: only in {'the pins' if k in want else 'the metric code'}")
            elif not regen._same(want[k], got[k], regen.EXACT):
                problems.append(f"{label}/{k}: pinned {want[k]:.9g}, the metric code gives {got[k]:.9g}")
    if problems:
        _fail(problems, "metrics recomputed from the pinned scores")


def test_pinned_outputs(pinned, live):
    """Text side, every score's raw values, every metric and ID accuracy of a fresh run."""
    want = pinned["diagnostics"]["pixels_sha256"]
    got = live["diagnostics"]["pixels_sha256"]
    if want != got or pinned["diagnostics"]["weights_sha256"] != live["diagnostics"]["weights_sha256"]:
        # the pins describe these exact inputs: other image decoding (a new scikit-learn / Pillow)
        # or another random init (a new torch) is not a code change of vlmood's to report
        pytest.skip(
            "the pinned inputs differ on this machine (decoded example pixels or tiny-test's weights: "
            f"versions here {live['diagnostics']['versions']}); regenerate the pins here with "
            "scripts/regen_pinned.py to compare"
        )
    problems = regen.compare(pinned, live)
    if problems:
        _fail(problems, "outputs of the pinned run (tiny-test on the example benchmark)")
