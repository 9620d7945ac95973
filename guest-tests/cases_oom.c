/*
 * cases_oom.c: area 14 of MAP_LOCKED.md, more than the guest can hold.
 *
 * Sizes are relative to the guest's RAM read at run time: "above" is MemTotal + 64 MiB, "between"
 * is halfway between MemAvailable and MemTotal. Before 3.14 MemAvailable is the estimate that
 * kernel introduced, from older fields (procfs.c memavailable_kb(); the record's
 * memavailable_estimate says which). Possible outcomes, all of them findings:
 * - an errno before anything is locked: the limit (EAGAIN/EPERM, checked first in do_mmap()) or
 *   the overcommit heuristic (ENOMEM; mm/util.c __vm_enough_memory(), OVERCOMMIT_GUESS refuses
 *   a single mapping larger than RAM + swap; MAP_NORESERVE skips it, mmap(2) MAP_NORESERVE and
 *   proc(5) /proc/sys/vm/overcommit_memory);
 * - a partial population that mmap reports as success (mmap(2) MAP_LOCKED "doesn't fail with
 *   ENOMEM if this fails");
 * - the OOM killer: the child runs with oom_score_adj 1000, so it is the one chosen; the parent
 *   then reports status "killed" and, from the kernel log, "oom_killed": true.
 *
 * Only meaningful where the limit allows the size (privileged, or unlimited). Elsewhere the cases
 * are not applicable ("limit below the size"), except oom_map_locked_above_total, which keeps
 * showing that the limit refuses before anything else is tried.
 *
 * On a machine with more than 1 GiB of RAM (the host, not a guest) the cases are not applicable:
 * exhausting the memory of a real machine on purpose is not a test.
 */
#include "cases.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define OOM_MAX_MEMTOTAL_KB (1024LL * 1024)

enum oom_size { OOM_ABOVE_TOTAL, OOM_BETWEEN };

struct oom_case {
	enum oom_size size;
	bool map_locked; /* key call mmap(MAP_LOCKED...); else mmap, then mlock (key) */
	bool noreserve;
	bool always;     /* applicable under every limit: shows the limit refusing first */
};

static void run_oom(const struct ctx *c, struct record *r, const void *arg)
{
	const struct oom_case *oc = arg;
	if (c->memtotal_kb < 0 || c->memavail_kb < 0) {
		not_applicable(r, "no MemTotal/MemAvailable in /proc/meminfo (nor the fields to estimate it)");
		return;
	}
	if (c->memtotal_kb > OOM_MAX_MEMTOTAL_KB) {
		not_applicable(r, "MemTotal above 1 GiB: not a guest, memory is not exhausted on purpose here");
		return;
	}
	long long kb = oc->size == OOM_ABOVE_TOTAL ? c->memtotal_kb + 64 * 1024
						  : (c->memavail_kb + c->memtotal_kb) / 2;
	size_t size = (size_t)kb * 1024 / c->page * c->page;
	r->size = some((long long)size);
	char ob[16] = "";
	read_file("/proc/sys/vm/overcommit_memory", ob, sizeof(ob));
	rec_int(r, "overcommit_memory", atoll(ob));
	rec_int(r, "size_kb", (long long)(size / 1024));
	if (!oc->always && limited(c) && (unsigned long long)size > (unsigned long long)c->soft) {
		not_applicable(r, "limit below the size");
		return;
	}
	r->vmlck_before_kb = vmlck_now();
	int flags = PRIV_ANON | (oc->noreserve ? MAP_NORESERVE : 0);
	char *p;
	if (oc->map_locked) {
		p = key_mmap(r, size, PROT_READ | PROT_WRITE, flags | MAP_LOCKED, -1, NULL, "MAP_LOCKED%s len=%zu",
			     oc->noreserve ? "|MAP_NORESERVE" : "", size);
	} else {
		int err;
		p = mmap_noted(r, size, PROT_READ | PROT_WRITE, flags, -1, &err, "%s len=%zu",
			       oc->noreserve ? "MAP_NORESERVE" : "plain", size);
		if (!p) {
			/* Not setup_failed(): the case stays applicable whatever the errno, and reads VmLck. */
			set_result(r, err);
			rec_str(r, "failed_setup", "mmap");
			r->vmlck_end_kb = vmlck_now();
			return;
		}
		key_mlock(r, p, size, NULL);
	}
	if (p) {
		record_mapping(r, p, size, c->page);
		rec_opt(r, "memavailable_after_kb", some_if_valid(memavailable_kb(NULL))); /* estimated as before */
		munmap_noted(r, p, size, NULL);
	}
	r->vmlck_end_kb = vmlck_now();
}

static const struct oom_case
	oc_map_locked_above = {OOM_ABOVE_TOTAL, true, false, true},
	oc_map_locked_between = {OOM_BETWEEN, true, false, false},
	oc_map_locked_noreserve_above = {OOM_ABOVE_TOTAL, true, true, false},
	oc_mmap_mlock_between = {OOM_BETWEEN, false, false, false},
	oc_mmap_noreserve_mlock_above = {OOM_ABOVE_TOTAL, false, true, false};

static const struct case_def defs[] = {
	{"oom_map_locked_above_total", "mmap(MAP_LOCKED) of MemTotal + 64 MiB: which check refuses first", run_oom, &oc_map_locked_above, false},
	{"oom_map_locked_between", "mmap(MAP_LOCKED) of halfway between MemAvailable and MemTotal", run_oom, &oc_map_locked_between, false},
	{"oom_map_locked_noreserve_above_total", "mmap(MAP_LOCKED|MAP_NORESERVE) of MemTotal + 64 MiB", run_oom, &oc_map_locked_noreserve_above, false},
	{"oom_mmap_mlock_between", "mmap, then mlock of halfway between MemAvailable and MemTotal", run_oom, &oc_mmap_mlock_between, false},
	{"oom_mmap_noreserve_mlock_above_total", "mmap(MAP_NORESERVE), then mlock of MemTotal + 64 MiB", run_oom, &oc_mmap_noreserve_mlock_above, false},
};
CASE_TABLE(cases_oom, defs);
