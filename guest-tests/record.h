/*
 * record.h: what a case sees (struct ctx), what it reports (struct record), and the measurement
 * helpers every case shares: /proc readers, mincore, rusage, smaps, signal-safe touching, the
 * JSON emitter. README.md documents every field a record carries.
 */
#ifndef PROBE_RECORD_H
#define PROBE_RECORD_H

#define _GNU_SOURCE
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

/* ---- JSON emitter ----------------------------------------------------------------------- */

struct json {
	char *buf;
	size_t cap, len;
	bool overflow;
	int depth;
	bool need_comma[8];
	bool after_key;
};

void j_init(struct json *j, char *buf, size_t cap);
void j_raw(struct json *j, const char *s, size_t n);
void j_open(struct json *j, char bracket);
void j_close(struct json *j, char bracket);
void j_continue_object(struct json *j);
void j_key(struct json *j, const char *k);
void j_str(struct json *j, const char *v);
void j_kstr(struct json *j, const char *k, const char *v);
void j_kint(struct json *j, const char *k, long long v);
void j_kbool(struct json *j, const char *k, bool v);
void j_knull(struct json *j, const char *k);

/* ---- names ------------------------------------------------------------------------------ */

const char *errno_name(int e, char *buf, size_t cap);
const char *signal_name(int sig, char *buf, size_t cap);

/* ---- /proc ------------------------------------------------------------------------------ */

ssize_t read_file(const char *path, char *buf, size_t cap);
bool write_all(int fd, const char *buf, size_t len);
bool write_text(const char *path, const char *text);
long long proc_kb(const char *path, const char *key);
long long status_kb(const char *key);  /* /proc/self/status, -1 when absent */
long long meminfo_kb(const char *key); /* /proc/meminfo (HugePages_* are counts, not kB) */
bool has_cap_ipc_lock(void);
int vma_count(const void *start, size_t len); /* /proc/self/maps entries overlapping the range */

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

struct smaps_info {
	bool found;
	long long size_kb, rss_kb, locked_kb;
	bool lo, lf;
	char vmflags[160];
};

struct record {
	bool applicable;
	char reason[160];
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
void set_result(struct record *r, int err);
void emit_record(struct json *j, const char *name, const struct ctx *c, const struct record *r);
/* The context fields alone: for the parent's record of a child that left none (killed, crashed),
 * so the verdict can still tell who ran under which limit. */
void emit_context(struct json *j, const struct ctx *c);

/* Case-specific top-level fields (the verdict engine compares top-level fields only). */
void rec_int(struct record *r, const char *key, long long v);
void rec_opt(struct record *r, const char *key, opt_t v);
void rec_bool(struct record *r, const char *key, bool v);
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

/* ---- measurements ----------------------------------------------------------------------- */

struct faults {
	long minflt, majflt;
};
struct faults faults_now(void);

/* mincore(2) over [addr, addr+len): resident pages, or none when mincore fails (e.g. a hole). */
opt_t resident_count(const void *addr, size_t len, size_t page);
void smaps_at(const void *addr, struct smaps_info *out);
/* Fill the record's smaps_* fields from the entry containing addr. */
void record_smaps(struct record *r, const void *addr);
/* One value of the smaps entry containing addr: `lo` in VmFlags (false when there is no entry);
 * Locked in kB (none when there is no entry). */
bool smaps_lo_at(const void *addr);
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

/* The case cannot say anything when size is more than half of MemAvailable: locking more than the
 * guest can hold is the oom_* cases' scenario. False, with the reason recorded, then. */
bool fits_in_ram(const struct ctx *c, struct record *r, size_t size);

/* Every page of the touched stack is in the stack VMA before a case measures total_vm. */
void prefault_stack(void);

/* ---- memory calls, listed in `calls` as they are made ------------------------------------ *
 * Each makes the call, reads errno at once and notes the call. mmap-like helpers return NULL (not
 * MAP_FAILED) on failure and store the errno in *err when err is not NULL; the others return the
 * errno, 0 on success. `label` (NULL for none) goes before "len=N" in the args: "LABEL len=N". */

__attribute__((format(printf, 7, 8)))
void *mmap_noted(struct record *r, size_t len, int prot, int flags, int fd, int *err, const char *fmt, ...);
/* A set-up mmap: on failure setup_failed(r, c, what, errno) and NULL. */
__attribute__((format(printf, 8, 9)))
void *setup_mmap(struct record *r, const struct ctx *c, const char *what, size_t len, int prot, int flags, int fd,
		 const char *fmt, ...);
/* The usual set-up: mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED) of len, read-write. */
void *setup_map_locked(struct record *r, const struct ctx *c, size_t len);
int mlock_noted(struct record *r, void *p, size_t len, const char *label);
int munlock_noted(struct record *r, void *p, size_t len, const char *label);
int munmap_noted(struct record *r, void *p, size_t len, const char *label);
int mlockall_noted(struct record *r, int flags, const char *flags_str);
int munlockall_noted(struct record *r);

/* Key calls: key_begin, the call, key_end, then the call is noted (in that order, so noting stays
 * outside the measured window). */
__attribute__((format(printf, 7, 8)))
void *key_mmap(struct record *r, size_t len, int prot, int flags, int fd, int *err, const char *fmt, ...);
int key_mlock(struct record *r, void *p, size_t len, const char *label);
/* new_addr is passed on to mremap(2) (used with MREMAP_FIXED; NULL otherwise). */
__attribute__((format(printf, 8, 9)))
void *key_mremap(struct record *r, void *old, size_t old_len, size_t new_len, int flags, void *new_addr, int *err,
		 const char *fmt, ...);

#endif
