"""The self-contained HTML page: inline CSS, no external resources, figures as relative PNG links.

Everything taken from a results file goes through :func:`esc` (``html.escape`` with quotes).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from vlmood.report.tables import Table

CSS = """
:root {
  --fg: #1f2328; --muted: #59636e; --bg: #f6f7f9; --card: #ffffff; --line: #d8dee4;
  --head: #eef1f5; --accent: #0072B2; --best: #dff3e4; --best-fg: #0a5c2b; --note: #fff6dd;
  --note-line: #e6c35c; --toc-w: 15rem;
}
* { box-sizing: border-box; }
html { scroll-behavior: smooth; scroll-padding-top: 1rem; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif;
}
nav.toc {
  position: fixed; top: 0; left: 0; bottom: 0; width: var(--toc-w); overflow-y: auto;
  padding: 1.4rem 1rem; background: #1f2a37; color: #d6dde6; font-size: 0.88rem;
}
nav.toc .brand { font-weight: 700; color: #fff; letter-spacing: .02em; margin-bottom: 1rem; font-size: 1rem; }
nav.toc ol { list-style: none; margin: 0; padding: 0; }
nav.toc ol ol { padding-left: 0.9rem; margin: .15rem 0 .4rem; }
nav.toc li { margin: .1rem 0; }
nav.toc a { color: inherit; text-decoration: none; display: block; padding: .18rem .5rem; border-radius: 5px;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
nav.toc a:hover { background: rgba(255,255,255,.09); color: #fff; }
main { margin-left: var(--toc-w); padding: 1.6rem 2.2rem 4rem; max-width: calc(var(--toc-w) + 88rem); }
header.page h1 { margin: 0 0 .2rem; font-size: 1.65rem; font-weight: 650; }
header.page p { margin: 0; color: var(--muted); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 1.1rem 1.4rem 1.3rem; margin: 1.3rem 0; box-shadow: 0 1px 2px rgba(27,31,36,.04); }
section > h2 { margin: 0 0 .8rem; font-size: 1.22rem; font-weight: 650; }
h3 { font-size: 1.02rem; margin: 1.3rem 0 .5rem; font-weight: 620; }
.muted { color: var(--muted); }
.tag { display: inline-block; font-size: .78rem; padding: .05rem .45rem; border-radius: 999px;
  background: var(--head); color: var(--muted); margin-left: .4rem; vertical-align: middle; font-weight: 500; }
.table-wrap { overflow: auto; max-height: 78vh; border: 1px solid var(--line); border-radius: 8px;
  width: fit-content; max-width: 100%; }
table { border-collapse: separate; border-spacing: 0; font-size: .86rem; }
tbody tr:last-child > * { border-bottom: 0; }
tbody tr.run-start > * { border-top: 2px solid var(--line); }
th, td { padding: .32rem .7rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
thead th { position: sticky; top: 0; z-index: 2; background: var(--head); font-weight: 600; text-align: center;
  height: 2.05rem; }
thead tr.sub th { top: 2.05rem; font-weight: 500; color: var(--muted); font-size: .8rem; }
thead tr:first-child th.group { border-left: 1px solid var(--line); }
thead th.rowhead { text-align: left; z-index: 3; left: 0; }
tbody th { position: sticky; left: 0; z-index: 1; background: var(--card); text-align: left; font-weight: 600; }
tbody th + th { left: auto; position: static; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, "SFMono-Regular",
  Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: .82rem; }
td.gstart, th.gstart { border-left: 1px solid var(--line); }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr:hover td, tbody tr:hover th { background: #eef6fc; }
td.best { background: var(--best) !important; color: var(--best-fg); font-weight: 700; }
td.na { color: #aab2bb; text-align: center; }
.legend { font-size: .8rem; color: var(--muted); margin: .45rem 0 0; }
.legend .swatch { display: inline-block; width: .9em; height: .9em; background: var(--best); border: 1px solid #9fd3ad;
  vertical-align: -0.12em; border-radius: 2px; margin-right: .25em; }
.table-wrap.full { width: auto; max-height: none; }
table.prov { table-layout: fixed; width: 100%; }
table.prov td, table.prov th { white-space: normal; vertical-align: top; text-align: left; }
table.prov tbody th { width: 9rem; color: var(--muted); font-weight: 600; }
table.prov td { word-break: break-word; }
table.prov thead th { text-align: left; }
table.prov tr.differs th { color: var(--accent); }
table.prov tr.differs th::after { content: " ●"; font-size: .7em; vertical-align: .15em; }
table.prov code, .mono { font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: .8rem; }
details summary { cursor: pointer; color: var(--accent); font-size: .82rem; }
details pre { white-space: pre-wrap; margin: .3rem 0 0; background: var(--bg); padding: .45rem .6rem;
  border-radius: 6px; max-height: 14rem; overflow: auto; font-size: .78rem; }
.note { background: var(--note); border: 1px solid var(--note-line); border-radius: 8px; padding: .55rem .85rem;
  margin: .7rem 0; font-size: .88rem; }
.note ul { margin: .2rem 0 0; padding-left: 1.2rem; }
figure { margin: 1rem 0 .4rem; text-align: center; }
figure img { max-width: 100%; padding: .4rem; height: auto; border: 1px solid var(--line); border-radius: 8px; background: #fff; }
figure figcaption { font-size: .84rem; color: var(--muted); margin-top: .3rem; }
figure.broken::after { content: "figure failed to load"; display: block; color: #b42318; font-weight: 600; }
.figs { display: grid; grid-template-columns: 1fr; gap: .3rem; }
footer { color: var(--muted); font-size: .8rem; margin-top: 2rem; text-align: center; }
@media (max-width: 900px) {
  nav.toc { position: static; width: auto; bottom: auto; }
  main { margin-left: 0; padding: 1rem; }
}
@media print {
  nav.toc { display: none; } main { margin-left: 0; } .table-wrap { max-height: none; overflow: visible; }
  section { break-inside: avoid-page; box-shadow: none; }
}
"""

# Marks each image loaded / broken once the page has loaded (shows a message on a broken figure);
# the page-level summary (data-images="loaded/total") is what the browser test reads.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-loaded", good ? "1" : "0");
    if (good) { ok++; } else if (imgs[i].closest("figure")) { imgs[i].closest("figure").classList.add("broken"); }
  }
  document.documentElement.setAttribute("data-images", ok + "/" + imgs.length);
});
"""


GSTART = ' class="gstart"'


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


@dataclass
class Fig:
    src: str  # relative path
    caption: str
    width: int = 0
    height: int = 0


@dataclass
class RunSection:
    anchor: str
    label: str
    table: Table
    figures: list[Fig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_table(t: Table) -> str:
    out = [f'<div class="table-wrap"><table id="{esc(t.id)}" class="metrics">']
    out.append("<thead>")
    nh = len(t.row_heads)
    if t.groups:
        out.append("<tr>")
        out.extend(f'<th class="rowhead" rowspan="2">{esc(h)}</th>' for h in t.row_heads)
        out.extend(f'<th class="group" colspan="{span}">{esc(g)}</th>' for g, span in t.groups)
        out.append('</tr><tr class="sub">')
        starts = _group_starts(t)
        out.extend(f"<th{GSTART if j in starts else ''}>{esc(c)}</th>" for j, c in enumerate(t.columns))
        out.append("</tr>")
    else:
        out.append("<tr>")
        out.extend(f'<th class="rowhead">{esc(h)}</th>' for h in t.row_heads)
        out.extend(f"<th>{esc(c)}</th>" for c in t.columns)
        out.append("</tr>")
    out.append("</thead><tbody>")
    starts = _group_starts(t)
    prev = None
    for heads, cells in t.rows:
        new_group = len(heads) > 1 and prev is not None and heads[0] != prev
        prev = heads[0]
        out.append('<tr class="run-start">' if new_group else "<tr>")
        out.extend(f'<th scope="row">{esc(h)}</th>' for h in heads[:nh])
        for j, c in enumerate(cells):
            cls = ["num"]
            if c.value is None:
                cls = ["na"]
            if c.best:
                cls.append("best")
            if j in starts:
                cls.append("gstart")
            val = "" if c.value is None else f' data-value="{c.value!r}"'
            out.append(f'<td class="{" ".join(cls)}"{val}>{esc(c.text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _group_starts(t: Table) -> set[int]:
    starts, pos = set(), 0
    for _, span in t.groups:
        starts.add(pos)
        pos += span
    return starts


def _legend(t: Table) -> str:
    if not any(c.best for _, cells in t.rows for c in cells):
        return ""
    return '<p class="legend"><span class="swatch"></span>best in column · ↑ higher is better · ↓ lower is better</p>'


def render_prov(labels: list[str], rows_per_run: list[list[tuple[str, str, str]]]) -> str:
    out = ['<div class="table-wrap full"><table class="prov" id="runs-table"><thead><tr>']
    out.append('<th class="rowhead" style="width:9rem"></th>')
    out.extend(f"<th>{esc(lab)}</th>" for lab in labels)
    out.append("</tr></thead><tbody>")
    for i, (name, _, _) in enumerate(rows_per_run[0]):
        vals = [rows[i] for rows in rows_per_run]
        differs = (
            len(labels) > 1 and len({v[1] for v in vals}) > 1 and name not in ("results", "command", "date")
        )
        tr_cls = ' class="differs"' if differs else ""
        out.append(f'<tr{tr_cls}><th scope="row">{esc(name)}</th>')
        for _, short, full in vals:
            cell = esc(short)
            if name in ("results", "command"):
                cell = f"<code>{cell}</code>"
            if full:
                cell += f"<details><summary>details</summary><pre>{esc(full)}</pre></details>"
            out.append(f"<td>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if len(labels) > 1:
        out.append('<p class="legend"><span style="color:var(--accent)">●</span> differs between runs</p>')
    return "".join(out)


def render_fig(f: Fig) -> str:
    size = f' width="{f.width}" height="{f.height}"' if f.width and f.height else ""
    return (
        f'<figure><a href="{esc(f.src)}"><img src="{esc(f.src)}" alt="{esc(f.caption)}"{size}></a>'
        f"<figcaption>{esc(f.caption)}</figcaption></figure>"
    )


def render_notes(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="note"><strong>Note</strong><ul>{items}</ul></div>'


def render_page(
    title: str,
    subtitle: str,
    run_labels: list[str],
    prov_rows: list[list[tuple[str, str, str]]],
    accuracy: Table,
    comparison: Table | None,
    bars: Fig | None,
    runs: list[RunSection],
    global_notes: list[str],
    footer: str,
) -> str:
    toc = ['<li><a href="#runs">Runs</a></li>', '<li><a href="#accuracy">Accuracy</a></li>']
    toc.append('<li><a href="#comparison-section">Score comparison</a></li>')
    sub = "".join(
        f'<li><a href="#{esc(s.anchor)}" title="{esc(s.label)}">{esc(s.label)}</a></li>' for s in runs
    )
    toc.append(f'<li><a href="#results">OOD detection</a><ol>{sub}</ol></li>')
    body = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="vlmood report">',
        f"<title>{esc(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>",
        f'<nav class="toc" aria-label="Contents"><div class="brand">{esc(title)}</div><ol>{"".join(toc)}</ol></nav>',
        "<main>",
        f'<header class="page"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>',
        render_notes(global_notes),
        '<section id="runs"><h2>Runs</h2>',
        render_prov(run_labels, prov_rows),
        "</section>",
        f'<section id="accuracy"><h2>Accuracy</h2>{render_table(accuracy)}{_legend(accuracy)}</section>',
        '<section id="comparison-section"><h2>Score comparison</h2>',
    ]
    if comparison is not None:
        body.append(f"{render_table(comparison)}{_legend(comparison)}")
    if bars is not None:
        body.append(render_fig(bars))
    elif comparison is None:
        body.append('<p class="muted">No mean metrics to compare.</p>')
    body.append("</section>")
    body.append('<div id="results"></div>')
    for i, s in enumerate(runs):
        body.append(
            f'<section id="{esc(s.anchor)}"><h2>OOD detection<span class="tag">run {i + 1}</span> '
            f"{esc(s.label)}</h2>"
        )
        body.append(render_table(s.table) + _legend(s.table))
        body.append(render_notes(s.notes))
        if s.figures:
            body.append('<div class="figs">' + "".join(render_fig(f) for f in s.figures) + "</div>")
        body.append("</section>")
    body.append(f"<footer>{esc(footer)}</footer></main></body></html>\n")
    return "\n".join(body)
