/*
 * calls.c: the memory calls a case makes, each noted in the record's `calls` as it is made: set-up,
 * clean-up and the key calls, which are measured (key_begin/key_end) as well.
 */
#include "calls.h"
#include "measure.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	long ret = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	return ret == -1 ? MAP_FAILED : (void *)ret;
}

void *sys_sbrk(intptr_t increment)
{
#ifdef __GLIBC__
	return sbrk(increment);
#else
	/* The kernel's brk returns the break it kept: the old one when it refused to move it. */
	uintptr_t cur = (uintptr_t)syscall(SYS_brk, 0);
	if (increment == 0)
		return (void *)cur;
	uintptr_t want = cur + (uintptr_t)increment;
	if ((uintptr_t)syscall(SYS_brk, want) != want) {
		errno = ENOMEM;
		return (void *)-1;
	}
	return (void *)cur;
#endif
}

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
	void *p = sys_mmap(NULL, len, prot, flags, fd, 0);
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
	void *p = sys_mmap(NULL, len, prot, flags, fd, 0);
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
