/*
 * cases_huge.c: area 9 of MAP_LOCKED.md, hugetlb. The guest reserves a few 2 MiB pages at boot
 * (hugepages=8); without a pool (HugePages_Total 0) these cases are not applicable.
 *
 * What is documented or plain in the code:
 * - An anonymous MAP_HUGETLB mapping reserves its huge pages at mmap time and fails when the pool
 *   cannot cover it (Documentation/mm/hugetlbfs_reserv.rst: "reserve huge pages at mmap() time
 *   ... if there were not enough huge pages to cover the mapping, the mmap() would fail").
 * - With MAP_NORESERVE nothing is reserved; a fault with no free huge page gets SIGBUS (same
 *   document: "If no huge page exists at page fault time, the task is sent a SIGBUS"; commit
 *   4a6018f7f4f1 "hugetlbfs: kill applications that use MAP_NORESERVE with SIGBUS instead of
 *   OOM-killer").
 * - hugetlb VMAs are never VM_LOCKED and not counted in locked_vm: mmap's VM_LOCKED is cleared
 *   for is_vm_hugetlb_page() (mm/mmap.c mmap_region(); mm/vma.c __mmap_complete() since 6.12),
 *   and mlock_fixup() skips them ("don't set VM_LOCKED or VM_LOCKONFAULT and don't count").
 *   The limit is still checked first (do_mmap(): can_do_mlock() and mlock_future_check()/
 *   mlock_future_ok(); do_mlock()), so an unprivileged caller can be refused a lock that would
 *   not have been counted.
 */
#include "cases.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum huge_kind { HUGE_MMAP, HUGE_MAP_LOCKED, HUGE_MLOCK };

struct huge_case {
	enum huge_kind kind;
	int pages;      /* huge pages to map; 0 = twice the pool (beyond the reserve) */
	bool noreserve; /* MAP_NORESERVE */
};

/* mmap(2): "MAP_HUGETLB (since Linux 2.6.32)"; an older kernel ignores the unknown flag (private
 * mappings ignore unknown flags) and maps small pages. A private hugetlb mapping reserves its page
 * at mmap time, so a kernel that knows the flag shows it in HugePages_Rsvd or refuses the mapping.
 * Asked only when the case's own mapping reserved and took nothing (a NORESERVE case, or a kernel
 * that ignored the flag), and not noted: the case's record stays what it was. */
static bool hugetlb_known(size_t hp)
{
	long long rsvd0 = meminfo_kb("HugePages_Rsvd");
	void *p = mmap(NULL, hp, PROT_READ | PROT_WRITE, PRIV_ANON | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		return true;
	long long rsvd1 = meminfo_kb("HugePages_Rsvd");
	munmap(p, hp);
	return rsvd1 != rsvd0;
}

/* mincore(2) on a hugetlb mapping before 2.6.33 walks its page tables as if they held small pages:
 * 2.6.32 mm/mincore.c do_mincore() has no hugetlb case, so pmd_none_or_clear_bad() takes each huge
 * page's pmd for a bad one, prints "mm/memory.c:144: bad pmd" (pmd_clear_bad()) and clears it
 * without freeing the page. The page is lost to the pool until reboot (HugePages_Free never comes
 * back) and reported not resident. Fixed by commit 4f16fc107d9c ("mm: hugetlb: fix hugepage memory
 * leak in mincore()", 2.6.33). smaps is safe there (show_smap() skips hugetlb VMAs) but has no Rss
 * for them, so residency comes from the pool: HugePages_Free before the key call less after it. */
static const char RESIDENCY_HUGE_FREE[] = "HugePages_Free delta: mincore(2) on hugetlb leaks the pages before 2.6.33";

static bool huge_mincore_leaks(void) { return kernel_older(2, 6, 33); }

static void run_huge(const struct ctx *c, struct record *r, const void *arg)
{
	const struct huge_case *hc = arg;
	if (c->huge_total <= 0 || c->huge_page_kb <= 0) {
		not_applicable(r, "no huge pages reserved (HugePages_Total %lld)", c->huge_total);
		return;
	}
	long long pages = hc->pages ? hc->pages : 2 * c->huge_total;
	if (hc->pages && c->huge_free < hc->pages) {
		/* The pool is large enough but not free: pages an earlier case's child took were not
		 * given back (2.6.32 lost them that way while the probe still called mincore(2) on its
		 * hugetlb mappings: huge_mincore_leaks()). */
		if (c->huge_total >= hc->pages)
			not_applicable(r, "only %lld huge pages free of %lld (HugePages_Total); an earlier case's pages "
					  "were not given back", c->huge_free, c->huge_total);
		else
			not_applicable(r, "only %lld huge pages free", c->huge_free);
		return;
	}
	size_t hp = (size_t)c->huge_page_kb * 1024;
	size_t size = (size_t)pages * hp;
	r->size = some((long long)size);
	rec_int(r, "huge_pages", pages);
	rec_int(r, "huge_page_kb", c->huge_page_kb);
	long long free0 = meminfo_kb("HugePages_Free"), rsvd0 = meminfo_kb("HugePages_Rsvd");
	rec_int(r, "hugepages_free_before", free0);
	r->vmlck_before_kb = vmlck_now();

	int flags = PRIV_ANON | MAP_HUGETLB | (hc->noreserve ? MAP_NORESERVE : 0);
	char *p;
	int err;
	if (hc->kind == HUGE_MLOCK) {
		p = setup_mmap(r, c, "mmap", size, PROT_READ | PROT_WRITE, flags, -1, "MAP_HUGETLB len=%zu", size);
		if (!p)
			return;
		err = key_mlock(r, p, size, NULL);
	} else {
		if (hc->kind == HUGE_MAP_LOCKED)
			flags |= MAP_LOCKED;
		p = key_mmap(r, size, PROT_READ | PROT_WRITE, flags, -1, &err, "MAP_HUGETLB%s%s len=%zu",
			     hc->kind == HUGE_MAP_LOCKED ? "|MAP_LOCKED" : "", hc->noreserve ? "|MAP_NORESERVE" : "", size);
	}
	long long free1 = meminfo_kb("HugePages_Free"), rsvd1 = meminfo_kb("HugePages_Rsvd");
	rec_int(r, "hugepages_free_after", free1);
	rec_int(r, "hugepages_free_delta", free1 - free0);
	rec_int(r, "hugepages_rsvd_delta", rsvd1 - rsvd0);
	if (p && free1 == free0 && rsvd1 == rsvd0 && !hugetlb_known(hp))
		not_applicable(r, "MAP_HUGETLB not supported (before 2.6.32): the kernel mapped small pages");
	if (p) {
		if (huge_mincore_leaks() && r->applicable) {
			/* Huge pages this private mapping took from the pool are the ones it has present:
			 * HugePages_Free counts reserved pages as free until they are faulted in. (A
			 * kernel that mapped small pages, not applicable above, is measured as usual.) */
			long long taken = free0 - free1;
			taken = taken < 0 ? 0 : taken > pages ? pages : taken;
			r->total_pages = some((long long)(size / c->page));
			r->resident_pages = some(taken * (long long)(hp / c->page));
			residency_note(RESIDENCY_HUGE_FREE);
			record_smaps(r, p);
		} else {
			record_mapping(r, p, size, c->page);
		}
		/* One byte per huge page: past the pool a NORESERVE mapping gets SIGBUS. */
		int sig = 0;
		size_t ok = touch_key(r, p, size, hp, true, &sig);
		rec_int(r, "huge_pages_touched", (long long)ok);
		rec_signal(r, "signal_touch", sig);
		if (hc->kind == HUGE_MLOCK && err == 0)
			munlock_noted(r, p, size, NULL);
		munmap_noted(r, p, size, NULL);
	}
	r->vmlck_end_kb = vmlck_now();
}

static const struct huge_case
	hc_mmap = {HUGE_MMAP, 2, false},
	hc_map_locked_within = {HUGE_MAP_LOCKED, 2, false},
	hc_map_locked_beyond = {HUGE_MAP_LOCKED, 0, false},
	hc_map_locked_noreserve_beyond = {HUGE_MAP_LOCKED, 0, true},
	hc_mlock = {HUGE_MLOCK, 2, false};

static const struct case_def defs[] = {
	{"huge_mmap", "mmap(MAP_HUGETLB) of 2 huge pages, no lock (the reference)", run_huge, &hc_mmap, false},
	{"huge_map_locked_within", "mmap(MAP_HUGETLB|MAP_LOCKED) of 2 huge pages, within the reserved pool", run_huge, &hc_map_locked_within, false},
	{"huge_map_locked_beyond", "mmap(MAP_HUGETLB|MAP_LOCKED) of twice the reserved pool", run_huge, &hc_map_locked_beyond, false},
	{"huge_map_locked_noreserve_beyond", "mmap(MAP_HUGETLB|MAP_LOCKED|MAP_NORESERVE) of twice the pool, then touch every huge page", run_huge, &hc_map_locked_noreserve_beyond, false},
	{"huge_mlock", "mmap(MAP_HUGETLB) of 2 huge pages, then mlock", run_huge, &hc_mlock, false},
};
CASE_TABLE(cases_huge, defs);
