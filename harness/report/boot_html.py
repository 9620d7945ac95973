"""A boot's page, boot/b<N>.html, and what report.html shares with it: text and links made safe,
JSON made compact, one jinja2 environment (autoescaping: messages, observations and even kernel
releases come from the guest).

The page leads with the boot's findings and its behaviour changes (what changed, before → after);
then the evidence of each in full, the observation on demand; then every other result in one line,
so a page stays small however much passed. Every result has its place, under the matrix row's id.
"""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from harness.report import findings, overview

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


def compact(value: Any) -> str:
    return _JSON.encode(value) if value else ""


def text(value: object) -> Markup:
    """`value` escaped for element content, where quotes need no escaping.

    Autoescape turns every `"` into `&#34;`, and JSON evidence is full of them: on a 10-kernel run
    that is a third of the page. Only text between tags may use this, never an attribute value.
    """
    return Markup(str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def href(path: str) -> str:
    # Percent-encoding ':' makes any "scheme:" a harmless relative path.
    return quote(path, safe="/")


def boot_page(column: overview.Column) -> str:
    """The boot page's path, relative to the run directory."""
    return f"{BOOT_DIR}/{column.anchor}.html"


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
<h2 id="findings">Findings on this boot: {{ tally }}</h2>
{% if unstarted %}<p>None: the boot did not start (its error is above), so none of its cases ran.</p>
{% elif not mine %}<p>None: every case that answered passed, or does not apply.</p>{% endif %}
{% for f, seen in mine %}
<div class="fd {{ 'known' if f.known else 'new' }}">
<h3><span class="tag">{{ "known" if f.known else "NEW" }}</span> <span class="cell o-{{ f.outcome.value }}">
  {{- f.outcome.value }}</span> {{ f.case }} <a class="sub" href="../{{ index }}#{{ f.anchor }}">across the run</a></h3>
<dl><dt>observed</dt><dd><span class="msg">{{ full(seen[0].result.message) | t }}</span></dd>
{% if f.known %}<dt>known</dt><dd>{{ f.known | t }}</dd>{% endif %}
<dt>limit/user</dt><dd>
  {%- for s in seen %}<a href="#r{{ s.row.index }}">{{ s.run }}</a>{{ ", " if not loop.last }}{% endfor %}</dd></dl>
</div>
{% endfor %}
{% if changes %}
<h2 id="changes">Behaviour changes since the kernel before ({{ changes | length }})</h2>
<ul>
{% for row, cell, what in changes %}
<li><a href="#r{{ row.index }}">{{ row.name }}</a> since <a href="{{ cell.changed_from.anchor }}.html#r{{ row.index }}">
  {{- cell.changed_from.name }}</a>: {{ describe(what, 2000) | t }}</li>
{% endfor %}
</ul>
{% endif %}
{% if evidence %}<h2 id="evidence">Evidence of its findings and changes</h2>{% endif %}
{% for row in evidence %}
{% set cell = row.cells[c.index] %}
{% set r = cell.result %}
<div class="ev" id="r{{ row.index }}">
<h4><span class="cell o-{{ r.outcome.value }}">{{ labels[r.outcome] }}</span> {{ row.name }} on {{ b.boot_id }}
  <a href="../{{ index }}#r{{ row.index }}">matrix row</a></h4>
{% if cell.changed_from is not none %}
<p class="chg">Behaviour changed: <a href="{{ cell.changed_from.anchor }}.html#r{{ row.index }}">
  {{- cell.changed_from.name }} ({{ cell.changed_from.boot.boot_id }})</a> behaved otherwise:
  {{ describe(changed(row, cell), 2000) | t }}</p>
{% endif %}
<dl><dt>outcome</dt><dd>{{ r.outcome.value }}</dd><dt>message</dt><dd>{{ full(r.message) | t }}</dd>
<dt>expected</dt><dd>{{ compact(r.expected) | t }}</dd><dt>citation</dt><dd>{{ r.citation | t }}</dd>
{% if r.known %}<dt>known</dt><dd>{{ r.known | t }}</dd>{% endif %}
<dt>fingerprint</dt><dd>{{ r.fingerprint | t }}</dd><dt>duration</dt><dd>{{ "%.3f" % r.duration_s }} s</dd></dl>
<details><summary>observation</summary><pre>{{ pretty(r.observation) | t }}</pre></details>
</div>
{% endfor %}
<h2 id="others">Every other result ({{ others | length }})</h2>
<p class="sub">One line each, as the verdict said it; results.json has every observation in full.</p>
{% for row in others %}
{% set r = row.cells[c.index].result %}
<div class="ev q" id="r{{ row.index }}"><span class="cell {{ 'missing' if r is none else 'o-' ~ r.outcome.value }}">
  {{- "·" if r is none else labels[r.outcome] }}</span> <a href="../{{ index }}#r{{ row.index }}">{{ row.name }}</a>
  {% if r is none %}No result: {{ "the boot stopped before this case (its error is above)" if b.error
  else "this boot did not run this case" }}.{% else %}{{ first(r.message) | t }}{% endif %}</div>
{% endfor %}
</body>
</html>
"""


@functools.cache
def environment() -> jinja2.Environment:
    # Autoescape on: messages, observations and even kernel releases come from the guest.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["t"] = text
    return env


@functools.cache
def _template() -> jinja2.Template:
    return environment().from_string(_BOOT)


def page(m: overview.Matrix, c: overview.Column, found: list[findings.Finding], shared: dict[str, Any]) -> str:
    """Boot `c`'s page; `shared` is what report.html's template is given too (the run, the matrix, the CSS)."""
    # In full only what asks for attention; what passed (or is n/a) as it did before is one line each.
    started = not overview.did_not_start(c.boot)
    evidence: list[overview.Row] = []
    others: list[overview.Row] = []
    for row in m.rows:
        cell = row.cells[c.index]
        r = cell.result
        attention = r is not None and (r.outcome not in overview.QUIET or cell.changed_from is not None)
        (evidence if started and attention else others).append(row)
    changes = [
        (row, cell, findings.cell_change(row, cell)) for row in evidence if (cell := row.cells[c.index]).changed_from
    ]
    return _template().render(
        shared,
        tally=findings.tally(found, c),
        unstarted=not started,
        mine=[(f, seen) for f in found if (seen := f.on(c))],
        changes=changes,
        evidence=evidence,
        others=others,
        describe=findings.describe,
        changed=findings.cell_change,
        first=overview.first_line,
        c=c,
        b=c.boot,
        prev=m.columns[c.index - 1] if c.index > 0 else None,
        next=m.columns[c.index + 1] if c.index + 1 < len(m.columns) else None,
        index=overview.HTML_FILE,
        pretty=_pretty,
        compact=compact,
    )
