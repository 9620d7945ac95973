/*
 * cases_file.c: area 8 of MAP_LOCKED.md, file-backed mappings.
 *
 * memfd (tmpfs) shorter than the mapping: the pages past end of file cannot be populated, so
 * MAP_LOCKED, which "doesn't fail with ENOMEM if this [population] fails" (mmap(2)), succeeds with
 * the tail unpopulated, while mlock, which must populate, reports the failure (GUP's EFAULT for a
 * SIGBUS fault becomes ENOMEM in mm/mlock.c __mlock_posix_error_return()). Touching the tail is
 * SIGBUS (mmap(2) "SIGBUS Attempted access to a page of the buffer that lies beyond the end of the
 * mapped file").
 *
 * A disk-backed file (the harness's read-only ext4 at /mnt/disk): its pages are dropped from the
 * page cache with posix_fadvise(POSIX_FADV_DONTNEED) (a clean file, so this works unprivileged),
 * then mapped. MAP_LOCKED and mlock read the file during the call (major faults in the call);
 * a plain mapping reads it on touch. This is the only place a major fault can happen: the
 * guest's root file system is in RAM.
 */
#include "cases.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISK_FILE "/mnt/disk/data.bin"

/* ---- memfd past end of file -------------------------------------------------------------- */

#define FILE_PAGES 2
#define MAP_PAGES 4

static int make_memfd(struct record *r, size_t len)
{
	int fd = memfd_create("probe", MFD_CLOEXEC);
	int err = fd < 0 ? errno : 0;
	note_call(r, "memfd_create", fd < 0 ? -1 : 0, err, "MFD_CLOEXEC");
	if (fd < 0) {
		/* Kernels without memfd (before 3.17) or without shmem: a /dev/shm file does the same. */
		fd = open("/dev/shm/probe-file", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		err = fd < 0 ? errno : 0;
		note_call(r, "open", fd < 0 ? -1 : 0, err, "/dev/shm/probe-file");
		if (fd >= 0)
			unlink("/dev/shm/probe-file");
	}
	if (fd < 0)
		return -1;
	int ret = ftruncate(fd, (off_t)len);
	note_call(r, "ftruncate", ret, errno, "len=%zu", len);
	if (ret != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

struct eof_case {
	bool map_locked; /* key call mmap(MAP_SHARED|MAP_LOCKED); else mmap(MAP_SHARED), then mlock */
};

static void run_past_eof(const struct ctx *c, struct record *r, const void *arg)
{
	const struct eof_case *ec = arg;
	size_t flen = FILE_PAGES * c->page, size = MAP_PAGES * c->page;
	r->size = some((long long)size);
	if (limited(c) && limit_pages(c) > 0 && limit_pages(c) < MAP_PAGES) {
		not_applicable(r, "limit below %d pages", MAP_PAGES);
		return;
	}
	int fd = make_memfd(r, flen);
	if (fd < 0) {
		not_applicable(r, "no memfd and no /dev/shm file");
		return;
	}
	rec_int(r, "file_size", (long long)flen);
	r->vmlck_before_kb = vmlck_now();

	char *p;
	int err;
	if (ec->map_locked) {
		p = key_mmap(r, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, &err,
			     "MAP_SHARED|MAP_LOCKED len=%zu file=%zu", size, flen);
	} else {
		p = setup_mmap(r, c, "mmap", size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, "MAP_SHARED len=%zu file=%zu", size, flen);
		if (!p) {
			close(fd);
			return;
		}
		err = key_mlock(r, p, size, NULL);
	}
	if (p) {
		record_mapping(r, p, size, c->page);
		rec_opt(r, "resident_in_file_pages", resident_count(p, flen, c->page));
		rec_opt(r, "resident_past_eof_pages", resident_count(p + flen, size - flen, c->page));
		/* The in-file part first (no fault expected once populated), then the tail. */
		int sig = 0;
		struct faults f = {0, 0};
		touch_pages(r, p, flen, c->page, true, &sig, &f);
		rec_int(r, "minflt_touch_in_file", f.minflt);
		size_t ok = touch_pages(r, p + flen, size - flen, c->page, true, &sig, NULL);
		rec_signal(r, "signal_touch_past_eof", sig);
		rec_int(r, "past_eof_pages_touched", (long long)ok);
		if (!ec->map_locked && err != 0) {
			/* mlock(2) RETURN VALUE: "On error ... no changes are made to any locks". */
			rec_lo(r, "locked_after_failed_mlock", smaps_lo_at(p));
			munlock_noted(r, p, size, NULL);
		}
		munmap_noted(r, p, size, NULL);
	}
	close(fd);
	r->vmlck_end_kb = vmlck_now();
}

/* ---- disk-backed file --------------------------------------------------------------------- */

enum disk_kind { DISK_MAP_LOCKED, DISK_MMAP_MLOCK, DISK_MMAP_TOUCH };

/* System-wide major faults (/proc/vmstat pgmajfault, counted by filemap_fault() whenever a page
 * had to be read): tells whether the call read the disk even where ru_majflt does not say so. */
static long long pgmajfault(void)
{
	static char buf[16384];
	if (read_file("/proc/vmstat", buf, sizeof(buf)) < 0)
		return -1;
	const char *v = strstr(buf, "\npgmajfault ");
	return v ? atoll(v + 12) : -1;
}

/* Pages of the mapping present in this process's page tables (smaps Rss). mincore(2) is no use
 * here for an unprivileged process: since 5.0 it reveals page-cache state only for files the
 * caller owns or could write, and reports every page resident otherwise (mm/mincore.c
 * can_do_mincore(), commit 134fca9063ad "mm/mincore.c: make mincore() more conservative"). */
static long inblock(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_inblock; /* getrusage(2): "block input operations" */
}

static opt_t mapped_pages(const void *p, size_t page)
{
	struct smaps_info si;
	smaps_at(p, &si);
	return si.found ? some(si.rss_kb * 1024 / (long long)page) : none;
}

/* Disk reads around a call: pgmajfault() outermost, inblock() innermost. */
struct disk_reads {
	long long maj0, maj1;
	long in0, in1;
};

static void reads_begin(struct disk_reads *d)
{
	d->maj0 = pgmajfault();
	d->in0 = inblock();
}

static void reads_end(struct disk_reads *d)
{
	d->in1 = inblock();
	d->maj1 = pgmajfault();
}

struct disk_case {
	enum disk_kind kind;
};

static void run_disk(const struct ctx *c, struct record *r, const void *arg)
{
	const struct disk_case *dc = arg;
	int fd = open(DISK_FILE, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		not_applicable(r, "no disk-backed file in this guest");
		return;
	}
	off_t flen = lseek(fd, 0, SEEK_END);
	size_t size = (size_t)flen / c->page * c->page;
	/* Locking cases lock the file up to the limit; the plain mapping reads all of it. */
	if (dc->kind != DISK_MMAP_TOUCH && limited(c) && limit_pages(c) * c->page < size)
		size = limit_pages(c) > 0 ? limit_pages(c) * c->page : c->page;
	if (size == 0) {
		not_applicable(r, "%s is empty", DISK_FILE);
		close(fd);
		return;
	}
	r->size = some((long long)size);

	struct stat st;
	bool pagecache_visible = fstat(fd, &st) == 0 && (st.st_uid == geteuid() || c->uid == 0);

	/* Drop the file's clean pages so the mapping has to read them (posix_fadvise(2)). */
	int ret = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	note_call(r, "posix_fadvise", ret ? -1 : 0, ret, "POSIX_FADV_DONTNEED");
	r->vmlck_before_kb = vmlck_now();

	char *p;
	int err;
	struct disk_reads call;
	if (dc->kind == DISK_MMAP_MLOCK) {
		p = setup_mmap(r, c, "mmap", size, PROT_READ, MAP_PRIVATE, fd, "PROT_READ MAP_PRIVATE %s len=%zu", DISK_FILE, size);
		if (!p) {
			close(fd);
			return;
		}
		rec_opt(r, "mapped_before_call", mapped_pages(p, c->page));
		if (pagecache_visible)
			rec_opt(r, "pagecache_before_call", resident_count(p, size, c->page));
		reads_begin(&call);
		err = key_mlock(r, p, size, NULL);
		reads_end(&call);
	} else {
		int flags = MAP_PRIVATE | (dc->kind == DISK_MAP_LOCKED ? MAP_LOCKED : 0);
		reads_begin(&call);
		p = key_mmap(r, size, PROT_READ, flags, fd, &err, "PROT_READ MAP_PRIVATE%s %s len=%zu",
			     dc->kind == DISK_MAP_LOCKED ? "|MAP_LOCKED" : "", DISK_FILE, size);
		reads_end(&call);
	}
	if (r->majflt_call.set)
		rec_str(r, "call_major_faults", r->majflt_call.v > 0 ? "some" : "none");
	if (call.maj0 >= 0 && call.maj1 >= 0) {
		rec_int(r, "pgmajfault_call", call.maj1 - call.maj0);
		rec_bool(r, "call_read_disk", call.maj1 > call.maj0);
	}
	rec_int(r, "inblock_call", call.in1 - call.in0);
	if (p) {
		/* resident_pages: mapped pages (see mapped_pages()); the page cache only where visible. */
		r->total_pages = some((long long)(size / c->page));
		r->resident_pages = mapped_pages(p, c->page);
		if (pagecache_visible)
			rec_opt(r, "pagecache_resident_pages", resident_count(p, size, c->page));
		record_smaps(r, p);
		if (err == 0) {
			struct disk_reads touch;
			reads_begin(&touch);
			touch_key(r, p, size, c->page, false, NULL);
			reads_end(&touch);
			rec_int(r, "inblock_touch", touch.in1 - touch.in0);
			rec_str(r, "touch_major_faults", r->majflt_touch.v > 0 ? "some" : "none");
			if (touch.maj0 >= 0 && touch.maj1 >= 0)
				rec_bool(r, "touch_read_disk", touch.maj1 > touch.maj0);
		}
		if (dc->kind == DISK_MMAP_MLOCK && err == 0)
			munlock_noted(r, p, size, NULL);
		munmap_noted(r, p, size, NULL);
	}
	close(fd);
	r->vmlck_end_kb = vmlck_now();
}

static const struct eof_case ec_map_locked = {true}, ec_mlock = {false};
static const struct disk_case dc_map_locked = {DISK_MAP_LOCKED}, dc_mmap_mlock = {DISK_MMAP_MLOCK},
			      dc_mmap_touch = {DISK_MMAP_TOUCH};

static const struct case_def defs[] = {
	{"file_map_locked_past_eof", "memfd of 2 pages, mmap(MAP_SHARED|MAP_LOCKED) of 4: residency, then touch the tail", run_past_eof, &ec_map_locked, false},
	{"file_mlock_past_eof", "memfd of 2 pages, mmap(MAP_SHARED) of 4, then mlock all 4: result and what stays locked", run_past_eof, &ec_mlock, false},
	{"file_disk_map_locked", "disk file dropped from the page cache, mmap(MAP_PRIVATE|MAP_LOCKED): major faults in the call", run_disk, &dc_map_locked, false},
	{"file_disk_mmap_mlock", "disk file dropped from the page cache, mmap then mlock: major faults in the mlock call", run_disk, &dc_mmap_mlock, false},
	{"file_disk_mmap_touch", "disk file dropped from the page cache, plain mmap (the reference): major faults on touch", run_disk, &dc_mmap_touch, false},
};
CASE_TABLE(cases_file, defs);
