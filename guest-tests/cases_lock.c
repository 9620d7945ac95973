/*
 * cases_lock.c: areas 1, 2, 3 and 6 of MAP_LOCKED.md. One anonymous mapping, locked by
 * MAP_LOCKED or afterwards by mlock/mlock2/mlockall, sized under, at or over RLIMIT_MEMLOCK;
 * and the populate family (residency on return, faults in the call and on touch).
 *
 * Area 3 (CAP_IPC_LOCK with a tiny or zero limit) needs no case of its own: the harness runs
 * every case as root under 64K and 0, and the *_over cases then succeed where the user fails
 * (getrlimit(2): "Since Linux 2.6.9, no limits are placed on the amount of memory that a
 * privileged process may lock").
 */
#include "cases.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_mlock2
#if defined(__x86_64__)
#define SYS_mlock2 325
#else
#error "SYS_mlock2: add this architecture's number"
#endif
#endif

enum lock_op { OP_NONE, OP_MLOCK, OP_MLOCK2, OP_MLOCK2_ONFAULT, OP_MLOCKALL };

/* Sizes of the mlockall cases: mlockall(MCL_CURRENT) compares the whole address space
 * (mm->total_vm, VmSize) with the limit, so "under" and "at" are measured against what is left
 * of the limit after the probe's own text, data and stack. */
enum { SZ_RULE, SZ_ROOM_HALF, SZ_ROOM_ALL };

/* One mapping, optionally locked after the fact; the key call is mmap itself for OP_NONE. */
struct lock_case {
	enum size_rule size;
	int room; /* SZ_ROOM_*: overrides size */
	int mmap_flags;
	enum lock_op op;
	bool touch; /* populate family: write one byte per page after the call */
};

static const char *mmap_flags_str(int flags, char *buf, size_t cap)
{
	snprintf(buf, cap, "MAP_PRIVATE|MAP_ANONYMOUS%s%s%s", (flags & MAP_LOCKED) ? "|MAP_LOCKED" : "",
		 (flags & MAP_POPULATE) ? "|MAP_POPULATE" : "", (flags & MAP_NONBLOCK) ? "|MAP_NONBLOCK" : "");
	return buf;
}

/* Returns the errno of the lock call (0 on success); captured before note_call can clobber it. */
static int lock_op(struct record *r, enum lock_op op, void *p, size_t size)
{
	int err = 0;
	switch (op) {
	case OP_NONE:
		break;
	case OP_MLOCK:
		err = mlock_noted(r, p, size, NULL);
		break;
	case OP_MLOCK2:
	case OP_MLOCK2_ONFAULT: {
		/* Via syscall(2): glibc's wrapper reports a kernel without mlock2 as EINVAL, and this
		 * should show what the kernel itself says (ENOSYS before 4.4). */
		int flags = op == OP_MLOCK2_ONFAULT ? MLOCK_ONFAULT : 0;
		int ret = (int)syscall(SYS_mlock2, p, size, flags);
		err = ret ? errno : 0;
		note_call(r, "mlock2", ret, err, "%s len=%zu", flags ? "MLOCK_ONFAULT" : "0", size);
		if (err == ENOSYS)
			not_applicable(r, "mlock2 not supported (before 4.4)");
		break;
	}
	case OP_MLOCKALL:
		err = mlockall_noted(r, MCL_CURRENT, "MCL_CURRENT");
		break;
	}
	return err;
}

/* The room the limit leaves beside the address space as it is now (VmSize), in bytes. */
static bool room_size(const struct ctx *c, int room, size_t *size, struct record *r)
{
	if (c->soft == RLIM_INFINITY) {
		if (room == SZ_ROOM_ALL) {
			not_applicable(r, "no finite limit");
			return false;
		}
		*size = MIB;
		r->size = some((long long)*size);
		return true;
	}
	long long vmsize_kb = status_kb("VmSize");
	long long lim = (long long)(c->soft / c->page) * (long long)c->page;
	long long left = lim - vmsize_kb * 1024;
	rec_int(r, "vmsize_before_kb", vmsize_kb);
	if (left < (long long)c->page) {
		not_applicable(r, "the address space (VmSize %lld kB) already fills the limit", vmsize_kb);
		return false;
	}
	long long s = room == SZ_ROOM_ALL ? left : (left / 2) / (long long)c->page * (long long)c->page;
	if (s < (long long)c->page)
		s = (long long)c->page;
	*size = (size_t)s;
	r->size = some(s);
	return true;
}

static void run_lock_case(const struct ctx *c, struct record *r, const void *arg)
{
	const struct lock_case *lc = arg;
	char fb[96];
	size_t size;

	if (lc->room != SZ_RULE) {
		/* Everything the case will use is in place before VmSize is read. */
		prefault_stack();
		if (!room_size(c, lc->room, &size, r))
			return;
	} else if (!case_size(c, lc->size, &size, r)) {
		return;
	}

	r->vmlck_before_kb = vmlck_now();

	char *p;
	int err;
	if (lc->op == OP_NONE) {
		p = key_mmap(r, size, PROT_READ | PROT_WRITE, lc->mmap_flags, -1, &err, "%s len=%zu",
			     mmap_flags_str(lc->mmap_flags, fb, sizeof(fb)), size);
	} else {
		p = mmap_noted(r, size, PROT_READ | PROT_WRITE, lc->mmap_flags, -1, &err, "%s len=%zu",
			       mmap_flags_str(lc->mmap_flags, fb, sizeof(fb)), size);
		if (!p) {
			char nb[16];
			not_applicable(r, "setup mmap failed: %s", errno_name(err, nb, sizeof(nb)));
			return;
		}
		/* lock_op notes its call inside the key window (key_mlock() notes it after key_end). */
		key_begin(r);
		err = lock_op(r, lc->op, p, size);
		key_end(r, err);
	}

	if (p) {
		record_residency(r, p, size, c->page);
		if (lc->touch && err == 0)
			touch_key(r, p, size, c->page, true, NULL);
		record_smaps(r, p);
	}

	/* munlockall only after a successful mlockall, so a failed one that leaked shows in vmlck_end. */
	if (lc->op == OP_MLOCKALL && err == 0)
		munlockall_noted(r);
	if (p)
		munmap_noted(r, p, size, NULL);
	r->vmlck_end_kb = vmlck_now();
}

static void run_limits(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c;
	(void)arg;
	struct rlimit rl;
	int ret = getrlimit(RLIMIT_MEMLOCK, &rl);
	int err = ret ? errno : 0;
	note_call(r, "getrlimit", ret, err, "RLIMIT_MEMLOCK");
	set_result(r, err);
	r->vmlck_before_kb = vmlck_now();
}

static const struct lock_case
	lc_map_locked_under = {SZ_UNDER, SZ_RULE, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_map_locked_at = {SZ_AT, SZ_RULE, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_map_locked_over = {SZ_OVER, SZ_RULE, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_mlock_under = {SZ_UNDER, SZ_RULE, PRIV_ANON, OP_MLOCK, false},
	lc_mlock_at = {SZ_AT, SZ_RULE, PRIV_ANON, OP_MLOCK, false},
	lc_mlock_over = {SZ_OVER, SZ_RULE, PRIV_ANON, OP_MLOCK, false},
	lc_mlock2_under = {SZ_UNDER, SZ_RULE, PRIV_ANON, OP_MLOCK2, false},
	lc_mlock2_at = {SZ_AT, SZ_RULE, PRIV_ANON, OP_MLOCK2, false},
	lc_mlock2_over = {SZ_OVER, SZ_RULE, PRIV_ANON, OP_MLOCK2, false},
	lc_mlock2_onfault_over = {SZ_OVER, SZ_RULE, PRIV_ANON, OP_MLOCK2_ONFAULT, false},
	lc_mlockall_under = {SZ_UNDER, SZ_ROOM_HALF, PRIV_ANON, OP_MLOCKALL, false},
	lc_mlockall_at = {SZ_AT, SZ_ROOM_ALL, PRIV_ANON, OP_MLOCKALL, false},
	lc_mlockall_over = {SZ_OVER, SZ_RULE, PRIV_ANON, OP_MLOCKALL, false},
	lc_pop_map_locked = {SZ_POPULATE, SZ_RULE, PRIV_ANON | MAP_LOCKED, OP_NONE, true},
	lc_pop_map_locked_populate = {SZ_POPULATE, SZ_RULE, PRIV_ANON | MAP_LOCKED | MAP_POPULATE, OP_NONE, true},
	lc_pop_map_locked_populate_nonblock = {SZ_POPULATE, SZ_RULE, PRIV_ANON | MAP_LOCKED | MAP_POPULATE | MAP_NONBLOCK, OP_NONE, true},
	lc_pop_mmap_mlock = {SZ_POPULATE, SZ_RULE, PRIV_ANON, OP_MLOCK, true},
	lc_pop_map_populate = {SZ_POPULATE, SZ_RULE, PRIV_ANON | MAP_POPULATE, OP_NONE, true},
	lc_pop_map_populate_nonblock = {SZ_POPULATE, SZ_RULE, PRIV_ANON | MAP_POPULATE | MAP_NONBLOCK, OP_NONE, true};

static const struct case_def defs[] = {
	{"limits", "getrlimit(RLIMIT_MEMLOCK): the soft/hard limit the process runs with", run_limits, NULL, false},
	{"map_locked_under", "mmap(MAP_LOCKED) of half the soft limit (1 MiB when unlimited)", run_lock_case, &lc_map_locked_under, false},
	{"map_locked_at", "mmap(MAP_LOCKED) of exactly the soft limit", run_lock_case, &lc_map_locked_at, false},
	{"map_locked_over", "mmap(MAP_LOCKED) of the soft limit plus one page", run_lock_case, &lc_map_locked_over, false},
	{"mlock_under", "mmap, then mlock of half the soft limit (1 MiB when unlimited)", run_lock_case, &lc_mlock_under, false},
	{"mlock_at", "mmap, then mlock of exactly the soft limit", run_lock_case, &lc_mlock_at, false},
	{"mlock_over", "mmap, then mlock of the soft limit plus one page", run_lock_case, &lc_mlock_over, false},
	{"mlock2_under", "mmap, then mlock2(flags 0) of half the soft limit (1 MiB when unlimited)", run_lock_case, &lc_mlock2_under, false},
	{"mlock2_at", "mmap, then mlock2(flags 0) of exactly the soft limit", run_lock_case, &lc_mlock2_at, false},
	{"mlock2_over", "mmap, then mlock2(flags 0) of the soft limit plus one page", run_lock_case, &lc_mlock2_over, false},
	{"mlock2_onfault_over", "mmap, then mlock2(MLOCK_ONFAULT) of the soft limit plus one page", run_lock_case, &lc_mlock2_onfault_over, false},
	{"mlockall_under", "mmap of half the room the limit leaves beside VmSize, then mlockall(MCL_CURRENT)", run_lock_case, &lc_mlockall_under, false},
	{"mlockall_at", "mmap until VmSize equals the soft limit, then mlockall(MCL_CURRENT)", run_lock_case, &lc_mlockall_at, false},
	{"mlockall_over", "mmap of the soft limit plus one page, then mlockall(MCL_CURRENT)", run_lock_case, &lc_mlockall_over, false},
	{"populate_map_locked", "mmap(MAP_LOCKED) of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_map_locked, false},
	{"populate_map_locked_populate", "mmap(MAP_LOCKED|MAP_POPULATE) of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_map_locked_populate, false},
	{"populate_map_locked_populate_nonblock", "mmap(MAP_LOCKED|MAP_POPULATE|MAP_NONBLOCK) of 1 MiB: residency and faults", run_lock_case, &lc_pop_map_locked_populate_nonblock, false},
	{"populate_mmap_mlock", "mmap, then mlock of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_mmap_mlock, false},
	{"populate_map_populate", "mmap(MAP_POPULATE) of 1 MiB, no lock (the reference): residency and faults", run_lock_case, &lc_pop_map_populate, false},
	{"populate_map_populate_nonblock", "mmap(MAP_POPULATE|MAP_NONBLOCK) of 1 MiB, no lock: MAP_NONBLOCK cancels the populate", run_lock_case, &lc_pop_map_populate_nonblock, false},
};
CASE_TABLE(cases_lock, defs);
