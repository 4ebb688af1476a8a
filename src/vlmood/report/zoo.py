"""A ``vlmood zoo`` folder in a report: the models table (ID accuracy, per score mean AUROC and
FPR95), the least-squares fits of AUROC against ID accuracy, and one scatter plot per score.

:func:`plot_zoo_scatter` also draws the ``scatter-<score>.png`` files ``vlmood zoo`` writes beside
``zoo.json``. The member runs themselves (``models/<name>/results.json``) are reported like any
other runs (:func:`vlmood.report.load.load_runs` expands a zoo folder into them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlmood.report import figures as F
from vlmood.report.html import Fig, PageSection, esc, render_fig, render_notes, render_table
from vlmood.report.load import ReportError, slug
from vlmood.report.markdown import fig_md, md, table_md
from vlmood.report.tables import Cell, Table, mark_best

ZOO_FILE = "zoo.json"
ZOO_SCHEMA = "vlmood.zoo/1"
FIT_COLUMNS = (("n", "n"), ("slope", "slope"), ("intercept", "intercept"), ("r2", "R²"))
FIT_COLUMNS += (("pearson", "Pearson r"), ("spearman", "Spearman rho"))


def is_zoo_folder(path: Path) -> bool:
    return path.is_dir() and (path / ZOO_FILE).is_file() and not (path / "results.json").is_file()


def read_zoo(folder: Path) -> dict[str, Any]:
    """``folder/zoo.json``, checked (ReportError naming the file otherwise)."""
    f = folder / ZOO_FILE
    try:
        zoo = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{f}: cannot read the zoo file ({e})") from None
    if not isinstance(zoo, dict) or zoo.get("schema") != ZOO_SCHEMA:
        have = zoo.get("schema") if isinstance(zoo, dict) else None
        raise ReportError(f"{f}: zoo schema {have!r} is not supported (this vlmood reads {ZOO_SCHEMA!r})")
    if not isinstance(zoo.get("models"), list) or not zoo["models"]:
        raise ReportError(f"{f}: the zoo lists no models")
    return zoo


def zoo_runs(folder: Path) -> list[Path]:
    """The results.json of every model of a zoo folder, in the zoo's order."""
    zoo = read_zoo(folder)
    found = [folder / str(r.get("results", "")) for r in zoo["models"] if isinstance(r, dict)]
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise ReportError(f"{folder}: the zoo lists models whose results are missing: {', '.join(missing)}")
    return found


# ---------------------------------------------------------------------------------------------- figure
def plot_zoo_scatter(
    points: list[tuple[str, float, float]],
    fit: dict[str, Any] | None,
    label: str,
    path: Path,
    benchmark: str | None = None,
) -> None:
    """ID accuracy (x, %) against mean AUROC (y, %): one labelled point per model, the
    least-squares line over the models' accuracy range, R² (and r, n) in the title."""
    with F._rc():
        fig = F._figure(5.6, 4.4)
        ax = fig.subplots()
        xs = [100 * x for _, x, _ in points]
        ys = [100 * y for _, _, y in points]
        ax.scatter(xs, ys, s=28, color=F.colour(0), zorder=3)
        for name, x, y in zip((p[0] for p in points), xs, ys):
            ax.annotate(
                F.short(name, 28), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7.5, zorder=4
            )
        if fit and fit.get("slope") is not None and xs:
            lo, hi = min(xs), max(xs)
            pad = 0.05 * (hi - lo)
            lx = [lo - pad, hi + pad]
            ly = [100 * (fit["slope"] * (v / 100) + fit["intercept"]) for v in lx]
            ax.plot(lx, ly, color=F.colour(3), ls="--", lw=1.3, zorder=2, label="least squares")
            stats = f"R² = {fit['r2']:.3f}, r = {fit['pearson']:.3f}, n = {fit['n']}"
        else:
            why = (fit or {}).get("n/a") or "no fit"
            stats = f"R² n/a ({F.short(why, 40)})"
        ax.margins(x=0.12, y=0.08)  # room for the model names
        ax.set_title(f"{F.short(label)}: {stats}", fontsize=10)
        ax.set_xlabel("ID accuracy (%)")
        ax.set_ylabel("AUROC (%), mean over OOD sets")
        if benchmark:
            fig.suptitle(f"ID accuracy vs OOD detection · {benchmark}", fontsize=10.5, fontweight="bold")
        F._save(fig, path)


# ---------------------------------------------------------------------------------------------- section
def _models_table(zoo: dict[str, Any], index: int) -> Table:
    labels = list(zoo.get("scores", []))
    columns, groups, lower = ["accuracy ↑"], [("ID", 1)], [False]
    for lbl in labels:
        groups.append((lbl, 2))
        columns += ["AUROC ↑", "FPR95 ↓"]
        lower += [False, True]
    rows = []
    for r in zoo["models"]:
        cells = [Cell(_finite(r.get("id_accuracy")))]
        for lbl in labels:
            c = (r.get("scores") or {}).get(lbl) or {}
            cells += [Cell(_finite(c.get("auroc"))), Cell(_finite(c.get("fpr95")))]
        rows.append(([str(r.get("name"))], cells))
    return mark_best(
        Table(
            id=f"zoo{index + 1}-models",
            row_heads=["model"],
            columns=columns,
            rows=rows,
            groups=groups,
            lower_better=lower,
            caption="ID top-1 accuracy and, per score, AUROC / FPR95 averaged over the OOD sets (%)",
        )
    )


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _target_text(target: str) -> str:
    return {"auroc": "all OOD sets", "near_auroc": "near OOD", "far_auroc": "far OOD"}.get(target, target)


def _fit_value(key: str, v: Any) -> str:
    if v is None:
        return "–"
    return str(v) if key == "n" else f"{float(v):.3f}"


def _fit_rows(zoo: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (str(label), str(target), fit)
        for label, per in (zoo.get("fits") or {}).items()
        for target, fit in (per or {}).items()
        if isinstance(fit, dict)
    ]


def _fits_html(zoo: dict[str, Any], table_id: str) -> str:
    heads = ["score", "AUROC over", *(h for _, h in FIT_COLUMNS)]
    out = [f'<div class="table-wrap"><table id="{esc(table_id)}" class="metrics"><thead><tr>']
    out += [
        f'<th class="rowhead" data-col="{i}" title="sort">{esc(h)}</th>'
        if i < 2
        else f'<th data-col="{i}" title="sort">{esc(h)}</th>'
        for i, h in enumerate(heads)
    ]
    out.append("</tr></thead><tbody>")
    for label, target, fit in _fit_rows(zoo):
        out.append(f'<tr><th scope="row">{esc(label)}</th><th scope="row">{esc(_target_text(target))}</th>')
        for key, _ in FIT_COLUMNS:
            v = fit.get(key)
            if v is None:
                out.append('<td class="na">–</td>')
            else:
                out.append(f'<td class="num" data-value="{float(v)!r}">{esc(_fit_value(key, v))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _fits_md(zoo: dict[str, Any]) -> str:
    heads = ["score", "AUROC over", *(h for _, h in FIT_COLUMNS)]
    lines = ["| " + " | ".join(heads) + " |", "|:---|:---|" + "---:|" * len(FIT_COLUMNS)]
    for label, target, fit in _fit_rows(zoo):
        vals = [_fit_value(k, fit.get(k)) for k, _ in FIT_COLUMNS]
        lines.append(f"| {md(label)} | {_target_text(target)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _notes(zoo: dict[str, Any]) -> list[str]:
    notes = [
        f"{label} ({_target_text(target)}): no fit, {fit['n/a']}"
        for label, target, fit in _fit_rows(zoo)
        if fit.get("n/a")
    ]
    notes += [f"{lbl} left out: it {why}" for lbl, why in (zoo.get("skipped_scores") or {}).items()]
    return notes


def zoo_section(
    zoo: dict[str, Any], index: int, fig_dir: Path, fig_prefix: str, png_size
) -> tuple[PageSection, Table, list[str]]:
    """The report section of one zoo: (section, its models table for export, figure notes).
    Scatter plots are drawn from zoo.json into ``fig_dir`` (``png_size(path) -> (w, h)``)."""
    from vlmood.zoos import points

    table = _models_table(zoo, index)
    figs: list[Fig] = []
    fig_notes: list[str] = []
    for label in zoo.get("scores", []):
        fit = ((zoo.get("fits") or {}).get(label) or {}).get("auroc")
        path = fig_dir / f"zoo{index + 1}-scatter-{slug(label)}.png"
        try:
            plot_zoo_scatter(points(zoo, label), fit, label, path, zoo.get("benchmark"))
        except Exception as e:  # a figure must never cost the tables
            fig_notes.append(f"scatter plot of {label} could not be drawn: {e}")
            continue
        w, h = png_size(path)
        r2 = "n/a" if not fit or fit.get("r2") is None else f"{fit['r2']:.3f}"
        figs.append(
            Fig(
                src=f"{fig_prefix}/{path.name}",
                caption=f"{label}: ID accuracy vs AUROC (mean over OOD sets), one point per model; "
                f"dashed: least squares, R² = {r2}",
                width=w,
                height=h,
            )
        )
    bench = zoo.get("benchmark") or "custom sets"
    n_sets = len(zoo.get("ood_sets") or {})
    intro = (
        f"{len(zoo['models'])} models evaluated zero-shot on {bench} with the same scores. AUROC is the "
        f"mean over the {n_sets} OOD set{'s' if n_sets != 1 else ''} (equal weight per set; near/far rows "
        "average each group). The fit is the least-squares line AUROC = slope × accuracy + intercept on "
        "fractions, R² = 1 − SS_res/SS_tot of that line; PLP (TMLR 2024) reports R² ≥ 0.92 across CLIP models."
    )
    notes = _notes(zoo)
    html = "".join(
        [
            f'<p class="muted">{esc(intro)}</p>',
            render_table(table),
            "<h3>Fits: AUROC against ID accuracy</h3>",
            _fits_html(zoo, f"zoo{index + 1}-fits"),
            render_notes(notes),
            '<div class="figs">' + "".join(render_fig(f) for f in figs) + "</div>" if figs else "",
        ]
    )
    markdown = "\n\n".join(
        [
            md(intro),
            f"{md(table.caption)}; best per column in bold.",
            table_md(table),
            "### Fits: AUROC against ID accuracy",
            _fits_md(zoo),
            *(f"> **Note:** {md(n)}" for n in notes),
            *(fig_md(f) for f in figs),
        ]
    )
    title = f"Zoo: {bench}"
    return PageSection(anchor=f"zoo-{index + 1}", title=title, html=html, markdown=markdown), table, fig_notes
