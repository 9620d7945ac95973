"""What the probe measures on 2.6-era kernels, and what it says it cannot, tested without a guest.

- Residency (guest-tests/measure.c resident_count()): before 2.6.21 mincore(2) refuses anonymous
  memory with ENOMEM (2.6.20 mm/mincore.c do_mincore(): "Right now, we don't do any anonymous
  mappings"), so the count comes from /proc/self/smaps Rss (resident_count_smaps()), and the record
  names it in `residency_source`. Rss is per VMA: a range the kernel merged with a neighbour is
  split off for the reading by a PROT_EXEC toggle and merged back.
- Touching (touch_pages()): the walk's own statics are written before the fault count starts, so a
  fresh child's copy-on-write fault on them is not counted as the mapping's.
- The parent's clock (mono_*()): CLOCK_MONOTONIC went back on 2.6.20 x86_64 under TCG, and a
  duration came out negative; it is clamped at 0 and the step back recorded.
- Huge pages (cases_huge.c): "only N free" says whether the pool is short or was not given back;
  before 2.6.33 mincore(2) on a hugetlb mapping leaks its pages (commit 4f16fc107d9c), so the
  kernel version decides (release_older()).

Kernels with mincore for anonymous memory and a monotonic clock print what they always did: no
`residency_source`, no `clock_backwards_us` (the last tests run the real probe on this host).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"
SOURCES = ("record.c", "json.c", "procfs.c", "measure.c", "calls.c") + tuple(
    f"cases_{n}.c" for n in ("lock", "future", "prot", "file", "huge", "account", "mremap", "oom", "droppable")
)
PAGE = 4096

DRIVER = r"""
#include "cases.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char text[1 << 16], out[1 << 14];
static struct record rec;

static void emit(const struct ctx *c, const char *name)
{
	struct json j;
	j_init(&j, out, sizeof(out));
	emit_record(&j, name, c, &rec);
	puts(j.buf);
}

static struct ctx host_ctx(void)
{
	struct ctx c;
	memset(&c, 0, sizeof(c));
	c.soft = c.hard = RLIM_INFINITY;
	c.cap_ipc_lock = true;
	c.page = (size_t)sysconf(_SC_PAGESIZE);
	c.memtotal_kb = c.memavail_kb = -1;
	return c;
}

/* spans FILE A B: smaps_spans_parse() of a fixture, addresses in hex */
static int cmd_spans(char **argv)
{
	struct smaps_span s[8];
	if (read_file(argv[0], text, sizeof(text)) < 0)
		return 2;
	int n = smaps_spans_parse(text, strtoull(argv[1], NULL, 16), strtoull(argv[2], NULL, 16), s, 8);
	printf("{\"n\":%d,\"spans\":[", n);
	for (int i = 0; i < n; i++)
		printf("%s{\"start\":%llu,\"end\":%llu,\"rss_kb\":%lld,\"prot\":%d}", i ? "," : "",
			(unsigned long long)s[i].start, (unsigned long long)s[i].end, s[i].rss_kb, s[i].prot);
	printf("]}\n");
	return 0;
}

/* residency LAYOUT: one anonymous VMA of 24 pages; `touch` is a string of 24 '0'/'1' (pages
 * written); the range is pages [lo, hi). Prints mincore's count, smaps', the source noted, and
 * the maps entries over the VMA before and after (the split must be merged back). */
static int cmd_residency(char **argv)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	const char *touch = argv[0];
	size_t lo = strtoul(argv[1], NULL, 10), hi = strtoul(argv[2], NULL, 10);
	size_t pages = strlen(touch);
	int prot = atoi(argv[3]);
	char *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 2;
	madvise(p, pages * page, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < pages; i++)
		if (touch[i] == '1')
			p[i * page] = 1;
	if (prot != (PROT_READ | PROT_WRITE))
		mprotect(p, pages * page, prot);
	if (strcmp(argv[4], "hole") == 0)
		munmap(p + (lo + 1) * page, page);
	int before = vma_count(p, pages * page);
	residency_source_reset();
	opt_t mc = resident_count(p + lo * page, (hi - lo) * page, page);
	opt_t sm = resident_count_smaps(p + lo * page, (hi - lo) * page, page);
	int after = vma_count(p, pages * page);
	struct smaps_span s[4];
	int n = smaps_spans((uintptr_t)p, (uintptr_t)p + page, s, 4);
	const char *src = residency_source();
	printf("{\"mincore\":%lld,\"smaps\":%lld,\"source\":\"%s\",\"vmas_before\":%d,\"vmas_after\":%d,"
		"\"prot_after\":%d}\n",
		mc.set ? mc.v : -1, sm.set ? sm.v : -1, src ? src : "", before, after, n == 1 ? s[0].prot : -1);
	return 0;
}

/* touch: a fresh child touches a mapping its parent populated; the faults its walk counts */
static int cmd_touch(void)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE), len = 16 * page;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return 2;
	pid_t pid = fork();
	if (pid == 0) {
		for (size_t i = 0; i < len; i += page)
			p[i] = 2; /* the child's own pages: present and writable before the walk */
		record_init(&rec);
		touch_key(&rec, p, len, page, true, NULL);
		printf("{\"minflt_touch\":%lld,\"majflt_touch\":%lld}\n", rec.minflt_touch.v, rec.majflt_touch.v);
		fflush(stdout);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
}

/* mono T0 T1 ...: readings noted in turn; the clamped duration from the first to the last */
static int cmd_mono(int argc, char **argv)
{
	struct mono m = {false, 0, 0};
	double first = 0, last = 0;
	for (int i = 0; i < argc; i++) {
		last = strtod(argv[i], NULL);
		if (i == 0)
			first = last;
		mono_note(&m, last);
	}
	printf("{\"duration_ms\":%lld,\"back_us\":%lld}\n", mono_ms(first, last), (long long)(m.back_s * 1e6 + 0.5));
	return 0;
}

/* huge CASE TOTAL FREE: the huge case run against a pool as given (never reaching its mmap) */
static int cmd_huge(char **argv)
{
	struct ctx c = host_ctx();
	c.huge_total = atoll(argv[1]);
	c.huge_free = atoll(argv[2]);
	c.huge_page_kb = 2048;
	for (size_t i = 0; i < cases_huge.n; i++)
		if (strcmp(cases_huge.cases[i].name, argv[0]) == 0) {
			record_init(&rec);
			cases_huge.cases[i].fn(&c, &rec, cases_huge.cases[i].arg);
			emit(&c, argv[0]);
			return 0;
		}
	return 2;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && strcmp(argv[1], "spans") == 0)
		return cmd_spans(argv + 2);
	if (argc >= 7 && strcmp(argv[1], "residency") == 0)
		return cmd_residency(argv + 2);
	if (argc == 2 && strcmp(argv[1], "touch") == 0)
		return cmd_touch();
	if (argc >= 3 && strcmp(argv[1], "mono") == 0)
		return cmd_mono(argc - 2, argv + 2);
	if (argc == 5 && strcmp(argv[1], "huge") == 0)
		return cmd_huge(argv + 2);
	if (argc >= 3 && strcmp(argv[1], "older") == 0) {
		for (int i = 2; i < argc; i++)
			printf("%d", release_older(argv[i], 2, 6, 33));
		printf("\n");
		return 0;
	}
	return 2;
}
"""

# /proc/PID/smaps as 2.6.20 prints it (fs/proc/task_mmu.c show_map_internal()): no Pss, no Locked,
# no VmFlags, a space after the inode of an unnamed mapping; the locked mapping at 0x2aaaaaaab000
# and a merged anonymous VMA after it.
SMAPS_2620 = """\
00400000-0040b000 r-xp 00000000 00:01 1234                               /probe
Size:                44 kB
Rss:                 44 kB
Shared_Clean:         0 kB
Shared_Dirty:         0 kB
Private_Clean:       44 kB
Private_Dirty:        0 kB
2aaaaaaab000-2aaaaaaaf000 rw-p 2aaaaaaab000 00:00 0
Size:                16 kB
Rss:                 16 kB
Shared_Clean:         0 kB
Shared_Dirty:         0 kB
Private_Clean:        0 kB
Private_Dirty:       16 kB
2aaaaaaaf000-2aaaaabbc000 rw-p 2aaaaaaaf000 00:00 0
Size:              1076 kB
Rss:                  8 kB
Shared_Clean:         0 kB
Shared_Dirty:         0 kB
Private_Clean:        0 kB
Private_Dirty:        8 kB
2aaaaabbc000-2aaaaabc0000 ---p 2aaaaabbc000 00:00 0
Size:                16 kB
Rss:                  0 kB
Shared_Clean:         0 kB
Shared_Dirty:         0 kB
Private_Clean:        0 kB
Private_Dirty:        0 kB
7fff5d5b6000-7fff5d5cb000 rwxp 7fff5d5b6000 00:00 0                      [stack]
Size:                84 kB
Rss:                 12 kB
Shared_Clean:         0 kB
Shared_Dirty:         0 kB
Private_Clean:        0 kB
Private_Dirty:       12 kB
""".replace(" 00:00 0\n", " 00:00 0 \n")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    work = tmp_path_factory.mktemp("old_eras")
    (work / "driver.c").write_text(DRIVER)
    exe = work / "driver"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-I", str(GUEST_TESTS), "-o", str(exe)]
        + [str(work / "driver.c"), *(str(GUEST_TESTS / f) for f in SOURCES)],
        check=True,
    )
    (work / "smaps2620").write_text(SMAPS_2620)

    def run(*args: str) -> Any:
        out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    run.fixture = lambda name: str(work / name)  # type: ignore[attr-defined]
    return run


# --- residency -------------------------------------------------------------------------------


def test_smaps_of_2_6_20_gives_each_vma_its_bounds_rss_and_protection(driver: Any) -> None:
    """2.6.20's smaps has Size and Rss but no VmFlags: the entries overlapping a range come back in
    order with their Rss, and the header's "rw-p"/"---p" as PROT_* bits."""
    got = driver("spans", driver.fixture("smaps2620"), "2aaaaaaab000", "2aaaaabbe000")
    assert got["n"] == 3
    locked, merged, guard = got["spans"]
    assert (locked["start"], locked["end"], locked["rss_kb"], locked["prot"]) == (0x2AAAAAAAB000, 0x2AAAAAAAF000, 16, 3)
    assert (merged["end"] - merged["start"], merged["rss_kb"]) == (1076 * 1024, 8)
    assert guard["prot"] == 0 and guard["rss_kb"] == 0
    assert driver("spans", driver.fixture("smaps2620"), "500000", "600000") == {"n": 0, "spans": []}
    assert driver("spans", driver.fixture("smaps2620"), "7fff5d5b6000", "7fff5d5b7000")["spans"][0]["prot"] == 7


@pytest.mark.parametrize(
    ("touch", "lo", "hi"),
    [
        ("1" * 24, 0, 24),  # the VMA is the range: Rss is exact
        ("0" * 24, 0, 24),
        ("101" + "0" * 18 + "111", 0, 24),
        ("110000001111000011110000", 4, 20),  # inside a larger VMA, neighbours resident: split off
        ("111100000000000000001111", 4, 20),  # none of the range resident, neighbours all
        ("000011111111111111110000", 4, 20),  # all of it, no neighbour
        ("101010101010101010101010", 3, 11),
    ],
)
def test_smaps_residency_agrees_with_mincore_and_leaves_the_vma_as_it_was(
    driver: Any, touch: str, lo: int, hi: int
) -> None:
    """On this host mincore(2) answers for anonymous memory, so the fallback can be held against
    it: the same count for a range that is a whole VMA, and for one inside a larger VMA whose other
    pages are resident too (the case of a 2.6.20 mapping merged with its neighbour: smaps Rss alone
    cannot tell, the PROT_EXEC toggle makes it an entry of its own). Afterwards the VMA is one
    again, with its protection; the record names smaps as the source."""
    got = driver("residency", touch, str(lo), str(hi), "3", "-")
    assert got["mincore"] == touch[lo:hi].count("1")
    assert got["smaps"] == got["mincore"]
    assert got["source"] == "smaps Rss: mincore(2) refuses anonymous mappings before 2.6.21 (ENOMEM)"
    assert got["vmas_before"] == got["vmas_after"] == 1 and got["prot_after"] == 3


def test_smaps_residency_of_prot_none_memory_and_of_a_hole(driver: Any) -> None:
    """PROT_NONE memory (protnone_*): Rss still counts its present entries (pte_present() is true
    for a PROT_NONE pte), as mincore(2) does, and the protection comes back as PROT_NONE. A hole in
    the range is null, as mincore's ENOMEM is."""
    got = driver("residency", "0011" * 6, "2", "14", "0", "-")
    assert got["smaps"] == got["mincore"] == 6 and got["prot_after"] == 0
    assert got["vmas_before"] == got["vmas_after"] == 1
    got = driver("residency", "1" * 24, "4", "10", "3", "hole")
    assert got["mincore"] == got["smaps"] == -1


# --- touching --------------------------------------------------------------------------------


def test_a_fresh_child_touching_present_pages_counts_no_fault(driver: Any) -> None:
    """A forked child shares its parent's pages copy-on-write, the probe's statics too: the walk
    writes its own bookkeeping before it reads the fault counters, so touching pages that are
    present and writable counts 0 (2.6.20 counted 1 on every populate_* case: touch_faults 'some')."""
    assert driver("touch") == {"minflt_touch": 0, "majflt_touch": 0}


# --- the parent's clock ----------------------------------------------------------------------


def test_a_clock_that_goes_back_gives_duration_0_and_says_by_how_much(driver: Any) -> None:
    """Readings 10.000, 10.004, 9.9985 (a tick moved the 2.6.20 clock back): the case took 0 ms,
    not -2, and the largest step back, 5.5 ms, is what the record's clock_backwards_us says."""
    assert driver("mono", "10.000", "10.004", "9.9985") == {"duration_ms": 0, "back_us": 5500}
    assert driver("mono", "10.000", "10.004", "10.001", "10.0122") == {"duration_ms": 12, "back_us": 3000}
    assert driver("mono", "5.0", "5.1", "5.2") == {"duration_ms": 200, "back_us": 0}


# --- huge pages ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["huge_mmap", "huge_map_locked_within", "huge_mlock"])
def test_a_pool_that_was_not_given_back_is_told_from_a_short_one(driver: Any, case: str) -> None:
    """2 huge pages needed. HugePages_Total 8 with none free: the pool is there but an earlier case
    kept its pages (2.6.32: the mincore(2) leak). Total 1: the pool itself is short, the wording of
    before. Total 0: no pool."""
    rec = driver("huge", case, "8", "0")
    assert rec["applicable"] is False
    assert rec["reason"] == (
        "only 0 huge pages free of 8 (HugePages_Total); an earlier case's pages were not given back"
    )
    assert driver("huge", case, "1", "1")["reason"] == "only 1 huge pages free"
    assert driver("huge", case, "0", "0")["reason"] == "no huge pages reserved (HugePages_Total 0)"


def test_kernel_releases_before_2_6_33_are_told_apart(driver: Any) -> None:
    """mincore(2) on hugetlb is safe from 2.6.33 (commit 4f16fc107d9c); uname releases as the
    guests print them: 2.6.20, 2.6.32 older; 2.6.33, 3.16.0, 4.4.178+, 6.1.0-18-amd64, 7.3 not;
    an unparsable one is not."""
    older = driver(
        "older", "2.6.20", "2.6.32", "2.6.32.71", "2.6.33", "3.16.0", "4.4.178+", "6.1.0-18-amd64", "7.3", "x"
    )
    assert older == 111000000


# --- this host: nothing changes --------------------------------------------------------------


def test_the_probe_on_a_modern_kernel_records_mincore_residency_and_no_clock_note(probe: Path) -> None:
    """Here mincore(2) answers for anonymous memory and CLOCK_MONOTONIC does not go back: no
    residency_source, no clock_backwards_us; a populated mapping is resident and touching it
    counts no fault."""
    out = subprocess.run(
        [str(probe), "run", "map_locked_under", "populate_map_populate", "protnone_mlock"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if '"kind":"case"' in line]
    assert len(records) == 3
    for rec in records:
        assert "residency_source" not in rec and "clock_backwards_us" not in rec
        assert rec["duration_ms"] >= 0
    populate = records[1]
    assert populate["resident_pages"] == populate["total_pages"] == 256
    assert populate["minflt_touch"] == 0
