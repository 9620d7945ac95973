"""A boot's page, boot/b<N>.html, and what report.html shares with it: text and links made safe,
JSON made compact, one jinja2 environment (autoescaping: messages, observations and even kernel
releases come from the guest).

The page leads with the boot's findings and its behaviour changes (what changed, before → after);
then the evidence of each in full, the observation on demand; then every other result, a line per
case and verdict, so a page stays small however much passed. What repeats is kept once: a result
that says what the same row said on the kernels before it (same verdict and fingerprint) is one
line linking to the first of them, where its evidence is in full, and every page takes its style
from one boot/style.css. Every result has its place, under the matrix row's id.
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
from harness.results import Outcome

BOOT_DIR = "boot"
STYLE = f"{BOOT_DIR}/style.css"

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
<link rel="stylesheet" href="style.css">
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
{% if evidence %}<h2 id="evidence">Evidence of its findings and changes</h2>
{% if repeated %}<p class="sub">What a row said on the kernels before this one too (verdict and fingerprint alike) is a
line naming the first of them, where its evidence is in full; every observation of this boot is in results.json.gz.</p>
{% endif %}{% endif %}
{% for row, same in evidence %}
{% set cell = row.cells[c.index] %}
{% set r = cell.result %}
{% if same %}
{% set first, rows = same %}
<div class="ev q"><span class="cell o-{{ r.outcome.value }}">{{ labels[r.outcome] }}</span> {{ row.case }}
  {% for row in rows %}<a id="r{{ row.index }}" href="../{{ index }}#r{{ row.index }}">
  {{- row.memlock }}/{{ row.user }}</a>{{ ", " if not loop.last }}{% endfor %}
  {{- " as on " }}<a href="{{ first.anchor }}.html#r{{ rows[0].index }}">{{ first.name }}</a>:
  {{ head(r.message) | t }}</div>
{% else %}
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
{% endif %}
{% endfor %}
<h2 id="others">Every other result ({{ quiet }})</h2>
<p class="sub">A line per case and verdict, naming the runs (limit/user) that gave it; results.json.gz has
every observation in full.</p>
{% for case, lines in others %}
<div class="oc"><b>{{ case }}</b>
{% for outcome, says, rows in lines %}
<div class="q"><span class="cell {{ 'missing' if outcome is none else 'o-' ~ outcome.value }}">
  {{- "·" if outcome is none else labels[outcome] }}</span>
  {% for row in rows %}<a id="r{{ row.index }}" href="../{{ index }}#r{{ row.index }}">
  {{- row.memlock }}/{{ row.user }}</a>{{ ", " if not loop.last }}{% endfor %}: {{ says | t }}</div>
{% endfor %}
</div>
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


Copies = dict[tuple[int, int], overview.Column]


def copies(m: overview.Matrix) -> Copies:
    """(row, column) → the first column of the run of kernels before it (same RAM) whose result in
    that row says the same: verdict, message, known reason and fingerprint. Only there is it in full.
    A boot that did not answer the row is passed over, as the matrix's changes pass it over."""
    first: Copies = {}
    for row in m.rows:
        streak: tuple[tuple[object, ...], overview.Column] | None = None
        for c in m.columns:
            r = row.cells[c.index].result
            if c.group_start:
                streak = None
            if r is None:
                continue
            if not r.fingerprint or overview.did_not_start(c.boot):
                streak = None
                continue
            key = (r.outcome, r.fingerprint, r.message, r.known)
            if streak is not None and streak[0] == key:
                first[(row.index, c.index)] = streak[1]
            else:
                streak = (key, c)
    return first


def _quiet_lines(rows: list[overview.Row], c: overview.Column, why_missing: str) -> list[tuple[str, list[Any]]]:
    """The quiet results, a line per case and (verdict, what it said) in order of first appearance."""
    lines: dict[str, dict[tuple[Outcome | None, str], list[overview.Row]]] = {}
    for row in rows:
        r = row.cells[c.index].result
        said = (None, why_missing) if r is None else (r.outcome, overview.first_line(r.message))
        lines.setdefault(row.case, {}).setdefault(said, []).append(row)
    return [(case, [(o, says, rs) for (o, says), rs in said.items()]) for case, said in lines.items()]


def _in_full_or_same(
    rows: list[overview.Row], c: overview.Column, repeats: Copies
) -> list[tuple[overview.Row, tuple[overview.Column, list[overview.Row]] | None]]:
    """The evidence rows in order, each in full (None) or, where `repeats` names its first copy, as
    one line with the rows next to it that say the same and have the same first copy."""
    out: list[tuple[overview.Row, tuple[overview.Column, list[overview.Row]] | None]] = []
    for row in rows:
        first = repeats.get((row.index, c.index))
        line = out[-1][1] if out else None
        if first is not None and line is not None and line[0] is first and _says(line[1][0], c) == _says(row, c):
            line[1].append(row)
        else:
            out.append((row, None if first is None else (first, [row])))
    return out


def _says(row: overview.Row, c: overview.Column) -> tuple[str, Outcome | None, str]:
    r = row.cells[c.index].result
    return (row.case, None, "") if r is None else (row.case, r.outcome, r.message)


def page(
    m: overview.Matrix, c: overview.Column, found: list[findings.Finding], shared: dict[str, Any], repeats: Copies
) -> str:
    """Boot `c`'s page; `shared` is what report.html's template is given too (the run, the matrix);
    `repeats` is `copies(m)`."""
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
    shown = _in_full_or_same(evidence, c, repeats)
    why_missing = "No result: " + (
        "the boot stopped before this case (its error is above)" if c.boot.error else "this boot did not run this case"
    )
    return _template().render(
        shared,
        tally=findings.tally(found, c),
        unstarted=not started,
        mine=[(f, seen) for f in found if (seen := f.on(c))],
        changes=changes,
        evidence=shown,
        repeated=any(same for _, same in shown),
        quiet=len(others),
        others=_quiet_lines(others, c, why_missing),
        describe=findings.describe,
        changed=findings.cell_change,
        head=overview.first_line,
        c=c,
        b=c.boot,
        prev=m.columns[c.index - 1] if c.index > 0 else None,
        next=m.columns[c.index + 1] if c.index + 1 < len(m.columns) else None,
        index=overview.HTML_FILE,
        pretty=_pretty,
        compact=compact,
    )
