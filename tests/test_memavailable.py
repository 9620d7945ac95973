"""guest-tests/procfs.c memavailable_of(): MemAvailable, or on a kernel without it (before 3.14)
the estimate that kernel introduced, computed from the fields older kernels show; and the context
fields every probe record starts with (record.c emit_context()), which name the estimate only
where one was made.

The estimate is the formula of Linux 3.14, commit 34e431b0ae39 ("/proc/meminfo: provide estimated
available memory"), fs/proc/meminfo.c meminfo_proc_show(), in pages:

    wmark_low  = sum over every zone of zone->watermark[WMARK_LOW]  (/proc/zoneinfo "low", pages)
    available  = i.freeram - wmark_low                               (MemFree)
    pagecache  = pages[LRU_ACTIVE_FILE] + pages[LRU_INACTIVE_FILE]   (Active(file) + Inactive(file))
    pagecache -= min(pagecache / 2, wmark_low)
    available += pagecache
    available += NR_SLAB_RECLAIMABLE - min(NR_SLAB_RECLAIMABLE / 2, wmark_low)   (SReclaimable)
    if available < 0: available = 0

Before 2.6.28 (no split LRU, so no Active(file)/Inactive(file)) the probe takes the page cache,
Cached + Buffers, for the file LRU, and says so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

GUEST_TESTS = Path(__file__).resolve().parent.parent / "guest-tests"
PAGE = 4096
KB_PER_PAGE = PAGE // 1024
COMMIT = "34e431b0ae39"

# The driver builds a context as probe.c read_ctx() does, from fixture texts instead of /proc, and
# prints emit_context()'s fields as one JSON object. A zoneinfo path of "-" stands for none.
DRIVER = r"""
#include "record.h"
#include <stdio.h>
#include <string.h>

static char meminfo[1 << 14], zoneinfo[1 << 16], out[1 << 12];

int main(int argc, char **argv)
{
	if (argc != 3 || read_file(argv[1], meminfo, sizeof(meminfo)) < 0)
		return 2;
	bool zones = strcmp(argv[2], "-") != 0;
	if (zones && read_file(argv[2], zoneinfo, sizeof(zoneinfo)) < 0)
		return 2;
	struct ctx c;
	memset(&c, 0, sizeof(c));
	c.soft = c.hard = 65536;
	c.page = 4096;
	c.memtotal_kb = 262144;
	c.memavail_kb = memavailable_of(meminfo, zones ? zoneinfo : NULL, c.page, &c.memavail_estimate);
	struct json j;
	j_init(&j, out, sizeof(out));
	j_open(&j, '{');
	emit_context(&j, &c);
	j_close(&j, '}');
	puts(j.buf);
	return j.overflow;
}
"""

# /proc/meminfo of a 2.6.32 guest: the split LRU's file lists and SReclaimable, no MemAvailable.
MEMINFO_2632 = """\
MemTotal:         252580 kB
MemFree:          200000 kB
Buffers:             240 kB
Cached:            21000 kB
SwapCached:            0 kB
Active:            12000 kB
Inactive:          14000 kB
Active(anon):       6000 kB
Inactive(anon):     3996 kB
Active(file):       6000 kB
Inactive(file):    10004 kB
Unevictable:        5000 kB
Mlocked:               0 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:                 0 kB
Writeback:             0 kB
AnonPages:          9996 kB
Mapped:             1400 kB
Shmem:                 0 kB
Slab:               4000 kB
SReclaimable:       2404 kB
SUnreclaim:         1596 kB
KernelStack:         400 kB
PageTables:          300 kB
"""

# /proc/meminfo of 2.6.20 (fs/proc/proc_misc.c meminfo_read_proc()): one LRU, no file lists.
MEMINFO_2620 = """\
MemTotal:       252580 kB
MemFree:        100000 kB
Buffers:           400 kB
Cached:          40000 kB
SwapCached:          0 kB
Active:          30000 kB
Inactive:        20000 kB
SwapTotal:           0 kB
SwapFree:            0 kB
Dirty:               0 kB
Writeback:           0 kB
AnonPages:        9000 kB
Mapped:           1200 kB
Slab:             3000 kB
SReclaimable:     1000 kB
SUnreclaim:       2000 kB
"""

MEMINFO_MODERN = """\
MemTotal:         252580 kB
MemFree:          200000 kB
MemAvailable:     215321 kB
Buffers:             240 kB
Cached:            21000 kB
Active(file):       6000 kB
Inactive(file):    10004 kB
SReclaimable:       2404 kB
"""


def zoneinfo(*lows: int) -> str:
    """/proc/zoneinfo as 2.6.32's mm/vmstat.c zoneinfo_show_print() prints it, one zone per low
    watermark (min, high and the pagesets' "high:" lines must not be taken for it)."""
    names = ("DMA", "DMA32", "Normal")
    return "".join(
        f"Node 0, zone {names[i]:>8}\n  pages free     1000\n        min      {low * 4 // 5}\n"
        f"        low      {low}\n        high     {low * 6 // 5}\n        scanned  0\n"
        f"        spanned  4096\n        present  3998\n    nr_free_pages 1000\n    nr_inactive_anon 0\n"
        f"        protection: (0, 238, 238, 238)\n  pagesets\n    cpu: 0\n              count: 3\n"
        f"              high:  186\n              batch: 31\n  all_unreclaimable: 0\n"
        for i, low in enumerate(lows)
    )


def formula(free_kb: int, file_kb: int, slab_kb: int, lows: tuple[int, ...]) -> int:
    """The commit's arithmetic, written out again, in pages; the result in kB."""
    wmark_low = sum(lows)
    available = free_kb // KB_PER_PAGE - wmark_low
    pagecache = file_kb // KB_PER_PAGE
    pagecache -= min(pagecache // 2, wmark_low)
    available += pagecache
    slab = slab_kb // KB_PER_PAGE
    available += slab - min(slab // 2, wmark_low)
    return max(available, 0) * KB_PER_PAGE


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A function: meminfo text and zoneinfo text (or None) -> the context fields as parsed JSON
    and as printed."""
    work = tmp_path_factory.mktemp("memavailable")
    (work / "driver.c").write_text(DRIVER)
    exe = work / "driver"
    sources = [GUEST_TESTS / f for f in ("procfs.c", "record.c", "json.c", "measure.c")]
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-I", str(GUEST_TESTS), "-o", str(exe)]
        + [str(work / "driver.c"), *map(str, sources)],
        check=True,
    )
    count = iter(range(1000))

    def run(meminfo: str, zones: str | None) -> tuple[dict[str, Any], str]:
        n = next(count)
        (work / f"meminfo{n}").write_text(meminfo)
        zone_arg = "-"
        if zones is not None:
            (work / f"zoneinfo{n}").write_text(zones)
            zone_arg = str(work / f"zoneinfo{n}")
        out = subprocess.run(
            [str(exe), str(work / f"meminfo{n}"), zone_arg], capture_output=True, text=True, check=True
        ).stdout.strip()
        return json.loads(out), out

    return run


def test_a_2_6_32_kernel_gets_the_3_14_estimate_from_the_file_lru(context: Any) -> None:
    """MemFree 200000 kB = 50000 pages, low watermarks 5 + 1011 = 1016 pages; file LRU 6000 + 10004
    kB = 4001 pages, less min(2000, 1016) = 2985; SReclaimable 2404 kB = 601 pages, less min(300,
    1016) = 301; 50000 - 1016 + 2985 + 301 = 52270 pages = 209080 kB."""
    lows = (5, 1011)
    fields, _ = context(MEMINFO_2632, zoneinfo(*lows))
    assert fields["memavailable_kb"] == formula(200000, 6000 + 10004, 2404, lows) == 209080
    estimate = fields["memavailable_estimate"]
    assert "Active(file), Inactive(file)" in estimate and "SReclaimable" in estimate
    assert "zoneinfo low" in estimate and COMMIT in estimate and "Cached" not in estimate


def test_a_2_6_20_kernel_takes_the_page_cache_for_the_file_lru_and_says_so(context: Any) -> None:
    """No Active(file)/Inactive(file) before 2.6.28: Cached + Buffers (40000 + 400 kB = 10100 pages)
    stands in, not Active + Inactive (which hold anonymous memory too). Low watermarks 300 + 700 =
    1000 pages: 25000 - 1000 + (10100 - 1000) + (250 - 125) = 33225 pages = 132900 kB."""
    lows = (300, 700)
    fields, _ = context(MEMINFO_2620, zoneinfo(*lows))
    assert fields["memavailable_kb"] == formula(100000, 40000 + 400, 1000, lows) == 132900
    assert fields["memavailable_kb"] != formula(100000, 30000 + 20000, 1000, lows)
    estimate = fields["memavailable_estimate"]
    assert "Cached + Buffers" in estimate and "no file LRU before 2.6.28" in estimate
    assert "SReclaimable" in estimate and "no SReclaimable" not in estimate and COMMIT in estimate


def test_a_kernel_with_memavailable_is_read_as_ever_and_names_no_estimate(context: Any) -> None:
    """3.14 on: MemAvailable itself, zoneinfo not needed, and the context fields end where they
    always did (byte for byte), so observations and fingerprints of such kernels do not change."""
    for zones in (None, zoneinfo(5, 1011)):
        fields, text = context(MEMINFO_MODERN, zones)
        assert fields["memavailable_kb"] == 215321
        assert "memavailable_estimate" not in fields
        assert text == (
            '{"uid":0,"cap_ipc_lock":false,"rlimit_soft":65536,"rlimit_hard":65536,"page_size":4096,'
            '"memtotal_kb":262144,"memavailable_kb":215321}'
        )


def test_the_estimate_is_clamped_at_zero_and_needs_the_watermarks(context: Any) -> None:
    """available < 0 becomes 0, as in the commit; without /proc/zoneinfo's low watermarks there is
    no estimate (null, no estimate named), and without SReclaimable (before 2.6.19) slab counts 0."""
    tight = MEMINFO_2632.replace("MemFree:          200000 kB", "MemFree:             400 kB")
    fields, _ = context(tight, zoneinfo(5000, 6000))
    assert fields["memavailable_kb"] == formula(400, 16004, 2404, (5000, 6000)) == 0
    assert "memavailable_estimate" in fields

    fields, _ = context(MEMINFO_2632, None)
    assert fields["memavailable_kb"] is None and "memavailable_estimate" not in fields
    fields, _ = context(MEMINFO_2632, "Node 0, zone      DMA\n  pages free     1000\n")
    assert fields["memavailable_kb"] is None and "memavailable_estimate" not in fields

    no_slab = "".join(line + "\n" for line in MEMINFO_2620.splitlines() if not line.startswith("SReclaimable"))
    fields, _ = context(no_slab, zoneinfo(300, 700))
    assert fields["memavailable_kb"] == formula(100000, 40400, 0, (300, 700))
    assert "no SReclaimable (0)" in fields["memavailable_estimate"]


def test_the_probe_on_a_kernel_with_memavailable_records_no_estimate(probe: Path) -> None:
    """The real probe, here on the host: read_ctx() takes MemAvailable as it is."""
    if "MemAvailable:" not in Path("/proc/meminfo").read_text():
        pytest.skip("this kernel has no MemAvailable")
    out = subprocess.run([str(probe), "run", "limits"], capture_output=True, text=True, check=True).stdout
    record = json.loads(out.splitlines()[0])
    assert isinstance(record["memavailable_kb"], int) and "memavailable_estimate" not in record
