"""A ``vlmood attack`` folder in a report: the evaluation table (AUROC / FPR95 of ID vs the
original and vs the manipulated OOD images, per score, side by side) and example triplets
(original, perturbation magnified, manipulated).

The folder's evaluation runs (``eval/*/results.json``) are reported like any other runs
(:func:`vlmood.report.load.load_runs` expands an attack folder into them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from vlmood.report.html import Fig, PageSection, esc, render_fig, render_notes, render_table
from vlmood.report.load import ReportError
from vlmood.report.markdown import fig_md, md, table_md
from vlmood.report.tables import Cell, Table

ATTACK_FILE = "attack.json"
RESULTS_FILE = "attack_results.json"
ATTACK_SCHEMA = "vlmood.attack/1"
RESULTS_SCHEMA = "vlmood.attack_results/1"
N_EXAMPLES = 6


def is_attack_folder(path: Path) -> bool:
    return path.is_dir() and (path / ATTACK_FILE).is_file() and not (path / "results.json").is_file()


def _read(f: Path, schema: str) -> dict[str, Any]:
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{f}: cannot be read ({e})") from None
    if not isinstance(obj, dict) or obj.get("schema") != schema:
        raise ReportError(
            f"{f}: schema {obj.get('schema') if isinstance(obj, dict) else None!r} is not {schema!r}"
        )
    return obj


def read_attack_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(attack.json, attack_results.json) of a finished and evaluated attack (ReportError otherwise)."""
    meta = _read(folder / ATTACK_FILE, ATTACK_SCHEMA)
    if meta.get("status") != "complete":
        raise ReportError(f"{folder}: the attack is {meta.get('status')}; rerun `vlmood attack` to finish it")
    if not (folder / RESULTS_FILE).is_file():
        raise ReportError(
            f"{folder}: the attack has not been evaluated (no {RESULTS_FILE}); run "
            f"`vlmood attack --eval-only --out {folder}` with the same data options"
        )
    return meta, _read(folder / RESULTS_FILE, RESULTS_SCHEMA)


def attack_runs(folder: Path) -> list[Path]:
    """The evaluation runs of an attack folder (``eval/<run>/results.json``)."""
    _, res = read_attack_folder(folder)
    found = [Path(p) for p in (res.get("runs") or {}).values()]
    found = [p if p.is_absolute() else folder / p for p in found]
    local = [folder / "eval" / p.parent.name / "results.json" for p in found]  # a moved folder
    out = [p if p.is_file() else q for p, q in zip(found, local)]
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise ReportError(f"{folder}: the attack's evaluation runs are missing: {', '.join(missing)}")
    return out


def _table(meta: dict[str, Any], res: dict[str, Any], index: int) -> Table:
    rows = []
    for r in res.get("rows", []):
        name = r["score"] if r.get("run") != "adapter" else f"adapter: {r['score']}"
        cells = [
            Cell(r.get("auroc_original")),
            Cell(r.get("auroc_manipulated")),
            Cell(r.get("auroc_drop")),
            Cell(r.get("fpr95_original")),
            Cell(r.get("fpr95_manipulated")),
        ]
        rows.append(([name], cells))
    cfg = meta.get("config", {})
    return Table(
        id=f"attack{index + 1}-table",
        row_heads=["score"],
        columns=["original ↑", "manipulated ↑", "drop", "original ↓", "manipulated ↓"],
        rows=rows,
        groups=[("AUROC", 3), ("FPR95", 2)],
        lower_better=[False, False, True, True, True],
        caption=f"ID vs {meta.get('n_images')} OOD images before and after the {meta.get('kind')} attack "
        f"(lambda_s {cfg.get('smooth', 0):g}, {cfg.get('steps')} steps) (%)",
    )


def plot_triplets(folder: Path, rows: list[dict[str, str]], pre: dict[str, Any], path: Path) -> None:
    """One row per example: the original at the model's input (its resize and crop: ``pre`` is the
    attack's model preprocessing), the perturbation magnified to the full range (grey = 0), the
    manipulated image; the target's class below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from vlmood.data.sources import open_image

    size = int(pre["image_size"])
    interp = T.InterpolationMode(str(pre.get("interpolation", "bicubic")))
    if pre.get("resize_mode") == "squash":
        geo = T.Resize((size, size), interpolation=interp)
    else:
        geo = T.Compose([T.Resize(size, interpolation=interp), T.CenterCrop(size)])
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.25 * n), squeeze=False)
    for i, r in enumerate(rows):
        orig = np.asarray(geo(open_image(r["source"])), dtype=np.float32) / 255
        adv = np.asarray(Image.open(folder / r["path"]).convert("RGB"), dtype=np.float32) / 255
        delta = adv - orig
        peak = float(np.abs(delta).max())
        scale = max(peak, 1 / 255)
        mag = 0.5 + delta / (2 * scale)
        for ax, img, title in (
            (axes[i][0], orig, f"original ({r.get('source_set', '')})"),
            (axes[i][1], mag, f"perturbation x{0.5 / scale:.0f}" if peak > 0 else "no change"),
            (axes[i][2], adv, f"manipulated: cos {float(r['cos_before']):.2f}->{float(r['cos_after']):.2f}"),
        ):
            ax.imshow(np.clip(img, 0, 1))
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        axes[i][2].text(
            0.5, -0.08, f"target: {r.get('target_class') or Path(r['target']).name}", fontsize=7,
            ha="center", va="top", transform=axes[i][2].transAxes,
        )  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attack_section(
    folder: Path, index: int, fig_dir: Path, fig_prefix: str, png_size
) -> tuple[PageSection, Table, list[str]]:
    """The report section of one attack folder: (section, its table for export, figure notes)."""
    meta, res = read_attack_folder(folder)
    table = _table(meta, res, index)
    notes: list[str] = []
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    figs: list[Fig] = []
    path = fig_dir / f"attack{index + 1}-triplets.png"
    try:
        step = max(1, len(rows) // N_EXAMPLES)  # spread over the manifest (its sets come in order)
        plot_triplets(folder, rows[::step][:N_EXAMPLES], meta["model"]["preprocess"], path)
        w, h = png_size(path)
        figs.append(
            Fig(
                src=f"{fig_prefix}/{path.name}",
                caption="original OOD image, the perturbation (magnified; grey = 0), the manipulated image and "
                "its cosine to the target's feature before -> after",
                width=w,
                height=h,
            )
        )
    except Exception as e:  # a figure must never cost the table
        notes.append(f"example images of {folder} could not be drawn: {e}")
    s = meta.get("summary", {})
    cfg = meta.get("config", {})
    eps = cfg.get("epsilon")
    intro = (
        f"{meta.get('n_images')} OOD images from {', '.join(meta.get('ood_sets', []))} were moved in feature space "
        f"({cfg.get('feature')}) towards a random ID training image each (PLP's attack: Adam lr {cfg.get('lr')}, "
        f"{cfg.get('steps')} steps, lambda_s {cfg.get('smooth', 0):g}, "
        + (f"l-inf budget {eps}" if eps else "no budget, as in the paper")
        + f"). Mean cosine to the target {s.get('cos_before_mean', float('nan')):.3f} -> "
        f"{s.get('cos_after_mean', float('nan')):.3f}; largest pixel change {s.get('linf_max', float('nan')):.3f}."
    )
    if res.get("transfer"):
        intro += " Evaluated with another model than the attacked one (a transfer attack)."
    html = "".join(
        [
            f'<p class="muted">{esc(intro)}</p>',
            render_table(table),
            render_notes(notes),
            '<div class="figs">' + "".join(render_fig(f) for f in figs) + "</div>" if figs else "",
        ]
    )
    markdown = "\n\n".join(
        [md(intro), f"{md(table.caption)}.", table_md(table), *(f"> **Note:** {md(n)}" for n in notes)]
        + [fig_md(f) for f in figs]
    )
    title = f"Attack: {folder.name} ({meta.get('kind')})"
    return PageSection(anchor=f"attack-{index + 1}", title=title, html=html, markdown=markdown), table, notes
