/*
 * cases_account.c: areas 10 and 11 of MAP_LOCKED.md, how locked memory is counted.
 *
 * Area 10: locks do not stack and overlapping ranges count once (mlock(2) NOTES "Memory locks do
 * not stack ... unlocked by a single call to munlock()"; BUGS: before 4.9 the already locked part
 * of an overlapping range "were counted twice when checking against the limit"); munlock of the
 * middle splits the VMA and uncharges the middle only; and MAP_FIXED|MAP_LOCKED over a page that
 * is already locked, with the process at its limit (the LKML thread's SIGSEGV-handler scenario):
 * do_mmap() checks the limit (mlock_future_check()/mlock_future_ok()) with the new length added
 * to locked_vm before mmap_region() unmaps the old page.
 *
 * Area 11: fork(). mlock(2) NOTES: "Memory locks are not inherited by a child created via
 * fork(2) ... The mlockall() MCL_FUTURE and MCL_FUTURE | MCL_ONFAULT settings are not inherited by
 * a child created via fork(2)". The grandchild reports over a pipe.
 */
#include "cases.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- area 10 --------------------------------------------------------------------------- */

static void run_relock_overlap(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	/* At the limit, so a double count of the overlap would push the second mlock over it. */
	size_t size;
	if (c->soft == RLIM_INFINITY) {
		size = MIB;
	} else {
		size = limit_pages(c) * c->page;
		if (size < 2 * c->page) {
			not_applicable(r, "limit below two pages");
			return;
		}
	}
	if (!fits_in_ram(c, r, size))
		return;
	r->size = some((long long)size);
	size_t half = size / c->page / 2 * c->page;
	r->vmlck_before_kb = vmlck_now();

	char *p = setup_mmap(r, c, "mmap", size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, "MAP_PRIVATE|MAP_ANONYMOUS len=%zu", size);
	if (!p)
		return;
	int err = mlock_noted(r, p, half, "first half");
	step_snapshot(r, c, "mlock_first_half", err, p, size);
	if (err) {
		setup_failed(r, c, "mlock of the first half", err);
	} else {
		err = key_mlock(r, p, size, "whole range, overlapping the locked half,");
		record_mapping(r, p, size, c->page);
		step_snapshot(r, c, "mlock_whole", err, p, size);

		long long v1 = status_kb("VmLck");
		int err2 = mlock_noted(r, p, size, "whole range again");
		long long v2 = status_kb("VmLck");
		step_snapshot(r, c, "mlock_whole_again", err2, p, size);
		rec_errno(r, "result_relock_again", err2);
		rec_int(r, "vmlck_relock_delta_kb", v2 - v1);

		int uerr = munlock_noted(r, p, size, "once, whole range");
		long long v3 = status_kb("VmLck");
		step_snapshot(r, c, "munlock_once", uerr, p, size);
		rec_int(r, "vmlck_after_single_munlock_kb", v3);
		rec_bool(r, "single_munlock_unlocks", r->vmlck_before_kb.set && v3 == r->vmlck_before_kb.v);
	}
	munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

static void run_munlock_middle(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	size_t third = small_size(c, 12) / c->page / 3;
	if (third == 0) {
		if (!locks_refused(c)) {
			not_applicable(r, "limit below three pages");
			return;
		}
		third = 1; /* the MAP_LOCKED set-up is refused: not applicable below */
	}
	size_t t = third * c->page, size = 3 * t;
	r->size = some((long long)size);
	r->vmlck_before_kb = vmlck_now();
	char *p = setup_map_locked(r, c, size);
	if (!p)
		return;
	long long v0 = status_kb("VmLck");
	step_snapshot(r, c, "map_locked", 0, p, size);

	key_begin(r);
	int ret = munlock(p + t, t);
	int err = ret ? errno : 0;
	key_end(r, err);
	note_call(r, "munlock", ret, err, "middle third len=%zu", t);
	long long v1 = r->vmlck_after_kb.set ? r->vmlck_after_kb.v : -1;
	/* The key call is an unlock: report the mapping's locked size as VmLck after minus before. */
	record_mapping(r, p, size, c->page);
	rec_int(r, "vmlck_drop_kb", v0 - v1);
	rec_bool(r, "vmlck_drop_is_middle", v0 - v1 == (long long)(t / 1024));
	rec_int(r, "vma_count_after_munlock", vma_count(p, size));
	rec_lo(r, "middle_lo", smaps_lo_at(p + t));
	step_snapshot(r, c, "munlock_middle", err, p + t, t);

	int err2 = mlock_noted(r, p + t, t, "middle third again");
	rec_errno(r, "result_relock_middle", err2);
	rec_int(r, "vma_count_after_relock", vma_count(p, size));
	rec_int(r, "vmlck_after_relock_kb", status_kb("VmLck"));
	step_snapshot(r, c, "mlock_middle_again", err2, p, size);

	munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

static void run_map_fixed_at_limit(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	size_t size;
	if (!case_size(c, SZ_AT, &size, r))
		return;
	r->vmlck_before_kb = vmlck_now();
	char *p = setup_map_locked(r, c, size);
	if (!p)
		return;
	p[0] = 42; /* to tell the old page from a fresh one afterwards */
	long long v0 = status_kb("VmLck");
	step_snapshot(r, c, "map_locked_at_limit", 0, p, size);

	key_begin(r);
	char *q = sys_mmap(p, c->page, PROT_READ | PROT_WRITE, PRIV_ANON | MAP_FIXED | MAP_LOCKED, -1, 0);
	int err = q == MAP_FAILED ? errno : 0;
	key_end(r, err);
	note_call(r, "mmap", q == MAP_FAILED ? -1 : 0, err, "MAP_FIXED|MAP_LOCKED one page over the first locked page");
	record_mapping(r, p, size, c->page);
	if (r->vmlck_after_kb.set)
		rec_int(r, "vmlck_replace_delta_kb", r->vmlck_after_kb.v - v0);
	/* After a failure the old page must still be there (mmap(2) fails before unmapping). */
	rec_bool(r, "old_page_kept", p[0] == 42);
	step_snapshot(r, c, "map_fixed_locked_page", err, p, size);

	munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

/* ---- area 11 --------------------------------------------------------------------------- */

struct child_report {
	long long vmlck_kb;
	int lo;       /* the inherited (or the child's own) mapping has `lo` in smaps */
	long long resident;
	int mmap_err; /* the child's own mmap (MCL_FUTURE case), -1 = not made */
};

struct fork_case {
	bool mcl_future; /* parent: mlockall(MCL_FUTURE) then fork, child maps; else MAP_LOCKED then fork */
};

static void run_fork(const struct ctx *c, struct record *r, const void *arg)
{
	const struct fork_case *fc = arg;
	size_t size = small_size(c, 8);
	r->size = some((long long)size);
	r->vmlck_before_kb = vmlck_now();
	prefault_stack();

	char *p = NULL;
	if (fc->mcl_future) {
		int err = mlockall_noted(r, MCL_FUTURE, "MCL_FUTURE");
		if (err) {
			setup_failed(r, c, "mlockall(MCL_FUTURE)", err);
			r->vmlck_end_kb = vmlck_now();
			return;
		}
	} else {
		p = setup_map_locked(r, c, size);
		if (!p)
			return;
		memset(p, 1, size);
	}

	int fds[2];
	if (pipe(fds) != 0) {
		set_result(r, errno);
		rec_str(r, "failed_setup", "pipe");
		return;
	}
	key_begin(r);
	pid_t pid = fork();
	int err = pid < 0 ? errno : 0;
	key_end(r, err);
	note_call(r, "fork", pid < 0 ? -1 : 0, err, "%s", "");
	if (pid == 0) {
		close(fds[0]);
		struct child_report rep = {0, 0, -1, -1};
		char *m = p;
		if (fc->mcl_future) {
			m = sys_mmap(NULL, size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, 0);
			rep.mmap_err = m == MAP_FAILED ? errno : 0;
		}
		rep.vmlck_kb = status_kb("VmLck");
		if (m != MAP_FAILED) {
			rep.lo = smaps_lo_at(m);
			opt_t res = resident_count(m, size, c->page);
			rep.resident = res.set ? res.v : -1;
		}
		write_all(fds[1], (const char *)&rep, sizeof(rep));
		_exit(0);
	}
	close(fds[1]);
	struct child_report rep;
	memset(&rep, 0, sizeof(rep));
	bool got = false;
	if (pid > 0) {
		ssize_t n;
		do
			n = read(fds[0], &rep, sizeof(rep));
		while (n < 0 && errno == EINTR);
		got = n == (ssize_t)sizeof(rep);
		int st;
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
	}
	close(fds[0]);
	if (got) {
		rec_int(r, "child_vmlck_kb", rep.vmlck_kb);
		rec_lo(r, "child_map_locked", rep.lo);
		rec_int(r, "child_resident_pages", rep.resident);
		if (fc->mcl_future) {
			rec_errno(r, "child_result_mmap", rep.mmap_err);
		}
	} else {
		rec_str(r, "failed_setup", "no report from the forked child");
	}

	if (fc->mcl_future) {
		/* The contrast: the parent's own later mapping is locked. */
		int merr;
		char *m = mmap_noted(r, size, PROT_READ | PROT_WRITE, PRIV_ANON, -1, &merr, "parent, after fork, len=%zu", size);
		rec_errno(r, "parent_result_mmap", merr);
		if (m) {
			rec_lo(r, "parent_map_locked", smaps_lo_at(m));
			munmap(m, size);
		}
		munlockall_noted(r);
	} else {
		record_mapping(r, p, size, c->page);
		munmap_noted(r, p, size, NULL);
	}
	r->vmlck_end_kb = vmlck_now();
}

static const struct fork_case fk_locks = {false}, fk_future = {true};

static const struct case_def defs[] = {
	{"account_relock_overlap", "at the limit: mlock the first half, then the whole range, again, then munlock once", run_relock_overlap, NULL, false},
	{"account_munlock_middle", "mmap(MAP_LOCKED) of 3 parts, munlock the middle one (VMA split), then mlock it again", run_munlock_middle, NULL, false},
	{"account_map_fixed_at_limit", "at the limit: mmap(MAP_FIXED|MAP_LOCKED) of one page over an already locked page", run_map_fixed_at_limit, NULL, false},
	{"fork_locks_not_inherited", "mmap(MAP_LOCKED) of 8 pages, fork: the child's VmLck and the mapping's lo flag", run_fork, &fk_locks, false},
	{"fork_mcl_future_not_inherited", "mlockall(MCL_FUTURE), fork: the child's own new mapping is not locked", run_fork, &fk_future, false},
};
CASE_TABLE(cases_account, defs);
