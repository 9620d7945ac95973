"""report.html and its boot pages: a directory that works offline (inline CSS, a few lines of inline
JS, no external URLs), to be archived as a CI artifact and opened from disk.

report.html holds the run's status, counts, boots and the kernel x case matrix; the evidence of
every cell is on its boot's page, boot/b<N>.html, so the page a reader opens first stays small at a
hundred boots (the evidence of one boot is about what the whole page used to be for four). Pages
link only to each other and to the serial logs next to them. jinja2 autoescapes: messages,
observations and even kernel releases come from the guest.
"""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup, escape

from harness.jsondoc import encodable
from harness.report import overview
from harness.results import Outcome, RunRecord, exit_code, outcome_counts

BOOT_DIR = "boot"

# One encoder for all values: json.dumps builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def _json_value(value: Any) -> str:
    # Observations are mostly scalars; the encoder's per-call setup would be most of the page's render time.
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return encode_basestring(value)
    return _JSON.encode(value)


def _pretty(value: Any) -> str:
    """Top-level keys one per line, nested values compact: readable, and a fraction of indent=2's size."""
    if isinstance(value, dict) and value:
        return "{\n" + ",\n".join(f" {encode_basestring(str(k))}: {_json_value(v)}" for k, v in value.items()) + "\n}"
    return _JSON.encode(value)


def _json_or_blank(value: Any) -> str:
    return _JSON.encode(value) if value else ""


def _text(value: object) -> Markup:
    """`value` escaped for element content, where quotes need no escaping.

    Autoescape turns every `"` into `&#34;`, and JSON evidence is full of them: on a 10-kernel run
    that is a third of the page. Only text between tags may use this, never an attribute value.
    """
    return Markup(str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _href(path: str) -> str:
    # Percent-encoding ':' makes any "scheme:" a harmless relative path.
    return quote(path, safe="/")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def boot_page(column: overview.Column) -> str:
    """The boot page's path, relative to the run directory."""
    return f"{BOOT_DIR}/{column.anchor}.html"


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


def _cell(row: overview.Row, column: overview.Column, cell: overview.Cell) -> str:
    """One matrix cell, as small as it can be: a hundred boots make fifty thousand of them.

    A quiet cell (pass, n/a, unchanged) is bare; the matrix's click handler opens its evidence. A
    cell that asks for attention is also a real link, and a change says in its title since when:
    messages in titles would double the page at a hundred boots, and the evidence is one click away.
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
    title = escape(f"changed since {cell.changed_from.name}")
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
table.mx th,table.mx td{overflow-wrap:anywhere}
table.mx tbody td{padding:1px 4px;text-align:center;cursor:pointer}
table.mx td a{display:block;margin:-1px -4px;padding:1px 4px;color:inherit;text-decoration:none}
.changed,table.mx td.c{outline:3px solid #111;outline-offset:-3px;font-weight:bold}
table.mx.head{position:sticky;top:0;background:#f6f6f6;z-index:1}
table.mx .g{border-left:3px solid #444}
table.mx th.col a{color:inherit;text-decoration:none}
.cv{content-visibility:auto;contain-intrinsic-size:auto 600px}
.ver{font-weight:bold}.rel,.bid{font-size:85%;color:#555}
.berr{display:block;margin-top:2px;padding:0 3px;font-size:85%}
body.only .cv tr:not(.x){display:none}
.ev{border:1px solid #ddd;margin:.6em 0;padding:.3em .8em}
.ev:target,tr:target{outline:3px solid #0366d6}
.ev h4{margin:.2em 0}
.ev dl{display:grid;grid-template-columns:max-content auto;gap:0 1em;margin:.3em 0}
.ev dt{font-weight:bold}.ev dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.ev pre{background:#f7f7f7;padding:.4em;max-height:24em;overflow:auto;margin:.3em 0}
.chg{font-weight:bold}
td.err,p.err{white-space:pre-wrap;max-width:40em}
table.boots td{white-space:nowrap}table.boots td.err{white-space:pre-wrap}
"""

# The matrix is one fixed-layout table per CHUNK_ROWS rows with the same columns, each skipped by the
# browser until it scrolls into view (content-visibility): laying out fifty thousand cells at once
# took chromium here three seconds before the first screen. The widths are the colgroup's, in em.
CHUNK_ROWS = 40
_WIDTHS = {"case": 18, "memlock": 6, "user": 4}
_KERNEL_WIDTH = 5
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
<dl class="meta">
<dt>started</dt><dd>{{ run.started }}</dd>
<dt>finished</dt><dd>{{ run.finished or "not finished" }}</dd>
<dt>complete</dt><dd>{{ "yes" if run.complete else "no" }}</dd>
<dt>interrupted</dt><dd>{{ "yes" if run.interrupted else "no" }}</dd>
<dt>boots</dt><dd>{{ m.columns | length }} ({{ boot_errors }} with a boot error)</dd>
</dl>
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

<h2>Outcomes</h2>
<table class="counts" id="counts">
<tr>{% for o in outcomes %}<th class="o-{{ o.value }}">{{ o.value }}</th>{% endfor %}<th>boot errors</th></tr>
<tr>{% for o in outcomes %}<td>{{ counts[o.value] }}</td>{% endfor %}<td>{{ boot_errors }}</td></tr>
</table>

<h2>Matrix</h2>
<p>One column per boot, oldest kernel first{{ ", grouped by RAM" if m.ram_sizes | length > 1 else "" }};
a click on a cell opens its evidence on the boot's page (<a href="#legend">legend</a>, <a href="#boots">boots</a>).
<label><input type="checkbox" id="only" onchange="document.body.classList.toggle('only', this.checked)">
only rows that change or fail</label></p>
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
  <span class="ver">{{ c.name }}</span><br><span class="rel">{{ c.release }}</span><br>
  <span class="bid">{{ c.boot.boot_id }}</span><br><span class="rel">{{ c.boot.ram_mb }} MiB</span></a>
  {%- if c.boot.error %}<a class="berr o-infra_error" href="#{{ c.anchor }}" title="{{ short(first(c.boot.error)) }}">
  boot error</a>{% endif %}</th>
{% endfor %}
</tr>
</thead>
</table>
{% for chunk in m.rows | batch(chunk_rows) %}
<div class="cv"><table class="mx">
{{ cols }}
<tbody>
{% for row in chunk %}
<tr id="r{{ row.index }}"{% if row.interesting %} class="x"{% endif %}>
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
  version with the same RAM that has a result for the row (outlined)</li>
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

_BOOT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ b.boot_id }}: run {{ run.run_id }}</title>
<style>{{ css }}</style>
</head>
<body>
<h1>Boot <code>{{ b.boot_id }}</code>: {{ c.name }}</h1>
<p><a href="../{{ index }}#{{ c.anchor }}">run {{ run.run_id }}</a>
{%- if prev %} · previous boot: <a href="{{ prev.anchor }}.html">{{ prev.boot.boot_id }}</a>{% endif %}
{%- if next %} · next boot: <a href="{{ next.anchor }}.html">{{ next.boot.boot_id }}</a>{% endif %}</p>
<dl class="meta">
<dt>release</dt><dd>{{ c.release }}</dd>
<dt>package</dt><dd>{{ b.kernel.package if b.kernel and b.kernel.package else "" }}</dd>
<dt>RAM</dt><dd>{{ b.ram_mb }} MiB{{ ", MemTotal %d kB" % b.memtotal_kb if b.memtotal_kb is not none else "" }}</dd>
<dt>QEMU</dt><dd>{{ b.qemu_version }} ({{ b.accelerator }})</dd>
<dt>guest</dt><dd>{{ "loaded from the saved guest " ~ b.restored if b.restored else "booted" }}</dd>
<dt>serial log</dt><dd>{% if b.serial_log %}<a href="../{{ href(b.serial_log) }}">{{ b.serial_log }}</a>
  {%- else %}none{% endif %}</dd>
<dt>results</dt><dd>{{ b.cases | length }}</dd>
</dl>
{% if b.error %}<p class="err o-infra_error" id="error">{{ full(b.error) }}</p>{% endif %}
{% for row in m.rows %}
{% set cell = row.cells[c.index] %}
{% set r = cell.result %}
<div class="ev" id="r{{ row.index }}">
{% if r is none %}
<h4><span class="cell missing">·</span> {{ row.name }} <a href="../{{ index }}#r{{ row.index }}">matrix row</a></h4>
<p>No result: {{ "the boot stopped before this case (its error is above)" if b.error
  else "this boot did not run this case" }}.</p>
{% else %}
<h4><span class="cell o-{{ r.outcome.value }}">{{ labels[r.outcome] }}</span> {{ row.name }} on {{ b.boot_id }}
  <a href="../{{ index }}#r{{ row.index }}">matrix row</a></h4>
{% if cell.changed_from is not none %}
<p class="chg">Behaviour changed: <a href="{{ cell.changed_from.anchor }}.html#r{{ row.index }}">
  {{- cell.changed_from.name }} ({{ cell.changed_from.boot.boot_id }})</a> behaved otherwise.</p>
{% endif %}
<dl><dt>outcome</dt><dd>{{ r.outcome.value }}</dd><dt>message</dt><dd>{{ full(r.message) | t }}</dd>
<dt>expected</dt><dd>{{ compact(r.expected) | t }}</dd><dt>citation</dt><dd>{{ r.citation | t }}</dd>
<dt>fingerprint</dt><dd>{{ r.fingerprint | t }}</dd><dt>duration</dt><dd>{{ "%.3f" % r.duration_s }} s</dd></dl>
<pre>{{ pretty(r.observation) | t }}</pre>
{% endif %}
</div>
{% endfor %}
</body>
</html>
"""


@functools.cache
def _templates() -> tuple[jinja2.Template, jinja2.Template]:
    # Autoescape on: messages, observations and even kernel releases come from the guest.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["t"] = _text
    return env.from_string(_INDEX), env.from_string(_BOOT)


def _shared(run: RunRecord, m: overview.Matrix) -> dict[str, Any]:
    """What both templates are given."""
    return {"run": run, "m": m, "css": _CSS, "labels": overview.LABEL, "href": _href, "full": overview.full_error}


def _index(run: RunRecord, m: overview.Matrix) -> str:
    spans = {ram: sum(1 for c in m.columns if c.boot.ram_mb == ram) for ram in m.ram_sizes}
    cells = [Markup("".join(_cell(row, m.columns[i], cell) for i, cell in enumerate(row.cells))) for row in m.rows]
    return _templates()[0].render(
        _shared(run, m),
        status=overview.status(run),
        verdict=overview.verdict(run.boots),
        code=exit_code(run.boots),
        counts=outcome_counts(run.boots),
        boot_errors=sum(1 for b in run.boots if b.error),
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


def _boot(run: RunRecord, m: overview.Matrix, c: overview.Column) -> str:
    return _templates()[1].render(
        _shared(run, m),
        c=c,
        b=c.boot,
        prev=m.columns[c.index - 1] if c.index > 0 else None,
        next=m.columns[c.index + 1] if c.index + 1 < len(m.columns) else None,
        index=overview.HTML_FILE,
        pretty=_pretty,
        compact=_json_or_blank,
    )


def pages(run: RunRecord) -> dict[str, str]:
    """report.html and every boot's page, by path relative to the run directory."""
    m = overview.matrix(run)
    out = {overview.HTML_FILE: _index(run, m)} | {boot_page(c): _boot(run, m, c) for c in m.columns}
    return {path: encodable(text) for path, text in out.items()}


def html(run: RunRecord) -> str:
    """report.html alone: status, counts, the kernel x case matrix, legend and boots."""
    return encodable(_index(run, overview.matrix(run)))
