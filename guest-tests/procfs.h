/*
 * procfs.h: small file helpers, the /proc readers every measurement goes through, and the errno and
 * signal names records carry. The readers share one static buffer (procfs.c says why).
 */
#ifndef PROBE_PROCFS_H
#define PROBE_PROCFS_H

#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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
/* MemAvailable of /proc/meminfo in kB. A kernel before 3.14 has none: then the estimate 3.14
 * introduced, from the fields such a kernel has (procfs.c says which, and how). *estimate (when
 * estimate is not NULL) is NULL for the kernel's own figure, else names the fields the estimate
 * used. -1 when neither is there. */
long long memavailable_kb(const char **estimate);
/* The same from the text of /proc/meminfo and /proc/zoneinfo (page: the page size in bytes);
 * zoneinfo is not read when meminfo has MemAvailable, and may then be NULL. */
long long memavailable_of(const char *meminfo, const char *zoneinfo, size_t page, const char **estimate);
bool has_cap_ipc_lock(void);
/* The running kernel (uname(2) release) is older than major.minor.patch; release_older() is the
 * same for a release string ("2.6.32", "6.1.0-18-amd64", "4.4.178+"). False when it cannot be
 * parsed. */
bool kernel_older(int major, int minor, int patch);
bool release_older(const char *release, int major, int minor, int patch);
int vma_count(const void *start, size_t len); /* /proc/self/maps entries overlapping the range */

struct smaps_info {
	bool found;
	long long size_kb, rss_kb, locked_kb;
	bool has_locked; /* a Locked line was there (not on 2.6.20 or 2.6.32, seen here): else locked_kb is unknown */
	bool lo, lf;
	bool flags; /* a VmFlags line was there (Linux 3.8 on): without it lo and lf are unknown */
	char vmflags[160];
};

void smaps_at(const void *addr, struct smaps_info *out);
/* The same from smaps text (modified: lines are cut in place). */
void smaps_parse(char *text, uintptr_t addr, struct smaps_info *out);
/* `lo` of the entry: 1 or 0 (0 when there is no entry), LO_UNKNOWN when the entry has no VmFlags. */
#define LO_UNKNOWN (-1)
int smaps_lo_of(const struct smaps_info *si);
/* The entries of /proc/self/smaps that overlap [a, b), in address order: where each VMA starts and
 * ends, its Rss and its protection (PROT_* from the header's "rwxp"). smaps_spans_parse() is the
 * same from smaps text. -1 when smaps cannot be read, was cut (more than the buffer holds) or has
 * more than cap such entries. */
struct smaps_span {
	uintptr_t start, end;
	long long rss_kb;
	int prot;
};
int smaps_spans(uintptr_t a, uintptr_t b, struct smaps_span *out, int cap);
int smaps_spans_parse(const char *text, uintptr_t a, uintptr_t b, struct smaps_span *out, int cap);
/* Mlocked and Unevictable of /proc/meminfo in kB, -1 when absent. Writes /proc/sys/vm/stat_refresh
 * first (procfs.c says why). */
void meminfo_locked(long long *mlocked, long long *unevict);

#endif
