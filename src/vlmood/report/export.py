"""Every report table as CSV and LaTeX (``tables/<id>.csv``, ``tables/<id>.tex`` beside index.html).

CSV holds the numbers in % with four decimals (missing = empty); LaTeX is a booktabs ``tabular``
with two decimals, grouped headers as ``\\multicolumn`` and the best cell per column in bold.
"""

from __future__ import annotations

import csv
import io

from vlmood.report.tables import Table

TABLE_DIR = "tables"

_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "–": "--",
    "\n": " ",
    "\r": " ",
}


def tex(x: object) -> str:
    """Escape text for LaTeX (specials, arrows)."""
    return "".join(_TEX.get(ch, ch) for ch in str(x))


def _csv_text(x: object) -> str:
    """Defuse spreadsheet formulas (a cell starting with = + - @ from a results file)."""
    s = str(x)
    return "'" + s if s[:1] in ("=", "+", "-", "@") and not _is_number(s) else s


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _flat_columns(t: Table) -> list[str]:
    if not t.groups:
        return list(t.columns)
    cols, j = [], 0
    for g, span in t.groups:
        for _ in range(span):
            cols.append(f"{g} {t.columns[j]}")
            j += 1
    return cols


def table_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_csv_text(h) for h in t.row_heads + _flat_columns(t)])
    for heads, cells in t.rows:
        vals = ["" if c.value is None else f"{100 * c.value:.4f}" for c in cells]
        w.writerow([_csv_text(h) for h in heads] + vals)
    return buf.getvalue()


def table_latex(t: Table) -> str:
    nh, nc = len(t.row_heads), len(t.columns)
    lines = [
        f"% {tex(t.caption)} -- written by vlmood report; needs \\usepackage{{booktabs}}",
        "\\begin{tabular}{" + "l" * nh + "r" * nc + "}",
        "\\toprule",
    ]
    if t.groups:
        heads, rules, pos = [], [], nh + 1
        for g, span in t.groups:
            heads.append(f"\\multicolumn{{{span}}}{{c}}{{{tex(g)}}}")
            rules.append(f"\\cmidrule(lr){{{pos}-{pos + span - 1}}}")
            pos += span
        lines.append(" & ".join([""] * nh + heads) + " \\\\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(tex(h) for h in t.row_heads + t.columns) + " \\\\")
    lines.append("\\midrule")
    for heads, cells in t.rows:
        vals = [f"\\textbf{{{c.text}}}" if c.best else tex(c.text) for c in cells]
        lines.append(" & ".join([tex(h) for h in heads] + vals) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def text_table_csv(headers: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([_csv_text(h) for h in headers])
    w.writerows([[_csv_text(c) for c in r] for r in rows])
    return buf.getvalue()


def text_table_latex(headers: list[str], rows: list[list[str]], caption: str) -> str:
    lines = [
        f"% {tex(caption)} -- written by vlmood report; needs \\usepackage{{booktabs}}",
        "\\begin{tabular}{" + "l" * len(headers) + "}",
        "\\toprule",
        " & ".join(tex(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(tex(c) for c in r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)
