/*
 * procfs.c: small file helpers, the /proc readers (status, meminfo, maps, smaps) and the errno and
 * signal names.
 *
 * Measuring must not disturb what is measured: /proc files are read with read(2) into a static
 * buffer (no stdio, no malloc), so reading one neither maps memory (which mlockall(MCL_FUTURE)
 * would lock and charge) nor takes faults inside the window around a key call.
 */
#include "procfs.h"

#include <signal.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
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

/* ---- MemAvailable, or the estimate of a kernel before 3.14 ------------------------------- */

/* MemAvailable came with Linux 3.14, commit 34e431b0ae39 ("/proc/meminfo: provide estimated
 * available memory"), computed in pages in fs/proc/meminfo.c meminfo_proc_show() (as in 3.16's
 * tree; 4.6 moved it to mm/page_alloc.c si_mem_available() and later kernels changed it):
 *
 *	for_each_zone(zone)
 *		wmark_low += zone->watermark[WMARK_LOW];
 *	available = i.freeram - wmark_low;
 *	pagecache = pages[LRU_ACTIVE_FILE] + pages[LRU_INACTIVE_FILE];
 *	pagecache -= min(pagecache / 2, wmark_low);
 *	available += pagecache;
 *	available += global_page_state(NR_SLAB_RECLAIMABLE) -
 *		     min(global_page_state(NR_SLAB_RECLAIMABLE) / 2, wmark_low);
 *	if (available < 0)
 *		available = 0;
 *
 * An older kernel shows every input: MemFree (i.freeram), Active(file) and Inactive(file) (the
 * split LRU, 2.6.28 on), SReclaimable (2.6.19 on), all in kB, and each zone's low watermark as
 * the "low" line of /proc/zoneinfo, in pages (2.6.13 on; 2.6.20 prints zone->pages_low, 2.6.32
 * low_wmark_pages(zone); a zone it does not print, an empty one, has a watermark of 0). The
 * arithmetic is the commit's, in pages, so the figure is what 3.14 would print for the same
 * counters.
 *
 * Before 2.6.28 there is no file LRU: anonymous and file pages share one LRU (Active, Inactive),
 * which would count anonymous memory a guest without swap cannot free. The page cache stands in:
 * Cached + Buffers (2.6.20's fs/proc/proc_misc.c meminfo_read_proc(): Cached is NR_FILE_PAGES
 * less the swap cache and Buffers, so the two together are the page cache the file LRU holds
 * from 2.6.28). It also counts what 2.6.28 keeps off the file LRU: shmem/tmpfs pages (the anon
 * LRU) and ramfs pages such as an initramfs (unevictable); the estimate is that much higher.
 * Without SReclaimable (before 2.6.19) reclaimable slab counts 0. */
static const char *const ESTIMATE[2][2] = {
	/* [file LRU from Active(file)/Inactive(file)][SReclaimable present] */
	{"MemFree, Cached + Buffers (no file LRU before 2.6.28), no SReclaimable (0), zoneinfo low: "
	 "kernel 34e431b0ae39's formula",
	 "MemFree, Cached + Buffers (no file LRU before 2.6.28), SReclaimable, zoneinfo low: "
	 "kernel 34e431b0ae39's formula"},
	{"MemFree, Active(file), Inactive(file), no SReclaimable (0), zoneinfo low: "
	 "kernel 34e431b0ae39's formula",
	 "MemFree, Active(file), Inactive(file), SReclaimable, zoneinfo low: kernel 34e431b0ae39's formula"},
};

static long long field_kb(const char *text, const char *key)
{
	const char *v = find_field(text, key);
	return v ? strtoll(v, NULL, 10) : -1;
}

/* The sum of the "low" lines of /proc/zoneinfo (one per zone, in pages); -1 when there is none. */
static long long zoneinfo_low_pages(const char *text)
{
	long long sum = -1;
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
		const char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "low", 3) == 0 && (p[3] == ' ' || p[3] == '\t')) {
			char *end;
			long long v = strtoll(p + 3, &end, 10);
			if (end != p + 3 && v >= 0)
				sum = (sum < 0 ? 0 : sum) + v;
		}
	}
	return sum;
}

static long long min_ll(long long a, long long b) { return a < b ? a : b; }

long long memavailable_of(const char *meminfo, const char *zoneinfo, size_t page, const char **estimate)
{
	if (estimate)
		*estimate = NULL;
	long long kb = field_kb(meminfo, "MemAvailable");
	if (kb >= 0)
		return kb;
	long long kb_per_page = (long long)(page / 1024);
	long long free_kb = field_kb(meminfo, "MemFree");
	long long wmark_low = zoneinfo ? zoneinfo_low_pages(zoneinfo) : -1;
	if (kb_per_page <= 0 || free_kb < 0 || wmark_low < 0)
		return -1;
	long long active_file = field_kb(meminfo, "Active(file)"), inactive_file = field_kb(meminfo, "Inactive(file)");
	bool split_lru = active_file >= 0 && inactive_file >= 0;
	long long file_kb;
	if (split_lru) {
		file_kb = active_file + inactive_file;
	} else {
		long long cached = field_kb(meminfo, "Cached"), buffers = field_kb(meminfo, "Buffers");
		if (cached < 0)
			return -1;
		file_kb = cached + (buffers > 0 ? buffers : 0);
	}
	long long slab_kb = field_kb(meminfo, "SReclaimable");
	bool has_slab = slab_kb >= 0;

	/* In pages, as the kernel computes it. */
	long long available = free_kb / kb_per_page - wmark_low;
	long long pagecache = file_kb / kb_per_page;
	pagecache -= min_ll(pagecache / 2, wmark_low);
	available += pagecache;
	long long slab = has_slab ? slab_kb / kb_per_page : 0;
	available += slab - min_ll(slab / 2, wmark_low);
	if (available < 0)
		available = 0;
	if (estimate)
		*estimate = ESTIMATE[split_lru][has_slab];
	return available * kb_per_page;
}

long long memavailable_kb(const char **estimate)
{
	static char meminfo[16384]; /* procbuf takes /proc/zoneinfo */
	if (estimate)
		*estimate = NULL;
	long long kb = meminfo_kb("MemAvailable");
	if (kb >= 0)
		return kb;
	ssize_t n = read_file("/proc/zoneinfo", procbuf, sizeof(procbuf));
	if (n < 0 || (size_t)n + 1 >= sizeof(procbuf) || read_file("/proc/meminfo", meminfo, sizeof(meminfo)) < 0)
		return -1; /* no zoneinfo, or cut: a zone's watermark would be missing */
	return memavailable_of(meminfo, procbuf, (size_t)sysconf(_SC_PAGESIZE), estimate);
}

/* CAP_IPC_LOCK decides everything here (getrlimit(2): a privileged process is not limited), so
 * read the effective set rather than trusting the uid. */
bool has_cap_ipc_lock(void)
{
	if (read_file("/proc/self/status", procbuf, sizeof(procbuf)) < 0)
		return false;
	const char *v = find_field(procbuf, "CapEff");
	return v && ((strtoull(v, NULL, 16) >> 14) & 1); /* CAP_IPC_LOCK, include/uapi/linux/capability.h */
}

bool release_older(const char *release, int major, int minor, int patch)
{
	/* "2.6.32", "3.16.0", "6.1.0-18-amd64", "4.4.178+": up to three numbers, a missing one 0. */
	long v[3] = {0, 0, 0};
	const char *s = release;
	for (int i = 0; i < 3; i++) {
		if (!isdigit((unsigned char)*s)) {
			if (i == 0)
				return false;
			break;
		}
		char *end;
		v[i] = strtol(s, &end, 10);
		s = end;
		if (*s != '.')
			break;
		s++;
	}
	long want[3] = {major, minor, patch};
	for (int i = 0; i < 3; i++)
		if (v[i] != want[i])
			return v[i] < want[i];
	return false;
}

bool kernel_older(int major, int minor, int patch)
{
	struct utsname u;
	return uname(&u) == 0 && release_older(u.release, major, minor, patch);
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

/* ---- smaps, meminfo's locked counters ---------------------------------------------------- */

/* The smaps entry that contains addr. size_kb is reported too: if the kernel merged the mapping
 * with a neighbour, Locked/Rss describe the merged VMA and Size shows it. */
void smaps_at(const void *addr, struct smaps_info *out)
{
	memset(out, 0, sizeof(*out));
	if (read_file("/proc/self/smaps", procbuf, sizeof(procbuf)) < 0)
		return;
	smaps_parse(procbuf, (uintptr_t)addr, out);
}

void smaps_parse(char *text, uintptr_t a, struct smaps_info *out)
{
	memset(out, 0, sizeof(*out));
	bool inside = false;
	for (char *line = text; line && *line;) {
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
			else if ((v = find_field(line, "Locked"))) {
				out->locked_kb = strtoll(v, NULL, 10);
				out->has_locked = true;
			}
			else if ((v = find_field(line, "VmFlags"))) {
				out->flags = true;
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

int smaps_spans(uintptr_t a, uintptr_t b, struct smaps_span *out, int cap)
{
	ssize_t n = read_file("/proc/self/smaps", procbuf, sizeof(procbuf));
	if (n < 0 || (size_t)n + 1 >= sizeof(procbuf))
		return -1; /* cut: an entry could be missing */
	return smaps_spans_parse(procbuf, a, b, out, cap);
}

int smaps_spans_parse(const char *text, uintptr_t a, uintptr_t b, struct smaps_span *out, int cap)
{
	int n = 0;
	struct smaps_span *cur = NULL; /* the overlapping entry whose lines follow */
	for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
		char *end;
		unsigned long long start = strtoull(line, &end, 16);
		if (end != line && *end == '-') { /* a header: "start-end perms offset dev inode path" */
			unsigned long long stop = strtoull(end + 1, &end, 16);
			cur = NULL;
			if (start < b && stop > a) {
				if (n >= cap)
					return -1;
				cur = &out[n++];
				cur->start = (uintptr_t)start;
				cur->end = (uintptr_t)stop;
				cur->rss_kb = -1;
				while (*end == ' ')
					end++;
				cur->prot = (end[0] == 'r' ? PROT_READ : 0) | (end[0] && end[1] == 'w' ? PROT_WRITE : 0) |
					    (end[0] && end[1] && end[2] == 'x' ? PROT_EXEC : 0);
			}
		} else if (cur && strncmp(line, "Rss:", 4) == 0) {
			cur->rss_kb = strtoll(line + 4, NULL, 10);
		}
	}
	for (int i = 0; i < n; i++)
		if (out[i].rss_kb < 0)
			return -1; /* an entry without its Rss line: not smaps as we know it */
	return n;
}

int smaps_lo_of(const struct smaps_info *si)
{
	if (!si->found)
		return 0;
	return si->flags ? si->lo : LO_UNKNOWN;
}

/* /proc/meminfo Mlocked and Unevictable are per-CPU batched (MAP_LOCKED.md: approximate). As root,
 * writing /proc/sys/vm/stat_refresh folds the per-CPU deltas first; unprivileged it fails and the
 * figures stay approximate. */
void meminfo_locked(long long *mlocked, long long *unevict)
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

/* Our own table, not glibc's sigabbrev_np(): the probe also builds with musl for kernels older than
 * glibc's minimum. Real-time signals have no name here, as they had none there. */
const char *signal_name(int sig, char *buf, size_t cap)
{
	static const struct {
		int no;
		const char *name;
	} names[] = {
		{SIGHUP, "HUP"},   {SIGINT, "INT"},   {SIGQUIT, "QUIT"}, {SIGILL, "ILL"},   {SIGTRAP, "TRAP"},
		{SIGABRT, "ABRT"}, {SIGBUS, "BUS"},   {SIGFPE, "FPE"},   {SIGKILL, "KILL"}, {SIGUSR1, "USR1"},
		{SIGSEGV, "SEGV"}, {SIGUSR2, "USR2"}, {SIGPIPE, "PIPE"}, {SIGALRM, "ALRM"}, {SIGTERM, "TERM"},
		{SIGSTKFLT, "STKFLT"}, {SIGCHLD, "CHLD"}, {SIGCONT, "CONT"}, {SIGSTOP, "STOP"}, {SIGTSTP, "TSTP"},
		{SIGTTIN, "TTIN"}, {SIGTTOU, "TTOU"}, {SIGURG, "URG"},   {SIGXCPU, "XCPU"}, {SIGXFSZ, "XFSZ"},
		{SIGVTALRM, "VTALRM"}, {SIGPROF, "PROF"}, {SIGWINCH, "WINCH"}, {SIGIO, "POLL"}, {SIGPWR, "PWR"},
		{SIGSYS, "SYS"},
	};
	const char *abbrev = NULL;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].no == sig)
			abbrev = names[i].name;
	if (abbrev)
		snprintf(buf, cap, "SIG%s", abbrev);
	else
		snprintf(buf, cap, "SIG%d", sig);
	return buf;
}
