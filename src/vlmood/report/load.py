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
STUDY_FILE = "study.json"
TABLE_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")
METRIC_LABELS = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out"}
LOWER_IS_BETTER = frozenset({"fpr95", "fpr95_interp", "fpr95_nearest", "fpr95_openood", "detection_error"})
SUMMARY_KEYS = (("near_mean", "near mean"), ("far_mean", "far mean"), ("mean", "mean"))


class ReportError(VlmoodError, ValueError):
    """A results file that cannot be reported on (missing, unreadable, or of another schema)."""


@dataclass
class RawScores:
    """Raw ID scores and OOD scores per set for one score of one run (float64), and per image
    (when the run wrote them) ``paths``, predicted class ``pred`` (keys ``"id"`` and
    ``"ood/<set>"``) and the true ID classes ``labels``; older raw files have none of these."""

    id: np.ndarray
    ood: dict[str, np.ndarray]
    paths: dict[str, np.ndarray] = field(default_factory=dict)
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None


@dataclass
class Run:
    """One evaluation: its results dict, where it came from, and (lazily) its raw scores."""

    path: Path  # the results.json file
    results: dict[str, Any]
    label: str = ""
    notes: list[str] = field(default_factory=list)
    role: str = ""  # set for a study's runs: "zero-shot" for the run without an adapter
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
        """The label recorded in results.json (``vlmood eval --label``), else the adapter's
        (``vlmood fit --label``), or ``""``."""
        lab = self.results.get("label") or (self.results.get("adapter") or {}).get("label")
        return lab.strip() if isinstance(lab, str) else ""

    @property
    def adapter(self) -> dict[str, Any]:
        a = self.results.get("adapter")
        return a if isinstance(a, dict) else {}

    @property
    def seed(self) -> Any:
        """The adapter's seed (few-shot draw, else training seed), or None."""
        for part in ("data", "train"):
            block = self.adapter.get(part)
            if isinstance(block, dict) and block.get("seed") is not None:
                return block["seed"]
        return None

    @property
    def default_label(self) -> str:
        """Method, seed and model (``coop · seed 1 · ViT-B-16``); the model alone without an adapter."""
        parts = []
        if self.adapter:
            method = str(self.adapter.get("method") or self.adapter.get("kind") or "adapter")
            params = self.adapter.get("params") if isinstance(self.adapter.get("params"), dict) else {}
            if method == "wise-ft" and params.get("alpha") is not None:
                method = f"wise-ft(alpha={float(params['alpha']):g})"  # one run per alpha
            parts.append(method)
            if self.seed is not None:
                parts.append(f"seed {self.seed}")
        elif self.role:
            parts.append(self.role)
        return " · ".join([*parts, self.model_name])

    @property
    def classnames(self) -> list[str]:
        cn = self.results.get("classnames")
        names = cn.get("names") if isinstance(cn, dict) else None
        return [str(n) for n in names] if isinstance(names, list) else []

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
        arrays: dict[str, np.ndarray] = {}
        paths: dict[str, np.ndarray] = {}
        pred: dict[str, np.ndarray] = {}
        labels = None
        try:
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    if k == "id" or k.startswith("ood/"):
                        arrays[k] = np.asarray(z[k], dtype=np.float64).ravel()
                    elif k.startswith("paths/") and z[k].dtype.kind in "US":
                        paths[k[len("paths/") :]] = np.asarray(z[k]).astype(str).ravel()
                    elif k.startswith("pred/") and z[k].dtype.kind in "iu":
                        pred[k[len("pred/") :]] = np.asarray(z[k], dtype=np.int64).ravel()
                    elif k == "labels/id" and z[k].dtype.kind in "iu":
                        labels = np.asarray(z[k], dtype=np.int64).ravel()
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
            self.notes.append(f"score {score!r}: raw scores file {path} is unreadable ({e})")
            return None
        if "id" not in arrays:
            self.notes.append(f"score {score!r}: raw scores file {path} has no 'id' array")
            return None
        ood = {k[len("ood/") :]: v for k, v in arrays.items() if k.startswith("ood/")}
        order = [n for n in self.ood_sets if n in ood] + [n for n in ood if n not in self.ood_sets]
        sizes = {"id": arrays["id"].size, **{f"ood/{n}": v.size for n, v in ood.items()}}
        # per-image arrays that do not line up with the scores are left out, not trusted
        paths = {k: v for k, v in paths.items() if sizes.get(k) == v.size}
        pred = {k: v for k, v in pred.items() if sizes.get(k) == v.size}
        if labels is not None and labels.size != sizes["id"]:
            labels = None
        return RawScores(
            id=arrays["id"], ood={n: ood[n] for n in order}, paths=paths, pred=pred, labels=labels
        )


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
                f"{path}: folder has no {RESULTS_FILE} (pass a results.json, the --out folder of "
                f"`vlmood eval`, or a `vlmood study` folder)"
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


def study_runs(folder: Path) -> list[tuple[Path, str]]:
    """The (results.json, role) of every run of a ``vlmood study`` folder: the runs study.json lists
    (zero-shot first, then each method's seeds), else every ``runs/**/results.json`` found."""
    study_file = folder / STUDY_FILE
    try:
        study = json.loads(study_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{study_file}: cannot read the study file ({e})") from None
    found: list[tuple[Path, str]] = []
    runs = study.get("runs") if isinstance(study, dict) else None
    if isinstance(runs, dict):
        for method, entry in runs.items():
            seeds = entry.get("seeds") if isinstance(entry, dict) else None
            for rec in (seeds or {}).values():
                rel = rec.get("results") if isinstance(rec, dict) else None
                if isinstance(rel, str):
                    found.append((folder / rel, str(method)))
    if not found:
        order = sorted(
            (folder / "runs").glob("**/results.json"), key=lambda p: (p.parent.name != "zero-shot", p)
        )
        found = [(p, p.relative_to(folder / "runs").parts[0]) for p in order]
    if not found:
        raise ReportError(f"{folder}: study folder holds no runs (no runs/**/results.json)")
    missing = [str(p) for p, _ in found if not p.is_file()]
    if missing:
        raise ReportError(f"{folder}: the study lists runs whose results are missing: {', '.join(missing)}")
    return found


def _expand(paths: list[str | os.PathLike]) -> list[tuple[str | os.PathLike, str]]:
    from vlmood.report.attack import attack_runs, is_attack_folder
    from vlmood.report.zoo import is_zoo_folder, zoo_runs

    out: list[tuple[str | os.PathLike, str]] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir() and not (path / RESULTS_FILE).is_file() and (path / STUDY_FILE).is_file():
            out.extend((r, role) for r, role in study_runs(path))
        elif is_zoo_folder(path):  # a `vlmood zoo` folder: every model's run (labelled by its name)
            out.extend((r, "") for r in zoo_runs(path))
        elif is_attack_folder(path):  # a `vlmood attack` folder: its evaluation runs
            out.extend((r, "") for r in attack_runs(path))
        else:
            out.append((p, ""))
    return out


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Load several runs and give each a short unique label: the run's own ``label`` (``vlmood eval
    --label``) or one naming its method, seed and model (:attr:`Run.default_label`), then the
    adapter key, the folder, then the index where those repeat. A ``vlmood study`` or ``vlmood zoo``
    folder stands for all its runs."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ReportError("no results given: pass at least one results.json (or a folder holding one)")
    runs = []
    for p, role in _expand(paths):
        r = load_run(p)
        r.role = "zero-shot" if role == "zero-shot" else ""
        runs.append(r)
    labels = [r.run_label or r.default_label for r in runs]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    keys = [str(r.adapter.get("key") or "")[:8] for r in runs]
    labels = [f"{lab} [{k}]" if lab in dup and k else lab for lab, k in zip(labels, keys)]
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
