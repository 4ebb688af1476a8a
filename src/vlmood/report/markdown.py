"""``report.md``: the report's tables as GitHub-flavoured Markdown, figures linked relatively."""

from __future__ import annotations

from vlmood.report.export import TABLE_DIR
from vlmood.report.html import Fig, ReportPage, RunSection
from vlmood.report.tables import Table

_MD_SPECIAL = {
    "\\": "\\\\",
    "|": "\\|",
    "*": "\\*",
    "`": "\\`",
    "[": "\\[",
    "]": "\\]",
    "<": "&lt;",
    ">": "&gt;",
}


def md(x: object) -> str:
    """Escape text for a Markdown table cell (no HTML, no emphasis, no table breaks)."""
    s = str(x).replace("&", "&amp;").replace("\r", " ").replace("\n", " ")
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in s)


def table_md(t: Table) -> str:
    """A pipe table; grouped columns get their group prefixed ("digits · AUROC ↑"); best in bold."""
    heads = list(t.row_heads)
    if t.groups:
        cols, j = [], 0
        for g, span in t.groups:
            for _ in range(span):
                cols.append(f"{g} · {t.columns[j]}")
                j += 1
    else:
        cols = list(t.columns)
    lines = ["| " + " | ".join(md(h) for h in heads + cols) + " |"]
    lines.append("|" + "|".join([":---"] * len(heads) + ["---:"] * len(cols)) + "|")
    for row_heads, cells in t.rows:
        vals = [f"**{c.text}**" if c.best else c.text for c in cells]
        lines.append("| " + " | ".join([md(h) for h in row_heads] + vals) + " |")
    return "\n".join(lines)


def fig_md(f: Fig) -> str:
    return f"![{md(f.caption)}]({f.src})"


def _exports(table_id: str) -> str:
    return f"Export: [CSV]({TABLE_DIR}/{table_id}.csv) · [LaTeX]({TABLE_DIR}/{table_id}.tex)"


def _failures_md(s: RunSection) -> list[str]:
    if not s.failures and not s.failure_note:
        return []
    out = [f"### Failures at the FPR95 threshold: {md(s.label)}", ""]
    if s.failure_note:
        out += [md(s.failure_note), ""]
    for f in s.failures:
        out += [f"**{md(f.score)}** (threshold {f.threshold:.4g})", ""]
        for what, items, k, n in (
            ("OOD accepted as ID", f.ood_accepted, f.n_ood_accepted, f.n_ood),
            ("ID rejected", f.id_rejected, f.n_id_rejected, f.n_id),
        ):
            imgs = " ".join(f"![{md(t.caption.replace(chr(10), chr(32)))}]({t.src})" for t in items) or "none"
            out += [f"- {what} ({k} of {n}): {imgs}"]
        out.append("")
    return out


def render_markdown(p: ReportPage) -> str:
    out = [f"# {md(p.title)}", "", md(p.subtitle), ""]
    for n in p.notes:
        out += [f"> **Note:** {md(n)}", ""]
    for s in p.sections:
        out += [f"## {md(s.title)}", "", s.markdown, ""]
    out += [
        "## Summary",
        "",
        f"{md(p.summary.caption)}; best per column in bold.",
        "",
        table_md(p.summary),
        "",
    ]
    out += [_exports(p.summary.id), ""]
    if p.bars is not None:
        out += [fig_md(p.bars), ""]
    out += [
        "## Accuracy",
        "",
        f"{md(p.accuracy.caption)}.",
        "",
        table_md(p.accuracy),
        "",
        _exports("accuracy"),
        "",
    ]
    if p.class_accuracy is not None:
        out += [f"{md(p.class_accuracy.caption)}: {_exports(p.class_accuracy.id)}", ""]
    out += ["## Runs", ""]
    out.append("| | " + " | ".join(md(lab) for lab in p.run_labels) + " |")
    out.append("|:---|" + "|".join([":---"] * len(p.run_labels)) + "|")
    for i, (name, _, _) in enumerate(p.prov_rows[0]):
        out.append(f"| {md(name)} | " + " | ".join(md(rows[i][1]) for rows in p.prov_rows) + " |")
    out += ["", _exports("runs-table"), ""]
    for i, s in enumerate(p.runs):
        out += [f"## OOD detection, run {i + 1}: {md(s.label)}", ""]
        out += [f"{md(s.table.caption)}; best per column in bold.", "", table_md(s.table), ""]
        out += [_exports(s.table.id), ""]
        for n in s.notes:
            out += [f"> **Note:** {md(n)}", ""]
        for f in s.figures:
            out += [fig_md(f), ""]
        out += _failures_md(s)
    return "\n".join(out).rstrip() + "\n"
