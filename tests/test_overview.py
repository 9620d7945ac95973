"""report.html and summary.md (overview, report_html, summary_md): the matrix, its evidence, escaping of guest
text, and what a real browser makes of it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from harness.report import overview, report_html, rundir, summary_md
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
            "trixie-256M",
            TRIXIE,
            256,
            [R_BASIC, R_BASIC_ROOT, R_OVER_NEW, R_ROOT, R_OOM, R_PANIC],
            error=TRIXIE_ERROR,
            restored="5eed",
            timings={"marker": 8.5, "ssh": 12.25},  # started, then lost its guest
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
    return doc.one("div", id="matrix").iter("th", "col")


def matrix_rows(doc: Node) -> list[Node]:
    return [tr for tbody in doc.one("div", id="matrix").iter("tbody") for tr in tbody.iter("tr")]


def kernel_cells(row: Node) -> list[Node]:
    return row.iter("td")[2:]  # after memlock and user


def shows(td: Node, outcome: Outcome) -> bool:
    return report_html.CELL_CLASS[outcome] in td.classes


QUIET_LABELS = {"ok", "n/a"}


def check_matrix(doc: Node, boot_page: Callable[[str], Node]) -> None:
    """What the matrix and its boot pages must look like, from our own HTML and from a browser's DOM
    alike. `boot_page` gives a boot page, parsed, by its path relative to report.html."""
    assert [th.attrs["data-boot"] for th in matrix_header(doc)] == COLUMNS
    versions = [th.one("span", "ver").text for th in matrix_header(doc)]
    assert versions == ["5.10.223-1", "6.1.119-1", "6.12.95-1", "unresolved kernel", "6.1.119-1"]
    ram = doc.one("tr", "ram").iter("th", "g")
    assert [(th.text, th.attrs["colspan"]) for th in ram] == [("256 MiB", "4"), ("1024 MiB", "1")]
    assert [th.iter("a")[0].attrs["href"] for th in matrix_header(doc)] == [f"boot/b{i}.html" for i in range(5)]

    rows = matrix_rows(doc)
    names = [f"{r.iter('th')[0].text}[memlock={r.iter('td')[0].text},user={r.iter('td')[1].text}]" for r in rows]
    assert names == ROW_NAMES
    grid = [kernel_cells(r) for r in rows]
    assert all(len(cells) == len(COLUMNS) for cells in grid)

    changed = [(i, j) for i, cells in enumerate(grid) for j, td in enumerate(cells) if "c" in td.classes]
    assert changed == [(2, 2)], "only lock_over_limit on trixie (6.1 -> 6.12) changed"
    cell = grid[2][2]
    assert shows(cell, Outcome.DEVIATION)
    link = cell.one("a")
    assert link.text.startswith("Δ") and "changed since 6.1.119-1" in link.attrs["title"]

    # Every outcome is shown with its class; missing results are the boots that stopped.
    for outcome in Outcome:
        assert any(shows(td, outcome) for cells in grid for td in cells), outcome
    assert "m" in grid[6][2].classes and "m" in grid[0][3].classes
    # Quiet cells are bare (the matrix's click handler opens them); the others are links to their evidence.
    assert grid[0][0].text == "ok" and not grid[0][0].iter("a")
    for i, cells in enumerate(grid):
        for j, td in enumerate(cells):
            links = td.iter("a")
            if td.text in QUIET_LABELS or "m" in td.classes:
                assert not links, (i, j)
            else:
                assert [a.attrs["href"] for a in links] == [f"boot/b{j}.html#r{i}"], (i, j)

    # Every cell's evidence is on its boot's page, under the row's id: in full for a cell that asks for
    # attention (the cells that are links) the first time its row says it, a line for the rest. The OOM
    # kill and the panic of bookworm and trixie are bullseye's (same fingerprint): in full there only.
    pages = [boot_page(f"boot/b{j}.html") for j in range(len(COLUMNS))]
    repeats = {(4, 1), (4, 2), (5, 1), (5, 2)}
    for j, page in enumerate(pages):
        ids = [n.attrs["id"] for n in page.iter() if re.fullmatch(r"r\d+", n.attrs.get("id", ""))]
        assert sorted(ids) == [f"r{i}" for i in range(len(ROW_NAMES))], j
        in_full = [div.attrs["id"] for div in page.iter("div", "ev") if "q" not in div.classes]
        assert in_full == [f"r{i}" for i, cells in enumerate(grid) if cells[j].iter("a") and (i, j) not in repeats], j
        in_lines = [a.attrs["id"] for div in page.iter("div", "q") for a in div.iter("a") if "id" in a.attrs]
        assert in_lines == [i for i in ids if i not in in_full], j
    for i, j in repeats:
        (line,) = [div for div in pages[j].iter("div", "q") if any(a.attrs.get("id") == f"r{i}" for a in div.iter("a"))]
        assert [a.attrs["href"] for a in line.iter("a") if a.attrs["href"].startswith("b")] == [f"b0.html#r{i}"]
        assert "as on 5.10.223-1" in line.text
    evidence = pages[2].one("div", id="r2")
    assert "lock_over_limit[memlock=64K,user=user] on trixie-256M" in evidence.one("h4").text
    assert "behaved otherwise" in evidence.one("p", "chg").text
    assert evidence.one("p", "chg").one("a").attrs["href"] == "b1.html#r2"  # the kernel before, same row
    assert evidence.one("h4").one("a").attrs["href"] == "../report.html#r2"
    assert HOSTILE in evidence.text  # shown as text, not run
    assert pages[2].one("a", href="../serial/trixie-256M.log")
    (missing,) = [div for div in pages[2].iter("div", "q") if any(a.attrs.get("id") == "r6" for a in div.iter("a"))]
    assert "No result: the boot stopped before this case" in missing.text
    assert pages[2].one("p", id="error").text == TRIXIE_ERROR

    # Boot errors per column.
    errors = [th.iter("a", "berr") for th in matrix_header(doc)]
    assert [len(e) for e in errors] == [0, 0, 1, 1, 0]
    assert errors[2][0].attrs["title"] == TRIXIE_ERROR

    # Nothing from the guest became markup or script: the one script is the matrix's click handler.
    for page in (doc, *pages):
        assert not page.iter("img") and all("bold" not in b.text for b in page.iter("b"))
        assert all(
            not re.match(r"^[a-z][a-z0-9+.-]*:", n.attrs.get("href", "") + n.attrs.get("src", ""), re.I)
            for n in page.iter()
        ), "no external or javascript: URL"
    assert [s.text for s in doc.iter("script")] == [report_html._OPEN_EVIDENCE]
    assert not any(p.iter("script") for p in pages)
    assert not [(n.tag, k) for p in pages for n in p.iter() for k in n.attrs if k.startswith("on")]
    # The "show every row" switch is the stylesheet's: no handler at all.
    assert not [(n.tag, k) for n in doc.iter() for k in n.attrs if k.startswith("on")]


def parsed_pages(run: RunRecord) -> tuple[Node, Callable[[str], Node]]:
    pages = report_html.pages(run)
    return parse(pages["report.html"]), lambda path: parse(pages[path])


# --- report.html -------------------------------------------------------------------------------


def test_html_matrix() -> None:
    check_matrix(*parsed_pages(sample_run()))
    assert report_html.html(sample_run()) == report_html.pages(sample_run())["report.html"]


def test_html_evidence_holds_the_whole_record() -> None:
    run = sample_run()
    page = parse(report_html.pages(run)["boot/b2.html"])  # trixie is column 2
    deviation = run.boots[0].cases[2]
    evidence = page.one("div", id="r2")  # lock_over_limit is row 2
    fields = dict(zip([dt.text for dt in evidence.iter("dt")], [dd.text for dd in evidence.iter("dd")], strict=True))
    assert fields == {
        "outcome": "deviation",
        "message": deviation.message,
        "expected": '{"result": "EAGAIN"}',
        "citation": "mm/mlock.c: can_do_mlock() & friends",
        "fingerprint": '{"result":"ok"}',
        "duration": "0.000 s",
    }
    assert json.loads(evidence.one("pre").text) == deviation.observation
    meta = page.one("dl", "meta")
    fields = dict(zip([dt.text for dt in meta.iter("dt")], [dd.text for dd in meta.iter("dd")], strict=True))
    assert fields == {
        "release": "6.12.95+deb13-amd64",
        "package": "linux-image-6.12.95+deb13-amd64",
        "RAM": "256 MiB",
        "QEMU": " ()",
        "guest": "loaded from the saved guest 5eed",
        "serial log": "serial/trixie-256M.log",
        "results": "6",
    }
    nav = {a.text: a.attrs["href"] for a in page.iter("p")[0].iter("a")}
    assert nav == {f"run {RUN_ID}": "../report.html#b2", "bookworm-256M": "b1.html", "broken-256M": "b3.html"}
    booted = parse(report_html.pages(run)["boot/b1.html"]).one("dl", "meta")
    assert (
        dict(zip([dt.text for dt in booted.iter("dt")], [dd.text for dd in booted.iter("dd")], strict=True))["guest"]
        == "booted"
    )
    row = parse(report_html.pages(run)["report.html"]).one("tr", id="b2")
    assert [td.text for td in row.iter("td")][8].endswith("(loaded)")


def test_html_escapes_guest_text() -> None:
    page = "".join(report_html.pages(sample_run()).values())
    assert page.lower().count("<script") == 1  # the matrix's click handler
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
    for path, page in report_html.pages(sample_run()).items():
        doc = parse(page)
        ids = [n.attrs["id"] for n in doc.iter() if "id" in n.attrs]
        assert len(ids) == len(set(ids)), path
        assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", i) for i in ids), ids


def test_html_change_is_seen_across_a_boot_without_an_answer() -> None:
    """A kernel in between that gave no answer for the row does not hide the change."""
    run = sample_run()
    middle = next(b for b in run.boots if b.boot_id == "bookworm-256M")
    middle.cases = [c for c in middle.cases if c.case != "lock_over_limit"]
    doc = parse(report_html.html(run))
    grid = [kernel_cells(r) for r in matrix_rows(doc)]
    assert "m" in grid[2][1].classes
    assert "c" in grid[2][2].classes
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


def test_write_puts_the_pages_in_the_run_dir(tmp_path: Path) -> None:
    run = sample_run()
    rundir.write_views(tmp_path, run)
    assert overview.HTML_FILE == "report.html" and overview.SUMMARY_FILE == "summary.md"
    for path, page in report_html.pages(run).items():
        assert (tmp_path / path).read_text(encoding="utf-8") == page
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == summary_md.markdown(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot", "report.html", "summary.md"]  # no temporary left
    assert sorted(p.name for p in (tmp_path / "boot").iterdir()) == [*(f"b{i}.html" for i in range(5)), "style.css"]

    # Written again with fewer boots, the pages of the boots that went are gone.
    run.boots = run.boots[:2]
    rundir.write_views(tmp_path, run)
    assert sorted(p.name for p in (tmp_path / "boot").iterdir()) == ["b0.html", "b1.html", "style.css"]


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
    assert "lost \ufffd" in page
    evidence = (tmp_path / "boot/b2.html").read_text(encoding="utf-8")
    assert "bad byte \ufffd here" in evidence and '"raw": "\ufffd"' in evidence
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
            )
            for r in range(rows)
        ]
        boots.append(BootResult(boot_id, info, 256, serial_log=f"serial/{boot_id}.log", cases=cases))
    return RunRecord(RUN_ID, "2026-11-26T18:53:00Z", "2026-11-26T20:53:00Z", False, boots)


def test_html_pages_of_a_ten_kernel_run() -> None:
    run = big_run()
    pages = report_html.pages(run)
    assert len(pages) == 12  # report.html, ten boot pages and the stylesheet they share
    assert sum(len(re.findall(r' id="r\d+"', page)) for path, page in pages.items() if path != "report.html") == 4900
    # In full: the deviations (none the same as the kernel before's), and the cells that changed since it.
    m = overview.matrix(run)
    attention = sum(
        1 for row in m.rows for c in row.cells if c.changed_from or (c.result and c.result.outcome is Outcome.DEVIATION)
    )
    assert sum(page.count('<div class="ev" id=') for page in pages.values()) == attention < 4900
    # The rest a line per case and verdict (62 cases, each passing alike); on kernels 3, 6 and 9 every
    # row's fingerprint changed, so every result there is in full.
    lines = [page.count('<div class="q">') for path, page in pages.items() if path.startswith("boot/b")]
    assert lines == [62, 62, 62, 0, 62, 62, 0, 62, 62, 0]
    assert 'class="ev"' not in pages["report.html"]  # the evidence is on the boot pages only


def test_html_stays_small_at_every_debian_build() -> None:
    """Issue 15's bound: report.html of about every Debian build (110 boots, 490 results each) is at
    most 3 MB. bench/report.py measures the same on a real run, and how fast chromium shows it."""
    page = report_html.html(big_run(kernels=110))
    size = len(page.encode("utf-8"))
    print(f"report.html for 110 boots x 490 results: {size / 1e6:.2f} MB")
    assert size <= 3e6
    assert page.count("<tr id=") == 490 + 110  # every row and every boot


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
    home = tmp_path / "home"
    doc = parse(dump_dom(run_dir / overview.HTML_FILE, home))
    boot_pages: dict[str, Node] = {}
    check_matrix(doc, lambda path: boot_pages.setdefault(path, parse(dump_dom(run_dir / path, home))))
    # The serial log links resolve, from report.html and from the boot pages.
    logs = {a.attrs["href"] for a in doc.iter("a") if a.attrs.get("href", "").startswith("serial/")}
    logs |= {
        "boot/" + a.attrs["href"] for p in boot_pages.values() for a in p.iter("a") if "serial/" in a.attrs["href"]
    }
    assert len(logs) == 8 and all((run_dir / href).resolve().is_file() for href in logs), logs
    # The switch is wired to the rows by the stylesheet alone.
    assert "#all:not(:checked)~#matrix .cv tr:not(.x):not(:target){display:none}" in doc.one("style").text

    # The click handler's link for every cell, as the browser computes it: the boot page and the row.
    probe = run_dir / "probe.html"
    marked = "for(const td of document.querySelectorAll('#matrix tbody td'))if(td.cellIndex>=3)td.title=evidence(td)"
    probe.write_text((run_dir / overview.HTML_FILE).read_text().replace("</body>", f"<script>{marked}</script></body>"))
    grid = [kernel_cells(r) for r in matrix_rows(parse(dump_dom(probe, home)))]
    assert grid and [[td.attrs["title"] for td in cells] for cells in grid] == [
        [f"boot/b{j}.html#r{i}" for j in range(len(COLUMNS))] for i in range(len(ROW_NAMES))
    ]
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
        "trixie-256M",
        "6.12.95-1",
        "6.12.95+deb13-amd64",
        "256 MiB",
        "2",
        "1",
        "1",
        "1",
        "1",
        "0",
        "0",
        TRIXIE_ERROR,
    ]
    assert all(len(tr.iter("td")) == 12 for tr in boots)


def test_markdown_deviations_and_changes() -> None:
    md = summary_md.markdown(sample_run())
    doc = parse(render(md))
    text = doc.text
    assert "Findings: 5 new, 0 known (12 results)" in text
    # One bullet per finding: trixie-256M and bookworm-1024M deviate alike.
    assert (
        f"lock_over_limit: NEW deviation: expected EAGAIN, observed success {HOSTILE} (2 results on 2 of 5 boots: "
        "trixie-256M, bookworm-1024M; first 6.1.119-1, last 6.12.95-1; limit/user: 64K/user (1 of 1))"
    ) in text
    assert "Behaviour changes between adjacent kernel versions (1)" in text
    assert 'lock_over_limit (64K/user): 6.1.119-1 → 6.12.95-1 (256 MiB): result: "EAGAIN" → "ok"' in text


def test_markdown_escapes_guest_text() -> None:
    run = sample_run()
    evil = "a | b\nnew line `code` *em* _u_ [x](https://evil.example) <b>bold</b> :smile: $x$ @all ![i](x.png) # h"
    trixie = run.boots[0]
    trixie.cases[2] = dataclasses.replace(trixie.cases[2], message=evil)
    trixie.error = "pipe | in error | --- |\n| serial | line |"
    broken = next(b for b in run.boots if b.boot_id == "broken-256M")  # did not start: one line of its own
    broken.error = evil.replace("\n", " ") + "\nserial line"
    broken.cases = [CaseResult("broken-256M", "lock_basic", "64K", "user", Outcome.TIMEOUT, evil, None)]
    md = summary_md.markdown(run)
    out = render(md)
    doc = parse(out)
    # Nothing became markup: no link, image, emphasis, code, raw HTML, or extra table cell.
    assert not doc.iter("a") and not doc.iter("img") and not doc.iter("em") and not doc.iter("code")
    assert not doc.iter("b") and not doc.iter("script") and not doc.iter("h1")
    assert [len(tr.iter("td")) for tr in doc.iter("table")[1].one("tbody").iter("tr")] == [12] * len(COLUMNS)
    assert "a | b new line `code` *em* _u_ [x](https://evil.example) <b>bold</b> :smile: $x$ @all" in doc.text
    assert "pipe | in error | --- |" in doc.text and "serial" not in doc.text  # an error's first line only
    unstarted = [li.text for li in doc.iter("li") if "did not start" in li.text]
    assert unstarted == [f"1 boot did not start: {evil.replace(chr(10), ' ')} (boot: broken-256M; 1 result: timeout)"]


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
    problems = md.split("### Findings", 1)[1].split("### Behaviour", 1)[0]
    found = len({(c.case, c.message) for b in run.boots for c in b.cases if c.outcome is Outcome.DEVIATION})
    assert found > summary_md.SUMMARY_MAX_ITEMS
    assert problems.count("\n- ") == summary_md.SUMMARY_MAX_ITEMS
    assert f"… {found - summary_md.SUMMARY_MAX_ITEMS} more, see report.html" in problems
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
        )
        for i in range(400)
    ]
    md = summary_md.markdown(RunRecord(RUN_ID, "s", None, False, boots))
    assert len(md.encode("utf-8")) < 256 * 1024  # GitHub takes up to 1 MiB per step summary
    assert f"… {400 - summary_md.SUMMARY_MAX_BOOTS} more, see report.html" in md


# --- boots that did not start: one line per reason in every view -------------------------------

NOTHING = "the guest printed nothing in 20 s under kvm; --accel tcg"
EXCERPT = "[    0.000000] Linux version 6.1.0\n...\n[    1.250000] serial excerpt line"
UNSTARTED = ["a-256M", "b-256M", "c-256M", "d-256M"]


def unstarted_boot(boot_id: str, error: str = f"{NOTHING}\n{EXCERPT}", cases: int = 61) -> BootResult:
    """A boot whose guest never became ready: its failure's first line copied into every case (boot.fill)."""
    first = error.split("\n")[0]
    results = [CaseResult(boot_id, f"case_{i:02d}", "64K", "user", Outcome.TIMEOUT, first, None) for i in range(cases)]
    return BootResult(boot_id, TRIXIE, 256, error=error, cases=results, serial_log=f"serial/{boot_id}.log")


def lost_boot(boot_id: str = "e-256M") -> BootResult:
    """A boot that started and then gave up on its guest: its cases say how far it got."""
    results = [
        CaseResult(boot_id, f"case_{i:02d}", "64K", "user", Outcome.PASS, "ok", {"v": 1}, fingerprint="1")
        for i in range(58)
    ]
    results += [
        CaseResult(boot_id, f"case_{i:02d}", "64K", "user", Outcome.INFRA_ERROR, "not run: gave up", None)
        for i in range(58, 61)
    ]
    return BootResult(
        boot_id,
        BOOKWORM,
        256,
        timings={"marker": 3.0},
        cases=results,
        error=f"gave up after losing the guest 3 times; last: SSH gone\n{EXCERPT}",
    )


def unstarted_run(*extra: BootResult) -> RunRecord:
    return RunRecord(RUN_ID, "s", "f", False, [unstarted_boot(b) for b in UNSTARTED] + [lost_boot(), *extra])


def test_a_boot_did_not_start_when_no_guest_of_it_became_ready() -> None:
    a, b = unstarted_boot("a"), unstarted_boot("b", f"{NOTHING} (last serial lines below)")  # b: the same reason
    panic = unstarted_boot("p", "guest kernel panicked while booting\nKernel panic - not syncing")
    fetch = BootResult("f", None, 256, error="kernel not found")  # run.py: nothing could be booted
    clean = BootResult("ok", None, 256, timings={"marker": 1.0})
    assert [overview.did_not_start(x) for x in (a, lost_boot(), fetch, clean)] == [True, False, True, False]
    assert overview.unstarted([a, lost_boot(), panic, clean, fetch, b]) == [
        (NOTHING, [a, b]),
        ("guest kernel panicked while booting", [panic]),
        ("kernel not found", [fetch]),
    ]
    assert overview.unstarted([]) == [] and overview.unstarted([clean, lost_boot()]) == []


@pytest.mark.parametrize(
    ("error", "first", "full"),
    [
        ("one line", "one line", "one line"),
        ("\nfirst\nsecond\n", "first", "first\nsecond"),
        (
            "no ready marker within 20s (last serial lines below)",
            "no ready marker within 20s",
            "no ready marker within 20s",
        ),
        (
            "no ready marker within 20s (last serial lines below)\n  \n",
            "no ready marker within 20s",
            "no ready marker within 20s",
        ),
        (
            "no ready marker (last serial lines below)\nline",
            "no ready marker",
            "no ready marker (last serial lines below)\nline",
        ),
        ("locked 4K (below the limit)", "locked 4K (below the limit)", "locked 4K (below the limit)"),
        ("", "", ""),
    ],
)
def test_an_error_as_one_line_and_in_full(error: str, first: str, full: str) -> None:
    assert overview.first_line(error) == first
    assert overview.full_error(error) == full


def test_html_boots_that_did_not_start_are_one_line_above_the_matrix() -> None:
    run = unstarted_run()
    pages = report_html.pages(run)
    page = pages["report.html"]
    doc = parse(page)
    lines = doc.one("div", id="unstarted").iter("p")
    assert [p.text for p in lines] == [
        f"4 boots did not start: {NOTHING} (boots: a-256M, b-256M, c-256M, d-256M; 244 results: timeout)"
    ]
    assert page.index('id="unstarted"') < page.index('id="matrix"')
    assert "err" in lines[0].classes and "o-timeout" in lines[0].classes
    # Each boot links to its row of the boots table, where its error is one line and a link to the rest.
    rows = {a.text: doc.one("tr", id=a.attrs["href"][1:]) for a in lines[0].iter("a")}
    assert list(rows) == UNSTARTED
    for boot_id, row in rows.items():
        assert row.iter("td")[0].text == boot_id
        error = row.iter("td")[-1]
        assert error.text == f"{NOTHING} (in full)" and error.one("a").attrs["href"].endswith(".html#error")
    assert "serial excerpt line" not in page
    # The boot pages keep the whole error.
    a_page = parse(pages[doc.one("tr", id=lines[0].iter("a")[0].attrs["href"][1:]).iter("a")[0].attrs["href"]])
    assert a_page.one("p", id="error").text == f"{NOTHING}\n{EXCERPT}"
    # A boot that started and lost its guest is not on the line.
    assert "e-256M" not in doc.one("div", id="unstarted").text


def test_html_groups_by_reason_and_escapes_it() -> None:
    run = unstarted_run(unstarted_boot("x-256M", f"{HOSTILE} <img src=x onerror=alert(3)>\nmore", cases=1))
    run.boots.append(BootResult("y-256M", None, 256, error="no ready marker within 20s (last serial lines below)"))
    pages = report_html.pages(run)
    doc = parse(pages["report.html"])
    assert [p.text for p in doc.one("div", id="unstarted").iter("p")] == [
        f"4 boots did not start: {NOTHING} (boots: a-256M, b-256M, c-256M, d-256M; 244 results: timeout)",
        f"1 boot did not start: {HOSTILE} <img src=x onerror=alert(3)> (boot: x-256M; 1 result: timeout)",
        "1 boot did not start: no ready marker within 20s (boot: y-256M)",
    ]
    assert not doc.iter("img") and [s.text for s in doc.iter("script")] == [report_html._OPEN_EVIDENCE]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img" in pages["report.html"]
    assert not any("lines below" in p for p in pages.values())  # a promise with nothing below is not made
    ids = [n.attrs["id"] for n in doc.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids))


def test_markdown_boots_that_did_not_start_are_one_line() -> None:
    md = summary_md.markdown(unstarted_run())
    problems = md.split("### Findings", 1)[1].split("### Behaviour", 1)[0]
    assert problems.startswith(": 3 new, 0 known (3 results); 244 more results on boots that did not start\n")
    doc = parse(render(md))
    said = [li.text for li in doc.iter("li") if "did not start" in li.text]
    assert said == [f"4 boots did not start: {NOTHING} (boots: a-256M, b-256M, c-256M, d-256M; 244 results: timeout)"]
    # No case of theirs is listed; the boot that started is, case by case.
    listed = [li.text for li in doc.iter("li") if " on " in li.text]
    assert len(listed) == 3 and all(" on 1 of 5 boots: e-256M;" in li for li in listed)
    # The Boots table: only the first line of each error.
    boots = doc.iter("table")[1].one("tbody").iter("tr")
    errors = {tr.iter("td")[0].text: tr.iter("td")[-1].text for tr in boots}
    lost = "gave up after losing the guest 3 times; last: SSH gone"
    assert errors == {"e-256M": lost} | dict.fromkeys(UNSTARTED, NOTHING)
    assert "serial excerpt line" not in md


def test_markdown_groups_by_reason_and_escapes_it() -> None:
    evil = "**bold** [x](https://evil.example) <b>b</b> | cell `code` # h\x1b[31m"
    md = summary_md.markdown(unstarted_run(unstarted_boot("x_1-256M", f"{evil}\nserial", cases=2)))
    doc = parse(render(md))
    said = [li for li in doc.iter("li") if "did not start" in li.text]
    assert [li.text for li in said] == [
        f"4 boots did not start: {NOTHING} (boots: a-256M, b-256M, c-256M, d-256M; 244 results: timeout)",
        "1 boot did not start: **bold** [x](https://evil.example) <b>b</b> | cell `code` # h [31m "
        "(boot: x_1-256M; 2 results: timeout)",
    ]
    # Only the count is bold; nothing of the guest's became markup.
    assert [[s.text for s in li.iter()] for li in said] == [["4 boots did not start"], ["1 boot did not start"]]
    assert not doc.iter("a") and not doc.iter("code") and not doc.iter("b") and "\x1b" not in md
