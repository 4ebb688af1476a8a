"""``report.md``: the report's tables as GitHub-flavoured Markdown, figures linked relatively."""

from __future__ import annotations

from vlmood.report.html import Fig, RunSection
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


def render_markdown(
    title: str,
    subtitle: str,
    run_labels: list[str],
    prov_rows: list[list[tuple[str, str, str]]],
    accuracy: Table,
    comparison: Table | None,
    bars: Fig | None,
    runs: list[RunSection],
    global_notes: list[str],
) -> str:
    out = [f"# {md(title)}", "", md(subtitle), ""]
    for n in global_notes:
        out += [f"> **Note:** {md(n)}", ""]
    out += ["## Runs", ""]
    out.append("| | " + " | ".join(md(lab) for lab in run_labels) + " |")
    out.append("|:---|" + "|".join([":---"] * len(run_labels)) + "|")
    for i, (name, _, _) in enumerate(prov_rows[0]):
        out.append(f"| {md(name)} | " + " | ".join(md(rows[i][1]) for rows in prov_rows) + " |")
    out += ["", "## Accuracy", "", f"{md(accuracy.caption)}.", "", table_md(accuracy), ""]
    out += ["## Score comparison", ""]
    if comparison is not None:
        out += [f"{md(comparison.caption)}; best per column in bold.", "", table_md(comparison), ""]
    if bars is not None:
        out += [fig_md(bars), ""]
    for i, s in enumerate(runs):
        out += [f"## OOD detection, run {i + 1}: {md(s.label)}", ""]
        out += [f"{md(s.table.caption)}; best per column in bold.", "", table_md(s.table), ""]
        for n in s.notes:
            out += [f"> **Note:** {md(n)}", ""]
        for f in s.figures:
            out += [fig_md(f), ""]
    return "\n".join(out).rstrip() + "\n"
