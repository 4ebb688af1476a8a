"""``write_report``: results.json file(s), study, zoo or attack folders -> index.html + report.md + figures/*.png +
thumbs/*.jpg (per-image failure view) + tables/*.csv|tex, written atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlmood.report import export as X
from vlmood.report import figures as F
from vlmood.report.attack import attack_section, is_attack_folder
from vlmood.report.failures import THUMB_DIR, Thumbnails, class_accuracy, fpr95_threshold, score_failures
from vlmood.report.html import Fig, ReportPage, RunSection, render_page
from vlmood.report.load import RawScores, ReportError, Run, load_runs, slug
from vlmood.report.markdown import render_markdown
from vlmood.report.tables import (
    Table,
    accuracy_table,
    bar_values,
    class_accuracy_table,
    metric_table,
    provenance,
    summary_table,
)
from vlmood.report.zoo import is_zoo_folder, read_zoo, zoo_section

log = logging.getLogger(__name__)

FIG_DIR = "figures"
FOLDERS = (FIG_DIR, THUMB_DIR, X.TABLE_DIR)  # each replaced as a whole on a rewrite


def _png_size(path: Path) -> tuple[int, int]:
    """Display size in CSS pixels (96 per inch) of a PNG saved at ``F.DPI``: crisp on HiDPI screens."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    w, h = struct.unpack(">II", head[16:24])
    return round(w * 96 / F.DPI), round(h * 96 / F.DPI)


def _finite_raw(run: Run, label: str, raw: RawScores) -> RawScores | None:
    """Drop non-finite values (with a note); None if ID or every OOD set is left empty."""
    dropped = 0
    ood = {}
    for n, v in raw.ood.items():
        ok = v[np.isfinite(v)]
        dropped += v.size - ok.size
        if ok.size:
            ood[n] = ok
    idv = raw.id[np.isfinite(raw.id)]
    dropped += raw.id.size - idv.size
    if dropped:
        run.notes.append(f"score {label!r}: {dropped} non-finite raw score(s) left out of the figures")
    if idv.size == 0 or not ood:
        run.notes.append(f"score {label!r}: no usable raw scores for figures")
        return None
    return RawScores(id=idv, ood=ood)


def _run_figures(run: Run, index: int, fig_dir: Path, score_colours: dict[str, int]) -> list[Fig]:
    raw: dict[str, RawScores] = {}
    if not run.scores:
        run.notes.append("this results file holds no scores")
    for label in run.scores:
        r = run.raw(label)
        if r is not None:
            r = _finite_raw(run, label, r)
        if r is not None:
            raw[label] = r
    if not raw:
        if run.scores:
            run.notes.append(
                "no figures for this run: raw scores are unavailable (the tables above come from results.json)"
            )
        return []
    missing = [s for s in run.scores if s not in raw]
    if missing:
        run.notes.append(f"figures leave out score(s) without raw scores: {', '.join(missing)}")
    stem = f"run{index + 1}-{slug(run.label)}"
    thresholds = {label: t for label, r in raw.items() if (t := fpr95_threshold(r.id)) is not None}
    out: list[Fig] = []
    jobs = (
        (
            "roc",
            lambda p: F.plot_roc(raw, run.ood_sets, score_colours, p),
            "ROC curves per OOD set (ID = positive; dashed line: TPR 95%)",
        ),
        (
            "hist",
            lambda p: F.plot_histograms(raw, run.ood_sets, p, thresholds=thresholds),
            "Score distributions (higher = more ID): ID vs each OOD set, density-normalised; "
            "dashed: the FPR95 threshold (95% of ID at or above)",
        ),
    )
    for kind, fn, caption in jobs:
        path = fig_dir / f"{stem}-{kind}.png"
        try:
            fn(path)
        except Exception as e:  # a figure must never cost the tables
            log.warning("report: %s figure for %s failed: %s", kind, run.label, e)
            run.notes.append(f"{kind} figure could not be drawn: {e}")
            continue
        w, h = _png_size(path)
        out.append(Fig(src=f"{FIG_DIR}/{path.name}", caption=f"{caption} — {run.label}", width=w, height=h))
    return out


def _run_failures(run: Run, thumbs: Thumbnails) -> tuple[list, str]:
    """Failure views of every score with per-image paths, and a note when some or all lack them."""
    out, without = [], []
    for label in run.scores:
        raw = run.raw(label)
        if raw is None:
            continue
        f = score_failures(run, label, raw, thumbs)
        if f is None:
            without.append(label)
        else:
            out.append(f)
    note = ""
    if without:
        note = (
            f"no per-image view for {', '.join(without)}: the raw scores carry no image paths "
            "(written by an older vlmood; run `vlmood eval` again for them)"
        )
    return out, note


def _default_title(runs: list[Run]) -> str:
    benches = {str(r.results.get("benchmark")) for r in runs if r.results.get("benchmark")}
    return f"vlmood report: {benches.pop()}" if len(benches) == 1 else "vlmood report"


def _write_exports(folder: Path, tables: list[Table], labels: list[str], prov: list) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for t in tables:
        (folder / f"{t.id}.csv").write_text(X.table_csv(t), encoding="utf-8")
        (folder / f"{t.id}.tex").write_text(X.table_latex(t), encoding="utf-8")
    headers = ["field", *labels]
    rows = [[name] + [rows[i][1] for rows in prov] for i, (name, _, _) in enumerate(prov[0])]
    (folder / "runs-table.csv").write_text(X.text_table_csv(headers, rows), encoding="utf-8")
    (folder / "runs-table.tex").write_text(X.text_table_latex(headers, rows, "Runs"), encoding="utf-8")
    return sorted(p.name for p in folder.iterdir())


def _commit(stage: Path, out: Path) -> None:
    """Move the staged report into ``out``: each folder swapped whole, then report.md, index.html last."""
    old = Path(tempfile.mkdtemp(prefix=".report-old-", dir=out))
    try:
        for name in FOLDERS:
            target = out / name
            if target.exists():
                os.replace(target, old / name)
            os.replace(stage / name, target)
        os.replace(stage / "report.md", out / "report.md")
        os.replace(stage / "index.html", out / "index.html")
    finally:
        shutil.rmtree(old, ignore_errors=True)


def write_report(
    results_paths: list[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    title: str | None = None,
) -> dict[str, Any]:
    """Write ``index.html``, ``report.md``, ``figures/*.png``, ``thumbs/*`` and ``tables/*.csv|.tex``
    under ``out_dir`` for one or more runs.

    Each entry of ``results_paths`` is a ``results.json`` (schema ``vlmood.results/1``), a folder
    holding one, a ``vlmood study`` folder (all its runs) or a ``vlmood zoo`` folder (every model's
    run, after a section with the zoo's table, fits and accuracy-vs-AUROC scatter plots) or a
    ``vlmood attack`` folder (its evaluation runs, after a section with the original-vs-manipulated
    table and example triplets). Raw scores (``scores/<label>.npz``
    beside it) feed the ROC and histogram figures and, when they carry image paths, the per-image
    failure view (thumbnails of the images a score gets wrong at its FPR95 threshold) and the
    per-class accuracy; without them the tables are still written, with a note. Raises
    :class:`ReportError` (a ``ValueError``) naming the file for a missing path, invalid JSON or
    another schema version.

    Returns a summary: paths of the page, the Markdown file, the figures and the exported tables,
    the run labels, notes.
    """
    runs = load_runs(results_paths)  # every input is checked before anything is written
    inputs = [results_paths] if isinstance(results_paths, (str, os.PathLike)) else list(results_paths)
    zoos = [read_zoo(Path(p).expanduser()) for p in inputs if is_zoo_folder(Path(p).expanduser())]
    attacks = [Path(p).expanduser() for p in inputs if is_attack_folder(Path(p).expanduser())]
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not title and attacks and not zoos:
        title = "vlmood attack: " + ", ".join(p.name for p in attacks)
    if not title and zoos:
        title = (
            f"vlmood zoo: {zoos[0].get('benchmark') or 'custom sets'}" if len(zoos) == 1 else "vlmood zoos"
        )
    title = title or _default_title(runs)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        fig_dir = stage / FIG_DIR
        fig_dir.mkdir()
        (stage / THUMB_DIR).mkdir()
        thumbs = Thumbnails(stage / THUMB_DIR)
        all_scores: list[str] = []
        for r in runs:
            all_scores.extend(s for s in r.scores if s not in all_scores)
        score_colours = {s: i for i, s in enumerate(all_scores)}

        page_sections, page_tables, global_notes = [], [], []
        for i, zoo in enumerate(zoos):
            sec, table, notes = zoo_section(zoo, i, fig_dir, FIG_DIR, _png_size)
            page_sections.append(sec)
            page_tables.append(table)
            global_notes += notes  # figures that could not be drawn
        for i, folder in enumerate(attacks):
            sec, table, notes = attack_section(folder, i, fig_dir, FIG_DIR, _png_size)
            page_sections.append(sec)
            page_tables.append(table)
            global_notes += notes
        sections = []
        for i, r in enumerate(runs):
            figs = _run_figures(r, i, fig_dir, score_colours)
            fails, fail_note = _run_failures(r, thumbs)
            sections.append(
                RunSection(
                    anchor=f"run-{i + 1}",
                    label=r.label,
                    table=metric_table(r, i),
                    figures=figs,
                    notes=r.notes,
                    failures=fails,
                    failure_note=fail_note,
                )
            )
        bar_scores, values = bar_values(runs)
        bars = None
        if bar_scores:
            path = fig_dir / "compare-bars.png"
            try:
                F.plot_bars(bar_scores, [r.label for r in runs], values, path)
                w, h = _png_size(path)
                cap = "Mean over OOD sets per score" + (", one bar per run" if len(runs) > 1 else "")
                bars = Fig(src=f"{FIG_DIR}/{path.name}", caption=cap, width=w, height=h)
            except Exception as e:
                log.warning("report: bar chart failed: %s", e)
                global_notes.append(f"bar chart could not be drawn: {e}")
        summary = summary_table(runs)
        accuracy = accuracy_table(runs)
        per_class = class_accuracy_table(runs, [class_accuracy(r) for r in runs])
        prov = [provenance(r) for r in runs]
        labels = [r.label for r in runs]
        now = time.strftime("%Y-%m-%d %H:%M")
        subtitle = f"{len(runs)} run{'s' if len(runs) > 1 else ''} · generated {now}"
        try:
            from importlib.metadata import version

            footer = f"vlmood {version('vlmood')} · {now}"
        except Exception:
            footer = f"vlmood · {now}"
        page = ReportPage(
            title=title,
            subtitle=subtitle,
            run_labels=labels,
            prov_rows=prov,
            summary=summary,
            accuracy=accuracy,
            class_accuracy=per_class,
            bars=bars,
            runs=sections,
            notes=global_notes,
            footer=footer,
            sections=page_sections,
        )
        tables = [
            *page_tables,
            summary,
            accuracy,
            *([per_class] if per_class else []),
            *(s.table for s in sections),
        ]
        table_names = _write_exports(stage / X.TABLE_DIR, tables, labels, prov)
        (stage / "index.html").write_text(render_page(page), encoding="utf-8")
        (stage / "report.md").write_text(render_markdown(page), encoding="utf-8")
        fig_names = sorted(p.name for p in fig_dir.iterdir())
        n_thumbs = sum(1 for _ in (stage / THUMB_DIR).iterdir())
        _commit(stage, out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
    return {
        "index": str(out / "index.html"),
        "markdown": str(out / "report.md"),
        "figures": [str(out / FIG_DIR / n) for n in fig_names],
        "tables": [str(out / X.TABLE_DIR / n) for n in table_names],
        "thumbnails": n_thumbs,
        "runs": [{"label": r.label, "results": str(r.path), "notes": list(r.notes)} for r in runs],
        "notes": global_notes,
    }
