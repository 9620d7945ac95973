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
#include <time.h>
#include <unistd.h>

/* ---- measurements ------------------------------------------------------------------------ */

struct faults faults_now(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (struct faults){ru.ru_minflt, ru.ru_majflt};
}

/* Static so that measuring never maps memory; 128 Ki entries cover 512 MiB of 4 KiB pages. */
static unsigned char mincore_vec[128 * 1024];

/* Where residency came from when it was not mincore(2) (NULL: mincore, as on every kernel from
 * 2.6.21 on, for every range but hugetlb before 2.6.33). A case's child measures one case, so this
 * is per record; record_init() resets it. */
static const char *residency_how;

const char *residency_source(void) { return residency_how; }
void residency_source_reset(void) { residency_how = NULL; }
void residency_note(const char *how) { residency_how = how; }

static const char RESIDENCY_SMAPS[] = "smaps Rss: mincore(2) refuses anonymous mappings before 2.6.21 (ENOMEM)";

/* Before 2.6.21 mincore(2) answers only for file mappings: mm/mincore.c do_mincore() returns
 * -ENOMEM for a VMA without vm_file ("Right now, we don't do any anonymous mappings"; 2.6.20),
 * the same errno as a hole in the range. Asked of the page holding a local variable (the stack is
 * an anonymous mapping), once, and only after mincore has failed, so a kernel whose mincore
 * answers never makes the extra call. */
static bool mincore_refuses_anon(void)
{
	static int refuses = -1;
	if (refuses < 0) {
		static unsigned char v;
		volatile char here = 0;
		uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
		refuses = mincore((void *)((uintptr_t)&here & ~(page - 1)), 1, &v) != 0 && errno == ENOMEM;
	}
	return refuses == 1;
}

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
		if (mincore((void *)a, chunk, mincore_vec) != 0) {
			if (errno == ENOMEM && mincore_refuses_anon())
				return resident_count_smaps(addr, len, page);
			return none;
		}
		size_t pages = (chunk + page - 1) / page;
		for (size_t i = 0; i < pages; i++)
			n += mincore_vec[i] & 1;
		a += pages * page;
	}
	return some(n);
}

/* Pages of the range in one smaps entry, when its Rss says it: the entry's other pages hold at most
 * `outside` of its resident ones, so between rss - outside and min(rss, inside) are ours. Exact
 * when the two agree (the entry is the range, or all or none of it is resident); -1 when not. */
static long long span_resident(const struct smaps_span *s, uintptr_t a, uintptr_t b, size_t page)
{
	uintptr_t lo = s->start > a ? s->start : a, hi = s->end < b ? s->end : b;
	long long inside = (long long)((hi - lo) / page), outside = (long long)((s->end - s->start) / page) - inside;
	long long rss = s->rss_kb * 1024 / (long long)page;
	long long least = rss - outside > 0 ? rss - outside : 0, most = rss < inside ? rss : inside;
	return least == most ? least : -1;
}

#define MAX_SPANS 64

/* The anonymous-memory answer of a kernel whose mincore(2) refuses it (before 2.6.21), from
 * /proc/self/smaps (there since 2.6.14). Rss counts the present page-table entries of a VMA (2.6.20
 * fs/proc/task_mmu.c smaps_pte_range(): "if (!pte_present(ptent)) continue; mss->resident +=
 * PAGE_SIZE"), which for anonymous memory is what mincore(2) reports from 2.6.21 on (mm/mincore.c:
 * a present pte is resident; the zero page counts in both). They differ where this guest has
 * nothing to differ on: mincore(2) says whether a page is "resident in core (RAM)", so a swapped
 * out page still in the swap cache is resident to it and absent from Rss (the guests have no
 * swap); for a file mapping mincore reports the page cache, Rss the pages this process mapped; and
 * mincore(2) BUGS: "Before Linux 2.6.21, mincore() did not return correct information for
 * MAP_PRIVATE mappings", which is the anonymous case here.
 *
 * Rss is per VMA, and a mapping that the kernel merged with a neighbour shares its entry. When the
 * neighbour's pages leave the range's count open (span_resident()), that part of the range is made
 * an entry of its own for the reading: its protection is changed in PROT_EXEC only (no page is
 * touched, faulted or freed: mprotect(2) rewrites the present entries in place), smaps is read
 * again, and the protection is put back, which merges the VMA again (mm/mprotect.c mprotect_fixup()
 * calls vma_merge()). A hole in the range is none, as mincore's ENOMEM is. */
opt_t resident_count_smaps(const void *addr, size_t len, size_t page)
{
	static struct smaps_span spans[MAX_SPANS], one[4];
	residency_note(RESIDENCY_SMAPS); /* a null below is smaps' answer too */
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(page - 1);
	uintptr_t b = ((uintptr_t)addr + len + page - 1) & ~(uintptr_t)(page - 1);
	int n = smaps_spans(a, b, spans, MAX_SPANS);
	if (n <= 0 || spans[0].start > a || spans[n - 1].end < b)
		return none;
	long long total = 0;
	for (int i = 0; i < n; i++) {
		if (i > 0 && spans[i].start != spans[i - 1].end)
			return none; /* a hole */
		long long r = span_resident(&spans[i], a, b, page);
		if (r < 0) {
			uintptr_t lo = spans[i].start > a ? spans[i].start : a, hi = spans[i].end < b ? spans[i].end : b;
			if (mprotect((void *)lo, hi - lo, spans[i].prot ^ PROT_EXEC) != 0)
				return none;
			int m = smaps_spans(lo, hi, one, 4);
			r = m == 1 ? span_resident(&one[0], lo, hi, page) : -1;
			if (mprotect((void *)lo, hi - lo, spans[i].prot) != 0 || r < 0)
				return none;
		}
		total += r;
	}
	return some(total);
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
	return si.found && si.has_locked ? some(si.locked_kb) : none;
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
	/* The walk's own bookkeeping must not fault inside the count. A child shares its parent's
	 * pages copy-on-write after fork(2), so its first write to a static is a minor fault, and its
	 * first run of a piece of code can be one too (fork copies no page-table entries of a file
	 * mapping such as the program's text; kernels before 3.15 map no neighbouring page on a
	 * fault). touch_sig, touch_armed and touch_env share a page with mincore_vec: on 2.6.20, where
	 * mincore() fails without writing it, every touch counted one fault of the probe's own
	 * (touch_faults "some" on every populate_* case). So the statics are written and sigsetjmp()
	 * run once before the count starts. */
	touch_sig = 0;
	touch_armed = 0;
	if (sigsetjmp(touch_env, 1) != 0)
		return 0; /* not reached: touch_armed is 0, nothing jumps here */
	struct faults f0 = faults_now();
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

/* ---- the parent's clock ------------------------------------------------------------------ */

/* CLOCK_MONOTONIC is not monotonic on every kernel the probe runs on. 2.6.20 x86_64 has no
 * clocksource (no GENERIC_TIME in arch/x86_64/Kconfig before 2.6.21): clock_gettime() goes
 * posix_ktime_get_ts() -> ktime_get_ts() -> getnstimeofday() -> do_gettimeofday(), which is xtime
 * plus the TSC cycles since vxtime.last_tsc, uncapped (arch/x86_64/kernel/time.c
 * do_gettimeoffset_tsc(), in the "GTOD HPET/TSC" mode the boot log names; do_gettimeofday():
 * "there is a non monotonic clock anyways ... I dropped all corrections"). The timer interrupt
 * (main_timer_handler()) then sets vxtime.last_tsc back to when it computes the tick happened,
 * so under emulation, where ticks come late, a reading after a tick can be earlier than one before
 * it. That is how a case's duration came out negative. The duration is then 0, and the record
 * says by how much the clock went back between two of the parent's readings
 * (`clock_backwards_us`, only when it did). */
void mono_note(struct mono *m, double t)
{
	if (m->started && t < m->last) {
		if (m->last - t > m->back_s)
			m->back_s = m->last - t;
		return; /* last stays the latest time seen */
	}
	m->started = true;
	m->last = t;
}

double mono_read(struct mono *m)
{
	struct timespec ts = {0, 0};
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	mono_note(m, t);
	return t;
}

long long mono_ms(double t0, double t1)
{
	return t1 < t0 ? 0 : (long long)((t1 - t0) * 1000.0 + 0.5);
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
