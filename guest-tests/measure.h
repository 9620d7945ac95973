/*
 * measure.h: what a case measures (rusage faults, mincore residency, smaps, the accounting around
 * the key call), touching pages with SIGSEGV/SIGBUS caught, and the sizes a case runs at.
 */
#ifndef PROBE_MEASURE_H
#define PROBE_MEASURE_H

#include "record.h"

/* ---- measurements ----------------------------------------------------------------------- */

struct faults {
	long minflt, majflt;
};
struct faults faults_now(void);

/* mincore(2) over [addr, addr+len): resident pages, or none when mincore fails (e.g. a hole). On
 * a kernel whose mincore refuses anonymous memory (before 2.6.21) the count comes from smaps Rss
 * instead (resident_count_smaps(), measure.c says how they compare), and residency_source() says
 * so. */
opt_t resident_count(const void *addr, size_t len, size_t page);
opt_t resident_count_smaps(const void *addr, size_t len, size_t page);
/* How the record's residency was measured when it was not mincore(2), for the record's
 * `residency_source` (emitted only then); NULL for mincore. residency_note() sets it. */
const char *residency_source(void);
void residency_source_reset(void);
void residency_note(const char *how);
/* Fill the record's smaps_* fields from the entry containing addr. */
void record_smaps(struct record *r, const void *addr);
/* One value of the smaps entry containing addr: `lo` as smaps_lo_of() says; Locked in kB (none
 * when there is no entry). */
int smaps_lo_at(const void *addr);
opt_t smaps_locked_kb_at(const void *addr);

/* The key call: begin reads VmLck, the meminfo baseline and rusage; end sets result, minflt_call,
 * majflt_call, the meminfo deltas and vmlck_after_kb, and after a failure
 * failed_call_kept_accounting (VmLck right after == right before; mlock(2) RETURN VALUE: "On
 * error ... no changes are made to any locks"). */
void key_begin(struct record *r);
void key_end(struct record *r, int err);

/* Residency of the key mapping right after the key call: total_pages and resident_pages. */
void record_residency(struct record *r, const void *addr, size_t len, size_t page);
/* record_residency, then record_smaps at addr: the key mapping as the key call left it. */
void record_mapping(struct record *r, const void *addr, size_t len, size_t page);

/* Touch one byte per page of [p, p+len) (write or read) with SIGSEGV/SIGBUS caught: a fault is
 * recorded in `signals` and stops the walk. Returns the number of pages touched before the fault.
 * *sig is the signal (0 when none). Faults taken are added to *flt when non-NULL. */
size_t touch_pages(struct record *r, void *p, size_t len, size_t page, bool write, int *sig, struct faults *flt);
/* touch_pages over the key mapping, filling minflt_touch and majflt_touch. */
size_t touch_key(struct record *r, void *p, size_t len, size_t page, bool write, int *sig);
void record_signal(struct record *r, int sig);

/* ---- the parent's clock ----------------------------------------------------------------- */

/* CLOCK_MONOTONIC readings around one case (probe.c run_case()), and the largest step back seen
 * between two of them (measure.c says where the clock goes back). */
struct mono {
	bool started;
	double last, back_s;
};
/* clock_gettime(CLOCK_MONOTONIC) in seconds, noted in *m. */
double mono_read(struct mono *m);
/* A reading t noted in *m (mono_read's bookkeeping, apart for the tests). */
void mono_note(struct mono *m, double t);
/* Whole milliseconds from t0 to t1, rounded; 0 when t1 is before t0 (the clock went back). */
long long mono_ms(double t0, double t1);

/* ---- sizes and set-up ------------------------------------------------------------------- */

enum size_rule { SZ_UNDER, SZ_AT, SZ_OVER, SZ_POPULATE };
bool case_size(const struct ctx *c, enum size_rule rule, size_t *size, struct record *r);

/* want_pages, capped for a limited process to what its limit allows (at least one page, so the
 * call is still made at limit 0 and fails there). */
size_t small_size(const struct ctx *c, size_t want_pages);

/* A set-up call (not the key call) failed. Unprivileged at limit 0 a lock is refused by design
 * (EPERM, shown by map_locked_over/mlock_over): the case is not applicable. Anything else is
 * unexpected and becomes the case's result, with `failed_setup` naming the call. */
void setup_failed(struct record *r, const struct ctx *c, const char *what, int err);

/* The case cannot say anything when size is more than half of MemAvailable (before 3.14 the
 * estimate, procfs.c memavailable_kb()): locking more than the guest can hold is the oom_* cases'
 * scenario. False, with the reason recorded, then. */
bool fits_in_ram(const struct ctx *c, struct record *r, size_t size);

/* Every page of the touched stack is in the stack VMA before a case measures total_vm. */
void prefault_stack(void);

#endif
