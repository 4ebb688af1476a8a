"""Reading ``results.json`` files (schema ``vlmood.results/1``) and their raw scores for a report."""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.errors import VlmoodError

SUPPORTED_SCHEMA = "vlmood.results/1"
RESULTS_FILE = "results.json"
TABLE_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_LABELS = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out"}
LOWER_IS_BETTER = frozenset({"fpr95", "fpr95_interp", "fpr95_nearest", "fpr95_openood", "detection_error"})
SUMMARY_KEYS = (("near_mean", "near mean"), ("far_mean", "far mean"), ("mean", "mean"))


class ReportError(VlmoodError, ValueError):
    """A results file that cannot be reported on (missing, unreadable, or of another schema)."""


@dataclass
class RawScores:
    """Raw ID scores and OOD scores per set for one score of one run (float64)."""

    id: np.ndarray
    ood: dict[str, np.ndarray]


@dataclass
class Run:
    """One evaluation: its results dict, where it came from, and (lazily) its raw scores."""

    path: Path  # the results.json file
    results: dict[str, Any]
    label: str = ""
    notes: list[str] = field(default_factory=list)
    _raw: dict[str, RawScores | None] = field(default_factory=dict, repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def model(self) -> dict[str, Any]:
        m = self.results.get("model")
        return m if isinstance(m, dict) else {}

    @property
    def model_name(self) -> str:
        m = self.model
        return str(m.get("spec") or m.get("arch") or "unknown model")

    @property
    def run_label(self) -> str:
        """The label recorded in results.json (``vlmood eval --label``), or ``""``."""
        lab = self.results.get("label")
        return lab.strip() if isinstance(lab, str) else ""

    @property
    def scores(self) -> dict[str, dict[str, Any]]:
        s = self.results.get("scores")
        if not isinstance(s, dict):
            return {}
        return {str(k): v for k, v in s.items() if isinstance(v, dict)}

    @property
    def ood_sets(self) -> list[str]:
        """OOD set names in benchmark order (datasets.ood), then any others seen in per-set metrics."""
        names: list[str] = []
        ds = self.results.get("datasets", {})
        ood = ds.get("ood") if isinstance(ds, dict) else None
        if isinstance(ood, dict):
            names.extend(str(k) for k in ood)
        for entry in self.scores.values():
            per_set = entry.get("per_set")
            if isinstance(per_set, dict):
                names.extend(str(k) for k in per_set if str(k) not in names)
        return list(dict.fromkeys(names))

    def ood_group(self, name: str) -> str | None:
        ds = self.results.get("datasets", {})
        ood = ds.get("ood") if isinstance(ds, dict) else None
        rec = ood.get(name) if isinstance(ood, dict) else None
        return rec.get("group") if isinstance(rec, dict) else None

    def summary_keys(self) -> list[tuple[str, str]]:
        """The (key, heading) of the means present in at least one score entry, near/far before mean."""
        return [
            (k, h) for k, h in SUMMARY_KEYS if any(isinstance(e.get(k), dict) for e in self.scores.values())
        ]

    def metric(self, score: str, column: str, metric: str) -> float | None:
        """A metric (fraction, not %) for a score; ``column`` is an OOD set name or a summary key."""
        entry = self.scores.get(score, {})
        if column in dict(SUMMARY_KEYS):
            block = entry.get(column)
        else:
            per_set = entry.get("per_set")
            block = per_set.get(column) if isinstance(per_set, dict) else None
        if not isinstance(block, dict):
            return None
        return _as_float(block.get(metric))

    def raw(self, score: str) -> RawScores | None:
        """The raw scores of one score, or None (with a note recorded) when they cannot be read."""
        if score not in self._raw:
            self._raw[score] = self._load_raw(score)
        return self._raw[score]

    def _load_raw(self, score: str) -> RawScores | None:
        rel = self.scores.get(score, {}).get("raw_scores")
        if not rel:
            self.notes.append(f"score {score!r}: the run saved no raw scores")
            return None
        path = self.folder / str(rel)
        if not path.is_file():
            self.notes.append(f"score {score!r}: raw scores file {path} is missing")
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], dtype=np.float64).ravel() for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
            self.notes.append(f"score {score!r}: raw scores file {path} is unreadable ({e})")
            return None
        if "id" not in arrays:
            self.notes.append(f"score {score!r}: raw scores file {path} has no 'id' array")
            return None
        ood = {k[len("ood/") :]: v for k, v in arrays.items() if k.startswith("ood/")}
        order = [n for n in self.ood_sets if n in ood] + [n for n in ood if n not in self.ood_sets]
        return RawScores(id=arrays["id"], ood={n: ood[n] for n in order})


def _as_float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def resolve_results_path(p: str | os.PathLike) -> Path:
    """A results.json path from a file or a folder holding one; a clear error otherwise."""
    path = Path(p).expanduser()
    if path.is_dir():
        cand = path / RESULTS_FILE
        if not cand.is_file():
            raise ReportError(
                f"{path}: folder has no {RESULTS_FILE} (pass a results.json or the --out folder of `vlmood eval`)"
            )
        return cand
    if not path.exists():
        raise ReportError(f"{path}: no such file or folder (expected a results.json or a folder holding one)")
    if not path.is_file():
        raise ReportError(f"{path}: not a regular file")
    return path


def load_run(p: str | os.PathLike) -> Run:
    """Read and check one results file."""
    path = resolve_results_path(p)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read results file: {e}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e}); is this a vlmood results.json?") from None
    if not isinstance(results, dict) or "schema" not in results:
        raise ReportError(f"{path}: not a vlmood results file (no 'schema' field)")
    schema = results["schema"]
    if schema != SUPPORTED_SCHEMA:
        raise ReportError(
            f"{path}: results schema {schema!r} is not supported by this vlmood "
            f"(it reads {SUPPORTED_SCHEMA!r}); re-run `vlmood eval` or use the vlmood version that wrote it"
        )
    if not isinstance(results.get("scores", {}), dict):
        raise ReportError(f"{path}: 'scores' must be a mapping of score label -> metrics")
    return Run(path=path.resolve(), results=results)


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Load several runs and give each a short unique label: the run's own ``label`` (``vlmood eval
    --label``) or its model spec, then the folder, then the index where those repeat."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ReportError("no results given: pass at least one results.json (or a folder holding one)")
    runs = [load_run(p) for p in paths]
    labels = [r.run_label or r.model_name for r in runs]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    labels = [f"{lab} [{r.folder.name}]" if lab in dup else lab for lab, r in zip(labels, runs)]
    if len(set(labels)) != len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    for r, lab in zip(runs, labels):
        r.label = lab
    return runs


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe form of a label."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return (s or "x")[:max_len]
