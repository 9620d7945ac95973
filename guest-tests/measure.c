/*
 * measure.c: the measurements of a case: rusage faults, mincore residency, the smaps entry of a
 * mapping, the accounting around the key call; touching pages with SIGSEGV/SIGBUS caught; the
 * sizes a case runs at.
 *
 * Measuring must not disturb what is measured: mincore's vector is static, like the /proc readers'
 * buffer (procfs.c), so a measurement neither maps memory (which mlockall(MCL_FUTURE) would lock
 * and charge) nor takes faults inside the window around a key call.
 */
#include "measure.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* ---- measurements ------------------------------------------------------------------------ */

struct faults faults_now(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (struct faults){ru.ru_minflt, ru.ru_majflt};
}

/* Static so that measuring never maps memory; 128 Ki entries cover 512 MiB of 4 KiB pages. */
static unsigned char mincore_vec[128 * 1024];

opt_t resident_count(const void *addr, size_t len, size_t page)
{
	/* mincore(2) is exact: for anonymous memory a page is present or not; for a file mapping it
	 * reports the page cache (mmap(2) NOTES: "which pages of a mapping are currently resident"). */
	long long n = 0;
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(page - 1);
	uintptr_t end = (uintptr_t)addr + len;
	while (a < end) {
		size_t chunk = end - a;
		if (chunk > sizeof(mincore_vec) * page)
			chunk = sizeof(mincore_vec) * page;
		if (mincore((void *)a, chunk, mincore_vec) != 0)
			return none;
		size_t pages = (chunk + page - 1) / page;
		for (size_t i = 0; i < pages; i++)
			n += mincore_vec[i] & 1;
		a += pages * page;
	}
	return some(n);
}

void record_residency(struct record *r, const void *addr, size_t len, size_t page)
{
	r->total_pages = some((long long)((len + page - 1) / page));
	r->resident_pages = resident_count(addr, len, page);
}

void record_mapping(struct record *r, const void *addr, size_t len, size_t page)
{
	record_residency(r, addr, len, page);
	record_smaps(r, addr);
}

void record_smaps(struct record *r, const void *addr) { smaps_at(addr, &r->smaps); }

int smaps_lo_at(const void *addr)
{
	struct smaps_info si;
	smaps_at(addr, &si);
	return smaps_lo_of(&si);
}

opt_t smaps_locked_kb_at(const void *addr)
{
	struct smaps_info si;
	smaps_at(addr, &si);
	return si.found ? some(si.locked_kb) : none;
}

void key_begin(struct record *r)
{
	r->vmlck_key0_kb = status_kb("VmLck");
	meminfo_locked(&r->mlocked0_kb, &r->unevict0_kb);
	struct faults f = faults_now(); /* last: reading /proc must stay outside the window */
	r->minflt0 = f.minflt;
	r->majflt0 = f.majflt;
}

void key_end(struct record *r, int err)
{
	struct faults f = faults_now(); /* first, for the same reason */
	set_result(r, err);
	r->minflt_call = some(f.minflt - r->minflt0);
	r->majflt_call = some(f.majflt - r->majflt0);
	long long ml, ue;
	meminfo_locked(&ml, &ue);
	if (ml >= 0 && r->mlocked0_kb >= 0)
		r->meminfo_mlocked_delta_kb = some(ml - r->mlocked0_kb);
	if (ue >= 0 && r->unevict0_kb >= 0)
		r->meminfo_unevictable_delta_kb = some(ue - r->unevict0_kb);
	r->vmlck_after_kb = some_if_valid(status_kb("VmLck"));
	if (err != 0 && !r->key_spans_calls && r->vmlck_after_kb.set && r->vmlck_key0_kb >= 0)
		rec_bool(r, "failed_call_kept_accounting", r->vmlck_after_kb.v == r->vmlck_key0_kb);
}

/* ---- touching with faults caught --------------------------------------------------------- */

static sigjmp_buf touch_env;
static volatile sig_atomic_t touch_armed, touch_sig;

/* SIGSEGV/SIGBUS during an armed touch: note the signal and leave the walk. Outside a touch the
 * default action is restored and the fault repeats, so an unexpected crash still kills the child
 * with its real signal (the parent reports it) instead of looping. */
static void touch_handler(int sig)
{
	if (touch_armed) {
		touch_armed = 0;
		touch_sig = sig;
		siglongjmp(touch_env, 1);
	}
	signal(sig, SIG_DFL);
}

void record_signal(struct record *r, int sig)
{
	if (r->nsigs < MAX_SIGS)
		r->sigs[r->nsigs++] = sig;
}

size_t touch_pages(struct record *r, void *p, size_t len, size_t page, bool write, int *sig, struct faults *flt)
{
	struct sigaction sa, old_segv, old_bus;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = touch_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);

	volatile size_t done = 0;
	volatile char *q = p;
	volatile char sink = 0;
	struct faults f0 = faults_now();
	touch_sig = 0;
	if (sigsetjmp(touch_env, 1) == 0) {
		touch_armed = 1;
		for (size_t off = 0; off < len; off += page) {
			if (write)
				q[off] = 1;
			else
				sink = (char)(sink + q[off]);
			done = done + 1;
		}
		touch_armed = 0;
	}
	struct faults f1 = faults_now();
	(void)sink;
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);
	if (touch_sig)
		record_signal(r, touch_sig);
	if (sig)
		*sig = touch_sig;
	if (flt) {
		flt->minflt += f1.minflt - f0.minflt;
		flt->majflt += f1.majflt - f0.majflt;
	}
	return done;
}

size_t touch_key(struct record *r, void *p, size_t len, size_t page, bool write, int *sig)
{
	struct faults f = {0, 0};
	size_t n = touch_pages(r, p, len, page, write, sig, &f);
	r->minflt_touch = some(f.minflt);
	r->majflt_touch = some(f.majflt);
	return n;
}

/* ---- sizes ------------------------------------------------------------------------------- */

/* The size rules of README.md, from the soft limit as this process sees it. False (with the
 * reason recorded) when the case cannot say anything under this limit or in this much RAM. */
bool case_size(const struct ctx *c, enum size_rule rule, size_t *size, struct record *r)
{
	bool unlimited = c->soft == RLIM_INFINITY;
	size_t lim_pages = unlimited ? 0 : (size_t)(c->soft & ~(rlim_t)(c->page - 1));
	size_t s = 0;

	switch (rule) {
	case SZ_UNDER:
		s = unlimited ? MIB : (size_t)((c->soft / 2) & ~(rlim_t)(c->page - 1));
		break;
	case SZ_AT:
		s = lim_pages;
		break;
	case SZ_OVER:
		if (!unlimited && __builtin_add_overflow(lim_pages, c->page, &s)) {
			not_applicable(r, "limit plus one page overflows");
			return false;
		}
		break;
	case SZ_POPULATE:
		s = MIB;
		if (!unlimited && !c->cap_ipc_lock) {
			if (lim_pages < s)
				s = lim_pages;
			if (s < c->page) /* at limit 0 the call is still made, and must fail */
				s = c->page;
		}
		break;
	}
	if (rule != SZ_UNDER && rule != SZ_POPULATE && unlimited) {
		not_applicable(r, "no finite limit");
		return false;
	}
	if (s == 0) {
		not_applicable(r, "size rounds down to 0 pages");
		return false;
	}
	r->size = some((long long)s);
	if (!fits_in_ram(c, r, s))
		return false;
	*size = s;
	return true;
}

bool fits_in_ram(const struct ctx *c, struct record *r, size_t size)
{
	/* Locking more than the guest can hold ends in the OOM killer, which is a separate scenario
	 * (the oom_* cases); here it would only hide the limit behaviour. */
	if (c->memavail_kb >= 0 && (unsigned long long)size > (unsigned long long)c->memavail_kb * 512) {
		not_applicable(r, "does not fit in guest RAM (size %zu > MemAvailable/2)", size);
		return false;
	}
	return true;
}

size_t small_size(const struct ctx *c, size_t want_pages)
{
	size_t pages = want_pages;
	if (limited(c)) {
		size_t lim = limit_pages(c);
		if (lim < pages)
			pages = lim;
		if (pages == 0)
			pages = 1;
	}
	return pages * c->page;
}

void setup_failed(struct record *r, const struct ctx *c, const char *what, int err)
{
	if (locks_refused(c) && err == EPERM) {
		not_applicable(r, "RLIMIT_MEMLOCK is 0: set-up %s refused (EPERM), as map_locked_over/mlock_over show", what);
		return;
	}
	set_result(r, err);
	rec_str(r, "failed_setup", what);
}

__attribute__((noinline)) void prefault_stack(void)
{
	/* Grows the stack VMA now, so total_vm stays put while a case compares it with the limit. */
	volatile char buf[256 * 1024];
	for (size_t i = 0; i < sizeof(buf); i += 1024)
		buf[i] = 0;
}
