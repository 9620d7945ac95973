"""report.html: one self-contained page (inline CSS, a line of inline JS, no external URLs) with the
run's status, counts, boots, the kernel x case matrix and every cell's evidence.

It can be archived as a CI artifact and opened offline; it links only to the serial logs that sit
next to it in the run directory. jinja2 autoescapes it: messages, observations and even kernel
releases come from the guest.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from harness import overview
from harness.jsondoc import encodable
from harness.results import Outcome, RunRecord, exit_code, outcome_counts

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


@dataclass(frozen=True)
class _HtmlCell:
    cls: str
    href: str
    title: str
    label: str


def _html_cell(row: overview.Row, column: overview.Column, cell: overview.Cell) -> _HtmlCell:
    group = " g" if column.group_start else ""
    r = cell.result
    if r is None:
        # Still a link, to the boot and its error: every cell leads to why it shows what it shows.
        why = f"boot error: {column.boot.error}" if column.boot.error else "this boot has no result for this row"
        return _HtmlCell("missing" + group, f"#{column.anchor}", _short(why), "·")
    title = f"{r.outcome.value}: {r.message}" if r.message else r.outcome.value
    cls = f"o-{r.outcome.value}{group}"
    label = overview.LABEL[r.outcome]
    if cell.changed_from is not None:
        cls += " changed"
        label = "Δ " + label
        title = f"behaviour changed since {cell.changed_from.name} ({cell.changed_from.boot.boot_id}); {title}"
    return _HtmlCell(cls, f"#e{column.index}-{row.index}", _short(title), label)


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
.o-pass{background:#c9ecc9}.o-deviation{background:#f4a0a0}.o-not_applicable{background:#e8e8e8;color:#555}
.o-oom_killed{background:#f7c27f}.o-panic{background:#8e1b4f;color:#fff}.o-timeout{background:#f3e27a}
.o-infra_error{background:#a8b6d8}.missing{background:#fff;color:#999}
table.matrix td.o,table.matrix td.missing{padding:0;text-align:center}
table.matrix td a{display:block;padding:1px 4px;color:inherit;text-decoration:none;min-width:3em}
table.matrix td.changed a{outline:3px solid #111;outline-offset:-3px;font-weight:bold}
table.matrix thead th{position:sticky;top:0;background:#f6f6f6;z-index:1}
table.matrix thead tr.ram th{position:static}
table.matrix .g{border-left:3px solid #444}
table.matrix th.col a{color:inherit;text-decoration:none}
.ver{font-weight:bold}.rel,.bid{font-size:85%;color:#555}
.berr{display:block;margin-top:2px;padding:0 3px;font-size:85%}
body.only tbody tr:not(.x){display:none}
.ev{border:1px solid #ddd;margin:.6em 0;padding:.3em .8em}
.ev:target,tr:target{outline:3px solid #0366d6}
.ev h4{margin:.2em 0}
.ev dl{display:grid;grid-template-columns:max-content auto;gap:0 1em;margin:.3em 0}
.ev dt{font-weight:bold}.ev dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.ev pre{background:#f7f7f7;padding:.4em;max-height:24em;overflow:auto;margin:.3em 0}
.chg{font-weight:bold}
td.err{white-space:pre-wrap;max-width:40em}
table.boots td{white-space:nowrap}table.boots td.err{white-space:pre-wrap}
"""

_TEMPLATE = """<!DOCTYPE html>
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

<h2>Outcomes</h2>
<table class="counts" id="counts">
<tr>{% for o in outcomes %}<th class="o-{{ o.value }}">{{ o.value }}</th>{% endfor %}<th>boot errors</th></tr>
<tr>{% for o in outcomes %}<td>{{ counts[o.value] }}</td>{% endfor %}<td>{{ boot_errors }}</td></tr>
</table>

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
<tr id="{{ c.anchor }}"><td>{{ b.boot_id }}</td><td>{{ c.name }}</td><td>{{ c.release }}</td>
  <td>{{ b.kernel.package if b.kernel and b.kernel.package else "" }}</td>
  <td>{{ b.ram_mb }} MiB</td><td>{{ b.accelerator }}</td><td>{{ b.qemu_version }}</td>
  <td>{{ "%d kB" % b.memtotal_kb if b.memtotal_kb is not none else "" }}</td>
  <td>{% for k in ("marker", "ssh", "probe") %}{{ "%.1fs" % b.timings[k] if k in b.timings else "-" }}
    {{- " / " if not loop.last else "" }}{% endfor %}</td>
  <td>{{ b.reboots }}</td><td>{{ b.retries }}</td>
  <td>{% if b.serial_log %}<a href="{{ href(b.serial_log) }}">{{ b.serial_log }}</a>{% endif %}</td>
  <td class="err{{ ' o-infra_error' if b.error else '' }}">{{ b.error }}</td></tr>
{% endfor %}
</table>

<h2>Matrix</h2>
<p>One column per boot, oldest kernel first{{ ", grouped by RAM" if m.ram_sizes | length > 1 else "" }};
every cell links to its evidence below.
<label><input type="checkbox" id="only" onchange="document.body.classList.toggle('only', this.checked)">
only rows that change or fail</label></p>
<table class="matrix" id="matrix">
<thead>
{% if m.ram_sizes | length > 1 %}
<tr class="ram"><th colspan="3"></th>
{%- for ram in m.ram_sizes %}<th class="g" colspan="{{ spans[ram] }}">{{ ram }} MiB</th>{% endfor %}</tr>
{% endif %}
<tr><th>case</th><th>memlock</th><th>user</th>
{% for c in m.columns %}
<th class="col{{ ' g' if c.group_start else '' }}" data-boot="{{ c.boot.boot_id }}"><a href="#{{ c.anchor }}">
  <span class="ver">{{ c.name }}</span><br><span class="rel">{{ c.release }}</span><br>
  <span class="bid">{{ c.boot.boot_id }}</span><br><span class="rel">{{ c.boot.ram_mb }} MiB</span></a>
  {%- if c.boot.error %}<a class="berr o-infra_error" href="#{{ c.anchor }}" title="{{ short(c.boot.error) }}">
  boot error</a>{% endif %}</th>
{% endfor %}
</tr>
</thead>
<tbody>
{% for row in m.rows %}
<tr id="r{{ row.index }}"{% if row.interesting %} class="x"{% endif %}>
  {#- #}<th>{{ row.case }}</th><td>{{ row.memlock }}</td><td>{{ row.user }}</td>
{%- for h in cells[row.index] %}<td class="o {{ h.cls }}"><a href="{{ h.href }}" title="{{ h.title }}">
  {{- h.label }}</a></td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>

<h2>Evidence</h2>
{% for c in m.columns %}
<h3>{{ c.boot.boot_id }}: {{ c.name }} ({{ c.release }}, {{ c.boot.ram_mb }} MiB)</h3>
{% for row in m.rows %}
{% set cell = row.cells[c.index] %}
{% set r = cell.result %}
{% if r is not none %}
<div class="ev" id="e{{ c.index }}-{{ row.index }}">
<h4><span class="cell o-{{ r.outcome.value }}">{{ labels[r.outcome] }}</span> {{ row.name }} on {{ c.boot.boot_id }}
  <a href="#r{{ row.index }}">matrix row</a></h4>
{% if cell.changed_from is not none %}
<p class="chg">Behaviour changed: {{ cell.changed_from.name }} ({{ cell.changed_from.boot.boot_id }})
  behaved otherwise.</p>
{% endif %}
<dl><dt>outcome</dt><dd>{{ r.outcome.value }}</dd><dt>message</dt><dd>{{ r.message | t }}</dd>
<dt>expected</dt><dd>{{ compact(r.expected) | t }}</dd><dt>citation</dt><dd>{{ r.citation | t }}</dd>
<dt>fingerprint</dt><dd>{{ r.fingerprint | t }}</dd><dt>duration</dt><dd>{{ "%.3f" % r.duration_s }} s</dd>
<dt>serial log</dt><dd>{% if c.boot.serial_log %}<a href="{{ href(c.boot.serial_log) }}">{{ c.boot.serial_log }}</a>
  {%- else %}none{% endif %}</dd></dl>
<pre>{{ pretty(r.observation) | t }}</pre>
</div>
{% endif %}
{% endfor %}
{% endfor %}
</body>
</html>
"""


@functools.cache
def _template() -> jinja2.Template:
    # Autoescape on: messages, observations and even kernel releases come from the guest.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["t"] = _text
    return env.from_string(_TEMPLATE)


def html(run: RunRecord) -> str:
    """report.html: status, counts, boots, the kernel x case matrix, and every cell's evidence."""
    m = overview.matrix(run)
    spans = {ram: sum(1 for c in m.columns if c.boot.ram_mb == ram) for ram in m.ram_sizes}
    cells = [[_html_cell(row, m.columns[i], cell) for i, cell in enumerate(row.cells)] for row in m.rows]
    page = _template().render(
        run=run,
        m=m,
        css=_CSS,
        status=overview.status(run),
        verdict=overview.verdict(run.boots),
        code=exit_code(run.boots),
        counts=outcome_counts(run.boots),
        boot_errors=sum(1 for b in run.boots if b.error),
        outcomes=list(Outcome),
        labels=overview.LABEL,
        meanings=overview.MEANING,
        spans=spans,
        cells=cells,
        href=_href,
        short=_short,
        pretty=_pretty,
        compact=_json_or_blank,
    )
    return encodable(page)
