"""Report figures with matplotlib's Agg canvas (no pyplot state, no display needed).

Every function takes plain arrays / numbers and writes one PNG; colours come from the
Okabe-Ito palette (colour-blind safe), with line styles cycling once it runs out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlmood.report.load import RawScores

# Okabe & Ito (2008), "Color Universal Design"; yellow (low contrast on white) last.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
ID_COLOUR = "#3B3B3B"
THRESHOLD_COLOUR = "#B42318"
THRESHOLD_KEY = "FPR95 threshold"
LINESTYLES = ("-", "--", "-.", ":")
DPI = 150

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 10.5,
    "axes.titlesize": 11.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "lines.linewidth": 1.6,
    "axes.formatter.offset_threshold": 2,
    "axes.formatter.limits": (-3, 4),
}


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def linestyle(i: int) -> str:
    return LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) in float64 with ID as the positive class, from (0, 0) to (1, 1).

    One point per distinct threshold (tied scores form one threshold, as in ``vlmood.metrics``);
    collinear points are dropped, so the curve is exact with few points.
    """
    pos = np.asarray(id_scores, dtype=np.float64).ravel()
    neg = np.asarray(ood_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("roc_curve needs at least one ID and one OOD score")
    scores = np.concatenate([pos, neg])
    is_pos = np.zeros(scores.size, dtype=np.int64)
    is_pos[: pos.size] = 1
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    idx = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(is_pos[order])[idx]
    fps = idx + 1 - tps
    if tps.size > 2:  # drop points on a straight segment
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps = tps[keep], fps[keep]
    tpr = np.r_[0.0, tps / pos.size]
    fpr = np.r_[0.0, fps / neg.size]
    return fpr, tpr


def _thin(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Fewer points for plotting very long curves (max of TPR in each FPR bin keeps the shape)."""
    if fpr.size <= max_points:
        return fpr, tpr
    grid = np.unique(np.r_[np.linspace(0.0, 1.0, max_points // 2), np.geomspace(1e-6, 1.0, max_points // 2)])
    return grid, np.interp(grid, fpr, tpr)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def short(label: str, width: int = 34) -> str:
    """A figure-sized label: long score labels (file paths in parameters) would squash the axes."""
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    os.replace(tmp, path)


def _rc():
    import matplotlib

    return matplotlib.rc_context(RC)


def plot_roc(
    raw: dict[str, RawScores],
    ood_sets: Sequence[str],
    score_colours: dict[str, int],
    path: Path,
    title: str | None = None,
) -> None:
    """One panel per OOD set, one ROC line per score (legend: score and its AUROC)."""
    from vlmood import metrics as M

    sets = [n for n in ood_sets if any(n in r.ood for r in raw.values())]
    rows, cols = _grid(max(len(sets), 1), max_cols=4)
    with _rc():
        fig = _figure(3.7 * cols, 3.8 * rows)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, sets):
            for label, r in raw.items():
                if name not in r.ood:
                    continue
                fpr, tpr = roc_curve(r.id, r.ood[name])
                fpr, tpr = _thin(fpr, tpr)
                i = score_colours.get(label, 0)
                auc = M.auroc(r.id, r.ood[name])
                ax.plot(fpr, tpr, color=colour(i), ls=linestyle(i), label=f"{short(label)} ({100 * auc:.1f})")
            ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls=":", zorder=0)
            ax.axhline(0.95, color="#999999", lw=0.8, ls="--", zorder=0)
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.01)
            ax.set_aspect("equal")
            ax.set_title(name)
            ax.set_xlabel("FPR (OOD accepted as ID)")
            ax.set_ylabel("TPR (ID accepted)")
            ax.legend(
                loc="lower right",
                title="score (AUROC %)",
                title_fontsize=8.5,
                fontsize=8.5,
                handlelength=1.6,
                frameon=True,
                framealpha=0.85,
                edgecolor="none",
            )
        for ax in axes[len(sets) :]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title, fontsize=11.5, fontweight="bold")
        _save(fig, path)


def _view_range(v: np.ndarray) -> tuple[float, float]:
    """The full range, or the 0.5-99.5 percentile range when a few outliers would squash the rest."""
    lo, hi = float(v.min()), float(v.max())
    if v.size >= 20:
        plo, phi = (float(x) for x in np.percentile(v, [0.5, 99.5]))
        if phi > plo and (hi - lo) > 5 * (phi - plo):
            pad = 0.05 * (phi - plo)
            lo, hi = plo - pad, phi + pad
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def plot_histograms(
    raw: dict[str, RawScores],
    ood_sets: Sequence[str],
    path: Path,
    title: str | None = None,
    bins: int = 60,
    thresholds: dict[str, float] | None = None,
) -> None:
    """One panel per score: density histograms of ID scores and of each OOD set's scores, with a
    dashed line at the score's FPR95 threshold (``thresholds[label]``: 95% of ID at or above it)."""
    from matplotlib.ticker import MaxNLocator

    labels = list(raw)
    rows, cols = _grid(max(len(labels), 1))
    set_colour = {n: colour(i) for i, n in enumerate(ood_sets)}
    handles: dict[str, object] = {}
    with _rc():
        fig = _figure(3.6 * cols, 2.7 * rows + 0.4)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, label in zip(axes, labels):
            r = raw[label]
            groups = [("ID", r.id, ID_COLOUR)] + [
                (n, v, set_colour.get(n, colour(len(set_colour) + j)))
                for j, (n, v) in enumerate(r.ood.items())
            ]
            finite = [(n, v[np.isfinite(v)], c) for n, v, c in groups]
            allv = np.concatenate([v for _, v, _ in finite]) if finite else np.zeros(0)
            if allv.size == 0:
                ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
            else:
                lo, hi = _view_range(allv)
                edges = np.linspace(lo, hi, bins + 1)
                outside = int(np.sum((allv < lo) | (allv > hi)))
                if outside:
                    ax.text(
                        0.02,
                        0.97,
                        f"{outside} outlier(s) beyond the axis",
                        transform=ax.transAxes,
                        ha="left",
                        va="top",
                        fontsize=7.5,
                        color="#555555",
                    )
                for n, v, c in finite:
                    v = v[(v >= lo) & (v <= hi)]
                    if v.size == 0:
                        continue
                    dens, _ = np.histogram(v, bins=edges, density=True)
                    fill = ax.stairs(dens, edges, fill=True, color=c, alpha=0.18 if n != "ID" else 0.25, lw=0)
                    line = ax.stairs(dens, edges, color=c, lw=1.3)
                    handles.setdefault(n, (fill, line))
                thr = (thresholds or {}).get(label)
                if thr is not None and np.isfinite(thr):
                    ax.axvline(thr, color=THRESHOLD_COLOUR, ls="--", lw=1.2, zorder=5)
                    if not lo <= thr <= hi:  # keep the line in view
                        ax.set_xlim(min(lo, thr), max(hi, thr))
                    handles.setdefault(THRESHOLD_KEY, ax.lines[-1])
            ax.set_title(short(label))
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.set_xlabel("ID score")
            ax.set_ylabel("density")
            ax.tick_params(axis="y", labelleft=False, length=0)  # density values carry no meaning here
        for ax in axes[len(labels) :]:
            ax.set_visible(False)
        if handles:
            fig.legend(
                list(handles.values()),
                [n if n in ("ID", THRESHOLD_KEY) else f"OOD: {n}" for n in handles],
                loc="outside upper center",
                ncols=min(len(handles), 5),
            )
        if title:
            fig.suptitle(title, fontsize=11.5, fontweight="bold")
        _save(fig, path)


def plot_bars(
    scores: Sequence[str],
    runs: Sequence[str],
    values: dict[str, dict[tuple[str, str], float]],
    path: Path,
    title: str | None = None,
) -> None:
    """Horizontal grouped bars: mean AUROC and mean FPR95 per score (one bar per run).

    ``values[metric][(run, score)]`` is a fraction; missing pairs are left out.
    """
    n_s, n_r = len(scores), len(runs)
    height = max(2.2, 0.28 * n_s * n_r + 0.35 * n_s + 1.0)
    panels = (("auroc", "mean AUROC (%)  ↑ better"), ("fpr95", "mean FPR95 (%)  ↓ better"))
    with _rc():
        fig = _figure(10.0, height)
        axes = fig.subplots(1, 2, sharey=True)
        bar_h = 0.8 / n_r
        y0 = np.arange(n_s)[::-1].astype(float)  # first score on top
        for ax, (metric, xlabel) in zip(axes, panels):
            for j, run in enumerate(runs):
                ys, xs = [], []
                for k, s in enumerate(scores):
                    v = values.get(metric, {}).get((run, s))
                    if v is not None:
                        ys.append(y0[k] + 0.4 - bar_h * (j + 0.5))
                        xs.append(100 * v)
                c = (
                    colour(j)
                    if n_r > 1
                    else [colour(scores.index(s)) for s in scores if (run, s) in values.get(metric, {})]
                )
                bars = ax.barh(ys, xs, height=bar_h * 0.92, color=c, label=run)
                if n_s * n_r <= 40:
                    ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=7.5)
            ax.set_xlim(0, 108)
            ax.set_xlabel(xlabel)
            ax.grid(axis="y", visible=False)
            ax.set_yticks(y0, [short(s) for s in scores])
        if n_r > 1:
            fig.legend(
                *axes[0].get_legend_handles_labels(),
                loc="outside upper center",
                ncols=min(n_r, 4),
                title="run",
            )
        if title:
            fig.suptitle(title, fontsize=11.5, fontweight="bold")
        _save(fig, path)
