"""Findings first (findings.py, report.html, boot pages, summary.md): a run's findings grouped as the
terminal groups them, new ones before known ones; matrix rows that change or fail by default; Δ cells
that say what changed; boot pages that stay small; all of it seen in a real browser."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from test_overview import BOOKWORM, BULLSEYE, HOSTILE, TRIXIE, Node, chromium, kernel, parse, render

from harness.report import findings, overview, report_html, rundir, summary_md, terminal
from harness.results import BootResult, CaseResult, Outcome, RunRecord

RUN_ID = "20261206T205701Z-2a4b"
SID = kernel("sid+trixie-backports", "7.3.4-1~bpo13+1", "7.3.4+deb13-amd64")
# Out of version order on purpose; the last boot never started.
KERNELS = {
    "trixie-256M": TRIXIE,
    "bullseye-256M": BULLSEYE,
    "sid+trixie-backports-256M": SID,
    "bookworm-256M": BOOKWORM,
}
RUNS = [("default", "root"), ("64K", "user")]
QUIET = 30  # cases that pass everywhere alike: the rows the matrix hides by default

PROTNONE = f"mlock() of a PROT_NONE range fails yet stays locked {HOSTILE} (https://man7.org/mlock.2.html)"
PARTIAL = "the half left behind stays counted in VmLck; fixed in 6.12"
OVER = f"result: expected 'EAGAIN', observed 'ok' {HOSTILE}"
OVER_CITATION = "getrlimit(2) RLIMIT_MEMLOCK: <i>the limit</i> & mlock(2)"
# A fingerprint value from the guest, shown in Δ titles and in summary.md's changes.
EVIL_VALUE = '"><img src=x onerror=alert(5)> [x](https://evil.example) `c` |'


def fp(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def results_of(boot_id: str) -> list[CaseResult]:
    """What one kernel answered, every case under one limit before the next, as the plan runs them."""
    k = ["bullseye-256M", "bookworm-256M", "trixie-256M", "sid+trixie-backports-256M"].index(boot_id)
    out = []
    for memlock, user in RUNS:

        def add(
            case: str,
            outcome: Outcome,
            message: str,
            fingerprint: str,
            memlock: str = memlock,
            user: str = user,
            **kw: Any,
        ) -> None:
            observation = {"case": case, "memlock": memlock, "padding": "o" * 1000}
            out.append(
                CaseResult(boot_id, case, memlock, user, outcome, message, observation, **kw, fingerprint=fingerprint)
            )

        limits = {"rlimit_soft": 65536} if k == 0 else {"rlimit_soft": 8388608, "who": EVIL_VALUE}
        add("limits", Outcome.PASS, "as expected", fp(**limits))
        # Known on every kernel; its message differs by limit, its entry's reason does not.
        add(
            "protnone_mlock",
            Outcome.DEVIATION,
            f"failed_call_kept_accounting: expected True, observed False under {memlock}",
            fp(kept=False),
            known=PROTNONE,
            expected={"failed_call_kept_accounting": True},
            citation="mlock(2) RETURN VALUE",
        )
        if k >= 2:  # new: 6.12 and 7.3 map over the limit
            add(
                "lock_over_limit",
                Outcome.DEVIATION,
                OVER,
                fp(result="ok"),
                expected={"result": "EAGAIN"},
                citation=OVER_CITATION,
            )
        else:
            add("lock_over_limit", Outcome.PASS, "as expected", fp(result="EAGAIN"))
        if k < 2:  # known until 6.12 fixed it
            add(
                "mremap_dontunmap_partial",
                Outcome.DEVIATION,
                "unmoved_range_lo: expected True",
                fp(lo=False),
                known=PARTIAL,
            )
        else:
            add("mremap_dontunmap_partial", Outcome.PASS, "as expected", fp(lo=True))
        if k == 1 and memlock == "64K":
            add("lock_all_ram", Outcome.OOM_KILLED, "killed by the OOM killer", fp(oom_killed=True))
        else:
            add("lock_all_ram", Outcome.PASS, "as expected", fp(oom_killed=False))
        for i in range(QUIET):
            add(f"quiet_{i:02d}", Outcome.PASS, "as expected: result='ok'", fp(result="ok"))
    return out


def known_run() -> RunRecord:
    """A real-ish run: four kernels, two new findings and two known ones, changes, and a boot that did not start."""
    boots = [BootResult(b, k, 256, timings={"marker": 2.0}, cases=results_of(b)) for b, k in KERNELS.items()]
    never = [CaseResult("broken-256M", "limits", m, u, Outcome.TIMEOUT, "no ready marker", None) for m, u in RUNS]
    boots.append(BootResult("broken-256M", SID, 256, error="no ready marker within 20s", cases=never))
    return RunRecord(RUN_ID, "2026-12-06T20:57:01Z", "2026-12-06T20:57:38Z", False, boots)


# --- the grouping ------------------------------------------------------------------------------


def test_findings_are_grouped_as_the_terminal_groups_them_new_first() -> None:
    run = known_run()
    m = overview.matrix(run)
    found = findings.findings(m)
    assert [(f.label, f.case) for f in found] == [
        ("NEW deviation", "lock_over_limit"),
        ("NEW oom_killed", "lock_all_ram"),
        ("known deviation", "protnone_mlock"),
        ("known deviation", "mremap_dontunmap_partial"),
    ]
    over, oom, protnone, partial = found
    # The kernels in version order, the first and last that show it; the boot that did not start is not one.
    assert [c.boot.boot_id for c in over.boots] == ["trixie-256M", "sid+trixie-backports-256M"]
    assert (over.first.name, over.last.name) == ("6.12.95-1", "7.3.4-1~bpo13+1")
    assert over.runs == ("default/root", "64K/user") and len(over.seen) == 4 and over.observed == (OVER,)
    assert (oom.first is oom.last, oom.runs) == (True, ("64K/user",))
    # A known finding is one group per entry, whatever each limit printed.
    assert protnone.known == PROTNONE and len(protnone.observed) == 2 and len(protnone.boots) == 4
    assert (protnone.first.name, protnone.last.name) == ("5.10.223-1", "7.3.4-1~bpo13+1")
    assert (partial.first.name, partial.last.name) == ("5.10.223-1", "6.1.119-1")
    assert findings.tally(found) == "2 new, 2 known (17 results)"
    assert findings.tally(found, m.columns[1]) == "1 new, 2 known (5 results)"  # bookworm
    # The terminal's grouped table has the same groups, in the same order.
    table = terminal.grouped_problems_table(run.boots)
    assert [str(cell) for cell in table.columns[0].cells] == [f.case for f in found]


def test_what_changed_names_the_fields_with_both_values() -> None:
    before, after = fp(a=1, calls=["mmap:ok"], gone=True), fp(a=2, calls=["mmap:ok"], new="x" * 200)
    changes = findings.what_changed(before, after)
    assert [(c.field, c.before, c.after) for c in changes][:2] == [("a", "1", "2"), ("gone", "true", "absent")]
    assert changes[2].field == "new" and changes[2].before == "absent" and len(changes[2].after) == 80
    assert changes[2].after.endswith("…")
    assert findings.describe(changes[:2]) == "a: 1 → 2; gone: true → absent"
    assert findings.what_changed(before, before) == ()
    assert [(c.field, c.before, c.after) for c in findings.what_changed("EAGAIN", "ok")] == [
        ("fingerprint", "EAGAIN", "ok")
    ]


# --- report.html -------------------------------------------------------------------------------


def flat(text: str) -> str:
    return " ".join(text.split())


def check_findings_first(doc: Node) -> None:
    """report.html leads with the findings, new ones before known ones, then the matrix."""
    body = doc.one("body")
    order = [
        n.attrs.get("id") or n.attrs.get("class")
        for n in body.iter()
        if n.attrs.get("id") in {"findings", "counts", "matrix"}
    ]
    assert order == ["findings", "counts", "matrix"]
    blocks = doc.iter("div", "fd")
    assert [b.classes[1] for b in blocks] == ["new", "new", "known", "known"]
    assert [b.one("span", "tag").text for b in blocks] == ["NEW", "NEW", "known", "known"]
    over, _, protnone, _ = blocks
    fields = {dt.text: flat(dd.text) for dt, dd in zip(over.iter("dt"), over.iter("dd"), strict=True)}
    assert fields["observed"] == OVER
    assert fields["expected"] == f'{{"result": "EAGAIN"}} {OVER_CITATION}'
    assert (
        fields["kernels"]
        == "first 6.12.95-1, last 7.3.4-1~bpo13+1; 2 of 5 boots: trixie-256M, sid+trixie-backports-256M"
    )
    assert fields["limit/user"] == "2 of 2: default/root, 64K/user"
    assert [a.attrs["href"] for a in over.iter("a")] == ["boot/b2.html#r4", "boot/b3.html#r4"]
    known = {dt.text: flat(dd.text) for dt, dd in zip(protnone.iter("dt"), protnone.iter("dd"), strict=True)}
    assert known["known"] == PROTNONE and "and 1 other message" in known["observed"]


def test_report_leads_with_findings_new_before_known() -> None:
    page = report_html.html(known_run())
    doc = parse(page)
    check_findings_first(doc)
    assert doc.one("h2", id="findings").text == "Findings: 2 new, 2 known (17 results)"
    # The boot that did not start keeps its one line, above the findings.
    assert page.index('id="unstarted"') < page.index('id="findings"')
    assert "1 boot did not start: no ready marker within 20s" in doc.one("div", id="unstarted").text
    # Guest text stays text: the one script is the matrix's click handler.
    assert (
        not doc.iter("img")
        and not doc.iter("i")
        and [s.text for s in doc.iter("script")] == [report_html._OPEN_EVIDENCE]
    )


def test_delta_cells_say_what_changed() -> None:
    pages = report_html.pages(known_run())
    doc = parse(pages["report.html"])
    changed = {
        (tr.attrs["id"], j): td.one("a").attrs["title"]
        for tr in doc.one("div", id="matrix").iter("tr")
        if tr.attrs.get("id", "").startswith("r")
        for j, td in enumerate(tr.iter("td")[2:])
        if "c" in td.classes
    }
    limits = f"changed since 5.10.223-1: rlimit_soft: 65536 → 8388608; who: absent → {json.dumps(EVIL_VALUE)}"
    assert changed[("r0", 1)] == limits and changed[("r1", 1)] == limits  # bookworm, both runs
    assert changed[("r4", 2)] == 'changed since 6.1.119-1: result: "EAGAIN" → "ok"'  # trixie: lock_over_limit
    assert changed[("r6", 2)] == "changed since 6.1.119-1: lo: false → true"  # trixie: mremap fixed
    # The boot page says it too: in its list of changes, and on the result's evidence.
    bookworm = parse(pages["boot/b1.html"])
    assert flat(bookworm.iter("li")[0].text) == f"limits[memlock=default,user=root] since 5.10.223-1: {limits[26:]}"
    assert "rlimit_soft: 65536 → 8388608" in bookworm.one("div", id="r0").one("p", "chg").text
    # A fingerprint value from the guest is escaped in the title attribute, never markup.
    assert "<img" not in "".join(pages.values())


def test_boot_pages_lead_with_their_findings() -> None:
    page = report_html.pages(known_run())["boot/b1.html"]  # bookworm
    doc = parse(page)
    heads = [h.attrs.get("id") for h in doc.iter("h2")]
    assert heads == ["findings", "changes", "evidence", "others"]
    assert doc.one("h2", id="findings").text == "Findings on this boot: 1 new, 2 known (5 results)"
    blocks = doc.iter("div", "fd")
    assert [(b.classes[1], b.one("h3").iter("span")[1].text) for b in blocks] == [
        ("new", "oom_killed"),
        ("known", "deviation"),
        ("known", "deviation"),
    ]
    # Each finding links to its results' evidence on this page, and to its block on report.html.
    assert [a.attrs["href"] for a in blocks[1].iter("a")] == ["../report.html#f2", "#r2", "#r3"]
    # Bullseye said the same in those rows: the evidence is in full on its page, here a line naming it.
    ids = {n.attrs["id"] for n in doc.iter("div", "ev") if "q" not in n.classes}
    assert not {"r2", "r3"} & ids

    def line(rid: str) -> Node:
        (found,) = [d for d in doc.iter("div", "q") if any(a.attrs.get("id") == rid for a in d.iter("a"))]
        return found

    for rid, limit in (("r2", "default"), ("r3", "64K")):  # messages that differ: a line each
        assert [a.attrs["href"] for a in line(rid).iter("a")][-1] == f"b0.html#{rid}"
        assert line(rid).text.endswith(f"observed False under {limit}")
    # The observation of a finding is on demand; a result that passed as before is one line, without it.
    assert len(doc.iter("details")) == len(ids)
    assert "padding" not in line("r20").text and "as expected" in line("r20").text


def b3_lines_sized_run() -> RunRecord:
    """About the size of a real 13-kernel run: 488 results per boot with real-sized observations,
    35 deviations (known) per boot and a few changes."""
    observation = {f"field_{i}": (None if i % 3 else 123456) for i in range(30)}
    observation["calls"] = [{"call": "mmap", "args": "PROT_NONE MAP_PRIVATE|MAP_ANONYMOUS len=32768", "ret": 0}] * 4
    observation["steps"] = [{"step": "mlock_prot_none", "ret": "ENOMEM", "vmlck_kb": 32, "lo": True}] * 2
    boots = []
    for k in range(13):
        info = kernel(f"k{k}", f"{5 + k // 4}.{k}.{10 + k}-1", f"{5 + k // 4}.{k}.0-{k}-amd64")
        boot_id = f"k{k}-256M"
        cases = [
            CaseResult(
                boot_id,
                f"case_{r // 8}",
                ("default", "64K", "0", "unlimited")[r % 4],
                ("root", "user")[r // 4 % 2],
                Outcome.DEVIATION if r < 35 else Outcome.PASS,
                "as expected: result='ok', locked='all', residency='all', accounting_restored=True",
                observation,
                {"result": "ok", "locked": "all", "residency": "all"},
                "mmap(2) MAP_LOCKED (since 2.5.37): mark the mapping locked like mlock(2) and populate it" * 2,
                0.04,
                fp(result="ok", locked="all", v=(r % 50 == 0) * (k // 4)),
                "known: " * (r < 35),
            )
            for r in range(488)
        ]
        boots.append(BootResult(boot_id, info, 256, cases=cases))
    return RunRecord(RUN_ID, "2026-12-06T20:57:42Z", "2026-12-06T21:21:00Z", False, boots)


def test_boot_pages_stay_small_at_the_size_of_a_real_run() -> None:
    """A boot page used to hold every observation in full: 1.14 MB for one of the 13 boots of a real run
    (bench/report.py). Now only findings and changes are in full."""
    run = b3_lines_sized_run()
    pages = report_html.pages(run)
    boot_pages = {path: len(page.encode()) for path, page in pages.items() if path.startswith("boot/b")}
    observations = sum(len(json.dumps(r.observation)) for r in run.boots[0].cases)
    print(f"boot pages of 13 boots x 488 results: largest {max(boot_pages.values()) / 1e6:.2f} MB")
    assert observations > 500_000  # what the old page carried of observations alone
    # 0.19 MB with every finding in full on every page; 0.11 MB with a repeated one a line naming the first.
    assert max(boot_pages.values()) <= 150_000
    assert all(len(re.findall(r' id="r\d+"', pages[p])) == 488 for p in boot_pages)  # every result has its place


# --- in a real browser -------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  function shown() {
    return [...document.querySelectorAll('#matrix .cv tr')].filter(function (tr) {
      return getComputedStyle(tr).display !== 'none'; }).map(function (tr) { return tr.id; }); }
  var all = document.getElementById('all'), before = shown();
  all.checked = true; var every = shown(); all.checked = false;
  var split = [];
  for (const span of document.querySelectorAll('#matrix th.col span')) for (const n of span.childNodes) {
    if (n.nodeType !== 3) continue;
    var range = document.createRange(); range.selectNodeContents(n);
    var tops = new Set([...range.getClientRects()].map(function (r) { return Math.round(r.top); }));
    if (tops.size > 1) split.push(n.textContent);
  }
  var blocks = [...document.querySelectorAll('.fd')];
  document.body.dataset.probe = JSON.stringify({
    shown: before, every: every.length, split: split,
    target: location.hash ? getComputedStyle(document.querySelector(location.hash)).display : '',
    blocks: blocks.map(function (b) { return b.className; }),
    firstScreen: blocks.filter(function (b) { return b.getBoundingClientRect().bottom <= innerHeight; }).length,
    matrixTop: document.getElementById('matrix').getBoundingClientRect().top,
    lastBlockBottom: blocks.length ? blocks[blocks.length - 1].getBoundingClientRect().bottom : 0,
  });
}, 50); });
</script>"""


def browse(url: str, home: Path, *args: str) -> str:
    """chromium headless on `url` at 1400x1000, as a reader's first screen; its stdout."""
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home)}
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
    flags += ["--disable-background-networking", f"--user-data-dir={home / 'profile'}", "--window-size=1400,1000"]
    proc = subprocess.run(
        [chromium(), *flags, *args, url], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def probed(run_dir: Path, home: Path, fragment: str = "") -> dict[str, Any]:
    """What PROBE found in report.html once the browser laid it out (scrolled to `fragment`, if any)."""
    probe = run_dir / "probe.html"
    probe.write_text((run_dir / overview.HTML_FILE).read_text().replace("</body>", PROBE + "</body>"))
    url = probe.as_uri() + (f"#{fragment}" if fragment else "")
    dom = browse(url, home, "--virtual-time-budget=3000", "--dump-dom")
    said: dict[str, Any] = json.loads(parse(dom).one("body").attrs["data-probe"])
    return said


def test_report_in_headless_chromium_leads_with_findings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_views(run_dir, known_run())
    home = tmp_path / "home"

    # The first screen, as a reader sees it.
    shot = tmp_path / "report.png"
    browse((run_dir / overview.HTML_FILE).as_uri(), home, f"--screenshot={shot}", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    doc = parse(browse((run_dir / overview.HTML_FILE).as_uri(), home, "--dump-dom"))
    check_findings_first(doc)
    assert not doc.iter("img")  # guest text and fingerprint values stayed text in the browser too
    seen = probed(run_dir, home)
    assert seen["blocks"] == ["fd new", "fd new", "fd known", "fd known"]
    assert seen["firstScreen"] == 4  # every finding on the first screen at 1400x1000
    assert seen["lastBlockBottom"] < seen["matrixTop"]
    # By default the matrix shows the rows that change or fail; the switch shows every row.
    interesting = [r.attrs["id"] for r in doc.one("div", id="matrix").iter("tr") if "x" in r.classes]
    assert seen["shown"] == interesting == ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r9"]
    assert seen["every"] == 2 * (5 + QUIET)
    # Column headers break after '-' or '+' only, never inside a word.
    assert seen["split"] == []
    # A link to a quiet row (from a boot page) shows it, though the switch is off.
    assert probed(run_dir, home, "r30")["target"] == "table-row"


# --- summary.md --------------------------------------------------------------------------------


def test_summary_lists_one_bullet_per_finding_new_first() -> None:
    md = summary_md.markdown(known_run())
    section = md.split("### Findings", 1)[1].split("### Behaviour", 1)[0]
    assert section.startswith(": 2 new, 2 known (17 results); 2 more results on boots that did not start\n")
    doc = parse(render(section))
    items = [flat(li.text) for li in doc.iter("li")]
    assert items == [
        "1 boot did not start: no ready marker within 20s (boot: broken-256M; 2 results: timeout)",
        f"lock_over_limit: NEW deviation: {OVER} (4 results on 2 of 5 boots: trixie-256M, sid+trixie-backports-256M; "
        "first 6.12.95-1, last 7.3.4-1~bpo13+1; limit/user: default/root, 64K/user (2 of 2))",
        "lock_all_ram: NEW oom_killed: killed by the OOM killer (1 result on 1 of 5 boots: bookworm-256M; "
        "only 6.1.119-1; limit/user: 64K/user (1 of 2))",
        f"protnone_mlock: known deviation: {PROTNONE} (8 results on 4 of 5 boots: bullseye-256M, bookworm-256M, "
        "trixie-256M, sid+trixie-backports-256M; first 5.10.223-1, last 7.3.4-1~bpo13+1; "
        "limit/user: default/root, 64K/user (2 of 2))",
        f"mremap_dontunmap_partial: known deviation: {PARTIAL} (4 results on 2 of 5 boots: bullseye-256M, "
        "bookworm-256M; first 5.10.223-1, last 6.1.119-1; limit/user: default/root, 64K/user (2 of 2))",
    ]
    text = doc.text
    assert text.index("New (2)") < text.index("lock_over_limit") < text.index("Known (2)") < text.index("protnone")
    # A new finding stands out; a known one does not. Nothing of the guest's became markup.
    assert [s.text for s in doc.iter("strong")] == [
        "1 boot did not start",
        "New",
        "lock_over_limit",
        "NEW deviation",
        "lock_all_ram",
        "NEW oom_killed",
        "Known",
        "protnone_mlock",
        "mremap_dontunmap_partial",
    ]
    assert not doc.iter("a") and not doc.iter("script") and not doc.iter("img")


def test_summary_says_what_each_behaviour_change_changed() -> None:
    run = known_run()
    md = summary_md.markdown(run)
    section = md.split("### Behaviour", 1)[1].split("### Boots", 1)[0]
    assert section.startswith(f" changes between adjacent kernel versions ({len(overview.matrix(run).changes)})\n")
    doc = parse(render(section))
    # The (limit, user) runs that changed alike are one bullet.
    assert [flat(li.text) for li in doc.iter("li")] == [
        "limits (default/root, 64K/user): 5.10.223-1 → 6.1.119-1: rlimit_soft: 65536 → 8388608; "
        f"who: absent → {json.dumps(EVIL_VALUE)}",
        'lock_over_limit (default/root, 64K/user): 6.1.119-1 → 6.12.95-1: result: "EAGAIN" → "ok"',
        "mremap_dontunmap_partial (default/root, 64K/user): 6.1.119-1 → 6.12.95-1: lo: false → true",
        "lock_all_ram (64K/user): 5.10.223-1 → 6.1.119-1: oom_killed: false → true",
        "lock_all_ram (64K/user): 6.1.119-1 → 6.12.95-1: oom_killed: true → false",
    ]
    assert not doc.iter("a") and not doc.iter("img") and not doc.iter("code")
