/*
 * cases_droppable.c: area 15 of MAP_LOCKED.md, MAP_DROPPABLE (since 6.11, commit 9651fcedf7b9
 * "mm: add MAP_DROPPABLE for designating always lazily freeable mappings"). A mapping type of its
 * own (MAP_TYPE value 0x08), anonymous only; the kernel may drop its pages under pressure, so it
 * must never be locked:
 * - do_mmap(): "A locked or stack area makes no sense to be droppable" -- MAP_LOCKED (or
 *   MAP_HUGETLB) with MAP_DROPPABLE is EINVAL;
 * - mlock_fixup() (mm/mlock.c) skips VM_DROPPABLE VMAs: "don't set VM_LOCKED or VM_LOCKONFAULT
 *   and don't count";
 * - a mapping created after mlockall(MCL_FUTURE) inherits VM_LOCKED from mm->def_flags; until the
 *   fix "mm: prevent droppable mappings from being locked" (Anthony Yznaga, 2026, Fixes:
 *   9651fcedf7b9, Cc: stable) __mmap_complete() did not clear it for droppable mappings, so they
 *   were created locked and charged. droppable_mcl_future shows which kernels carry the fix.
 * Before 6.11 the MAP_TYPE value is unknown and mmap fails with EINVAL: not applicable.
 */
#include "cases.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define DROP_FLAGS (MAP_DROPPABLE | MAP_ANONYMOUS)

/* True when the kernel knows MAP_DROPPABLE; else the case is marked not applicable. */
static bool droppable_supported(const struct ctx *c, struct record *r)
{
	int err;
	void *p = mmap_noted(r, c->page, PROT_READ | PROT_WRITE, DROP_FLAGS, -1, &err,
			     "MAP_DROPPABLE|MAP_ANONYMOUS len=%zu (support check)", c->page);
	if (!p) {
		char nb[16];
		if (err == EINVAL)
			not_applicable(r, "MAP_DROPPABLE not supported (before 6.11)");
		else
			not_applicable(r, "MAP_DROPPABLE not supported here (%s)", errno_name(err, nb, sizeof(nb)));
		return false;
	}
	munmap(p, c->page);
	return true;
}

static void record_dp(struct record *r)
{
	char flags[168];
	snprintf(flags, sizeof(flags), " %s ", r->smaps.vmflags);
	rec_bool(r, "smaps_dp", r->smaps.found && strstr(flags, " dp ") != NULL);
}

enum drop_kind { DROP_ALONE, DROP_MAP_LOCKED, DROP_MLOCK, DROP_MCL_FUTURE };

struct drop_case {
	enum drop_kind kind;
};

static void run_droppable(const struct ctx *c, struct record *r, const void *arg)
{
	const struct drop_case *dc = arg;
	size_t size = small_size(c, 4);
	r->size = some((long long)size);
	if (!droppable_supported(c, r))
		return;
	prefault_stack();
	r->vmlck_before_kb = vmlck_now();

	int lerr = -1;
	if (dc->kind == DROP_MCL_FUTURE) {
		lerr = mlockall_noted(r, MCL_FUTURE, "MCL_FUTURE");
		rec_errno(r, "result_mlockall", lerr);
	}

	char *p;
	int flags = DROP_FLAGS | (dc->kind == DROP_MAP_LOCKED ? MAP_LOCKED : 0);
	if (dc->kind == DROP_MLOCK) {
		p = setup_mmap(r, c, "mmap(MAP_DROPPABLE)", size, PROT_READ | PROT_WRITE, flags, -1,
			       "MAP_DROPPABLE|MAP_ANONYMOUS len=%zu", size);
		if (!p)
			return;
		key_mlock(r, p, size, NULL);
	} else {
		p = key_mmap(r, size, PROT_READ | PROT_WRITE, flags, -1, NULL, "MAP_DROPPABLE|MAP_ANONYMOUS%s len=%zu",
			     dc->kind == DROP_MAP_LOCKED ? "|MAP_LOCKED" : "", size);
	}
	if (p) {
		record_mapping(r, p, size, c->page);
		record_dp(r);
		touch_key(r, p, size, c->page, true, NULL);
		rec_opt(r, "resident_after_touch", resident_count(p, size, c->page));
		munmap_noted(r, p, size, NULL);
	}
	if (lerr == 0)
		munlockall_noted(r);
	r->vmlck_end_kb = vmlck_now();
}

static const struct drop_case dk_alone = {DROP_ALONE}, dk_map_locked = {DROP_MAP_LOCKED}, dk_mlock = {DROP_MLOCK},
			      dk_mcl_future = {DROP_MCL_FUTURE};

static const struct case_def defs[] = {
	{"droppable_mmap", "mmap(MAP_DROPPABLE|MAP_ANONYMOUS) of 4 pages, no lock (the reference)", run_droppable, &dk_alone, false},
	{"droppable_map_locked", "mmap(MAP_DROPPABLE|MAP_ANONYMOUS|MAP_LOCKED) of 4 pages", run_droppable, &dk_map_locked, false},
	{"droppable_mlock", "mmap(MAP_DROPPABLE|MAP_ANONYMOUS) of 4 pages, then mlock", run_droppable, &dk_mlock, false},
	{"droppable_mcl_future", "mlockall(MCL_FUTURE), then mmap(MAP_DROPPABLE|MAP_ANONYMOUS) of 4 pages: locked or not?", run_droppable, &dk_mcl_future, false},
};
CASE_TABLE(cases_droppable, defs);
