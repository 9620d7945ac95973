/*
 * cases_future.c: areas 4 and 5 of MAP_LOCKED.md. mlockall(MCL_FUTURE) makes later mappings
 * locked, so the limit is checked when they are created: mmap, brk and mremap growth
 * (mlock(2): "If MCL_FUTURE has been specified, then a later system call (e.g., mmap(2),
 * sbrk(2), malloc(3)), may fail if it would cause the number of locked bytes to exceed the
 * permitted maximum"). And on-fault locking: MCL_ONFAULT and mlock2(MLOCK_ONFAULT) (since 4.4).
 *
 * While MCL_FUTURE is in force every new mapping of this process is locked and charged, so these
 * cases allocate nothing between mlockall and munlockall: measurements use static buffers.
 */
#include "cases.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_mlock2
#define SYS_mlock2 325
#endif

/* mlockall's errno goes into result_mlockall; the case goes on either way, because at limit 0
 * the refusal (EPERM, can_do_mlock()) and the unlocked mapping that follows are the finding. */
static int do_mlockall(struct record *r, int flags, const char *flags_str)
{
	int err = mlockall_noted(r, flags, flags_str);
	rec_errno(r, "result_mlockall", err);
	step_snapshot(r, NULL, "mlockall", err, NULL, 0);
	return err;
}

enum future_kind { FUT_MMAP, FUT_BRK, FUT_MREMAP };

struct future_case {
	enum future_kind kind;
	enum size_rule size;
};

static void run_future(const struct ctx *c, struct record *r, const void *arg)
{
	const struct future_case *fc = arg;
	size_t size;
	if (!case_size(c, fc->size, &size, r))
		return;
	prefault_stack();
	r->vmlck_before_kb = vmlck_now();

	/* mremap: the mapping to grow exists before MCL_FUTURE and is locked by it only if
	 * created after; create it after, as a program that locks first and grows later would. */
	int lerr = do_mlockall(r, MCL_FUTURE, "MCL_FUTURE");

	if (fc->kind == FUT_MMAP) {
		char *p = key_mmap(r, size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, NULL, "MAP_PRIVATE|MAP_ANONYMOUS len=%zu", size);
		if (p) {
			record_mapping(r, p, size, c->page);
			munmap_noted(r, p, size, NULL);
		}
	} else if (fc->kind == FUT_BRK) {
		/* The heap grows from the current break; the new pages start at the page boundary
		 * above it (brk(2); the kernel maps whole pages). */
		char *old = sys_sbrk(0);
		uintptr_t start = ((uintptr_t)old + c->page - 1) & ~(uintptr_t)(c->page - 1);
		key_begin(r);
		void *ret = sys_sbrk((intptr_t)size);
		int err = ret == (void *)-1 ? errno : 0;
		key_end(r, err);
		note_call(r, "sbrk", ret == (void *)-1 ? -1 : 0, err, "increment=%zu", size);
		if (err == 0) {
			record_mapping(r, (void *)start, size, c->page);
			void *back = sys_sbrk(-(intptr_t)size);
			note_call(r, "sbrk", back == (void *)-1 ? -1 : 0, errno, "increment=-%zu", size);
		}
	} else {
		char *p = setup_mmap(r, c, "mmap", c->page, PROT_READ | PROT_WRITE, PRIV_ANON, -1,
				     "MAP_PRIVATE|MAP_ANONYMOUS len=%zu", c->page);
		if (!p) {
			if (lerr == 0)
				munlockall_noted(r);
			r->vmlck_end_kb = vmlck_now();
			return;
		}
		long long before_grow = status_kb("VmLck");
		rec_int(r, "vmlck_before_grow_kb", before_grow);
		char *q = key_mremap(r, p, c->page, size, MREMAP_MAYMOVE, NULL, NULL, "old=%zu new=%zu MREMAP_MAYMOVE", c->page, size);
		if (r->vmlck_after_kb.set && before_grow >= 0)
			rec_int(r, "vmlck_growth_kb", r->vmlck_after_kb.v - before_grow);
		char *cur = q ? q : p;
		size_t cur_len = q ? size : c->page;
		record_mapping(r, cur, cur_len, c->page);
		munmap_noted(r, cur, cur_len, NULL);
	}
	if (lerr == 0)
		munlockall_noted(r);
	r->vmlck_end_kb = vmlck_now();
}

/* On-fault locking: the whole range is charged up front, nothing is populated, and pages are
 * locked as they are faulted in (mlock(2): MLOCK_ONFAULT "Lock pages that are currently resident
 * and mark the entire range so that the remaining nonresident pages are locked when they are
 * populated by a page fault"). The case touches the first half and measures again. */
static void touch_half(const struct ctx *c, struct record *r, char *p, size_t size)
{
	size_t half = (size / c->page) / 2 * c->page;
	touch_pages(r, p, half, c->page, true, NULL, NULL);
	opt_t res = resident_count(p, size, c->page);
	opt_t locked = smaps_locked_kb_at(p);
	long long vmlck = status_kb("VmLck");
	step_snapshot(r, c, "touch_first_half", 0, p, size);
	rec_int(r, "touched_pages", (long long)(half / c->page));
	rec_opt(r, "resident_after_touch", res);
	rec_bool(r, "resident_after_touch_is_touched", res.set && res.v == (long long)(half / c->page));
	rec_opt(r, "smaps_locked_after_touch_kb", locked);
	rec_int(r, "vmlck_after_touch_kb", vmlck);
}

static void run_future_onfault_mmap(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	size_t size;
	if (!case_size(c, SZ_UNDER, &size, r))
		return;
	if (size < 2 * c->page) {
		not_applicable(r, "limit below two pages: no half to touch");
		return;
	}
	prefault_stack();
	r->vmlck_before_kb = vmlck_now();
	int lerr = do_mlockall(r, MCL_FUTURE | MCL_ONFAULT, "MCL_FUTURE|MCL_ONFAULT");
	if (lerr == EINVAL) /* valid flags since 4.4: only a kernel that predates MCL_ONFAULT refuses them */
		not_applicable(r, "MCL_ONFAULT not supported (before 4.4)");
	char *p = key_mmap(r, size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, NULL, "MAP_PRIVATE|MAP_ANONYMOUS len=%zu", size);
	if (p) {
		record_mapping(r, p, size, c->page);
		touch_half(c, r, p, size);
		munmap_noted(r, p, size, NULL);
	}
	if (lerr == 0)
		munlockall_noted(r);
	r->vmlck_end_kb = vmlck_now();
}

static void run_future_onfault_alone(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c, (void)arg;
	r->vmlck_before_kb = vmlck_now();
	key_begin(r);
	int ret = mlockall(MCL_ONFAULT);
	int err = ret ? errno : 0;
	key_end(r, err);
	note_call(r, "mlockall", ret, err, "MCL_ONFAULT");
	if (err == 0)
		munlockall_noted(r);
	r->vmlck_end_kb = vmlck_now();
}

static void run_onfault_mlock2_touch(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	size_t size;
	if (!case_size(c, SZ_POPULATE, &size, r))
		return;
	r->vmlck_before_kb = vmlck_now();
	char *p = setup_mmap(r, c, "mmap", size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, "MAP_PRIVATE|MAP_ANONYMOUS len=%zu", size);
	if (!p)
		return;
	key_begin(r);
	int ret = (int)syscall(SYS_mlock2, p, size, MLOCK_ONFAULT);
	int err = ret ? errno : 0;
	key_end(r, err);
	note_call(r, "mlock2", ret, err, "MLOCK_ONFAULT len=%zu", size);
	if (err == ENOSYS)
		not_applicable(r, "mlock2 not supported (before 4.4)");
	record_mapping(r, p, size, c->page);
	if (err == 0 && size >= 2 * c->page)
		touch_half(c, r, p, size);
	munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

static const struct future_case
	fc_mmap_under = {FUT_MMAP, SZ_UNDER},
	fc_mmap_over = {FUT_MMAP, SZ_OVER},
	fc_brk_under = {FUT_BRK, SZ_UNDER},
	fc_brk_over = {FUT_BRK, SZ_OVER},
	fc_mremap_over = {FUT_MREMAP, SZ_OVER};

static const struct case_def defs[] = {
	{"future_mmap_under", "mlockall(MCL_FUTURE), then a plain mmap of half the soft limit (1 MiB when unlimited)", run_future, &fc_mmap_under, false},
	{"future_mmap_over", "mlockall(MCL_FUTURE), then a plain mmap of the soft limit plus one page", run_future, &fc_mmap_over, false},
	{"future_brk_under", "mlockall(MCL_FUTURE), then sbrk growth by half the soft limit (1 MiB when unlimited)", run_future, &fc_brk_under, false},
	{"future_brk_over", "mlockall(MCL_FUTURE), then sbrk growth by the soft limit plus one page", run_future, &fc_brk_over, false},
	{"future_mremap_over", "mlockall(MCL_FUTURE), mmap one page, then mremap it to the soft limit plus one page", run_future, &fc_mremap_over, false},
	{"future_onfault_mmap", "mlockall(MCL_FUTURE|MCL_ONFAULT), mmap of half the soft limit, then touch half of it", run_future_onfault_mmap, NULL, false},
	{"future_onfault_alone", "mlockall(MCL_ONFAULT) without MCL_CURRENT or MCL_FUTURE", run_future_onfault_alone, NULL, false},
	{"onfault_mlock2_touch", "mmap, mlock2(MLOCK_ONFAULT) of 1 MiB (capped to the limit), then touch half of it", run_onfault_mlock2_touch, NULL, false},
};
CASE_TABLE(cases_future, defs);
