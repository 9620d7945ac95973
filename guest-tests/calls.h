/*
 * calls.h: the memory calls a case makes, each noted in the record's `calls` (set-up, clean-up and
 * the key calls).
 */
#ifndef PROBE_CALLS_H
#define PROBE_CALLS_H

#include "record.h"

#include <stdint.h>
#include <sys/types.h>

/* ---- memory calls, listed in `calls` as they are made ------------------------------------ *
 * Each makes the call, reads errno at once and notes the call. mmap-like helpers return NULL (not
 * MAP_FAILED) on failure and store the errno in *err when err is not NULL; the others return the
 * errno, 0 on success. `label` (NULL for none) goes before "len=N" in the args: "LABEL len=N". */

/*
 * mmap(2) and brk(2) as the kernel answers them, whichever libc the probe is built with: musl's
 * mmap() turns the kernel's EPERM for an anonymous mapping into ENOMEM ("Fixup incorrect EPERM
 * from kernel"), and musl's sbrk() refuses every non-zero increment (its malloc owns the break).
 * glibc's wrappers pass the kernel's answer on, so with glibc these are its own calls.
 */
void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *sys_sbrk(intptr_t increment);

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
