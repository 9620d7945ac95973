/*
 * cases_prot.c: areas 7 and 13 of MAP_LOCKED.md.
 *
 * Area 7, PROT_NONE: a locked range that cannot be accessed cannot be populated (GUP refuses a
 * PROT_NONE VMA without FOLL_FORCE, and populate_vma_page_range() sets FOLL_FORCE only "for
 * regions that have any permissions other than PROT_NONE", mm/gup.c). What mlock returns there
 * is not documented; the case records it. Making a locked private range writable populates it:
 * mm/mprotect.c mprotect_fixup(), "Private VM_LOCKED VMA becoming writable: trigger COW to
 * avoid major fault on access".
 *
 * Area 13, the pattern from the 2015 LKML thread ("Re: [RFC PATCH] mmap.2: clarify MAP_LOCKED
 * semantic"): a PROT_NONE reservation whose pages a SIGSEGV handler maps on demand with
 * MAP_FIXED|MAP_LOCKED, until the limit refuses (mmap(2) ERRORS EAGAIN).
 */
#include "cases.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- area 7 ---------------------------------------------------------------------------- */

struct prot_case {
	bool map_locked; /* MAP_LOCKED|PROT_NONE is the key call; else mmap PROT_NONE, then mlock */
};

static void run_prot_none(const struct ctx *c, struct record *r, const void *arg)
{
	const struct prot_case *pc = arg;
	size_t size = small_size(c, 8);
	r->size = some((long long)size);
	r->vmlck_before_kb = vmlck_now();

	char *p;
	int err;
	if (pc->map_locked) {
		p = key_mmap(r, size, PROT_NONE, PRIV_ANON | MAP_LOCKED, -1, &err,
			     "PROT_NONE MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED len=%zu", size);
		if (!p) {
			r->vmlck_end_kb = vmlck_now();
			return;
		}
	} else {
		p = setup_mmap(r, c, "mmap", size, PROT_NONE, PRIV_ANON, -1, "PROT_NONE MAP_PRIVATE|MAP_ANONYMOUS len=%zu", size);
		if (!p)
			return;
		err = key_mlock(r, p, size, NULL);
	}
	record_mapping(r, p, size, c->page);
	step_snapshot(r, c, pc->map_locked ? "mmap_locked_prot_none" : "mlock_prot_none", err, p, size);

	int ret = mprotect(p, size, PROT_READ | PROT_WRITE);
	int merr = ret ? errno : 0;
	note_call(r, "mprotect", ret, merr, "PROT_READ|PROT_WRITE len=%zu", size);
	rec_errno(r, "result_mprotect", merr);
	opt_t res = resident_count(p, size, c->page);
	rec_opt(r, "resident_after_mprotect", res);
	rec_bool(r, "all_resident_after_mprotect", res.set && res.v == (long long)(size / c->page));
	rec_opt(r, "vmlck_after_mprotect_kb", vmlck_now());
	rec_opt(r, "smaps_locked_after_mprotect_kb", smaps_locked_kb_at(p));
	step_snapshot(r, c, "mprotect_read_write", merr, p, size);
	if (merr == 0) {
		/* Populated by mprotect or not: touching shows how many faults remain. */
		struct faults f = {0, 0};
		touch_pages(r, p, size, c->page, true, NULL, &f);
		rec_int(r, "minflt_touch_after_mprotect", f.minflt);
	}

	munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

/* ---- area 13 --------------------------------------------------------------------------- */

#define SEGV_MAX_PAGES 4096

static sigjmp_buf segv_env;
static volatile sig_atomic_t segv_mapped, segv_faults, segv_errno, segv_outside;
static volatile uintptr_t segv_base, segv_end, segv_last;
static volatile size_t segv_page;

/* Maps the faulting page with MAP_FIXED|MAP_LOCKED and returns, so the access is retried. Bounded:
 * a failed mmap, a fault outside the reservation, a second fault on the same page or more faults
 * than pages leave through siglongjmp, so the process cannot loop on SIGSEGV. */
static void segv_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(segv_page - 1);
	segv_faults = segv_faults + 1;
	if (a < segv_base || a >= segv_end) {
		segv_outside = 1;
		siglongjmp(segv_env, 1);
	}
	if (a == segv_last || segv_faults > SEGV_MAX_PAGES + 1) {
		segv_errno = -1; /* the mapping did not stick: stop */
		siglongjmp(segv_env, 1);
	}
	segv_last = a;
	void *p = sys_mmap((void *)a, segv_page, PROT_READ | PROT_WRITE, PRIV_ANON | MAP_FIXED | MAP_LOCKED, -1, 0);
	if (p == MAP_FAILED) {
		segv_errno = errno;
		siglongjmp(segv_env, 1);
	}
	segv_mapped = segv_mapped + 1;
}

static void run_segv_map_fixed(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	/* Enough pages to pass the limit by a few; at least 64 where nothing limits. */
	size_t n = limited(c) ? limit_pages(c) + 16 : 64;
	if (!limited(c) && c->soft != RLIM_INFINITY && limit_pages(c) + 16 > n)
		n = limit_pages(c) + 16;
	if (n < 64)
		n = 64;
	if (n > SEGV_MAX_PAGES) {
		not_applicable(r, "limit above %d pages: the handler would map too many", SEGV_MAX_PAGES - 16);
		return;
	}
	size_t size = n * c->page;
	r->size = some((long long)size);
	r->vmlck_before_kb = vmlck_now();
	prefault_stack();

	char *base = setup_mmap(r, c, "mmap", size, PROT_NONE, PRIV_ANON | MAP_NORESERVE, -1, "PROT_NONE reservation len=%zu", size);
	if (!base)
		return;

	segv_base = (uintptr_t)base;
	segv_end = (uintptr_t)base + size;
	segv_page = c->page;
	segv_mapped = segv_faults = segv_errno = segv_outside = 0;
	segv_last = 0;
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &old);

	volatile size_t touched = 0;
	r->key_spans_calls = true; /* many mmaps succeed before the one that fails */
	key_begin(r);
	if (sigsetjmp(segv_env, 1) == 0) {
		volatile char *q = base;
		for (size_t i = 0; i < n; i++) {
			q[i * c->page] = 1;
			touched = touched + 1;
		}
	}
	sigaction(SIGSEGV, &old, NULL);
	int handler_err = segv_errno > 0 ? (int)segv_errno : 0;
	key_end(r, handler_err);
	if (segv_errno == -1 || segv_outside)
		rec_str(r, "failed_setup", segv_outside ? "fault outside the reservation" : "mapping did not stick");
	note_call(r, "mmap", handler_err ? -1 : 0, handler_err,
		  "MAP_FIXED|MAP_LOCKED one page per SIGSEGV, %d mapped", (int)segv_mapped);
	if (segv_faults > 0)
		record_signal(r, SIGSEGV); /* caught, once per page: listed once */

	rec_int(r, "pages_reserved", (long long)n);
	rec_int(r, "pages_mapped", segv_mapped);
	rec_int(r, "faults", segv_faults);
	rec_int(r, "pages_touched", (long long)touched);
	rec_bool(r, "all_pages_mapped", (size_t)segv_mapped == n);
	rec_bool(r, "stopped_at_limit", c->soft != RLIM_INFINITY &&
		 (size_t)segv_mapped == limit_pages(c) && handler_err != 0);
	rec_opt(r, "mapped_kb", some((long long)segv_mapped * (long long)c->page / 1024));
	record_mapping(r, base, size, c->page);

	munmap_noted(r, base, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

static const struct prot_case pc_mlock = {false}, pc_map_locked = {true};

static const struct case_def defs[] = {
	{"protnone_mlock", "mmap(PROT_NONE) of 8 pages, mlock it, then mprotect(PROT_READ|PROT_WRITE)", run_prot_none, &pc_mlock, false},
	{"protnone_map_locked", "mmap(PROT_NONE, MAP_LOCKED) of 8 pages, then mprotect(PROT_READ|PROT_WRITE)", run_prot_none, &pc_map_locked, false},
	{"segv_map_fixed_until_limit", "PROT_NONE reservation; a SIGSEGV handler maps each touched page MAP_FIXED|MAP_LOCKED until mmap fails", run_segv_map_fixed, NULL, false},
};
CASE_TABLE(cases_prot, defs);
