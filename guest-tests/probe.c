/*
 * probe: records how the running kernel treats mmap(MAP_LOCKED), mlock(2), mlock2(2) and
 * mlockall(2) against RLIMIT_MEMLOCK. One JSON line per case on stdout; README.md has the
 * CLI contract and the catalogue with the documented expectations.
 *
 * Built static (see Makefile) so the same binary runs in busybox initramfs guests from 5.10 on
 * and on the host. Nothing here may go through NSS: a static binary would try to dlopen it.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Older headers lack these; values are the kernel ABI (include/uapi/asm-generic/mman-common.h). */
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
#ifndef SYS_mlock2
#if defined(__x86_64__)
#define SYS_mlock2 325
#else
#error "SYS_mlock2: add this architecture's number"
#endif
#endif

#define CAP_IPC_LOCK_BIT 14 /* include/uapi/linux/capability.h */
#define MIB (1024UL * 1024UL)
#define MAX_CALLS 16

#define EXIT_USAGE 2
#define EXIT_SETUP 3

/* ---- small file helpers ------------------------------------------------------------------- */

/* Reads a whole (small) file into buf, NUL-terminated. /proc files are read with read(2) into a
 * static buffer rather than stdio so that measuring does not itself allocate or map memory. */
static ssize_t read_file(const char *path, char *buf, size_t cap)
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

static bool write_all(int fd, const char *buf, size_t len)
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

/* A "kB" figure from a /proc file such as /proc/self/status; -1 when the field is absent. */
static long long proc_kb(const char *path, const char *key)
{
	if (read_file(path, procbuf, sizeof(procbuf)) < 0)
		return -1;
	const char *v = find_field(procbuf, key);
	return v ? strtoll(v, NULL, 10) : -1;
}

static long long read_status_kb(const char *key)
{
	return proc_kb("/proc/self/status", key);
}

/* CAP_IPC_LOCK decides everything here (getrlimit(2): a privileged process is not limited), so
 * read the effective set rather than trusting the uid. */
static bool has_cap_ipc_lock(void)
{
	if (read_file("/proc/self/status", procbuf, sizeof(procbuf)) < 0)
		return false;
	const char *v = find_field(procbuf, "CapEff");
	return v && ((strtoull(v, NULL, 16) >> CAP_IPC_LOCK_BIT) & 1);
}

/* ---- names ------------------------------------------------------------------------------- */

static const char *errno_name(int e, char *buf, size_t cap)
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

static const char *signal_name(int sig, char *buf, size_t cap)
{
	const char *abbrev = sigabbrev_np(sig); /* glibc 2.32+; NULL for real-time signals */
	if (abbrev)
		snprintf(buf, cap, "SIG%s", abbrev);
	else
		snprintf(buf, cap, "SIG%d", sig);
	return buf;
}

/* ---- JSON emitter ------------------------------------------------------------------------ */

struct json {
	char *buf;
	size_t cap, len;
	bool overflow;
	int depth;
	bool need_comma[8];
	bool after_key;
};

static void j_init(struct json *j, char *buf, size_t cap)
{
	memset(j, 0, sizeof(*j));
	j->buf = buf;
	j->cap = cap;
	buf[0] = '\0';
}

static void j_raw(struct json *j, const char *s, size_t n)
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
		} else if (ch < 0x20) {
			j_printf(j, "\\u%04x", ch);
		} else {
			j_raw(j, (const char *)&ch, 1);
		}
	}
	j_raw(j, "\"", 1);
}

static void j_open(struct json *j, char bracket)
{
	j_sep(j);
	j_raw(j, &bracket, 1);
	j->depth++;
	j->need_comma[j->depth] = false;
}

static void j_close(struct json *j, char bracket)
{
	j_raw(j, &bracket, 1);
	j->depth--;
}

/* Continue an object whose opening and members were written by someone else (the child). */
static void j_continue_object(struct json *j)
{
	j->depth = 1;
	j->need_comma[1] = true;
}

static void j_key(struct json *j, const char *k)
{
	j_sep(j);
	j_quoted(j, k);
	j_raw(j, ":", 1);
	j->after_key = true;
}

static void j_str(struct json *j, const char *v)
{
	j_sep(j);
	if (v)
		j_quoted(j, v);
	else
		j_raw(j, "null", 4);
}

static void j_kstr(struct json *j, const char *k, const char *v) { j_key(j, k); j_str(j, v); }

static void j_kint(struct json *j, const char *k, long long v)
{
	j_key(j, k);
	j_sep(j);
	j_printf(j, "%lld", v);
}

static void j_kbool(struct json *j, const char *k, bool v)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, v ? "true" : "false", v ? 4 : 5);
}

static void j_knull(struct json *j, const char *k)
{
	j_key(j, k);
	j_sep(j);
	j_raw(j, "null", 4);
}

/* ---- case record ------------------------------------------------------------------------- */

/* A measured value or JSON null ("does not apply"). */
typedef struct {
	bool set;
	long long v;
} opt_t;

static opt_t some(long long v) { return (opt_t){true, v}; }
static const opt_t none = {false, 0};
static opt_t some_if_valid(long long v) { return v >= 0 ? some(v) : none; }

static void j_kopt(struct json *j, const char *k, opt_t o)
{
	if (o.set)
		j_kint(j, k, o.v);
	else
		j_knull(j, k);
}

/* What the child sees; decides sizes and applicability. */
struct ctx {
	uid_t uid;
	bool cap_ipc_lock;
	rlim_t soft, hard;
	size_t page;
	long long memtotal_kb, memavail_kb;
};

struct call {
	const char *name;
	char args[128];
	long ret;
	int err; /* 0 when the call succeeded */
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
	opt_t minflt_call, majflt_call, minflt_touch;
	opt_t smaps_locked_kb, smaps_rss_kb, smaps_size_kb;
	int smaps_lo; /* -1 = null */
	char smaps_vmflags[160];
	bool smaps_found;
};

static void record_init(struct record *r)
{
	memset(r, 0, sizeof(*r));
	r->applicable = true;
	r->smaps_lo = -1;
}

static void not_applicable(struct record *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void not_applicable(struct record *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	r->applicable = false;
	vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
	va_end(ap);
}

static void note_call(struct record *r, const char *name, long ret, int err, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void note_call(struct record *r, const char *name, long ret, int err, const char *fmt, ...)
{
	if (r->ncalls >= MAX_CALLS)
		return;
	struct call *c = &r->calls[r->ncalls++];
	c->name = name;
	c->ret = ret;
	c->err = ret == -1 ? err : 0;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->args, sizeof(c->args), fmt, ap);
	va_end(ap);
}

static void set_result(struct record *r, int err)
{
	r->result_set = true;
	r->result = err;
}

static void emit_record(struct json *j, const char *name, const struct ctx *c, const struct record *r)
{
	char nb[16];

	j_open(j, '{');
	j_kstr(j, "kind", "case");
	j_kstr(j, "case", name);
	j_kint(j, "uid", (long long)c->uid);
	j_kbool(j, "cap_ipc_lock", c->cap_ipc_lock);
	j_kopt(j, "rlimit_soft", c->soft == RLIM_INFINITY ? none : some((long long)c->soft));
	j_kopt(j, "rlimit_hard", c->hard == RLIM_INFINITY ? none : some((long long)c->hard));
	j_kint(j, "page_size", (long long)c->page);
	j_kopt(j, "memtotal_kb", some_if_valid(c->memtotal_kb));
	j_kopt(j, "memavailable_kb", some_if_valid(c->memavail_kb));

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
	j_kopt(j, "smaps_locked_kb", r->smaps_locked_kb);
	j_kopt(j, "smaps_rss_kb", r->smaps_rss_kb);
	j_kopt(j, "smaps_size_kb", r->smaps_size_kb);
	if (r->smaps_lo < 0)
		j_knull(j, "smaps_lo");
	else
		j_kbool(j, "smaps_lo", r->smaps_lo);
	j_kstr(j, "smaps_vmflags", r->smaps_found ? r->smaps_vmflags : NULL);
	j_close(j, '}');
}

/* ---- measurements ------------------------------------------------------------------------ */

/* mincore(2) is exact for anonymous memory: a page is either present or not. */
static opt_t mincore_count(void *addr, size_t size, unsigned char *vec, size_t page)
{
	if (!vec || mincore(addr, size, vec) != 0)
		return none;
	long long n = 0;
	for (size_t i = 0; i < size / page; i++)
		n += vec[i] & 1;
	return some(n);
}

struct faults {
	long minflt, majflt;
};

static struct faults faults_now(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (struct faults){ru.ru_minflt, ru.ru_majflt};
}

/* The smaps entry that contains addr. smaps_size_kb is reported too: if the kernel merged the
 * mapping with a neighbour, Locked/Rss describe the merged VMA and Size shows it. */
static void smaps_for(const void *addr, struct record *r)
{
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
				r->smaps_found = true;
		} else if (inside) {
			const char *v;
			if ((v = find_field(line, "Size")))
				r->smaps_size_kb = some(strtoll(v, NULL, 10));
			else if ((v = find_field(line, "Rss")))
				r->smaps_rss_kb = some(strtoll(v, NULL, 10));
			else if ((v = find_field(line, "Locked")))
				r->smaps_locked_kb = some(strtoll(v, NULL, 10));
			else if ((v = find_field(line, "VmFlags"))) {
				while (*v == ' ' || *v == '\t')
					v++;
				snprintf(r->smaps_vmflags, sizeof(r->smaps_vmflags), "%s", v);
				size_t n = strlen(r->smaps_vmflags);
				while (n > 0 && isspace((unsigned char)r->smaps_vmflags[n - 1]))
					r->smaps_vmflags[--n] = '\0';
				char flags[160];
				snprintf(flags, sizeof(flags), " %s ", r->smaps_vmflags);
				r->smaps_lo = strstr(flags, " lo ") != NULL;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
}

/* ---- sizes ------------------------------------------------------------------------------- */

enum size_rule { SZ_UNDER, SZ_AT, SZ_OVER, SZ_POPULATE };

/* The size rules of README.md, from the soft limit as this process sees it. False (with the
 * reason recorded) when the case cannot say anything under this limit or in this much RAM. */
static bool case_size(const struct ctx *c, enum size_rule rule, size_t *size, struct record *r)
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
	/* Locking more than the guest can hold ends in the OOM killer, which is a separate scenario;
	 * here it would only hide the limit behaviour. */
	if (c->memavail_kb >= 0 && (unsigned long long)s > (unsigned long long)c->memavail_kb * 512) {
		not_applicable(r, "does not fit in guest RAM (size %zu > MemAvailable/2)", s);
		return false;
	}
	*size = s;
	return true;
}

/* ---- cases ------------------------------------------------------------------------------- */

enum lock_op { OP_NONE, OP_MLOCK, OP_MLOCK2_ONFAULT, OP_MLOCKALL };

/* One mapping, optionally locked after the fact; the key call is mmap itself for OP_NONE. */
struct lock_case {
	enum size_rule size;
	int mmap_flags;
	enum lock_op op;
	bool touch; /* populate family: write one byte per page after the call */
};

static const char *mmap_flags_str(int flags, char *buf, size_t cap)
{
	snprintf(buf, cap, "MAP_PRIVATE|MAP_ANONYMOUS%s%s", (flags & MAP_LOCKED) ? "|MAP_LOCKED" : "",
		 (flags & MAP_POPULATE) ? "|MAP_POPULATE" : "");
	return buf;
}

/* Returns the errno of the lock call (0 on success); captured before note_call can clobber it. */
static int lock_op(struct record *r, enum lock_op op, void *p, size_t size)
{
	int ret = 0, err = 0;
	switch (op) {
	case OP_NONE:
		break;
	case OP_MLOCK:
		ret = mlock(p, size);
		err = ret ? errno : 0;
		note_call(r, "mlock", ret, err, "len=%zu", size);
		break;
	case OP_MLOCK2_ONFAULT:
		/* Via syscall(2): glibc's wrapper reports a kernel without mlock2 as EINVAL, and this
		 * should show what the kernel itself says (ENOSYS before 4.4). */
		ret = (int)syscall(SYS_mlock2, p, size, MLOCK_ONFAULT);
		err = ret ? errno : 0;
		note_call(r, "mlock2", ret, err, "MLOCK_ONFAULT len=%zu", size);
		break;
	case OP_MLOCKALL:
		ret = mlockall(MCL_CURRENT);
		err = ret ? errno : 0;
		note_call(r, "mlockall", ret, err, "MCL_CURRENT");
		break;
	}
	return err;
}

static void run_lock_case(const struct ctx *c, struct record *r, const void *arg)
{
	const struct lock_case *lc = arg;
	char fb[96];
	size_t size;

	if (!case_size(c, lc->size, &size, r))
		return;
	size_t pages = size / c->page;
	/* Allocated before the key call so its own faults stay outside the measured window. */
	unsigned char *vec = malloc(pages);

	r->vmlck_before_kb = some_if_valid(read_status_kb("VmLck"));

	struct faults f0, f1;
	char *p;
	int err;
	if (lc->op == OP_NONE) {
		f0 = faults_now();
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, lc->mmap_flags, -1, 0);
		err = p == MAP_FAILED ? errno : 0;
		f1 = faults_now();
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "%s len=%zu", mmap_flags_str(lc->mmap_flags, fb, sizeof(fb)), size);
	} else {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, lc->mmap_flags, -1, 0);
		err = p == MAP_FAILED ? errno : 0;
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "%s len=%zu", mmap_flags_str(lc->mmap_flags, fb, sizeof(fb)), size);
		if (p == MAP_FAILED) {
			char nb[16];
			not_applicable(r, "setup mmap failed: %s", errno_name(err, nb, sizeof(nb)));
			free(vec);
			return;
		}
		f0 = faults_now();
		err = lock_op(r, lc->op, p, size);
		f1 = faults_now();
	}
	set_result(r, err);
	r->minflt_call = some(f1.minflt - f0.minflt);
	r->majflt_call = some(f1.majflt - f0.majflt);

	if (p != MAP_FAILED) {
		r->total_pages = some((long long)pages);
		r->resident_pages = mincore_count(p, size, vec, c->page);
		if (lc->touch && err == 0) {
			volatile char *q = p;
			f0 = faults_now();
			for (size_t off = 0; off < size; off += c->page)
				q[off] = 1;
			f1 = faults_now();
			r->minflt_touch = some(f1.minflt - f0.minflt);
		}
	}
	/* Measured even after a failure: a failed call must leave the accounting as it was. */
	r->vmlck_after_kb = some_if_valid(read_status_kb("VmLck"));
	if (p != MAP_FAILED)
		smaps_for(p, r);

	/* munlockall only after a successful mlockall, so a failed one that leaked shows in vmlck_end. */
	if (lc->op == OP_MLOCKALL && err == 0) {
		int ret = munlockall();
		note_call(r, "munlockall", ret, errno, "%s", "");
	}
	if (p != MAP_FAILED) {
		int ret = munmap(p, size);
		note_call(r, "munmap", ret, errno, "len=%zu", size);
	}
	r->vmlck_end_kb = some_if_valid(read_status_kb("VmLck"));
	free(vec);
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
	r->vmlck_before_kb = some_if_valid(read_status_kb("VmLck"));
}

/* Hidden cases that exercise the parent's killed/timeout/crashed paths for the harness tests. */
static void run_selftest_kill(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c, (void)r, (void)arg;
	raise(SIGKILL);
}

static void run_selftest_hang(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c, (void)r, (void)arg;
	for (;;)
		pause();
}

static void run_selftest_crash(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c, (void)r, (void)arg;
	_exit(1);
}

#define PRIV_ANON (MAP_PRIVATE | MAP_ANONYMOUS)

static const struct lock_case
	lc_map_locked_under = {SZ_UNDER, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_map_locked_at = {SZ_AT, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_map_locked_over = {SZ_OVER, PRIV_ANON | MAP_LOCKED, OP_NONE, false},
	lc_mlock_under = {SZ_UNDER, PRIV_ANON, OP_MLOCK, false},
	lc_mlock_at = {SZ_AT, PRIV_ANON, OP_MLOCK, false},
	lc_mlock_over = {SZ_OVER, PRIV_ANON, OP_MLOCK, false},
	lc_mlock2_onfault_over = {SZ_OVER, PRIV_ANON, OP_MLOCK2_ONFAULT, false},
	lc_mlockall_over = {SZ_OVER, PRIV_ANON, OP_MLOCKALL, false},
	lc_pop_map_locked = {SZ_POPULATE, PRIV_ANON | MAP_LOCKED, OP_NONE, true},
	lc_pop_map_locked_populate = {SZ_POPULATE, PRIV_ANON | MAP_LOCKED | MAP_POPULATE, OP_NONE, true},
	lc_pop_mmap_mlock = {SZ_POPULATE, PRIV_ANON, OP_MLOCK, true},
	lc_pop_map_populate = {SZ_POPULATE, PRIV_ANON | MAP_POPULATE, OP_NONE, true};

struct case_def {
	const char *name;
	const char *description;
	void (*fn)(const struct ctx *, struct record *, const void *);
	const void *arg;
	bool hidden; /* not in --list, not in `all`; only by name */
};

/* Catalogue order is the --list order and the `all` order. */
static const struct case_def cases[] = {
	{"limits", "getrlimit(RLIMIT_MEMLOCK): the soft/hard limit the process runs with", run_limits, NULL, false},
	{"map_locked_under", "mmap(MAP_LOCKED) of half the soft limit (1 MiB when unlimited)", run_lock_case, &lc_map_locked_under, false},
	{"map_locked_at", "mmap(MAP_LOCKED) of exactly the soft limit", run_lock_case, &lc_map_locked_at, false},
	{"map_locked_over", "mmap(MAP_LOCKED) of the soft limit plus one page", run_lock_case, &lc_map_locked_over, false},
	{"mlock_under", "mmap, then mlock of half the soft limit (1 MiB when unlimited)", run_lock_case, &lc_mlock_under, false},
	{"mlock_at", "mmap, then mlock of exactly the soft limit", run_lock_case, &lc_mlock_at, false},
	{"mlock_over", "mmap, then mlock of the soft limit plus one page", run_lock_case, &lc_mlock_over, false},
	{"mlock2_onfault_over", "mmap, then mlock2(MLOCK_ONFAULT) of the soft limit plus one page", run_lock_case, &lc_mlock2_onfault_over, false},
	{"mlockall_over", "mmap of the soft limit plus one page, then mlockall(MCL_CURRENT)", run_lock_case, &lc_mlockall_over, false},
	{"populate_map_locked", "mmap(MAP_LOCKED) of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_map_locked, false},
	{"populate_map_locked_populate", "mmap(MAP_LOCKED|MAP_POPULATE) of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_map_locked_populate, false},
	{"populate_mmap_mlock", "mmap, then mlock of 1 MiB: residency and faults in the call and on touch", run_lock_case, &lc_pop_mmap_mlock, false},
	{"populate_map_populate", "mmap(MAP_POPULATE) of 1 MiB, no lock (the reference): residency and faults", run_lock_case, &lc_pop_map_populate, false},
	{"_selftest_kill", "raise(SIGKILL) before sending a record", run_selftest_kill, NULL, true},
	{"_selftest_hang", "sleep forever (per-case timeout)", run_selftest_hang, NULL, true},
	{"_selftest_crash", "exit 1 without sending a record", run_selftest_crash, NULL, true},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

static const struct case_def *find_case(const char *name)
{
	for (size_t i = 0; i < NCASES; i++)
		if (strcmp(cases[i].name, name) == 0)
			return &cases[i];
	return NULL;
}

/* ---- child ------------------------------------------------------------------------------- */

static void read_ctx(struct ctx *c)
{
	struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
	getrlimit(RLIMIT_MEMLOCK, &rl);
	c->uid = getuid();
	c->cap_ipc_lock = has_cap_ipc_lock();
	c->soft = rl.rlim_cur;
	c->hard = rl.rlim_max;
	c->page = (size_t)sysconf(_SC_PAGESIZE);
	c->memtotal_kb = proc_kb("/proc/meminfo", "MemTotal");
	c->memavail_kb = proc_kb("/proc/meminfo", "MemAvailable");
}

static char child_out[1 << 16];

static _Noreturn void run_child(const struct case_def *cd, int wfd)
{
	/* If a case exhausts the guest, the OOM killer should take this child, not sshd or the parent. */
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || !write_all(fd, "1000", 4))
		fprintf(stderr, "probe: %s: cannot set oom_score_adj: %s\n", cd->name, strerror(errno));
	if (fd >= 0)
		close(fd);

	struct ctx c;
	struct record r;
	read_ctx(&c);
	record_init(&r);
	cd->fn(&c, &r, cd->arg);

	struct json j;
	j_init(&j, child_out, sizeof(child_out));
	emit_record(&j, cd->name, &c, &r);
	if (j.overflow || !write_all(wfd, j.buf, j.len))
		_exit(1);
	_exit(0);
}

/* ---- parent ------------------------------------------------------------------------------ */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char rec_buf[1 << 18];
static char line_buf[1 << 18];

/* A record is usable if it is one complete object on one line; anything else counts as garbled. */
static bool record_ok(const char *buf, size_t len, bool overflow)
{
	return !overflow && len >= 2 && buf[0] == '{' && buf[len - 1] == '}' && !memchr(buf, '\n', len);
}

static void run_case(const struct case_def *cd, double timeout_s)
{
	int fds[2];
	fflush(stdout); /* the child must not inherit unflushed output */
	if (pipe2(fds, O_CLOEXEC) != 0) {
		perror("probe: pipe");
		exit(EXIT_SETUP);
	}
	double t0 = now_s();
	pid_t pid = fork();
	if (pid < 0) {
		perror("probe: fork");
		exit(EXIT_SETUP);
	}
	if (pid == 0) {
		close(fds[0]);
		run_child(cd, fds[1]);
	}
	close(fds[1]);

	size_t len = 0;
	bool overflow = false, pipe_open = true, reaped = false, timed_out = false;
	int status = 0;
	double deadline = t0 + timeout_s;
	while (!reaped) {
		double left = deadline - now_s();
		if (left <= 0) {
			kill(pid, SIGKILL);
			while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
				;
			timed_out = true;
			break;
		}
		if (pipe_open) {
			/* The child's exit closes the pipe, so EOF is the usual wake-up. */
			struct pollfd pfd = {fds[0], POLLIN, 0};
			int ms = left > 3600 ? 3600000 : (int)(left * 1000) + 1;
			int n = poll(&pfd, 1, ms);
			if (n > 0) {
				char tmp[4096];
				ssize_t got = read(fds[0], tmp, sizeof(tmp));
				if (got > 0) {
					if (len + (size_t)got < sizeof(rec_buf)) {
						memcpy(rec_buf + len, tmp, (size_t)got);
						len += (size_t)got;
					} else {
						overflow = true;
					}
				} else if (got == 0 || errno != EINTR) {
					pipe_open = false;
				}
			}
		} else {
			/* The pipe closed but the child lives on (e.g. in exit teardown of a big locked area). */
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		if (!pipe_open && waitpid(pid, &status, WNOHANG) == pid)
			reaped = true;
	}
	close(fds[0]);
	long long duration_ms = (long long)((now_s() - t0) * 1000.0 + 0.5);

	bool have_record = record_ok(rec_buf, len, overflow);
	struct json j;
	j_init(&j, line_buf, sizeof(line_buf));
	if (have_record) {
		j_raw(&j, rec_buf, len - 1); /* reopen the child's object to add the parent's fields */
		j_continue_object(&j);
	} else {
		j_open(&j, '{');
		j_kstr(&j, "kind", "case");
		j_kstr(&j, "case", cd->name);
	}

	char sb[16];
	if (timed_out) {
		j_kstr(&j, "status", "timeout");
	} else if (WIFSIGNALED(status)) {
		j_kstr(&j, "status", "killed");
		j_kint(&j, "signal", WTERMSIG(status));
		j_kstr(&j, "signal_name", signal_name(WTERMSIG(status), sb, sizeof(sb)));
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && have_record) {
		j_kstr(&j, "status", "ok");
	} else {
		j_kstr(&j, "status", "crashed");
		if (WIFEXITED(status))
			j_kint(&j, "exit_code", WEXITSTATUS(status));
	}
	j_kint(&j, "duration_ms", duration_ms);
	j_close(&j, '}');
	if (j.overflow) {
		fprintf(stderr, "probe: %s: output line too long\n", cd->name);
		exit(EXIT_SETUP);
	}
	/* Flushed per case: a later case may crash the guest, and what was printed must survive. */
	printf("%s\n", j.buf);
	fflush(stdout);
}

/* ---- setup ------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: probe --list\n"
		"       probe run [--memlock default|SOFT:HARD] [--user NAME] [--timeout SECONDS] CASE...\n"
		"SOFT and HARD are decimal bytes or 'unlimited'; CASE may be 'all'.\n");
}

static _Noreturn void bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void bad_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("probe: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	usage(stderr);
	exit(EXIT_USAGE);
}

static bool parse_limit(const char *s, rlim_t *out)
{
	if (strcmp(s, "unlimited") == 0) {
		*out = RLIM_INFINITY;
		return true;
	}
	if (!*s)
		return false;
	for (const char *p = s; *p; p++)
		if (!isdigit((unsigned char)*p))
			return false;
	errno = 0;
	unsigned long long v = strtoull(s, NULL, 10);
	if (errno == ERANGE || v >= (unsigned long long)RLIM_INFINITY)
		return false;
	*out = (rlim_t)v;
	return true;
}

static bool parse_memlock(const char *s, struct rlimit *rl)
{
	const char *colon = strchr(s, ':');
	if (!colon || colon - s >= 32)
		return false;
	char soft[32];
	memcpy(soft, s, (size_t)(colon - s));
	soft[colon - s] = '\0';
	if (!parse_limit(soft, &rl->rlim_cur) || !parse_limit(colon + 1, &rl->rlim_max))
		return false;
	/* setrlimit(2) would refuse soft > hard with EINVAL; that is a usage error, not a finding. */
	return rl->rlim_cur <= rl->rlim_max;
}

struct passwd_entry {
	uid_t uid;
	gid_t gid;
};

/* /etc/passwd by hand: a static binary must not go through NSS (getpwnam would dlopen it). */
static bool lookup_user(const char *name, struct passwd_entry *pw)
{
	static char buf[1 << 16];
	if (read_file("/etc/passwd", buf, sizeof(buf)) < 0)
		return false;
	size_t nlen = strlen(name);
	for (char *line = buf; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		/* name:password:uid:gid:gecos:home:shell */
		if (strncmp(line, name, nlen) == 0 && line[nlen] == ':') {
			char *pass_end = strchr(line + nlen + 1, ':');
			if (!pass_end)
				return false;
			char *end;
			errno = 0;
			unsigned long uid = strtoul(pass_end + 1, &end, 10);
			if (end == pass_end + 1 || *end != ':' || errno)
				return false;
			char *gid_start = end + 1;
			unsigned long gid = strtoul(gid_start, &end, 10);
			if (end == gid_start || *end != ':' || errno)
				return false;
			pw->uid = (uid_t)uid;
			pw->gid = (gid_t)gid;
			return true;
		}
		line = nl ? nl + 1 : NULL;
	}
	return false;
}

static void drop_to_user(const char *name)
{
	struct passwd_entry pw;
	if (!*name || strchr(name, ':') || !lookup_user(name, &pw)) {
		fprintf(stderr, "probe: user %s not found in /etc/passwd\n", name);
		exit(EXIT_SETUP);
	}
	if (pw.uid == 0)
		return;
	/* Real, effective and saved ids all change, so the capability sets are cleared
	 * (capabilities(7), "Effect of user ID changes on capabilities"). */
	if (setgroups(1, &pw.gid) != 0 || setresgid(pw.gid, pw.gid, pw.gid) != 0 ||
	    setresuid(pw.uid, pw.uid, pw.uid) != 0) {
		fprintf(stderr, "probe: cannot become %s (uid %u): %s\n", name, (unsigned)pw.uid, strerror(errno));
		exit(EXIT_SETUP);
	}
	/* A credential change makes the process non-dumpable, and /proc/self of a non-dumpable process
	 * is owned by root (proc(5)): the child could not write its own oom_score_adj. */
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) {
		perror("probe: prctl(PR_SET_DUMPABLE)");
		exit(EXIT_SETUP);
	}
	if (has_cap_ipc_lock()) {
		fprintf(stderr, "probe: still have CAP_IPC_LOCK as %s\n", name);
		exit(EXIT_SETUP);
	}
}

static int cmd_list(void)
{
	for (size_t i = 0; i < NCASES; i++)
		if (!cases[i].hidden)
			printf("%s\t%s\n", cases[i].name, cases[i].description);
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	const char *memlock = "default", *user = NULL;
	double timeout_s = 60.0;
	const struct case_def **sel = calloc((size_t)argc * NCASES + 1, sizeof(*sel));
	size_t nsel = 0;
	bool options_done = false;

	if (!sel)
		bad_usage("out of memory");
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!options_done && strncmp(a, "--", 2) == 0) {
			if (strcmp(a, "--") == 0) {
				options_done = true;
				continue;
			}
			const char *eq = strchr(a, '=');
			size_t klen = eq ? (size_t)(eq - a) : strlen(a);
			const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
			if (!val)
				bad_usage("%s needs a value", a);
			if (klen == 9 && strncmp(a, "--memlock", klen) == 0)
				memlock = val;
			else if (klen == 6 && strncmp(a, "--user", klen) == 0)
				user = val;
			else if (klen == 9 && strncmp(a, "--timeout", klen) == 0) {
				char *end;
				timeout_s = strtod(val, &end);
				if (end == val || *end || !(timeout_s > 0) || timeout_s > 1e7)
					bad_usage("--timeout: '%s' is not a positive number of seconds", val);
			} else
				bad_usage("unknown option %.*s", (int)klen, a);
		} else if (strcmp(a, "all") == 0) {
			for (size_t k = 0; k < NCASES; k++)
				if (!cases[k].hidden)
					sel[nsel++] = &cases[k];
		} else {
			const struct case_def *cd = find_case(a);
			if (!cd)
				bad_usage("unknown case '%s' (see probe --list)", a);
			sel[nsel++] = cd;
		}
	}
	if (nsel == 0)
		bad_usage("no case given");

	struct rlimit rl;
	if (strcmp(memlock, "default") != 0) {
		if (!parse_memlock(memlock, &rl))
			bad_usage("--memlock: '%s' is not default or SOFT:HARD (bytes or unlimited, SOFT <= HARD)", memlock);
		if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
			fprintf(stderr, "probe: setrlimit(RLIMIT_MEMLOCK, %s): %s\n", memlock, strerror(errno));
			exit(EXIT_SETUP);
		}
	}
	if (user)
		drop_to_user(user);

	for (size_t i = 0; i < nsel; i++)
		run_case(sel[i], timeout_s);
	printf("{\"kind\":\"end\",\"cases\":%zu}\n", nsel);
	fflush(stdout);
	free(sel);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
		if (argc > 2)
			bad_usage("--list takes no arguments");
		return cmd_list();
	}
	if (argc >= 2 && strcmp(argv[1], "run") == 0)
		return cmd_run(argc - 2, argv + 2);
	if (argc < 2)
		bad_usage("no command given");
	bad_usage("unknown command '%s'", argv[1]);
}
