/*
 * cases_mremap.c: area 12 of MAP_LOCKED.md, mremap of locked mappings.
 *
 * mremap(2): "If the memory segment specified by old_address and old_size is locked (using
 * mlock(2) or similar), then this lock is maintained when the segment is resized and/or
 * relocated. As a consequence, the amount of memory locked by the process may change." ERRORS:
 * "EAGAIN The caller tried to expand a memory segment that is locked, but this was not possible
 * without exceeding the RLIMIT_MEMLOCK resource limit." NOTES: moving or expanding a locked area
 * makes "a best effort to populate the new area".
 *
 * MREMAP_DONTUNMAP (since 5.7): private anonymous mappings only until 5.13 (the commit "mm: extend
 * MREMAP_DONTUNMAP to non-anonymous mappings"), EINVAL otherwise; old_size must equal
 * new_size. The old range stays mapped but loses VM_LOCKED (mm/mremap.c: "We always clear
 * VM_LOCKED[ONFAULT] on the old vma ... Because we won't unmap we don't need to touch locked_vm").
 *
 * Before 5.7 the flag is unknown and every such call is EINVAL: not applicable, told apart from the
 * shared case's documented EINVAL by the same call on a plain private anonymous page.
 *
 * Every case unmaps everything it mapped before reading vmlck_end_kb, so the accounting_restored
 * invariant checks that no remap leaked or lost locked pages.
 */
#include "cases.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct grow_case {
	bool over; /* grow to the limit plus one page; else to within the limit */
};

static void run_grow(const struct ctx *c, struct record *r, const void *arg)
{
	const struct grow_case *gc = arg;
	size_t old_len, new_len;
	if (gc->over) {
		if (c->soft == RLIM_INFINITY) {
			not_applicable(r, "no finite limit");
			return;
		}
		size_t lp = limit_pages(c);
		old_len = (lp / 2 ? lp / 2 : 1) * c->page;
		new_len = (lp + 1) * c->page;
	} else {
		new_len = small_size(c, 16);
		old_len = new_len / c->page / 2 * c->page;
		if (old_len == 0) {
			if (!locks_refused(c)) {
				not_applicable(r, "limit below two pages");
				return;
			}
			old_len = c->page; /* refused at set-up: not applicable below */
		}
	}
	if (!fits_in_ram(c, r, new_len))
		return;
	r->size = some((long long)new_len);
	rec_int(r, "old_size", (long long)old_len);
	r->vmlck_before_kb = vmlck_now();
	char *p = setup_map_locked(r, c, old_len);
	if (!p)
		return;
	long long v0 = status_kb("VmLck");
	step_snapshot(r, c, "map_locked", 0, p, old_len);

	int err;
	char *q = key_mremap(r, p, old_len, new_len, MREMAP_MAYMOVE, NULL, &err, "old=%zu new=%zu MREMAP_MAYMOVE", old_len, new_len);
	char *cur = q ? q : p;
	size_t cur_len = q ? new_len : old_len;
	record_mapping(r, cur, cur_len, c->page);
	if (r->vmlck_after_kb.set)
		rec_int(r, "vmlck_growth_kb", r->vmlck_after_kb.v - v0);
	rec_int(r, "growth_kb", (long long)((new_len - old_len) / 1024));
	step_snapshot(r, c, "mremap_grow", err, cur, cur_len);
	munmap_noted(r, cur, cur_len, "all");
	r->vmlck_end_kb = vmlck_now();
}

static void run_move(const struct ctx *c, struct record *r, const void *arg)
{
	(void)arg;
	size_t size = small_size(c, 8);
	r->size = some((long long)size);
	r->vmlck_before_kb = vmlck_now();
	char *p = setup_map_locked(r, c, size);
	if (!p)
		return;
	memset(p, 7, size);
	/* A reserved target away from the source (mmap(2) "Using MAP_FIXED safely"). */
	int terr;
	char *target = mmap_noted(r, size, PROT_NONE, PRIV_ANON | MAP_NORESERVE, -1, &terr, "PROT_NONE target len=%zu", size);
	if (!target) {
		set_result(r, terr);
		rec_str(r, "failed_setup", "target reservation");
		munmap_noted(r, p, size, "source");
		r->vmlck_end_kb = vmlck_now();
		return;
	}
	long long v0 = status_kb("VmLck");
	int err;
	char *q = key_mremap(r, p, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, target, &err,
			     "len=%zu MREMAP_MAYMOVE|MREMAP_FIXED", size);
	char *cur = q ? q : p;
	record_mapping(r, cur, size, c->page);
	if (r->vmlck_after_kb.set)
		rec_int(r, "vmlck_move_delta_kb", r->vmlck_after_kb.v - v0);
	rec_bool(r, "contents_moved", q && q[0] == 7 && q[size - 1] == 7);
	step_snapshot(r, c, "mremap_move", err, cur, size);
	if (!q) {
		munmap_noted(r, p, size, "source");
		munmap_noted(r, target, size, "target");
	} else {
		munmap_noted(r, q, size, "moved");
	}
	r->vmlck_end_kb = vmlck_now();
}

enum dontunmap_kind { DU_WHOLE, DU_PARTIAL, DU_SHARED };

struct dontunmap_case {
	enum dontunmap_kind kind;
};

/*
 * Does the kernel know MREMAP_DONTUNMAP at all? Asked only after the key call failed with EINVAL,
 * and not noted: on every kernel that knows the flag the record stays as it was.
 */
static bool dontunmap_known(const struct ctx *c)
{
	void *p = mmap(NULL, c->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return true; /* cannot tell: the case's own result stands */
	void *q = mremap(p, c->page, c->page, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
	int err = errno;
	if (q != MAP_FAILED)
		munmap(q, c->page);
	munmap(p, c->page);
	return q != MAP_FAILED || err != EINVAL;
}

static void run_dontunmap(const struct ctx *c, struct record *r, const void *arg)
{
	const struct dontunmap_case *dc = arg;
	size_t size = small_size(c, 8);
	if (dc->kind == DU_PARTIAL && size < 2 * c->page) {
		if (!locks_refused(c)) {
			not_applicable(r, "limit below two pages");
			return;
		}
		size = 2 * c->page; /* refused at set-up: not applicable below */
	}
	size_t moved = dc->kind == DU_PARTIAL ? size / c->page / 2 * c->page : size;
	r->size = some((long long)moved);
	rec_int(r, "mapping_size", (long long)size);
	r->vmlck_before_kb = vmlck_now();

	char *p;
	int fd = -1;
	if (dc->kind == DU_SHARED) {
		fd = memfd_create("probe-dontunmap", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
			int err = errno;
			char nb[16];
			if (fd < 0 && err == ENOSYS) /* memfd_create(2): "added in Linux 3.17" */
				not_applicable(r, "no memfd: memfd_create(2) is from Linux 3.17 (ENOSYS)");
			else
				not_applicable(r, "no memfd: %s failed with %s", fd < 0 ? "memfd_create" : "ftruncate",
					       errno_name(err, nb, sizeof(nb)));
			if (fd >= 0)
				close(fd);
			return;
		}
		p = setup_mmap(r, c, "mmap(MAP_SHARED|MAP_LOCKED)", size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd,
			       "memfd MAP_SHARED|MAP_LOCKED len=%zu", size);
		if (!p) {
			close(fd);
			return;
		}
	} else {
		p = setup_map_locked(r, c, size);
		if (!p)
			return;
	}
	memset(p, 7, size);
	long long v0 = status_kb("VmLck");
	step_snapshot(r, c, "map_locked", 0, p, size);

	int err;
	char *q = key_mremap(r, p, moved, moved, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL, &err,
			     "len=%zu of %zu MREMAP_MAYMOVE|MREMAP_DONTUNMAP", moved, size);
	if (!q && err == EINVAL && !dontunmap_known(c))
		not_applicable(r, "MREMAP_DONTUNMAP not supported (before 5.7)");
	if (r->vmlck_after_kb.set)
		rec_int(r, "vmlck_remap_delta_kb", r->vmlck_after_kb.v - v0);
	if (q) {
		record_mapping(r, q, moved, c->page);
		rec_lo(r, "old_range_lo", smaps_lo_at(p));
		rec_opt(r, "old_range_resident_pages", resident_count(p, moved, c->page));
		rec_lo(r, "new_range_lo", smaps_lo_of(&r->smaps));
		if (dc->kind == DU_PARTIAL) {
			/* The half that was not moved: still locked? Still charged? */
			rec_lo(r, "unmoved_range_lo", smaps_lo_at(p + moved));
			rec_opt(r, "unmoved_range_resident_pages", resident_count(p + moved, size - moved, c->page));
		}
		step_snapshot(r, c, "mremap_dontunmap_new", err, q, moved);
		step_snapshot(r, c, "mremap_dontunmap_old", err, p, size);
		munmap_noted(r, q, moved, "new");
		step_snapshot(r, c, "munmap_new", 0, NULL, 0);
	} else {
		step_snapshot(r, c, "mremap_dontunmap", err, p, size);
	}
	munmap_noted(r, p, size, "old");
	if (fd >= 0)
		close(fd);
	r->vmlck_end_kb = vmlck_now();
}

static const struct grow_case gc_within = {false}, gc_over = {true};
static const struct dontunmap_case du_whole = {DU_WHOLE}, du_partial = {DU_PARTIAL}, du_shared = {DU_SHARED};

static const struct case_def defs[] = {
	{"mremap_grow_within", "mmap(MAP_LOCKED) of 8 pages, mremap to 16 (capped to the limit): growth populated and charged", run_grow, &gc_within, false},
	{"mremap_grow_over", "mmap(MAP_LOCKED) of half the soft limit, mremap to the limit plus one page", run_grow, &gc_over, false},
	{"mremap_move", "mmap(MAP_LOCKED) of 8 pages, mremap(MREMAP_MAYMOVE|MREMAP_FIXED) elsewhere", run_move, NULL, false},
	{"mremap_dontunmap_whole", "mmap(MAP_LOCKED) of 8 pages, mremap(MREMAP_DONTUNMAP) of all of it", run_dontunmap, &du_whole, false},
	{"mremap_dontunmap_partial", "mmap(MAP_LOCKED) of 8 pages, mremap(MREMAP_DONTUNMAP) of the first half", run_dontunmap, &du_partial, false},
	{"mremap_dontunmap_shared", "memfd mmap(MAP_SHARED|MAP_LOCKED) of 8 pages, mremap(MREMAP_DONTUNMAP) of all of it", run_dontunmap, &du_shared, false},
};
CASE_TABLE(cases_mremap, defs);
