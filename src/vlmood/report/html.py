"""The self-contained HTML page: inline CSS, no external resources, figures as relative PNG links.

Everything taken from a results file goes through :func:`esc` (``html.escape`` with quotes).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from vlmood.report.export import TABLE_DIR
from vlmood.report.failures import ScoreFailures, Thumb
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
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]:hover { color: var(--accent); }
th[data-sort="asc"]::after { content: " ▲"; font-size: .7em; }
th[data-sort="desc"]::after { content: " ▼"; font-size: .7em; }
table#summary tbody th { white-space: normal; overflow-wrap: anywhere; max-width: 20rem; min-width: 6rem; }
.exports { font-size: .78rem; color: var(--muted); margin: .35rem 0 0; }
.exports a { color: var(--accent); }
details.fold { margin: .6rem 0; }
details.fold > summary { font-size: .9rem; margin-bottom: .4rem; }
.fail h4 { margin: .9rem 0 .3rem; font-size: .92rem; font-weight: 620; }
.fail .row { display: flex; align-items: flex-start; gap: .7rem; margin: .25rem 0 .5rem; flex-wrap: wrap; }
.fail .what { width: 13rem; font-size: .8rem; color: var(--muted); flex: none; }
.thumbs { display: flex; flex-wrap: wrap; gap: .45rem; flex: 1; min-width: 0; }
.thumb { width: 92px; margin: 0; text-align: center; }
.thumb img { width: 64px; height: 64px; object-fit: contain; background: #fff; border: 1px solid var(--line);
  border-radius: 5px; display: block; margin: 0 auto; }
.thumb.missing img { opacity: .7; }
.thumb figcaption { font-size: .68rem; line-height: 1.2; color: var(--muted); margin-top: .15rem;
  overflow-wrap: anywhere; max-height: 3.7em; overflow: hidden; }
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

# On load: marks each image loaded / broken (a message on a broken figure) and each table wrapper
# that scrolls sideways; the page-level data-images="loaded/total" is what the browser test reads.
# A click on a column heading sorts the table's rows by it (numbers by data-value, missing last).
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-loaded", good ? "1" : "0");
    if (good) { ok++; } else if (imgs[i].closest("figure")) { imgs[i].closest("figure").classList.add("broken"); }
  }
  document.documentElement.setAttribute("data-images", ok + "/" + imgs.length);
  var wraps = document.querySelectorAll(".table-wrap");
  for (var j = 0; j < wraps.length; j++) {
    var w = wraps[j];
    if (w.clientWidth > 0) { w.setAttribute("data-hscroll", w.scrollWidth > w.clientWidth + 1 ? "1" : "0"); }
  }
  var de = document.documentElement;
  de.setAttribute("data-page-hscroll", de.scrollWidth > de.clientWidth + 1 ? "1" : "0");
});
function vlmoodSort(th) {
  var table = th.closest("table"), col = +th.getAttribute("data-col");
  var dir = th.getAttribute("data-sort") === "asc" ? "desc" : "asc";
  var heads = table.querySelectorAll("th[data-sort]");
  for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("data-sort"); }
  th.setAttribute("data-sort", dir);
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  function key(r) {
    var c = r.cells[col];
    if (!c) { return null; }
    var v = c.getAttribute("data-value");
    if (v !== null) { return parseFloat(v); }
    var t = c.textContent.trim();
    return t === "" || t === "\u2013" ? null : t;
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
    var c = (typeof x === "number" && typeof y === "number") ? x - y
      : String(x).localeCompare(String(y), undefined, {numeric: true});
    return dir === "asc" ? c : -c;
  });
  for (var k = 0; k < rows.length; k++) { rows[k].classList.remove("run-start"); body.appendChild(rows[k]); }
}
document.addEventListener("click", function (e) {
  var th = e.target.closest ? e.target.closest("th[data-col]") : null;
  if (th) { vlmoodSort(th); }
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
    failures: list[ScoreFailures] = field(default_factory=list)
    failure_note: str = ""


@dataclass
class PageSection:
    """A section shown before the summary (e.g. a ``vlmood zoo`` folder's table, fits and scatter
    plots), already rendered: ``html`` goes inside its ``<section>``, ``markdown`` under its heading."""

    anchor: str
    title: str
    html: str
    markdown: str


@dataclass
class ReportPage:
    """Everything the HTML and Markdown writers show, in page order."""

    title: str
    subtitle: str
    run_labels: list[str]
    prov_rows: list[list[tuple[str, str, str]]]
    summary: Table
    accuracy: Table
    class_accuracy: Table | None
    bars: Fig | None
    runs: list[RunSection]
    notes: list[str]
    footer: str = ""
    sections: list[PageSection] = field(default_factory=list)


def exports(table_id: str) -> str:
    base = f"{TABLE_DIR}/{esc(table_id)}"
    return (
        f'<p class="exports">export: <a href="{base}.csv" download>CSV</a> · '
        f'<a href="{base}.tex" download>LaTeX</a></p>'
    )


def render_table(t: Table) -> str:
    """A table with sortable columns (click a heading), exact values in ``data-value``."""
    out = [f'<div class="table-wrap"><table id="{esc(t.id)}" class="metrics">']
    out.append("<thead>")
    nh = len(t.row_heads)
    starts = _group_starts(t)
    if t.groups:
        out.append("<tr>")
        out.extend(
            f'<th class="rowhead" rowspan="2" data-col="{i}" title="sort">{esc(h)}</th>'
            for i, h in enumerate(t.row_heads)
        )
        out.extend(f'<th class="group" colspan="{span}">{esc(g)}</th>' for g, span in t.groups)
        out.append('</tr><tr class="sub">')
        out.extend(
            f'<th{GSTART if j in starts else ""} data-col="{nh + j}" title="sort">{esc(c)}</th>'
            for j, c in enumerate(t.columns)
        )
        out.append("</tr>")
    else:
        out.append("<tr>")
        out.extend(
            f'<th class="rowhead" data-col="{i}" title="sort">{esc(h)}</th>'
            for i, h in enumerate(t.row_heads)
        )
        out.extend(f'<th data-col="{nh + j}" title="sort">{esc(c)}</th>' for j, c in enumerate(t.columns))
        out.append("</tr>")
    out.append("</thead><tbody>")
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
    out.append(_legend(t) + exports(t.id))
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
    return (
        '<p class="legend"><span class="swatch"></span>best in column · ↑ higher is better · '
        "↓ lower is better · click a heading to sort</p>"
    )


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
    out.append(exports("runs-table"))
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


def _thumbs(items: list[Thumb]) -> str:
    if not items:
        return '<span class="muted">none</span>'
    out = []
    for t in items:
        cls = "thumb" if t.ok else "thumb missing"
        out.append(
            f'<figure class="{cls}"><img src="{esc(t.src)}" alt="{esc(t.caption)}" title="{esc(t.title)}" '
            f'width="64" height="64"><figcaption>{esc(t.caption).replace(chr(10), "<br>")}</figcaption></figure>'
        )
    return "".join(out)


def render_failures(s: RunSection) -> str:
    if not s.failures and not s.failure_note:
        return ""
    out = [
        f'<details class="fold fail" open><summary>Failures at the FPR95 threshold · {esc(s.label)}</summary>'
    ]
    if s.failure_note:
        out.append(f'<p class="muted">{esc(s.failure_note)}</p>')
    for f in s.failures:
        out.append(f'<h4>{esc(f.score)} <span class="tag">threshold {f.threshold:.4g}</span></h4>')
        pct_o = 100 * f.n_ood_accepted / max(f.n_ood, 1)
        pct_i = 100 * f.n_id_rejected / max(f.n_id, 1)
        out.append(
            f'<div class="row"><div class="what">OOD accepted as ID, highest scores first '
            f"({f.n_ood_accepted} of {f.n_ood}, {pct_o:.1f}%)</div>"
            f'<div class="thumbs">{_thumbs(f.ood_accepted)}</div></div>'
        )
        out.append(
            f'<div class="row"><div class="what">ID rejected, lowest scores first '
            f"({f.n_id_rejected} of {f.n_id}, {pct_i:.1f}%)</div>"
            f'<div class="thumbs">{_thumbs(f.id_rejected)}</div></div>'
        )
    out.append("</details>")
    return "".join(out)


def render_page(p: ReportPage) -> str:
    toc = [f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in p.sections]
    toc += [
        '<li><a href="#summary-section">Summary</a></li>',
        '<li><a href="#accuracy-section">Accuracy</a></li>',
    ]
    toc.append('<li><a href="#runs">Runs</a></li>')
    sub = "".join(
        f'<li><a href="#{esc(s.anchor)}" title="{esc(s.label)}">{esc(s.label)}</a></li>' for s in p.runs
    )
    toc.append(f'<li><a href="#results">Per run</a><ol>{sub}</ol></li>')
    body = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="vlmood report">',
        f"<title>{esc(p.title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>",
        f'<nav class="toc" aria-label="Contents"><div class="brand">{esc(p.title)}</div>'
        f"<ol>{''.join(toc)}</ol></nav>",
        "<main>",
        f'<header class="page"><h1>{esc(p.title)}</h1><p>{esc(p.subtitle)}</p></header>',
        render_notes(p.notes),
        *(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.html}</section>' for s in p.sections),
        '<section id="summary-section"><h2>Summary</h2>',
        render_table(p.summary),
    ]
    if p.bars is not None:
        body.append(render_fig(p.bars))
    body.append("</section>")
    body.append(f'<section id="accuracy-section"><h2>Accuracy</h2>{render_table(p.accuracy)}')
    if p.class_accuracy is not None:
        n = len(p.class_accuracy.rows)
        body.append(
            f'<details class="fold"><summary>Accuracy per class ({n} classes; '
            "sort a column to find the worst)"
            f"</summary>{render_table(p.class_accuracy)}</details>"
        )
    body.append("</section>")
    body += ['<section id="runs"><h2>Runs</h2>', render_prov(p.run_labels, p.prov_rows), "</section>"]
    body.append('<div id="results"></div>')
    for i, s in enumerate(p.runs):
        body.append(
            f'<section id="{esc(s.anchor)}"><h2>Run {i + 1}'
            f'<span class="tag">{len(s.table.rows)} scores</span> '
            f"{esc(s.label)}</h2>"
        )
        n_sets = len(s.table.groups)
        body.append(
            f'<details class="fold"><summary>Per-set detail: FPR95, AUROC, AUPR-in, AUPR-out for {n_sets} '
            f"columns (each OOD set and the means)</summary>{render_table(s.table)}</details>"
        )
        body.append(render_notes(s.notes))
        if s.figures:
            body.append('<div class="figs">' + "".join(render_fig(f) for f in s.figures) + "</div>")
        body.append(render_failures(s))
        body.append("</section>")
    body.append(f"<footer>{esc(p.footer)}</footer></main></body></html>\n")
    return "\n".join(body)
