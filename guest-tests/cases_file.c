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
	r->vmlck_before_kb = some_if_valid(status_kb("VmLck"));

	char *p;
	int err;
	if (ec->map_locked) {
		key_begin(r);
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
		err = p == MAP_FAILED ? errno : 0;
		key_end(r, err);
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "MAP_SHARED|MAP_LOCKED len=%zu file=%zu", size, flen);
	} else {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		err = p == MAP_FAILED ? errno : 0;
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "MAP_SHARED len=%zu file=%zu", size, flen);
		if (p == MAP_FAILED) {
			setup_failed(r, c, "mmap", err);
			close(fd);
			return;
		}
		key_begin(r);
		int ret = mlock(p, size);
		err = ret ? errno : 0;
		key_end(r, err);
		note_call(r, "mlock", ret, err, "len=%zu", size);
	}
	if (p != MAP_FAILED) {
		record_residency(r, p, size, c->page);
		record_smaps(r, p);
		rec_opt(r, "resident_in_file_pages", resident_count(p, flen, c->page));
		rec_opt(r, "resident_past_eof_pages", resident_count(p + flen, size - flen, c->page));
		/* The in-file part first (no fault expected once populated), then the tail. */
		int sig = 0;
		struct faults f = {0, 0};
		touch_pages(r, p, flen, c->page, true, &sig, &f);
		rec_int(r, "minflt_touch_in_file", f.minflt);
		size_t ok = touch_pages(r, p + flen, size - flen, c->page, true, &sig, NULL);
		char sb[16];
		rec_str(r, "signal_touch_past_eof", sig ? signal_name(sig, sb, sizeof(sb)) : NULL);
		rec_int(r, "past_eof_pages_touched", (long long)ok);
		if (!ec->map_locked && err != 0) {
			/* mlock(2) RETURN VALUE: "On error ... no changes are made to any locks". */
			struct smaps_info si;
			smaps_at(p, &si);
			rec_bool(r, "locked_after_failed_mlock", si.found && si.lo);
			int ret = munlock(p, size);
			note_call(r, "munlock", ret, errno, "len=%zu", size);
		}
		int ret = munmap(p, size);
		note_call(r, "munmap", ret, errno, "len=%zu", size);
	}
	close(fd);
	r->vmlck_end_kb = some_if_valid(status_kb("VmLck"));
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
	long long maj0 = -1, maj1 = -1;
	long in0 = 0, in1 = 0;

	/* Drop the file's clean pages so the mapping has to read them (posix_fadvise(2)). */
	int ret = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	note_call(r, "posix_fadvise", ret ? -1 : 0, ret, "POSIX_FADV_DONTNEED");
	r->vmlck_before_kb = some_if_valid(status_kb("VmLck"));

	char *p;
	int err;
	if (dc->kind == DISK_MMAP_MLOCK) {
		p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		err = p == MAP_FAILED ? errno : 0;
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "PROT_READ MAP_PRIVATE %s len=%zu", DISK_FILE, size);
		if (p == MAP_FAILED) {
			setup_failed(r, c, "mmap", err);
			close(fd);
			return;
		}
		rec_opt(r, "mapped_before_call", mapped_pages(p, c->page));
		if (pagecache_visible)
			rec_opt(r, "pagecache_before_call", resident_count(p, size, c->page));
		maj0 = pgmajfault();
		in0 = inblock();
		key_begin(r);
		ret = mlock(p, size);
		err = ret ? errno : 0;
		key_end(r, err);
		in1 = inblock();
		maj1 = pgmajfault();
		note_call(r, "mlock", ret, err, "len=%zu", size);
	} else {
		int flags = MAP_PRIVATE | (dc->kind == DISK_MAP_LOCKED ? MAP_LOCKED : 0);
		maj0 = pgmajfault();
		in0 = inblock();
		key_begin(r);
		p = mmap(NULL, size, PROT_READ, flags, fd, 0);
		err = p == MAP_FAILED ? errno : 0;
		key_end(r, err);
		in1 = inblock();
		maj1 = pgmajfault();
		note_call(r, "mmap", p == MAP_FAILED ? -1 : 0, err, "PROT_READ MAP_PRIVATE%s %s len=%zu",
			  dc->kind == DISK_MAP_LOCKED ? "|MAP_LOCKED" : "", DISK_FILE, size);
	}
	if (r->majflt_call.set)
		rec_str(r, "call_major_faults", r->majflt_call.v > 0 ? "some" : "none");
	if (maj0 >= 0 && maj1 >= 0) {
		rec_int(r, "pgmajfault_call", maj1 - maj0);
		rec_bool(r, "call_read_disk", maj1 > maj0);
	}
	rec_int(r, "inblock_call", in1 - in0);
	if (p != MAP_FAILED) {
		/* resident_pages: mapped pages (see mapped_pages()); the page cache only where visible. */
		r->total_pages = some((long long)(size / c->page));
		r->resident_pages = mapped_pages(p, c->page);
		if (pagecache_visible)
			rec_opt(r, "pagecache_resident_pages", resident_count(p, size, c->page));
		record_smaps(r, p);
		if (err == 0) {
			maj0 = pgmajfault();
			in0 = inblock();
			touch_key(r, p, size, c->page, false, NULL);
			in1 = inblock();
			maj1 = pgmajfault();
			rec_int(r, "inblock_touch", in1 - in0);
			rec_str(r, "touch_major_faults", r->majflt_touch.v > 0 ? "some" : "none");
			if (maj0 >= 0 && maj1 >= 0)
				rec_bool(r, "touch_read_disk", maj1 > maj0);
		}
		if (dc->kind == DISK_MMAP_MLOCK && err == 0) {
			ret = munlock(p, size);
			note_call(r, "munlock", ret, errno, "len=%zu", size);
		}
		ret = munmap(p, size);
		note_call(r, "munmap", ret, errno, "len=%zu", size);
	}
	close(fd);
	r->vmlck_end_kb = some_if_valid(status_kb("VmLck"));
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
