"""report.html and its boot pages: a directory that works offline (inline CSS, a few lines of inline
JS, no external URLs), to be archived as a CI artifact and opened from disk.

report.html leads with the run's findings (one block per finding, new ones first: findings.py),
then its status, counts, the kernel x case matrix (rows that change or fail, unless asked for all)
and boots. The evidence of every cell is on its boot's page, boot/b<N>.html, which leads with that
boot's findings and changes: the observations of findings and changes in full, every other result
in one line, so neither page grows with what passed. Pages link only to each other and to the
serial logs next to them. jinja2 autoescapes: messages, observations and even kernel releases
come from the guest.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup, escape

from harness.jsondoc import encodable
from harness.report import boot_html, candidates, findings, overview
from harness.report.candidates import Candidates
from harness.results import Outcome, RunRecord, exit_code, outcome_counts


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_BREAK = re.compile(r"(?<=[-+])")


def _breakable(text: str) -> Markup:
    """A column header's word, escaped, breakable only after a '-' or '+' (the header keeps words
    whole): 'sid+trixie-backports' never becomes 'sid+trixi/e-backpor/ts'."""
    return Markup("<wbr>").join(escape(part) for part in _BREAK.split(text))


BOOT_DIR = boot_html.BOOT_DIR  # where rundir writes the boot pages
boot_page = boot_html.boot_page

# Matrix cells have one-letter classes (there are fifty thousand of them), the rest the outcome's name.
CELL_CLASS = {
    Outcome.PASS: "p",
    Outcome.DEVIATION: "d",
    Outcome.NOT_APPLICABLE: "n",
    Outcome.OOM_KILLED: "o",
    Outcome.PANIC: "k",
    Outcome.TIMEOUT: "t",
    Outcome.INFRA_ERROR: "e",
}
MISSING, CHANGED = "m", "c"
_COLOUR = {
    Outcome.PASS: "background:#c9ecc9",
    Outcome.DEVIATION: "background:#f4a0a0",
    Outcome.NOT_APPLICABLE: "background:#e8e8e8;color:#555",
    Outcome.OOM_KILLED: "background:#f7c27f",
    Outcome.PANIC: "background:#8e1b4f;color:#fff",
    Outcome.TIMEOUT: "background:#f3e27a",
    Outcome.INFRA_ERROR: "background:#a8b6d8",
}


def _cell(
    row: overview.Row, column: overview.Column, cell: overview.Cell, explained: Mapping[candidates.Key, Candidates]
) -> str:
    """One matrix cell, as small as it can be: a hundred boots make fifty thousand of them.

    A quiet cell (pass, n/a, unchanged) is bare; the matrix's click handler opens its evidence. A
    cell that asks for attention is also a real link, and a change says in its title since when
    and what changed (changes are few): messages in every title would double the page at a hundred
    boots, and the evidence is one click away.
    """
    group = " g" if column.group_start else ""
    r = cell.result
    if r is None:
        return f'<td class="{MISSING}{group}">·</td>'
    label = overview.LABEL[r.outcome]
    cls = CELL_CLASS[r.outcome] + group
    if cell.changed_from is None and r.outcome in overview.QUIET:
        return f'<td class="{cls}">{label}</td>'
    href = f"{boot_page(column)}#r{row.index}"
    if cell.changed_from is None:
        return f'<td class="{cls}"><a href="{href}">{label}</a></td>'
    what = findings.describe(findings.cell_change(row, cell))
    found = explained.get((row.case, cell.changed_from.index, column.index))
    best = f"; changelog: {found.lines(1)[1].strip()}" if found is not None and found.ranked else ""
    title = escape(f"changed since {cell.changed_from.name}: {what}{best}")
    return f'<td class="{cls} {CHANGED}"><a href="{href}" title="{title}">Δ {label}</a></td>'


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1 code{font-size:90%}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:2px 5px;text-align:left;vertical-align:top}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:0 1em}
dl.meta dt{font-weight:bold}dl.meta dd{margin:0}
.status{font-weight:bold;font-size:110%}
.st-0{color:#185c18}.st-1{color:#b00}.st-3{color:#a35a00}
.cell{display:inline-block;min-width:3.2em;padding:0 4px;text-align:center;border:1px solid #999}
.missing,.mx td.m{background:#fff;color:#999}
table.mx{table-layout:fixed;width:100%}
table.mx td,table.mx tbody th{overflow-wrap:anywhere}
table.mx thead th{overflow-wrap:normal;word-break:keep-all}
table.mx tbody td{padding:1px 4px;text-align:center;cursor:pointer}
table.mx td a{display:block;margin:-1px -4px;padding:1px 4px;color:inherit;text-decoration:none}
.changed,table.mx td.c{outline:3px solid #111;outline-offset:-3px;font-weight:bold}
table.mx.head{position:sticky;top:0;background:#f6f6f6;z-index:1}
table.mx .g{border-left:3px solid #444}
table.mx th.col a{color:inherit;text-decoration:none}
.cv{content-visibility:auto;contain-intrinsic-size:auto calc(var(--n)*23px)}
#all:not(:checked)~#matrix .cv{contain-intrinsic-size:auto calc(var(--x)*23px)}
#all:not(:checked)~#matrix .cv tr:not(.x):not(:target){display:none}
#all:checked~#matrix tr.cs>*,#all:not(:checked)~#matrix tr.cx>*{border-top:2px solid #777}
.ver{font-weight:bold}.rel,.bid{font-size:85%;color:#555}
.berr{display:block;margin-top:2px;padding:0 3px;font-size:85%}
.ev{border:1px solid #ddd;margin:.6em 0;padding:.3em .8em}
.ev:target,tr:target{outline:3px solid #0366d6}
.ev h4{margin:.2em 0}
.ev dl{display:grid;grid-template-columns:max-content auto;gap:0 1em;margin:.3em 0}
.ev dt{font-weight:bold}.ev dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.ev pre{background:#f7f7f7;padding:.4em;max-height:24em;overflow:auto;margin:.3em 0}
.chg{font-weight:bold}
td.err,p.err{white-space:pre-wrap;max-width:40em}
table.boots td{white-space:nowrap}table.boots td.err{white-space:pre-wrap}
.fd{border:1px solid #ccc;border-left:6px solid #aaa;margin:.4em 0;padding:.2em .8em;max-width:90em}
.fd.new{border-left-color:#c00;background:#fff3f3}
.fd h3{margin:.2em 0;font-size:105%}
.fd dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:0 1em;margin:.2em 0}
.fd dt{color:#555}.fd dd{margin:0;overflow-wrap:anywhere}.fd .msg{white-space:pre-wrap}
.cit{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}.cit:hover{white-space:normal}
.tag{padding:0 .4em;border-radius:3px;font-size:85%;background:#ddd;color:#333}
.new .tag{background:#c00;color:#fff}
.sub{color:#555;font-size:90%;font-weight:normal}
.ev.q,.q{border:0;margin:0;padding:1px 0;font-size:92%}.q a{color:inherit}.q a:target{outline:3px solid #0366d6}
.oc{margin:.3em 0}.oc .q{margin-left:1em}
ol.cand{margin:.2em 0;padding-left:1.6em}
"""

# The matrix is one fixed-layout table per CHUNK_ROWS rows with the same columns, each skipped by the
# browser until it scrolls into view (content-visibility): laying out fifty thousand cells at once
# took chromium here three seconds before the first screen. The widths are the colgroup's, in em.
CHUNK_ROWS = 40
_WIDTHS = {"case": 18, "memlock": 6, "user": 4}
_KERNEL_WIDTH = 6.5
_CSS += "".join(f".o-{o.value},.mx td.{CELL_CLASS[o]}{{{_COLOUR[o]}}}" for o in Outcome)
_CSS += "".join(f"col.{k}{{width:{w}em}}" for k, w in {**_WIDTHS, "k": _KERNEL_WIDTH}.items())

# A cell's evidence is on its boot's page, under the row's id. Links in fifty thousand cells would be
# most of the page, so one handler computes them: the first three cells of a row name it.
_OPEN_EVIDENCE = (
    f"function evidence(td){{return '{BOOT_DIR}/b'+(td.cellIndex-3)+'.html#'+td.parentNode.id}}\n"
    "document.getElementById('matrix').addEventListener('click',function(e){"
    "var td=e.target.closest('tbody td');"
    "if(td&&td.cellIndex>=3&&!e.target.closest('a'))location.href=evidence(td)});"
)

_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run {{ run.run_id }}</title>
<style>{{ css }}</style>
</head>
<body>
<h1>Run <code>{{ run.run_id }}</code></h1>
<p class="status st-{{ code }}" id="status">{{ status }}; {{ verdict }}</p>
{% if unstarted %}
<div id="unstarted">
{% for reason, group in unstarted %}
<p class="err o-{{ outcome(group).value }}">{{ did_not_start(group | length) }}: {{ reason }} (boot
{{- "s" if group | length != 1 else "" }}:
{%- for b in group %} <a href="#{{ anchors[b.boot_id] }}">{{ b.boot_id }}</a>{{ "," if not loop.last }}{% endfor %}
{{- "; " ~ results(group) if results(group) else "" }})</p>
{% endfor %}
</div>
{% endif %}

<h2 id="findings">Findings: {{ tally }}</h2>
{% if not found %}<p>None: every case that answered passed, or does not apply.</p>{% endif %}
{% for f in found %}
{% set one = f.seen[0].result %}
<div class="fd {{ 'known' if f.known else 'new' }}" id="{{ f.anchor }}">
<h3><span class="tag">{{ "known" if f.known else "NEW" }}</span> <span class="cell o-{{ f.outcome.value }}">
  {{- f.outcome.value }}</span> {{ f.case }}
  <span class="sub">{{ f.seen | length }} result{{ "s" if f.seen | length != 1 }}</span></h3>
<dl><dt>observed</dt><dd><span class="msg">{{ f.observed[0] | t }}</span>
{%- if f.observed | length > 1 %}<span class="sub"> (and {{ f.observed | length - 1 }} other message
  {{- "s" if f.observed | length > 2 }}: on the boot pages)</span>{% endif %}</dd>
{% if one.expected or one.citation %}<dt>expected</dt><dd>{{ compact(one.expected) | t }}
  {%- if one.citation %} <span class="sub cit">{{ one.citation | t }}</span>{% endif %}</dd>{% endif %}
{% if f.known %}<dt>known</dt><dd>{{ f.known | t }}</dd>{% endif %}
<dt>kernels</dt><dd>
  {{- "only " ~ f.first.name if f.first is sameas f.last else "first " ~ f.first.name ~ ", last " ~ f.last.name }};
  {{ f.boots | length }} of {{ m.columns | length }} boots:
  {%- for c, row in where(f) %} <a href="{{ page(c) }}#r{{ row }}">{{ c.boot.boot_id }}</a>
  {{- "," if not loop.last }}{% endfor %}
  {{- " +%d" % (f.boots | length - where(f) | length) if f.boots | length > where(f) | length else "" }}</dd>
<dt>limit/user</dt><dd>{{ f.runs | length }} of {{ runs_of(m, f.case) }}: {{ f.runs | join(", ") }}</dd>
{% for c in explained.get(f.case, []) %}<dt>changelog</dt><dd>{{ c.lines(0)[0] | t }}
{%- if c.ranked %}<ol class="cand">{% for k in c.ranked[:shown] %}<li>{{ describe(k) | t }}</li>{% endfor %}</ol>
{%- if c.ranked | length > shown %}<span class="sub">and {{ c.ranked | length - shown }} more:
  harness history --changes --candidates N</span>{% endif %}{% endif %}</dd>
{% endfor %}</dl>
</div>
{% endfor %}

<h2>Outcomes</h2>
<dl class="meta">
<dt>started</dt><dd>{{ run.started }}</dd>
<dt>finished</dt><dd>{{ run.finished or "not finished" }}</dd>
<dt>complete</dt><dd>{{ "yes" if run.complete else "no" }}</dd>
<dt>interrupted</dt><dd>{{ "yes" if run.interrupted else "no" }}</dd>
<dt>boots</dt><dd>{{ m.columns | length }} ({{ boot_errors }} with a boot error)</dd>
{% if reused %}<dt>reused</dt><dd>{{ reused }}</dd>{% endif %}
</dl>
<table class="counts" id="counts">
<tr>{% for o in outcomes %}<th class="o-{{ o.value }}">{{ o.value }}</th>{% endfor %}<th>boot errors</th></tr>
<tr>{% for o in outcomes %}<td>{{ counts[o.value] }}</td>{% endfor %}<td>{{ boot_errors }}</td></tr>
</table>

<h2>Matrix</h2>
<p>One column per boot, oldest kernel first{{ ", grouped by RAM" if m.ram_sizes | length > 1 else "" }};
a row per case, limit and user, a case's rows together. A click on a cell opens its evidence on the boot's
page; a Δ cell's title says what changed (<a href="#legend">legend</a>, <a href="#boots">boots</a>).
{{ interesting }} of {{ m.rows | length }} rows change or fail; the others pass or are n/a alike on every kernel.</p>
{# The switch is a sibling before the matrix: the stylesheet alone hides the quiet rows, no script. #}
<input type="checkbox" id="all"> <label for="all">show every row</label>
<div class="matrix" id="matrix" style="width:{{ width }}em">
<table class="mx head">
{{ cols }}
<thead>
{% if m.ram_sizes | length > 1 %}
<tr class="ram"><th colspan="3"></th>
{%- for ram in m.ram_sizes %}<th class="g" colspan="{{ spans[ram] }}">{{ ram }} MiB</th>{% endfor %}</tr>
{% endif %}
<tr><th>case</th><th>memlock</th><th>user</th>
{% for c in m.columns %}
<th class="col{{ ' g' if c.group_start else '' }}" data-boot="{{ c.boot.boot_id }}"><a href="{{ page(c) }}">
  <span class="ver">{{ brk(c.name) }}</span><br><span class="rel">{{ brk(c.release) }}</span><br>
  <span class="bid">{{ brk(c.boot.boot_id) }}</span><br><span class="rel">{{ c.boot.ram_mb }} MiB</span></a>
  {%- if c.boot.error %}<a class="berr o-infra_error" href="#{{ c.anchor }}" title="{{ short(first(c.boot.error)) }}">
  boot error</a>{% endif %}</th>
{% endfor %}
</tr>
</thead>
</table>
{% for chunk in m.rows | batch(chunk_rows) %}
{# Each chunk's height before it is laid out: its rows, or those the switch leaves. #}
<div class="cv" style="--n:{{ chunk | length }};--x:{{ chunk | selectattr('interesting') | list | length }}">
<table class="mx">
{{ cols }}
<tbody>
{% for row in chunk %}
<tr id="r{{ row.index }}"{% if row_class[row.index] %} class="{{ row_class[row.index] }}"{% endif %}>
  {#- #}<th>{{ row.case }}</th><td>{{ row.memlock }}</td><td>{{ row.user }}</td>{{ cells[row.index] }}</tr>
{% endfor %}
</tbody>
</table></div>
{% endfor %}
</div>

<h2>Legend</h2>
<ul class="legend" id="legend">
{% for o in outcomes %}
<li><span class="cell o-{{ o.value }}">{{ labels[o] }}</span> <b>{{ o.value }}</b>: {{ meanings[o] }}</li>
{% endfor %}
<li><span class="cell o-pass changed">Δ ok</span> <b>changed</b>: behaves otherwise than the previous kernel
  version with the same RAM that has a result for the row (outlined); its title, and its boot page, say
  which fields changed, before → after</li>
<li><span class="cell missing">·</span> no result: the boot stopped before this case (see its error)</li>
</ul>

<h2>Boots</h2>
<table class="boots" id="boots">
<tr><th>boot</th><th>kernel</th><th>release</th><th>package</th><th>RAM</th><th>accel</th><th>QEMU</th>
  <th>MemTotal</th><th>ready / ssh / done</th><th>reboots</th><th>retries</th><th>serial log</th><th>error</th></tr>
{% for c in m.columns %}
{% set b = c.boot %}
<tr id="{{ c.anchor }}"><td><a href="{{ page(c) }}">{{ b.boot_id }}</a></td><td>{{ c.name }}</td>
  <td>{{ c.release }}</td>
  <td>{{ b.kernel.package if b.kernel and b.kernel.package else "" }}</td>
  <td>{{ b.ram_mb }} MiB</td><td>{{ b.accelerator }}</td><td>{{ b.qemu_version }}</td>
  <td>{{ "%d kB" % b.memtotal_kb if b.memtotal_kb is not none else "" }}</td>
  <td>{% for k in ("marker", "ssh", "probe") %}{{ "%.1fs" % b.timings[k] if k in b.timings else "-" }}
    {{- " / " if not loop.last else "" }}{% endfor %}{{ " (loaded)" if b.restored else "" }}</td>
  <td>{{ b.reboots }}</td><td>{{ b.retries }}</td>
  <td>{% if b.serial_log %}<a href="{{ href(b.serial_log) }}">{{ b.serial_log }}</a>{% endif %}</td>
  <td class="err{{ ' o-infra_error' if b.error else '' }}">{{ first(b.error) }}
  {%- if first(b.error) != full(b.error) %} <a href="{{ page(c) }}#error">(in full)</a>{% endif %}</td></tr>
{% endfor %}
</table>
<script>{{ script }}</script>
</body>
</html>
"""


@functools.cache
def _template() -> jinja2.Template:
    return boot_html.environment().from_string(_INDEX)


def _shared(run: RunRecord, m: overview.Matrix) -> dict[str, Any]:
    """What both templates are given."""
    return {
        "run": run,
        "m": m,
        "css": Markup(_CSS),  # ours, and CSS: escaping would turn its child combinators into "&gt;"
        "labels": overview.LABEL,
        "href": boot_html.href,
        "full": overview.full_error,
    }


# Boots a finding's block links to; the rest are counted: a finding on every one of a hundred boots
# would otherwise be a hundred links, in every block.
_WHERE_MAX = 12


def _where(f: findings.Finding) -> list[tuple[overview.Column, int]]:
    """The boots a finding's block names, each with the first of its rows there (the link's target)."""
    return [(c, f.on(c)[0].row.index) for c in f.boots[:_WHERE_MAX]]


def _row_classes(m: overview.Matrix) -> list[str]:
    """Each matrix row's classes: x (changes or fails), cs (its case's first row), cx (its case's first
    x row): the first row of a case shown is ruled off, whichever rows the switch shows."""
    out = []
    case, x_seen = None, False
    for row in m.rows:
        first = row.case != case
        if first:
            case, x_seen = row.case, False
        first_x = row.interesting and not x_seen
        x_seen = x_seen or row.interesting
        out.append(" ".join(k for k, on in (("x", row.interesting), ("cs", first), ("cx", first_x)) if on))
    return out


def _index(
    run: RunRecord, m: overview.Matrix, found: list[findings.Finding], explain: candidates.Explain | None
) -> str:
    spans = {ram: sum(1 for c in m.columns if c.boot.ram_mb == ram) for ram in m.ram_sizes}
    explained = candidates.of_changes(m, explain)
    cells = [
        Markup("".join(_cell(row, m.columns[i], cell, explained) for i, cell in enumerate(row.cells))) for row in m.rows
    ]
    by_case: dict[str, list[Candidates]] = {}
    for c in candidates.within(explained):
        by_case.setdefault(c.case, []).append(c)
    return _template().render(
        _shared(run, m),
        found=found,
        explained=by_case,
        shown=candidates.SHOWN,
        describe=candidates.describe,
        tally=findings.tally(found),
        where=_where,
        runs_of=findings.runs_of,
        compact=boot_html.compact,
        brk=_breakable,
        interesting=sum(1 for row in m.rows if row.interesting),
        row_class=_row_classes(m),
        status=overview.status(run),
        verdict=overview.verdict(run.boots),
        code=exit_code(run.boots),
        counts=outcome_counts(run.boots),
        boot_errors=sum(1 for b in run.boots if b.error),
        reused=overview.reused(run.boots),
        outcomes=list(Outcome),
        meanings=overview.MEANING,
        spans=spans,
        cells=cells,
        cols=Markup(
            f"<colgroup>{''.join(f'<col class={k}>' for k in _WIDTHS)}{'<col class=k>' * len(m.columns)}</colgroup>"
        ),
        width=sum(_WIDTHS.values()) + _KERNEL_WIDTH * len(m.columns),
        chunk_rows=CHUNK_ROWS,
        page=boot_page,
        short=_short,
        first=overview.first_line,
        # Boots that failed as a whole: a line per reason, each boot linked to its row of the boots table.
        unstarted=overview.unstarted(run.boots),
        anchors={c.boot.boot_id: c.anchor for c in m.columns},
        outcome=overview.unstarted_outcome,
        did_not_start=overview.boots_did_not_start,
        results=overview.result_outcomes,
        script=Markup(_OPEN_EVIDENCE),
    )


def pages(run: RunRecord, explain: candidates.Explain | None = None) -> dict[str, str]:
    """report.html and every boot's page, by path relative to the run directory; `explain` gives
    the changes within a line their changelog candidates."""
    m = overview.matrix(run)
    found = findings.findings(m)
    shared = _shared(run, m)
    out = {overview.HTML_FILE: _index(run, m, found, explain)}
    repeats = boot_html.copies(m)
    out |= {boot_page(c): boot_html.page(m, c, found, shared, repeats) for c in m.columns}
    out[boot_html.STYLE] = _CSS
    return {path: encodable(text) for path, text in out.items()}


def html(run: RunRecord) -> str:
    """report.html alone: findings, status, counts, the kernel x case matrix, legend and boots."""
    m = overview.matrix(run)
    return encodable(_index(run, m, findings.findings(m), None))
