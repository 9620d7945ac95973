/*
 * cases.h: the case tables. Each cases_*.c file holds the cases of one concept and exports one
 * table; probe.c concatenates the tables in the order of `catalogue` (the --list order).
 */
#ifndef PROBE_CASES_H
#define PROBE_CASES_H

/* Every helper header, so that a case file (and probe.c) includes this one only. */
#include "record.h"
#include "calls.h"
#include "measure.h"

struct case_def {
	const char *name; /* stable identifier: lowercase, underscores */
	const char *description;
	void (*fn)(const struct ctx *, struct record *, const void *);
	const void *arg;
	bool hidden; /* not in --list, not in `all`; only by name */
};

struct case_table {
	const struct case_def *cases;
	size_t n;
};

#define CASE_TABLE(name, arr) const struct case_table name = {arr, sizeof(arr) / sizeof(arr[0])}

extern const struct case_table cases_lock;      /* areas 1, 2, 3, 6: limits, under/at/over, populate */
extern const struct case_table cases_future;    /* areas 4, 5: mlockall(MCL_FUTURE), on-fault locking */
extern const struct case_table cases_prot;      /* areas 7, 13: PROT_NONE, the SIGSEGV-handler pattern */
extern const struct case_table cases_file;      /* area 8: memfd past EOF, disk-backed file */
extern const struct case_table cases_huge;      /* area 9: hugetlb */
extern const struct case_table cases_account;   /* areas 10, 11: re-lock, split, MAP_FIXED, fork */
extern const struct case_table cases_mremap;    /* area 12: mremap of locked mappings */
extern const struct case_table cases_oom;       /* area 14: more than the guest can hold */
extern const struct case_table cases_droppable; /* area 15: MAP_DROPPABLE */
extern const struct case_table cases_selftest;  /* hidden: exercise the parent */

#endif
