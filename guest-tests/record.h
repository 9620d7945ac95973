/*
 * record.h: what a case sees (struct ctx) and what it reports (struct record): its fields, steps
 * and noted calls, and the JSON line it becomes. README.md documents every field a record carries.
 * The helpers every case shares have headers of their own: json.h (the JSON emitter), procfs.h
 * (/proc readers, names), measure.h (mincore, rusage, smaps, signal-safe touching, sizes), calls.h
 * (the memory calls, noted); cases.h includes them all.
 */
#ifndef PROBE_RECORD_H
#define PROBE_RECORD_H

#define _GNU_SOURCE
#include "json.h"
#include "procfs.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/types.h>

/* Older headers lack these; values are the kernel ABI (include/uapi/asm-generic/mman-common.h,
 * include/uapi/linux/mman.h). */
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08 /* a MAP_TYPE value, since Linux 6.11 (commit 9651fcedf7b9) */
#endif
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif

#define MIB (1024UL * 1024UL)
#define KIB 1024UL
#define PRIV_ANON (MAP_PRIVATE | MAP_ANONYMOUS)

/* ---- what the child sees ---------------------------------------------------------------- */

/* A measured value or JSON null ("does not apply"). */
typedef struct {
	bool set;
	long long v;
} opt_t;

static inline opt_t some(long long v) { return (opt_t){true, v}; }
static const opt_t none = {false, 0};
static inline opt_t some_if_valid(long long v) { return v >= 0 ? some(v) : none; }
/* VmLck of /proc/self/status now (vmlck_before_kb, vmlck_end_kb, ...). */
static inline opt_t vmlck_now(void) { return some_if_valid(status_kb("VmLck")); }

struct ctx {
	uid_t uid;
	bool cap_ipc_lock;
	rlim_t soft, hard;
	size_t page;
	long long memtotal_kb, memavail_kb;
	/* NULL: memavail_kb is the kernel's MemAvailable; else it is estimated (before 3.14) from the
	 * fields named here (procfs.c memavailable_kb()) */
	const char *memavail_estimate;
	long long huge_total, huge_free, huge_page_kb; /* HugePages_Total/_Free, Hugepagesize */
};

/* Limited: an unprivileged process with a finite soft limit (getrlimit(2) RLIMIT_MEMLOCK). */
static inline bool limited(const struct ctx *c) { return !c->cap_ipc_lock && c->soft != RLIM_INFINITY; }
static inline size_t limit_pages(const struct ctx *c) { return c->soft == RLIM_INFINITY ? 0 : (size_t)(c->soft / c->page); }
/* Unprivileged at limit 0: every lock is refused (EPERM, can_do_mlock()), so set-ups that lock are. */
static inline bool locks_refused(const struct ctx *c) { return !c->cap_ipc_lock && c->soft == 0; }

/* ---- the record ------------------------------------------------------------------------- */

#define MAX_CALLS 48
#define MAX_EXTRA 48
#define MAX_STEPS 12
#define MAX_STEP_FIELDS 10
#define MAX_SIGS 16

struct call {
	const char *name;
	char args[128];
	long ret;
	int err; /* 0 when the call succeeded */
};

enum field_kind { F_INT, F_STR, F_BOOL, F_NULL };

struct field {
	const char *key;
	enum field_kind kind;
	long long i;
	char s[48];
};

struct step {
	const char *name;
	int err;
	int nfields;
	struct field f[MAX_STEP_FIELDS];
};

struct record {
	bool applicable;
	char reason[160];
	const char *unknown; /* why some observed fields are null on this kernel; NULL: none is */
	opt_t size;
	bool result_set;
	int result; /* errno of the key call, 0 = "ok" */
	struct call calls[MAX_CALLS];
	int ncalls;
	opt_t vmlck_before_kb, vmlck_after_kb, vmlck_end_kb;
	opt_t resident_pages, total_pages;
	opt_t minflt_call, majflt_call, minflt_touch, majflt_touch;
	opt_t meminfo_mlocked_delta_kb, meminfo_unevictable_delta_kb;
	struct smaps_info smaps;
	int sigs[MAX_SIGS];
	int nsigs;
	struct step steps[MAX_STEPS];
	int nsteps;
	struct field extra[MAX_EXTRA]; /* case-specific top-level fields, in order */
	int nextra;
	/* key-call bookkeeping, not emitted */
	bool key_spans_calls; /* the key "call" is a sequence (segv case): no failed_call_kept_accounting */
	long long vmlck_key0_kb;
	long minflt0, majflt0;
	long long mlocked0_kb, unevict0_kb;
};

void record_init(struct record *r);
void not_applicable(struct record *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void note_call(struct record *r, const char *name, long ret, int err, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* note_call with a va_list, for the wrappers in calls.c that pass their caller's format on. */
void note_callv(struct record *r, const char *name, long ret, int err, const char *fmt, va_list ap);
void set_result(struct record *r, int err);
void emit_record(struct json *j, const char *name, const struct ctx *c, const struct record *r);
/* The context fields alone: for the parent's record of a child that left none (killed, crashed),
 * so the verdict can still tell who ran under which limit. */
void emit_context(struct json *j, const struct ctx *c);

/* Case-specific top-level fields (the verdict engine compares top-level fields only). */
void rec_int(struct record *r, const char *key, long long v);
void rec_opt(struct record *r, const char *key, opt_t v);
void rec_bool(struct record *r, const char *key, bool v);
/* A smaps `lo` (smaps_lo_at): true, false, or null with the record's `unknown` reason. */
void rec_lo(struct record *r, const char *key, int lo);
void rec_str(struct record *r, const char *key, const char *v);
void rec_errno(struct record *r, const char *key, int err); /* "ok" or the errno name */
void rec_signal(struct record *r, const char *key, int sig); /* the signal name, null for 0 */

/* Steps of a multi-step case. */
struct step *step_new(struct record *r, const char *name, int err);
void step_int(struct step *s, const char *key, long long v);
void step_bool(struct step *s, const char *key, bool v);
/* A step with the usual measurements: VmLck, and for [addr, addr+len) resident pages and the
 * smaps entry at addr (Locked, Rss, lo, lf). addr NULL: VmLck only. */
struct step *step_snapshot(struct record *r, const struct ctx *c, const char *name, int err,
			   const void *addr, size_t len);
#endif
