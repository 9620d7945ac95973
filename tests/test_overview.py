"""report.html and summary.md (overview, report_html, summary_md): the matrix, its evidence, escaping of guest
text, and what a real browser makes of it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from harness import overview, report_html, rundir, summary_md
from harness.results import BootResult, CaseResult, KernelInfo, Outcome, RunRecord

RUN_ID = "20261126T185300Z-ab12"
HOSTILE = "<script>alert(1)</script>"


def kernel(label: str, version: str, release: str) -> KernelInfo:
    return KernelInfo(label, release, f"linux-image-{release}", version, "ab" * 32, f"debian:{label}")


BULLSEYE = kernel("bullseye", "5.10.223-1", "5.10.0-32-amd64")
BOOKWORM = kernel("bookworm", "6.1.119-1", "6.1.0-28-amd64")
TRIXIE = kernel("trixie", "6.12.95-1", "6.12.95+deb13-amd64")


def result(boot_id: str, row: Row, **kw: Any) -> CaseResult:
    case, outcome, fingerprint, memlock, user = row
    kw.setdefault("observation", {"case": case, "errno": None, "locked_kb": 64, "note": "quote \" and 'single'"})
    return CaseResult(boot_id, case, memlock, user, outcome, outcome.value, fingerprint=fingerprint, **kw)


Row = tuple[str, Outcome, str, str, str]  # case, outcome, fingerprint, memlock, user

# Rows, in the order the plan runs them. lock_over_limit is the one behaviour change: trixie (6.12)
# maps over the limit where bookworm (6.1) refused. Every outcome appears somewhere.
R_BASIC: Row = ("lock_basic", Outcome.PASS, '{"result":"ok"}', "64K", "user")
R_BASIC_ROOT: Row = ("lock_basic", Outcome.PASS, '{"result":"ok"}', "unlimited", "root")
R_OVER_OLD: Row = ("lock_over_limit", Outcome.PASS, '{"result":"EAGAIN"}', "64K", "user")
R_OVER_NEW: Row = ("lock_over_limit", Outcome.DEVIATION, '{"result":"ok"}', "64K", "user")
R_ROOT: Row = ("lock_as_root", Outcome.NOT_APPLICABLE, "", "64K", "user")
R_OOM: Row = ("lock_all_ram", Outcome.OOM_KILLED, '{"oom_killed":true}', "64K", "user")
R_PANIC: Row = ("lock_fault", Outcome.PANIC, '{"status":"panic"}', "64K", "user")
R_TIMEOUT: Row = ("lock_huge", Outcome.TIMEOUT, "", "64K", "user")
R_INFRA: Row = ("lock_ssh", Outcome.INFRA_ERROR, "", "64K", "user")
OLD_ROWS = [R_BASIC, R_BASIC_ROOT, R_OVER_OLD, R_ROOT, R_OOM, R_PANIC, R_TIMEOUT, R_INFRA]

ROW_NAMES = [
    "lock_basic[memlock=64K,user=user]",
    "lock_basic[memlock=unlimited,user=root]",
    "lock_over_limit[memlock=64K,user=user]",
    "lock_as_root[memlock=64K,user=user]",
    "lock_all_ram[memlock=64K,user=user]",
    "lock_fault[memlock=64K,user=user]",
    "lock_huge[memlock=64K,user=user]",
    "lock_ssh[memlock=64K,user=user]",
]
# Oldest kernel first, the unresolved kernel last, then the next RAM size.
COLUMNS = ["bullseye-256M", "bookworm-256M", "trixie-256M", "broken-256M", "bookworm-1024M"]
TRIXIE_ERROR = "SSH connection lost after lock_fault <b>bold</b>"
DEVIATION_MESSAGE = f"expected EAGAIN, observed success {HOSTILE}"


def boot(boot_id: str, k: KernelInfo | None, ram: int, rows: list[Row], **kw: Any) -> BootResult:
    kw.setdefault("serial_log", f"serial/{boot_id}.log")
    cases = [result(boot_id, row) for row in rows]
    for i, row in enumerate(rows):
        if row is R_OVER_NEW:
            cases[i] = result(
                boot_id,
                row,
                observation={"case": "lock_over_limit", "stdout": "</pre><script>alert(2)</script>"},
                expected={"result": "EAGAIN"},
                citation="mm/mlock.c: can_do_mlock() & friends",
            )
            cases[i] = dataclasses.replace(cases[i], message=DEVIATION_MESSAGE)
    return BootResult(boot_id, k, ram, cases=cases, **kw)


def sample_run(**kw: Any) -> RunRecord:
    boots = [
        # Out of version order on purpose: the matrix sorts.
        boot(
            "trixie-256M", TRIXIE, 256, [R_BASIC, R_BASIC_ROOT, R_OVER_NEW, R_ROOT, R_OOM, R_PANIC], error=TRIXIE_ERROR
        ),
        boot("broken-256M", None, 256, [], error="<img src=x onerror=alert(3)>", serial_log="javascript:alert(4)"),
        # The same behaviour at another RAM size is no change: the 1024M column has nothing before it.
        boot("bookworm-1024M", BOOKWORM, 1024, [R_BASIC, R_OVER_NEW]),
        boot("bullseye-256M", BULLSEYE, 256, OLD_ROWS),
        boot("bookworm-256M", BOOKWORM, 256, OLD_ROWS),
    ]
    kw.setdefault("finished", "2026-11-26T19:10:42Z")
    kw.setdefault("interrupted", False)
    return RunRecord(RUN_ID, "2026-11-26T18:53:00Z", boots=boots, **kw)


# --- a small DOM, from our HTML or from what chromium dumps ------------------------------------


@dataclasses.dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = dataclasses.field(default_factory=list)

    def iter(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and (cls is None or cls in child.classes):
                    found.append(child)
                found += child.iter(tag, cls)
        return found

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        matches = [n for n in self.iter(tag, cls) if all(n.attrs.get(k) == v for k, v in attrs.items())]
        assert len(matches) == 1, f"{len(matches)} <{tag} class={cls} {attrs}>"
        return matches[0]

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)


class _TreeBuilder(HTMLParser):
    VOID = {"meta", "br", "input", "link", "img", "hr", "wbr", "col", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def matrix_header(doc: Node) -> list[Node]:
    return doc.one("table", id="matrix").iter("th", "col")


def matrix_rows(doc: Node) -> list[Node]:
    return doc.one("table", id="matrix").one("tbody").iter("tr")


def kernel_cells(row: Node) -> list[Node]:
    return [td for td in row.iter("td") if "o" in td.classes or "missing" in td.classes]


def check_matrix(doc: Node) -> None:
    """What the matrix must look like, from our own HTML and from a browser's DOM alike."""
    assert [th.attrs["data-boot"] for th in matrix_header(doc)] == COLUMNS
    versions = [th.one("span", "ver").text for th in matrix_header(doc)]
    assert versions == ["5.10.223-1", "6.1.119-1", "6.12.95-1", "unresolved kernel", "6.1.119-1"]
    ram = doc.one("tr", "ram").iter("th", "g")
    assert [(th.text, th.attrs["colspan"]) for th in ram] == [("256 MiB", "4"), ("1024 MiB", "1")]

    rows = matrix_rows(doc)
    names = [f"{r.iter('th')[0].text}[memlock={r.iter('td')[0].text},user={r.iter('td')[1].text}]" for r in rows]
    assert names == ROW_NAMES
    grid = [kernel_cells(r) for r in rows]
    assert all(len(cells) == len(COLUMNS) for cells in grid)

    changed = [(i, j) for i, cells in enumerate(grid) for j, td in enumerate(cells) if "changed" in td.classes]
    assert changed == [(2, 2)], "only lock_over_limit on trixie (6.1 -> 6.12) changed"
    cell = grid[2][2]
    assert "o-deviation" in cell.classes
    link = cell.one("a")
    assert link.text.startswith("Δ") and "changed since 6.1.119-1" in link.attrs["title"]

    # Every outcome is shown with its class; missing results are the boots that stopped.
    for outcome in Outcome:
        assert any(f"o-{outcome.value}" in td.classes for cells in grid for td in cells), outcome
    assert "missing" in grid[6][2].classes and "missing" in grid[0][3].classes
    assert "pass" in grid[0][0].one("a").attrs["title"]

    # Every cell is a link to an element of this page: the evidence, or the boot with its error.
    ids = {n.attrs["id"] for n in doc.iter() if "id" in n.attrs}
    for cells in grid:
        for td in cells:
            href = td.one("a").attrs["href"]
            assert href.startswith("#") and href[1:] in ids, href
    evidence = doc.one("div", id=grid[2][2].one("a").attrs["href"][1:])
    assert "lock_over_limit[memlock=64K,user=user] on trixie-256M" in evidence.one("h4").text
    assert "behaved otherwise" in evidence.one("p", "chg").text
    assert evidence.one("a", href="serial/trixie-256M.log")
    assert HOSTILE in evidence.text  # shown as text, not run
    assert doc.one("tr", id=grid[6][2].one("a").attrs["href"][1:]).text.count(TRIXIE_ERROR) == 1

    # Boot errors per column.
    errors = [th.iter("a", "berr") for th in matrix_header(doc)]
    assert [len(e) for e in errors] == [0, 0, 1, 1, 0]
    assert errors[2][0].attrs["title"] == TRIXIE_ERROR

    # Nothing from the guest became markup or script.
    assert not doc.iter("script") and not doc.iter("img") and all("bold" not in b.text for b in doc.iter("b"))
    handlers = [(n.tag, k) for n in doc.iter() for k in n.attrs if k.startswith("on")]
    assert handlers == [("input", "onchange")]  # the "only rows that change or fail" toggle
    assert all(
        not re.match(r"^[a-z][a-z0-9+.-]*:", n.attrs.get("href", "") + n.attrs.get("src", ""), re.I) for n in doc.iter()
    ), "no external or javascript: URL"


# --- report.html -------------------------------------------------------------------------------


def test_html_matrix() -> None:
    check_matrix(parse(report_html.html(sample_run())))


def test_html_evidence_holds_the_whole_record() -> None:
    run = sample_run()
    doc = parse(report_html.html(run))
    deviation = run.boots[0].cases[2]
    evidence = doc.one("div", id="e2-2")  # trixie is column 2, lock_over_limit row 2
    fields = dict(zip([dt.text for dt in evidence.iter("dt")], [dd.text for dd in evidence.iter("dd")], strict=True))
    assert fields == {
        "outcome": "deviation",
        "message": deviation.message,
        "expected": '{"result": "EAGAIN"}',
        "citation": "mm/mlock.c: can_do_mlock() & friends",
        "fingerprint": '{"result":"ok"}',
        "duration": "0.000 s",
        "serial log": "serial/trixie-256M.log",
    }
    assert json.loads(evidence.one("pre").text) == deviation.observation


def test_html_escapes_guest_text() -> None:
    page = report_html.html(sample_run())
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(2)" in page
    assert "<img" not in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "<b>bold" not in page
    # Percent-encoded, "javascript:" is only a relative file name.
    assert 'href="javascript:' not in page and 'href="javascript%3Aalert%284%29"' in page


def test_html_header_counts_and_status() -> None:
    run = sample_run()
    doc = parse(report_html.html(run))
    assert doc.one("title").text == f"Run {RUN_ID}"
    assert doc.one("h1").text == f"Run {RUN_ID}"
    status = doc.one("p", id="status").text
    assert status.startswith("complete;") and "infrastructure problems" in status
    counts = doc.one("table", id="counts").iter("tr")
    headers = [th.text for th in counts[0].iter("th")]
    values = [td.text for td in counts[1].iter("td")]
    assert dict(zip(headers, values, strict=True)) == {
        "pass": "9",
        "deviation": "2",
        "not_applicable": "3",
        "oom_killed": "3",
        "panic": "3",
        "timeout": "2",
        "infra_error": "2",
        "boot errors": "2",
    }
    legend = doc.one("ul", id="legend").text
    assert all(o.value in legend for o in Outcome) and "changed" in legend

    interrupted = parse(report_html.html(sample_run(finished=None, interrupted=True)))
    assert interrupted.one("p", id="status").text.startswith("interrupted")
    running = parse(report_html.html(sample_run(finished=None)))
    assert running.one("p", id="status").text.startswith("incomplete")


def test_html_ids_are_safe_and_unique() -> None:
    doc = parse(report_html.html(sample_run()))
    ids = [n.attrs["id"] for n in doc.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", i) for i in ids), ids


def test_html_change_is_seen_across_a_boot_without_an_answer() -> None:
    """A kernel in between that gave no answer for the row does not hide the change."""
    run = sample_run()
    middle = next(b for b in run.boots if b.boot_id == "bookworm-256M")
    middle.cases = [c for c in middle.cases if c.case != "lock_over_limit"]
    doc = parse(report_html.html(run))
    grid = [kernel_cells(r) for r in matrix_rows(doc)]
    assert "missing" in grid[2][1].classes
    assert "changed" in grid[2][2].classes
    assert "changed since 5.10.223-1" in grid[2][2].one("a").attrs["title"]


def test_html_single_ram_has_no_group_row() -> None:
    run = sample_run()
    run.boots = [b for b in run.boots if b.ram_mb == 256]
    doc = parse(report_html.html(run))
    assert not doc.iter("tr", "ram")
    assert len(matrix_header(doc)) == 4


def test_html_empty_run() -> None:
    doc = parse(report_html.html(RunRecord(RUN_ID, "2026-11-26T18:53:00Z", None, False, [])))
    assert not matrix_header(doc) and not matrix_rows(doc)


def test_write_puts_both_files_in_the_run_dir(tmp_path: Path) -> None:
    run = sample_run()
    rundir.write_views(tmp_path, run)
    assert overview.HTML_FILE == "report.html" and overview.SUMMARY_FILE == "summary.md"
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == report_html.html(run)
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == summary_md.markdown(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.md"]  # no temporary left


def test_write_survives_undecodable_guest_output(tmp_path: Path) -> None:
    """Serial output decoded with surrogateescape keeps lone surrogates; UTF-8 files cannot hold them."""
    run = sample_run()
    trixie = run.boots[0]
    trixie.cases[2] = dataclasses.replace(
        trixie.cases[2], message="bad byte \udcff here", observation={"raw": "\ud800"}
    )
    trixie.error = "lost \udc80"
    rundir.write_views(tmp_path, run)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "bad byte \ufffd here" in page and "lost \ufffd" in page
    assert "lost \ufffd" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def big_run(kernels: int = 10, rows: int = 490) -> RunRecord:
    """About the size of a real 10-kernel run: ~4900 results with real-sized observations."""
    observation = {f"field_{i}": (None if i % 3 else 123456) for i in range(30)}
    observation["calls"] = [{"call": "mmap", "args": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED len=32768", "ret": 0}] * 2
    observation["smaps_vmflags"] = "rd wr mr mw me lo ac sd"
    boots = []
    for k in range(kernels):
        info = kernel(f"k{k}", f"{5 + k // 4}.{k}.{10 + k}-1", f"{5 + k // 4}.{k}.0-{k}-amd64")
        boot_id = f"k{k}-256M"
        cases = [
            CaseResult(
                boot_id,
                f"case_{r // 8}",
                ("default", "64K", "0", "unlimited")[r % 4],
                ("root", "user")[r // 4 % 2],
                Outcome.DEVIATION if (r + k) % 11 == 0 else Outcome.PASS,
                "as expected: result='ok', locked='all', residency='all', accounting_restored=True",
                observation,
                {"result": "ok", "locked": "all", "residency": "all"},
                "mmap(2) MAP_LOCKED (since 2.5.37): mark the mapping locked like mlock(2) and populate it",
                0.04,
                '{"applicable":true,"calls":["mmap:ok","munmap:ok"],"locked":"all","result":"ok","status":"ok",'
                f'"v":{(r + k // 3) % 5}}}',
            )  # fmt: skip
            for r in range(rows)
        ]
        boots.append(BootResult(boot_id, info, 256, serial_log=f"serial/{boot_id}.log", cases=cases))
    return RunRecord(RUN_ID, "2026-11-26T18:53:00Z", "2026-11-26T20:53:00Z", False, boots)


def test_html_size_and_time_of_a_ten_kernel_run() -> None:
    run = big_run()
    start = time.perf_counter()
    page = report_html.html(run)
    seconds = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    print(f"report.html for 4900 results: {size / 1e6:.1f} MB in {seconds:.2f} s")
    assert size < 15e6
    assert seconds < 10  # about 1 s on a laptop; generous for loaded CI machines
    assert page.count('class="ev"') == 4900


# --- report.html in a real browser -------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed; run `make test-deps` (it installs the test-only Debian packages)")


def dump_dom(page: Path, home: Path) -> str:
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home)}
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={home / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_html_in_headless_chromium(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "serial").mkdir(parents=True)
    run = sample_run()
    for b in run.boots:
        if b.serial_log.startswith("serial/"):
            (run_dir / b.serial_log).write_text("console\n")
    rundir.write_views(run_dir, run)
    dom = dump_dom(run_dir / overview.HTML_FILE, tmp_path / "home")
    doc = parse(dom)
    check_matrix(doc)
    # The serial log links the evidence gives resolve next to report.html.
    logs = {a.attrs["href"] for a in doc.iter("a") if a.attrs.get("href", "").startswith("serial/")}
    assert logs and all((run_dir / href).is_file() for href in logs)
    # The toggle is wired to a class the stylesheet knows.
    assert "body.only tbody tr:not(.x)" in doc.one("style").text
    interesting = [r for r in matrix_rows(doc) if "x" in r.classes]
    # Deviation, OOM kill, panic, timeout, infra error; not the rows that pass or are n/a everywhere alike.
    assert [r.attrs["id"] for r in interesting] == ["r2", "r4", "r5", "r6", "r7"]


# --- summary.md --------------------------------------------------------------------------------


def render(md: str) -> str:
    """GitHub-like rendering (tables on, raw HTML on) to see what a reader of the summary would get."""
    return MarkdownIt("commonmark").enable("table").enable("strikethrough").render(md)


def test_markdown_tables() -> None:
    md = summary_md.markdown(sample_run())
    doc = parse(render(md))
    assert doc.one("h2").text == f"Run {RUN_ID}"
    assert doc.iter("strong")[0].text == "complete"
    assert "infrastructure problems: some cases have no answer. Started 2026-11-26T18:53:00Z" in doc.text
    tables = doc.iter("table")
    assert len(tables) == 2
    head = [th.text for th in tables[0].iter("th")]
    assert head == ["pass", "deviation", "n/a", "oom", "panic", "timeout", "error", "boot errors"]
    assert [td.text for td in tables[0].iter("td")] == ["9", "2", "3", "3", "3", "2", "2", "2"]
    boots = tables[1].one("tbody").iter("tr")
    assert [tr.iter("td")[0].text for tr in boots] == COLUMNS
    trixie = [td.text for td in boots[2].iter("td")]
    assert trixie == [
        "trixie-256M", "6.12.95-1", "6.12.95+deb13-amd64", "256 MiB", "2", "1", "1", "1", "1", "0", "0", TRIXIE_ERROR,
    ]  # fmt: skip
    assert all(len(tr.iter("td")) == 12 for tr in boots)


def test_markdown_deviations_and_changes() -> None:
    md = summary_md.markdown(sample_run())
    doc = parse(render(md))
    text = doc.text
    assert "Deviations and other problems (12)" in text
    assert "lock_over_limit (2)" in text  # trixie-256M and bookworm-1024M
    assert f"on trixie-256M (6.12.95-1): deviation: expected EAGAIN, observed success {HOSTILE}" in text
    assert "Behaviour changes between adjacent kernel versions (1)" in text
    assert "lock_over_limit[memlock=64K,user=user]: 6.1.119-1 → 6.12.95-1 (256 MiB)" in text


def test_markdown_escapes_guest_text() -> None:
    run = sample_run()
    evil = "a | b\nnew line `code` *em* _u_ [x](https://evil.example) <b>bold</b> :smile: $x$ @all ![i](x.png) # h"
    trixie = run.boots[0]
    trixie.cases[2] = dataclasses.replace(trixie.cases[2], message=evil)
    trixie.error = "pipe | in error\n| --- |"
    md = summary_md.markdown(run)
    out = render(md)
    doc = parse(out)
    # Nothing became markup: no link, image, emphasis, code, raw HTML, or extra table cell.
    assert not doc.iter("a") and not doc.iter("img") and not doc.iter("em") and not doc.iter("code")
    assert not doc.iter("b") and not doc.iter("script") and not doc.iter("h1")
    assert [len(tr.iter("td")) for tr in doc.iter("table")[1].one("tbody").iter("tr")] == [12] * len(COLUMNS)
    assert "a | b new line `code` *em* _u_ [x](https://evil.example) <b>bold</b> :smile: $x$ @all" in doc.text
    assert "pipe | in error | --- |" in doc.text


@pytest.mark.parametrize("text", ["- item", "+ item", "# heading", "1. item", "7) item", "=== ", "> quote", "***"])
def test_markdown_escape_never_opens_a_block(text: str) -> None:
    out = parse(render(f"- {summary_md.md_escape(text)}"))
    assert out.one("li").text == text.strip() and not out.one("li").iter()
    assert summary_md.md_escape("x" * 400).endswith("x…") and len(summary_md.md_escape("x" * 400)) == 300


def test_markdown_caps_long_lists() -> None:
    run = big_run(kernels=10, rows=490)
    md = summary_md.markdown(run)
    deviations = sum(1 for b in run.boots for c in b.cases if c.outcome is Outcome.DEVIATION)
    assert deviations > summary_md.SUMMARY_MAX_ITEMS
    problems = md.split("### Deviations", 1)[1].split("### Behaviour", 1)[0]
    assert problems.count("\n- ") == summary_md.SUMMARY_MAX_ITEMS
    assert f"… {deviations - summary_md.SUMMARY_MAX_ITEMS} more, see report.html" in problems
    changes = md.split("### Behaviour", 1)[1]
    assert changes.count("\n- ") == summary_md.SUMMARY_MAX_ITEMS and "more, see report.html" in changes


def test_markdown_stays_small_for_huge_runs() -> None:
    long = "x" * 5000 + "|"
    boots = [
        BootResult(
            f"b{i}",
            kernel("k", f"6.{i}.0-1", f"6.{i}.0-amd64"),
            256,
            error=long,
            cases=[
                CaseResult(f"b{i}", f"c{j}", "64K", "user", Outcome.DEVIATION, long, None, fingerprint=str(i))
                for j in range(40)
            ],
        )  # fmt: skip
        for i in range(400)
    ]
    md = summary_md.markdown(RunRecord(RUN_ID, "s", None, False, boots))
    assert len(md.encode("utf-8")) < 256 * 1024  # GitHub takes up to 1 MiB per step summary
    assert f"… {400 - summary_md.SUMMARY_MAX_BOOTS} more, see report.html" in md
