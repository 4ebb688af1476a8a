"""Report tables as plain data, rendered by both the HTML and the Markdown writers.

Numbers are kept as fractions; renderers show them in % with two decimals. The best cell per
column is decided on the *displayed* value, so visibly equal numbers are both marked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmood.report.load import LOWER_IS_BETTER, METRIC_LABELS, TABLE_METRICS, Run


@dataclass
class Cell:
    value: float | None  # a fraction (shown x100) or None when missing
    best: bool = False

    @property
    def text(self) -> str:
        return "–" if self.value is None else f"{100 * self.value:.2f}"


@dataclass
class Table:
    id: str
    row_heads: list[str]  # headings of the leading label columns (e.g. ["score"])
    columns: list[str]  # headings of the value columns
    rows: list[tuple[list[str], list[Cell]]]
    groups: list[tuple[str, int]] = field(default_factory=list)  # optional top header row: (text, span)
    lower_better: list[bool] = field(default_factory=list)
    caption: str = ""

    def column(self, name: str, group: str | None = None) -> int:
        """Index of a value column by heading (and group heading when groups are used)."""
        start = 0
        for g, span in self.groups or [(None, len(self.columns))]:
            for j in range(start, start + span):
                if self.columns[j] == name and (group is None or g == group):
                    return j
            start += span
        raise KeyError((group, name))


def _arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def mark_best(table: Table) -> Table:
    """Mark the best cell of each column (min where lower is better, else max) if 2+ rows have
    values and they are not all equal."""
    for j, lower in enumerate(table.lower_better):
        cells = [cells[j] for _, cells in table.rows if cells[j].value is not None]
        if len(cells) < 2:
            continue
        shown = [round(100 * c.value, 2) for c in cells]
        if len(set(shown)) == 1:  # nothing to tell apart (e.g. one run's accuracy on every row)
            continue
        target = min(shown) if lower else max(shown)
        for c, v in zip(cells, shown):
            c.best = v == target
    return table


def metric_table(run: Run, index: int) -> Table:
    """Rows = scores; for each OOD set and mean: FPR95, AUROC, AUPR-in, AUPR-out."""
    cols_keys = [(n, n) for n in run.ood_sets] + [(k, h) for k, h in run.summary_keys()]
    columns, groups, lower = [], [], []
    for _, heading in cols_keys:
        groups.append((heading, len(TABLE_METRICS)))
        for m in TABLE_METRICS:
            columns.append(f"{METRIC_LABELS[m]} {_arrow(m)}")
            lower.append(m in LOWER_IS_BETTER)
    rows = []
    for score in run.scores:
        cells = [Cell(run.metric(score, key, m)) for key, _ in cols_keys for m in TABLE_METRICS]
        rows.append(([score], cells))
    return mark_best(
        Table(
            id=f"metrics-run{index + 1}",
            row_heads=["score"],
            columns=columns,
            rows=rows,
            groups=groups,
            lower_better=lower,
            caption=f"OOD detection, {run.label} (%)",
        )
    )


def summary_table(runs: list[Run]) -> Table:
    """Rows = (run, score); ID accuracy, then FPR95 / AUROC averaged over near, far and all OOD sets."""
    keys = [
        (k, h)
        for k, h in (("near_mean", "near OOD"), ("far_mean", "far OOD"))
        if any(k in dict(r.summary_keys()) for r in runs)
    ] + [("mean", "all OOD")]
    groups: list[tuple[str, int]] = [("ID", 1)] + [(h, 2) for _, h in keys]
    columns = ["acc. ↑"]
    lower = [False]
    for _ in keys:
        for m in ("fpr95", "auroc"):
            columns.append(f"{METRIC_LABELS[m]} {_arrow(m)}")
            lower.append(m in LOWER_IS_BETTER)
    rows = []
    for r in runs:
        acc = _frac(r.results.get("id_accuracy"))
        for score in r.scores:
            cells = [Cell(acc)] + [Cell(r.metric(score, k, m)) for k, _ in keys for m in ("fpr95", "auroc")]
            rows.append(([r.label, score], cells))
    return mark_best(
        Table(
            id="summary",
            row_heads=["run", "score"],
            columns=columns,
            rows=rows,
            groups=groups,
            lower_better=lower,
            caption="Summary: ID accuracy and OOD detection averaged over OOD sets (%)",
        )
    )


def class_accuracy_table(runs: list[Run], per_run: list[tuple[list[str], Any, Any] | None]) -> Table | None:
    """Rows = ID classes (first-seen order over runs); one accuracy column per run that has
    per-image predictions; ``n`` = the class's images in the first such run."""
    have = [(r, pr) for r, pr in zip(runs, per_run) if pr is not None]
    if not have:
        return None
    names: list[str] = []
    for _, (cls, _, _) in have:
        names.extend(c for c in cls if c not in names)
    idx = [{c: i for i, c in enumerate(cls)} for _, (cls, _, _) in have]
    rows = []
    for c in names:
        n = next(int(pr[2][m[c]]) for (_, pr), m in zip(have, idx) if c in m)
        cells = []
        for (_, (_, acc, _)), m in zip(have, idx):
            v = float(acc[m[c]]) if c in m else None
            cells.append(Cell(v if v is not None and v == v else None))
        rows.append(([c, str(n)], cells))
    return Table(  # no "best" marks: classes are not competitors
        id="class-accuracy",
        row_heads=["class", "n"],
        columns=[r.label for r, _ in have],
        rows=rows,
        caption="Top-1 accuracy per ID class (%), from each run's per-image predictions",
    )


def comparison_table(runs: list[Run]) -> Table:
    """Rows = (run, score); mean AUROC / FPR95 over OOD sets, plus near/far means when present."""
    keys = [("mean", "mean")] + [
        (k, h)
        for k, h in (("near_mean", "near mean"), ("far_mean", "far mean"))
        if any(k in dict(r.summary_keys()) for r in runs)
    ]
    columns, lower = [], []
    for _, h in keys:
        for m in ("auroc", "fpr95"):
            columns.append(f"{h} {METRIC_LABELS[m]} {_arrow(m)}")
            lower.append(m in LOWER_IS_BETTER)
    rows = []
    for r in runs:
        for score in r.scores:
            rows.append(
                ([r.label, score], [Cell(r.metric(score, k, m)) for k, _ in keys for m in ("auroc", "fpr95")])
            )
    return mark_best(
        Table(
            id="comparison",
            row_heads=["run", "score"],
            columns=columns,
            rows=rows,
            lower_better=lower,
            caption="Runs side by side: means over OOD sets (%)",
        )
    )


def accuracy_table(runs: list[Run]) -> Table:
    """Rows = runs; ID accuracy, then accuracy on each domain-shift and held-out-class set."""
    groups: list[tuple[str, int]] = [("ID", 1)]
    columns = [_id_name(runs)]
    extra: list[tuple[str, str]] = []
    for kind, heading in (("domain_shift", "domain shift"), ("held_out", "held-out classes")):
        names: list[str] = []
        for r in runs:
            recs = r.results.get(kind)
            if isinstance(recs, dict):
                names.extend(n for n in recs if n not in names)
        if names:
            groups.append((heading, len(names)))
            columns.extend(names)
            extra.extend((kind, n) for n in names)
    rows = []
    for r in runs:
        cells = [Cell(_frac(r.results.get("id_accuracy")))]
        for kind, n in extra:
            rec = (r.results.get(kind) or {}).get(n)
            cells.append(Cell(_frac(rec.get("accuracy")) if isinstance(rec, dict) else None))
        rows.append(([r.label], cells))
    return mark_best(
        Table(
            id="accuracy",
            row_heads=["run"],
            columns=columns,
            rows=rows,
            groups=groups,
            lower_better=[False] * len(columns),
            caption="Zero-shot top-1 accuracy (%)",
        )
    )


def _id_name(runs: list[Run]) -> str:
    names = {str((r.results.get("datasets") or {}).get("id", {}).get("name", "")) for r in runs}
    names.discard("")
    return names.pop() if len(names) == 1 else "ID set"


def _frac(x: Any) -> float | None:
    from vlmood.report.load import _as_float

    return _as_float(x)


def bar_values(runs: list[Run]) -> tuple[list[str], dict[str, dict[tuple[str, str], float]]]:
    """Score labels (first-seen order) and mean AUROC / FPR95 per (run, score) for the bar chart."""
    scores: list[str] = []
    values: dict[str, dict[tuple[str, str], float]] = {"auroc": {}, "fpr95": {}}
    for r in runs:
        for s in r.scores:
            for m in values:
                v = r.metric(s, "mean", m)
                if v is not None:
                    values[m][(r.label, s)] = v
                    if s not in scores:
                        scores.append(s)
    return scores, values


def _short(h: Any, n: int = 12) -> str:
    return str(h)[:n] if h else "–"


def provenance(run: Run) -> list[tuple[str, str, str]]:
    """(field, short text, full text) rows describing what made a run."""
    res = run.results
    m = run.model
    env = res.get("environment") if isinstance(res.get("environment"), dict) else {}
    ds = res.get("datasets") if isinstance(res.get("datasets"), dict) else {}
    idset = ds.get("id") if isinstance(ds.get("id"), dict) else {}
    cn = res.get("classnames") if isinstance(res.get("classnames"), dict) else {}
    tp = res.get("templates") if isinstance(res.get("templates"), dict) else {}
    ood = ds.get("ood") if isinstance(ds.get("ood"), dict) else {}
    ood_txt = ", ".join(
        f"{n} ({rec.get('group', 'ood')}, n={rec.get('n', '?')})" if isinstance(rec, dict) else str(n)
        for n, rec in ood.items()
    )
    extra = m.get("extra") if isinstance(m.get("extra"), dict) else {}
    weights = str(m.get("weights") or "–")
    for k, v in extra.items():
        if "sha" in str(k) and v:
            weights += f" · {k} {_short(v)}"
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    cmd = res.get("command")
    cmd_txt = " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd or "–")
    names = cn.get("names") if isinstance(cn.get("names"), list) else []
    templates = tp.get("templates") if isinstance(tp.get("templates"), list) else []
    rows = [
        ("model", str(m.get("spec") or "–"), ""),
        ("architecture", f"{m.get('backend', '?')} / {m.get('arch', '?')}", ""),
        ("weights", weights, ""),
        ("precision", f"{m.get('precision', '?')}" + (" · QuickGELU" if m.get("quick_gelu") else ""), ""),
        ("benchmark", str(res.get("benchmark") or "–"), ""),
        ("ID set", f"{idset.get('name', '?')} (n={idset.get('n', '?')})", str(idset.get("origin", ""))),
        ("OOD sets", ood_txt or "–", ""),
        (
            "class names",
            f"{cn.get('n', len(names))} · sha256 {_short(cn.get('sha256'))}",
            f"{cn.get('origin', '')}\n" + ", ".join(map(str, names)),
        ),
        (
            "templates",
            f"{len(templates)} · sha256 {_short(tp.get('sha256'))}",
            f"{tp.get('origin', '')}\n" + "\n".join(map(str, templates)),
        ),
        ("device", str(res.get("device") or env.get("cuda_device") or env.get("device") or "–"), ""),
        ("date", str(res.get("created") or "–"), ""),
        ("git SHA", _short(env.get("git_sha"), 16), str(env.get("git_sha") or "")),
        ("vlmood", str(versions.get("vlmood") or "–"), ""),
        ("results", str(run.path), ""),
        ("command", cmd_txt, ""),
    ]
    return rows
