/*
 * record.c: the record a case fills (struct record): its fields, steps and noted calls, and the
 * JSON line it becomes.
 */
#include "record.h"
#include "measure.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- the record -------------------------------------------------------------------------- */

void record_init(struct record *r)
{
	memset(r, 0, sizeof(*r));
	r->applicable = true;
	r->mlocked0_kb = r->unevict0_kb = -1;
	residency_source_reset();
}

void not_applicable(struct record *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	r->applicable = false;
	vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
	va_end(ap);
}

void note_callv(struct record *r, const char *name, long ret, int err, const char *fmt, va_list ap)
{
	if (r->ncalls >= MAX_CALLS)
		return;
	struct call *c = &r->calls[r->ncalls++];
	c->name = name;
	c->ret = ret;
	c->err = ret == -1 ? err : 0;
	vsnprintf(c->args, sizeof(c->args), fmt, ap);
}

void note_call(struct record *r, const char *name, long ret, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	note_callv(r, name, ret, err, fmt, ap);
	va_end(ap);
}

void set_result(struct record *r, int err)
{
	r->result_set = true;
	r->result = err;
}

static struct field *new_field(struct field *arr, int *n, int cap, const char *key, enum field_kind kind)
{
	/* A key set twice keeps its first position and takes the new value. */
	for (int i = 0; i < *n; i++)
		if (strcmp(arr[i].key, key) == 0) {
			arr[i].kind = kind;
			return &arr[i];
		}
	if (*n >= cap)
		return NULL;
	struct field *f = &arr[(*n)++];
	memset(f, 0, sizeof(*f));
	f->key = key;
	f->kind = kind;
	return f;
}

void rec_int(struct record *r, const char *key, long long v)
{
	struct field *f = new_field(r->extra, &r->nextra, MAX_EXTRA, key, F_INT);
	if (f)
		f->i = v;
}

void rec_opt(struct record *r, const char *key, opt_t v)
{
	struct field *f = new_field(r->extra, &r->nextra, MAX_EXTRA, key, v.set ? F_INT : F_NULL);
	if (f)
		f->i = v.v;
}

void rec_bool(struct record *r, const char *key, bool v)
{
	struct field *f = new_field(r->extra, &r->nextra, MAX_EXTRA, key, F_BOOL);
	if (f)
		f->i = v;
}

/* Why some fields are null: the verdict does not hold their absence against the kernel. */
static const char NO_VMFLAGS[] = "/proc/PID/smaps has no VmFlags before Linux 3.8: whether a range is locked "
				 "(lo) is unknown";
static const char NO_LOCKED[] = "/proc/PID/smaps has no VmFlags before Linux 3.8, and no Locked line on this "
				"kernel: whether a range is locked (lo), and how much of it (the smaps_locked fields), are unknown";

void rec_lo(struct record *r, const char *key, int lo)
{
	if (lo == LO_UNKNOWN) {
		new_field(r->extra, &r->nextra, MAX_EXTRA, key, F_NULL);
		r->unknown = NO_VMFLAGS;
	} else {
		rec_bool(r, key, lo != 0);
	}
}

void rec_str(struct record *r, const char *key, const char *v)
{
	struct field *f = new_field(r->extra, &r->nextra, MAX_EXTRA, key, v ? F_STR : F_NULL);
	if (f && v)
		snprintf(f->s, sizeof(f->s), "%s", v);
}

void rec_errno(struct record *r, const char *key, int err)
{
	char nb[16];
	rec_str(r, key, err == 0 ? "ok" : errno_name(err, nb, sizeof(nb)));
}

void rec_signal(struct record *r, const char *key, int sig)
{
	char sb[16];
	rec_str(r, key, sig ? signal_name(sig, sb, sizeof(sb)) : NULL);
}

struct step *step_new(struct record *r, const char *name, int err)
{
	if (r->nsteps >= MAX_STEPS)
		return NULL;
	struct step *s = &r->steps[r->nsteps++];
	memset(s, 0, sizeof(*s));
	s->name = name;
	s->err = err;
	return s;
}

void step_int(struct step *s, const char *key, long long v)
{
	if (!s)
		return;
	struct field *f = new_field(s->f, &s->nfields, MAX_STEP_FIELDS, key, F_INT);
	if (f)
		f->i = v;
}

static void step_opt(struct step *s, const char *key, opt_t v)
{
	if (!s)
		return;
	struct field *f = new_field(s->f, &s->nfields, MAX_STEP_FIELDS, key, v.set ? F_INT : F_NULL);
	if (f)
		f->i = v.v;
}

void step_bool(struct step *s, const char *key, bool v)
{
	if (!s)
		return;
	struct field *f = new_field(s->f, &s->nfields, MAX_STEP_FIELDS, key, F_BOOL);
	if (f)
		f->i = v;
}

struct step *step_snapshot(struct record *r, const struct ctx *c, const char *name, int err,
			   const void *addr, size_t len)
{
	struct step *s = step_new(r, name, err);
	step_opt(s, "vmlck_kb", vmlck_now());
	if (addr) {
		step_opt(s, "resident_pages", resident_count(addr, len, c->page));
		struct smaps_info si;
		smaps_at(addr, &si);
		if (si.found) {
			step_opt(s, "smaps_locked_kb", si.has_locked ? some(si.locked_kb) : none);
			step_int(s, "smaps_rss_kb", si.rss_kb);
			if (si.flags) {
				step_bool(s, "lo", si.lo);
				step_bool(s, "lf", si.lf);
			}
		}
	}
	return s;
}

/* ---- emitting ---------------------------------------------------------------------------- */

static void j_kopt(struct json *j, const char *k, opt_t o)
{
	if (o.set)
		j_kint(j, k, o.v);
	else
		j_knull(j, k);
}

static void j_field(struct json *j, const struct field *f)
{
	switch (f->kind) {
	case F_INT:
		j_kint(j, f->key, f->i);
		break;
	case F_STR:
		j_kstr(j, f->key, f->s);
		break;
	case F_BOOL:
		j_kbool(j, f->key, f->i != 0);
		break;
	case F_NULL:
		j_knull(j, f->key);
		break;
	}
}

void emit_context(struct json *j, const struct ctx *c)
{
	j_kint(j, "uid", (long long)c->uid);
	j_kbool(j, "cap_ipc_lock", c->cap_ipc_lock);
	j_kopt(j, "rlimit_soft", c->soft == RLIM_INFINITY ? none : some((long long)c->soft));
	j_kopt(j, "rlimit_hard", c->hard == RLIM_INFINITY ? none : some((long long)c->hard));
	j_kint(j, "page_size", (long long)c->page);
	j_kopt(j, "memtotal_kb", some_if_valid(c->memtotal_kb));
	j_kopt(j, "memavailable_kb", some_if_valid(c->memavail_kb));
	/* Only where MemAvailable had to be estimated: a kernel that has it prints what it always did. */
	if (c->memavail_estimate)
		j_kstr(j, "memavailable_estimate", c->memavail_estimate);
}

void emit_record(struct json *j, const char *name, const struct ctx *c, const struct record *r)
{
	char nb[16];

	j_open(j, '{');
	j_kstr(j, "kind", "case");
	j_kstr(j, "case", name);
	emit_context(j, c);

	j_kbool(j, "applicable", r->applicable);
	j_kstr(j, "reason", r->applicable ? NULL : r->reason);
	const char *unknown = r->unknown;
	if (r->smaps.found && !r->smaps.has_locked)
		unknown = NO_LOCKED;
	else if (!unknown && r->smaps.found && !r->smaps.flags)
		unknown = NO_VMFLAGS;
	if (unknown)
		j_kstr(j, "unknown", unknown);
	j_kopt(j, "size", r->size);
	j_kstr(j, "result", !r->result_set ? NULL : r->result == 0 ? "ok" : errno_name(r->result, nb, sizeof(nb)));

	j_key(j, "calls");
	j_open(j, '[');
	for (int i = 0; i < r->ncalls; i++) {
		const struct call *k = &r->calls[i];
		j_open(j, '{');
		j_kstr(j, "call", k->name);
		j_kstr(j, "args", k->args);
		j_kint(j, "ret", k->ret);
		j_kstr(j, "errno", k->err ? errno_name(k->err, nb, sizeof(nb)) : NULL);
		j_close(j, '}');
	}
	j_close(j, ']');

	j_kopt(j, "vmlck_before_kb", r->vmlck_before_kb);
	j_kopt(j, "vmlck_after_kb", r->vmlck_after_kb);
	j_kopt(j, "vmlck_end_kb", r->vmlck_end_kb);
	j_kopt(j, "resident_pages", r->resident_pages);
	j_kopt(j, "total_pages", r->total_pages);
	/* Only where residency was not mincore(2)'s: on other kernels the line is what it always was. */
	if (residency_source())
		j_kstr(j, "residency_source", residency_source());
	j_kopt(j, "minflt_call", r->minflt_call);
	j_kopt(j, "majflt_call", r->majflt_call);
	j_kopt(j, "minflt_touch", r->minflt_touch);
	j_kopt(j, "majflt_touch", r->majflt_touch);
	j_kopt(j, "meminfo_mlocked_delta_kb", r->meminfo_mlocked_delta_kb);
	j_kopt(j, "meminfo_unevictable_delta_kb", r->meminfo_unevictable_delta_kb);
	const struct smaps_info *s = &r->smaps;
	j_kopt(j, "smaps_locked_kb", s->found && s->has_locked ? some(s->locked_kb) : none);
	j_kopt(j, "smaps_rss_kb", s->found ? some(s->rss_kb) : none);
	j_kopt(j, "smaps_size_kb", s->found ? some(s->size_kb) : none);
	if (s->found && s->flags) {
		j_kbool(j, "smaps_lo", s->lo);
		j_kbool(j, "smaps_lf", s->lf);
	} else {
		j_knull(j, "smaps_lo");
		j_knull(j, "smaps_lf");
	}
	j_kstr(j, "smaps_vmflags", s->found && s->flags ? s->vmflags : NULL);

	j_key(j, "signals");
	j_open(j, '[');
	for (int i = 0; i < r->nsigs; i++)
		j_str(j, signal_name(r->sigs[i], nb, sizeof(nb)));
	j_close(j, ']');

	if (r->nsteps == 0) {
		j_knull(j, "steps");
	} else {
		j_key(j, "steps");
		j_open(j, '[');
		for (int i = 0; i < r->nsteps; i++) {
			const struct step *st = &r->steps[i];
			j_open(j, '{');
			j_kstr(j, "step", st->name);
			j_kstr(j, "ret", st->err == 0 ? "ok" : errno_name(st->err, nb, sizeof(nb)));
			for (int k = 0; k < st->nfields; k++)
				j_field(j, &st->f[k]);
			j_close(j, '}');
		}
		j_close(j, ']');
	}
	for (int i = 0; i < r->nextra; i++)
		j_field(j, &r->extra[i]);
	j_close(j, '}');
}
