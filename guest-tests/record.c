/*
 * record.c: the JSON emitter, /proc readers and measurement helpers shared by every case.
 *
 * Measuring must not disturb what is measured: /proc files are read with read(2) into a static
 * buffer (no stdio, no malloc), and mincore's vector is static too, so a measurement neither
 * maps memory (which mlockall(MCL_FUTURE) would lock and charge) nor takes faults inside the
 * window around a key call.
 */
#include "record.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- small file helpers ------------------------------------------------------------------ */

ssize_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len + 1 < cap) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

bool write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		buf += n;
		len -= (size_t)n;
	}
	return true;
}

bool write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = write_all(fd, text, strlen(text));
	close(fd);
	return ok;
}

/* The value after "key:" on the line starting with key, or NULL. */
static const char *find_field(const char *text, const char *key)
{
	size_t klen = strlen(key);
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':')
			return line + klen + 1;
	}
	return NULL;
}

static char procbuf[1 << 18];

long long proc_kb(const char *path, const char *key)
{
	if (read_file(path, procbuf, sizeof(procbuf)) < 0)
		return -1;
	const char *v = find_field(procbuf, key);
	return v ? strtoll(v, NULL, 10) : -1;
}

long long status_kb(const char *key) { return proc_kb("/proc/self/status", key); }
long long meminfo_kb(const char *key) { return proc_kb("/proc/meminfo", key); }

/* CAP_IPC_LOCK decides everything here (getrlimit(2): a privileged process is not limited), so
 * read the effective set rather than trusting the uid. */
bool has_cap_ipc_lock(void)
{
	if (read_file("/proc/self/status", procbuf, sizeof(procbuf)) < 0)
		return false;
	const char *v = find_field(procbuf, "CapEff");
	return v && ((strtoull(v, NULL, 16) >> 14) & 1); /* CAP_IPC_LOCK, include/uapi/linux/capability.h */
}

int vma_count(const void *start, size_t len)
{
	if (read_file("/proc/self/maps", procbuf, sizeof(procbuf)) < 0)
		return -1;
	uintptr_t a = (uintptr_t)start, b = a + len;
	int n = 0;
	for (char *line = procbuf; line && *line;) {
		char *end;
		unsigned long long lo = strtoull(line, &end, 16);
		if (end != line && *end == '-') {
			unsigned long long hi = strtoull(end + 1, NULL, 16);
			if (lo < b && hi > a)
				n++;
		}
		line = strchr(line, '\n');
		line = line ? line + 1 : NULL;
	}
	return n;
}

/* ---- names ------------------------------------------------------------------------------- */

const char *errno_name(int e, char *buf, size_t cap)
{
	static const struct {
		int no;
		const char *name;
	} names[] = {
		{EPERM, "EPERM"},   {ENOENT, "ENOENT"},       {EINTR, "EINTR"},   {EIO, "EIO"},
		{E2BIG, "E2BIG"},   {EBADF, "EBADF"},         {EAGAIN, "EAGAIN"}, {ENOMEM, "ENOMEM"},
		{EACCES, "EACCES"}, {EFAULT, "EFAULT"},       {EBUSY, "EBUSY"},   {EEXIST, "EEXIST"},
		{ENODEV, "ENODEV"}, {EINVAL, "EINVAL"},       {ENFILE, "ENFILE"}, {EMFILE, "EMFILE"},
		{EFBIG, "EFBIG"},   {ENOSPC, "ENOSPC"},       {EOVERFLOW, "EOVERFLOW"},
		{ENOSYS, "ENOSYS"}, {EOPNOTSUPP, "EOPNOTSUPP"},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].no == e)
			return names[i].name;
	snprintf(buf, cap, "E%d", e);
	return buf;
}

const char *signal_name(int sig, char *buf, size_t cap)
{
	const char *abbrev = sigabbrev_np(sig); /* glibc 2.32+; NULL for real-time signals */
	if (abbrev)
		snprintf(buf, cap, "SIG%s", abbrev);
	else
		snprintf(buf, cap, "SIG%d", sig);
	return buf;
}

/* ---- JSON emitter ------------------------------------------------------------------------ */

void j_init(struct json *j, char *buf, size_t cap)
{
	memset(j, 0, sizeof(*j));
	j->buf = buf;
	j->cap = cap;
	buf[0] = '\0';
}

void j_raw(struct json *j, const char *s, size_t n)
{
	if (j->len + n + 1 > j->cap) {
		j->overflow = true;
		return;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

static void j_printf(struct json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void j_printf(struct json *j, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		j->overflow = true;
		return;
	}
	j_raw(j, tmp, (size_t)n);
}

/* Separator before a value: none right after a key, a comma between array/object members. */
static void j_sep(struct json *j)
{
	if (j->after_key) {
		j->after_key = false;
		return;
	}
	if (j->need_comma[j->depth])
		j_raw(j, ",", 1);
	j->need_comma[j->depth] = true;
}

static void j_quoted(struct json *j, const char *s)
{
	j_raw(j, "\"", 1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			char esc[2] = {'\\', (char)ch};
			j_raw(j, esc, 2);
		} else if (ch < 0x20 || ch == 0x7f) {
			j_printf(j, "\\u%04x", ch);
		} else if (ch >= 0x80) {
			/* Kernel log text may hold bytes that are not UTF-8; keep the line valid JSON. */
			j_printf(j, "\\u%04x", ch);
		} else {
			j_raw(j, (const char *)&ch, 1);
		}
	}
	j_raw(j, "\"", 1);
}

void j_open(struct json *j, char bracket)
{
	j_sep(j);
	j_raw(j, &bracket, 1);
	j->depth++;
	j->need_comma[j->depth] = false;
}

void j_close(struct json *j, char bracket)
{
	j_raw(j, &bracket, 1);
	j->depth--;
}

/* Continue an object whose opening and members were written by someone else (the child). */
void j_continue_object(struct json *j)
{
	j->depth = 1;
	j->need_comma[1] = true;
}

void j_key(struct json *j, const char *k)
{
	j_sep(j);
	j_quoted(j, k);
	j_raw(j, ":", 1);
	j->after_key = true;
}

void j_str(struct json *j, const char *v)
{
	j_sep(j);
	if (v)
		j_quoted(j, v);
	else
		j_raw(j, "null", 4);
}

void j_kstr(struct json *j, const char *k, const char *v) { j_key(j, k); j_str(j, v); }

void j_kint(struct json *j, const char *k, long long v)
{
	j_key(j, k);
	j_sep(j);
	j_printf(j, "%lld", v);
}

void j_kbool(struct json *j, const char *k, bool v)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, v ? "true" : "false", v ? 4 : 5);
}

void j_knull(struct json *j, const char *k)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, "null", 4);
}

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

/* ---- the record -------------------------------------------------------------------------- */

void record_init(struct record *r)
{
	memset(r, 0, sizeof(*r));
	r->applicable = true;
	r->mlocked0_kb = r->unevict0_kb = -1;
}

void not_applicable(struct record *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	r->applicable = false;
	vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
	va_end(ap);
}

static void note_callv(struct record *r, const char *name, long ret, int err, const char *fmt, va_list ap)
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
			step_int(s, "smaps_locked_kb", si.locked_kb);
			step_int(s, "smaps_rss_kb", si.rss_kb);
			step_bool(s, "lo", si.lo);
			step_bool(s, "lf", si.lf);
		}
	}
	return s;
}

void record_signal(struct record *r, int sig)
{
	if (r->nsigs < MAX_SIGS)
		r->sigs[r->nsigs++] = sig;
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
	j_kopt(j, "minflt_call", r->minflt_call);
	j_kopt(j, "majflt_call", r->majflt_call);
	j_kopt(j, "minflt_touch", r->minflt_touch);
	j_kopt(j, "majflt_touch", r->majflt_touch);
	j_kopt(j, "meminfo_mlocked_delta_kb", r->meminfo_mlocked_delta_kb);
	j_kopt(j, "meminfo_unevictable_delta_kb", r->meminfo_unevictable_delta_kb);
	const struct smaps_info *s = &r->smaps;
	j_kopt(j, "smaps_locked_kb", s->found ? some(s->locked_kb) : none);
	j_kopt(j, "smaps_rss_kb", s->found ? some(s->rss_kb) : none);
	j_kopt(j, "smaps_size_kb", s->found ? some(s->size_kb) : none);
	if (s->found) {
		j_kbool(j, "smaps_lo", s->lo);
		j_kbool(j, "smaps_lf", s->lf);
	} else {
		j_knull(j, "smaps_lo");
		j_knull(j, "smaps_lf");
	}
	j_kstr(j, "smaps_vmflags", s->found ? s->vmflags : NULL);

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

/* The smaps entry that contains addr. size_kb is reported too: if the kernel merged the mapping
 * with a neighbour, Locked/Rss describe the merged VMA and Size shows it. */
void smaps_at(const void *addr, struct smaps_info *out)
{
	memset(out, 0, sizeof(*out));
	if (read_file("/proc/self/smaps", procbuf, sizeof(procbuf)) < 0)
		return;
	uintptr_t a = (uintptr_t)addr;
	bool inside = false;
	for (char *line = procbuf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		char *end;
		unsigned long long start = strtoull(line, &end, 16);
		if (end != line && *end == '-') { /* a header: "start-end perms offset dev inode path" */
			unsigned long long stop = strtoull(end + 1, NULL, 16);
			if (inside)
				break;
			inside = a >= start && a < stop;
			if (inside)
				out->found = true;
		} else if (inside) {
			const char *v;
			if ((v = find_field(line, "Size")))
				out->size_kb = strtoll(v, NULL, 10);
			else if ((v = find_field(line, "Rss")))
				out->rss_kb = strtoll(v, NULL, 10);
			else if ((v = find_field(line, "Locked")))
				out->locked_kb = strtoll(v, NULL, 10);
			else if ((v = find_field(line, "VmFlags"))) {
				while (*v == ' ' || *v == '\t')
					v++;
				snprintf(out->vmflags, sizeof(out->vmflags), "%s", v);
				size_t n = strlen(out->vmflags);
				while (n > 0 && isspace((unsigned char)out->vmflags[n - 1]))
					out->vmflags[--n] = '\0';
				char flags[168];
				snprintf(flags, sizeof(flags), " %s ", out->vmflags);
				out->lo = strstr(flags, " lo ") != NULL;
				out->lf = strstr(flags, " lf ") != NULL;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
}

void record_smaps(struct record *r, const void *addr) { smaps_at(addr, &r->smaps); }

bool smaps_lo_at(const void *addr)
{
	struct smaps_info si;
	smaps_at(addr, &si);
	return si.found && si.lo;
}

opt_t smaps_locked_kb_at(const void *addr)
{
	struct smaps_info si;
	smaps_at(addr, &si);
	return si.found ? some(si.locked_kb) : none;
}

/* /proc/meminfo Mlocked and Unevictable are per-CPU batched (MAP_LOCKED.md: approximate). As root,
 * writing /proc/sys/vm/stat_refresh folds the per-CPU deltas first; unprivileged it fails and the
 * figures stay approximate. */
static void meminfo_locked(long long *mlocked, long long *unevict)
{
	write_text("/proc/sys/vm/stat_refresh", "1");
	if (read_file("/proc/meminfo", procbuf, sizeof(procbuf)) < 0) {
		*mlocked = *unevict = -1;
		return;
	}
	const char *v = find_field(procbuf, "Mlocked");
	*mlocked = v ? strtoll(v, NULL, 10) : -1;
	v = find_field(procbuf, "Unevictable");
	*unevict = v ? strtoll(v, NULL, 10) : -1;
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

/* ---- memory calls, noted --------------------------------------------------------------------- */

/* "len=N" or "LABEL len=N". */
static void note_len(struct record *r, const char *name, int ret, int err, const char *label, size_t len)
{
	if (label)
		note_call(r, name, ret, err, "%s len=%zu", label, len);
	else
		note_call(r, name, ret, err, "len=%zu", len);
}

static void *mmap_notedv(struct record *r, size_t len, int prot, int flags, int fd, int *err, const char *fmt,
			 va_list ap)
{
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	*err = p == MAP_FAILED ? errno : 0;
	note_callv(r, "mmap", p == MAP_FAILED ? -1 : 0, *err, fmt, ap);
	return p == MAP_FAILED ? NULL : p;
}

void *mmap_noted(struct record *r, size_t len, int prot, int flags, int fd, int *err, const char *fmt, ...)
{
	int e;
	va_list ap;
	va_start(ap, fmt);
	void *p = mmap_notedv(r, len, prot, flags, fd, &e, fmt, ap);
	va_end(ap);
	if (err)
		*err = e;
	return p;
}

void *setup_mmap(struct record *r, const struct ctx *c, const char *what, size_t len, int prot, int flags, int fd,
		 const char *fmt, ...)
{
	int err;
	va_list ap;
	va_start(ap, fmt);
	void *p = mmap_notedv(r, len, prot, flags, fd, &err, fmt, ap);
	va_end(ap);
	if (!p)
		setup_failed(r, c, what, err);
	return p;
}

void *setup_map_locked(struct record *r, const struct ctx *c, size_t len)
{
	return setup_mmap(r, c, "mmap(MAP_LOCKED)", len, PROT_READ | PROT_WRITE, PRIV_ANON | MAP_LOCKED, -1,
			  "MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED len=%zu", len);
}

int mlock_noted(struct record *r, void *p, size_t len, const char *label)
{
	int ret = mlock(p, len);
	int err = ret ? errno : 0;
	note_len(r, "mlock", ret, err, label, len);
	return err;
}

int munlock_noted(struct record *r, void *p, size_t len, const char *label)
{
	int ret = munlock(p, len);
	int err = ret ? errno : 0;
	note_len(r, "munlock", ret, err, label, len);
	return err;
}

int munmap_noted(struct record *r, void *p, size_t len, const char *label)
{
	int ret = munmap(p, len);
	int err = ret ? errno : 0;
	note_len(r, "munmap", ret, err, label, len);
	return err;
}

int mlockall_noted(struct record *r, int flags, const char *flags_str)
{
	int ret = mlockall(flags);
	int err = ret ? errno : 0;
	note_call(r, "mlockall", ret, err, "%s", flags_str);
	return err;
}

int munlockall_noted(struct record *r)
{
	int ret = munlockall();
	int err = ret ? errno : 0;
	note_call(r, "munlockall", ret, err, "%s", "");
	return err;
}

void *key_mmap(struct record *r, size_t len, int prot, int flags, int fd, int *err, const char *fmt, ...)
{
	key_begin(r);
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	int e = p == MAP_FAILED ? errno : 0;
	key_end(r, e);
	va_list ap;
	va_start(ap, fmt);
	note_callv(r, "mmap", p == MAP_FAILED ? -1 : 0, e, fmt, ap);
	va_end(ap);
	if (err)
		*err = e;
	return p == MAP_FAILED ? NULL : p;
}

int key_mlock(struct record *r, void *p, size_t len, const char *label)
{
	key_begin(r);
	int ret = mlock(p, len);
	int err = ret ? errno : 0;
	key_end(r, err);
	note_len(r, "mlock", ret, err, label, len);
	return err;
}

void *key_mremap(struct record *r, void *old, size_t old_len, size_t new_len, int flags, void *new_addr, int *err,
		 const char *fmt, ...)
{
	key_begin(r);
	void *q = mremap(old, old_len, new_len, flags, new_addr);
	int e = q == MAP_FAILED ? errno : 0;
	key_end(r, e);
	va_list ap;
	va_start(ap, fmt);
	note_callv(r, "mremap", q == MAP_FAILED ? -1 : 0, e, fmt, ap);
	va_end(ap);
	if (err)
		*err = e;
	return q == MAP_FAILED ? NULL : q;
}
