/*
 * probe: records how the running kernel treats mmap(MAP_LOCKED), mlock(2), mlock2(2),
 * mlockall(2) and their relatives against RLIMIT_MEMLOCK. One JSON line per case on stdout;
 * README.md has the CLI contract, the record fields and the catalogue with the documented
 * expectations (expectations.yaml).
 *
 * This file is the driver: the command line, the catalogue, one forked child per case with a
 * timeout, and the kernel log around each case. The cases live in cases_*.c, the record in
 * record.c, its JSON in json.c, the /proc readers in procfs.c, the measurements in measure.c and
 * the noted system calls in calls.c.
 *
 * Built static (see Makefile) so the same binary runs in busybox initramfs guests from 5.10 on
 * and on the host. Nothing here may go through NSS: a static binary would try to dlopen it.
 */
#include "cases.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_SETUP 3

/* ---- the catalogue ----------------------------------------------------------------------- */

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

/* Crash the whole guest (root only: sysrq 'c'), so the harness's reboot-and-go-on path can be
 * tested against a real panic. Never listed, never part of `all`. */
static void run_selftest_panic(const struct ctx *c, struct record *r, const void *arg)
{
	(void)c, (void)arg;
	/* Only inside a harness guest: on a host this would take the machine down. */
	if (access("/etc/harness/modules", F_OK) != 0) {
		not_applicable(r, "not in a harness guest");
		return;
	}
	int fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
	if (fd >= 0 && write(fd, "c", 1) == 1)
		pause(); /* not reached: the kernel is gone */
	not_applicable(r, "cannot write /proc/sysrq-trigger (needs root): %s", strerror(errno));
}

static const struct case_def selftests[] = {
	{"_selftest_kill", "raise(SIGKILL) before sending a record", run_selftest_kill, NULL, true},
	{"_selftest_hang", "sleep forever (per-case timeout)", run_selftest_hang, NULL, true},
	{"_selftest_crash", "exit 1 without sending a record", run_selftest_crash, NULL, true},
	{"_selftest_panic", "crash the guest kernel through sysrq", run_selftest_panic, NULL, true},
};
CASE_TABLE(cases_selftest, selftests);

/* Catalogue order is the --list order and the `all` order: by area of MAP_LOCKED.md. */
static const struct case_table *const catalogue[] = {
	&cases_lock,    &cases_future, &cases_prot,      &cases_file,     &cases_huge,
	&cases_account, &cases_mremap, &cases_oom,       &cases_droppable, &cases_selftest,
};
#define NTABLES (sizeof(catalogue) / sizeof(catalogue[0]))

static size_t ncases(void)
{
	size_t n = 0;
	for (size_t t = 0; t < NTABLES; t++)
		n += catalogue[t]->n;
	return n;
}

static const struct case_def *case_at(size_t i)
{
	for (size_t t = 0; t < NTABLES; t++) {
		if (i < catalogue[t]->n)
			return &catalogue[t]->cases[i];
		i -= catalogue[t]->n;
	}
	return NULL;
}

static const struct case_def *find_case(const char *name)
{
	for (size_t i = 0; i < ncases(); i++)
		if (strcmp(case_at(i)->name, name) == 0)
			return case_at(i);
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
	c->memtotal_kb = meminfo_kb("MemTotal");
	c->memavail_kb = memavailable_kb(&c->memavail_estimate); /* estimated before 3.14 */
	c->huge_total = meminfo_kb("HugePages_Total");
	c->huge_free = meminfo_kb("HugePages_Free");
	c->huge_page_kb = meminfo_kb("Hugepagesize");
}

static char child_out[1 << 16];
static struct record child_record; /* static: too large for a comfortable stack frame */

static _Noreturn void run_child(const struct case_def *cd, int wfd)
{
	/* If a case exhausts the guest, the OOM killer should take this child, not sshd or the parent. */
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || !write_all(fd, "1000", 4))
		fprintf(stderr, "probe: %s: cannot set oom_score_adj: %s\n", cd->name, strerror(errno));
	if (fd >= 0)
		close(fd);

	struct ctx c;
	struct record *r = &child_record;
	read_ctx(&c);
	record_init(r);
	cd->fn(&c, r, cd->arg);

	struct json j;
	j_init(&j, child_out, sizeof(child_out));
	emit_record(&j, cd->name, &c, r);
	if (j.overflow || !write_all(wfd, j.buf, j.len))
		_exit(1);
	_exit(0);
}

/* ---- the kernel log ---------------------------------------------------------------------- */

/* /dev/kmsg is opened as root before the probe drops privileges and stays readable through the
 * descriptor (reading needs the right at open time only). Each read returns one record,
 * "prio,seq,ts,flags;text\n" followed by continuation lines " KEY=value"; EPIPE means records were
 * overwritten before they were read, EAGAIN that none are left (Documentation/ABI/testing/dev-kmsg).
 *
 * Before 3.5 (commit e11fea92e13f, "kmsg: export printk records to the /dev/kmsg interface")
 * /dev/kmsg only takes writes: a read fails with EINVAL, and an OOM kill would go unseen. There the
 * whole log is read with syslog(2) SYSLOG_ACTION_READ_ALL, which any user may do on those kernels
 * (dmesg_restrict came in 2.6.37 and is off by default), and what is new is what follows the end
 * of the previous read. */
#define KMSG_KEEP 60
#define KMSG_LINE 512
#define SYSLOG_ACTION_READ_ALL 3

static int kmsg_fd = -1;
static bool klog_whole; /* no readable /dev/kmsg: syslog(2) instead */
static char kmsg_lines[KMSG_KEEP][KMSG_LINE];
/* Mapped only on a kernel that needs it: in the probe's image it would be 256 KiB of VmSize, which
 * mlockall(MCL_CURRENT) counts against the limit on every kernel. */
#define KLOG_SIZE (1 << 18)
static char *klog_buf;
static char klog_tail[256]; /* the end of the previous read, found again in the next */
static size_t klog_tail_len;

static int klog_collect(pid_t pid, bool *oom_killed, int *first);

static void kmsg_open(void)
{
	kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (kmsg_fd >= 0 && lseek(kmsg_fd, 0, SEEK_END) < 0) {
		close(kmsg_fd);
		kmsg_fd = -1;
	}
	char buf[8192];
	if (kmsg_fd >= 0 && read(kmsg_fd, buf, sizeof(buf)) < 0 && errno == EINVAL) {
		close(kmsg_fd); /* a write-only /dev/kmsg: before 3.5 */
		kmsg_fd = -1;
	}
	bool oom;
	int first;
	if (kmsg_fd < 0 && klog_collect(0, &oom, &first) >= 0)
		klog_whole = true; /* and what was logged so far is behind us */
}

/* Keeps the line (oldest first in the returned order) and says whether it is the OOM killer
 * choosing pid. */
static bool kmsg_keep(const char *text, int total, pid_t pid)
{
	char killed1[48], killed2[48];
	snprintf(killed1, sizeof(killed1), "Killed process %d ", (int)pid);
	snprintf(killed2, sizeof(killed2), ",pid=%d,", (int)pid);
	snprintf(kmsg_lines[total % KMSG_KEEP], KMSG_LINE, "%s", text);
	return strstr(text, killed1) || (strstr(text, "oom-kill:") && strstr(text, killed2));
}

/* Reads every record since the last call; keeps the last KMSG_KEEP lines and says whether the
 * OOM killer chose pid. */
static int kmsg_collect(pid_t pid, bool *oom_killed, int *first)
{
	char buf[8192];
	int total = 0;
	*oom_killed = false;
	for (int guard = 0; guard < 100000; guard++) {
		ssize_t n = read(kmsg_fd, buf, sizeof(buf) - 1);
		if (n < 0) {
			if (errno == EINTR || errno == EPIPE)
				continue;
			break; /* EAGAIN: nothing more */
		}
		if (n == 0)
			break;
		buf[n] = '\0';
		char *text = strchr(buf, ';');
		if (!text)
			continue;
		text++;
		char *nl = strchr(text, '\n'); /* continuation lines follow the first newline */
		if (nl)
			*nl = '\0';
		*oom_killed |= kmsg_keep(text, total, pid);
		total++;
	}
	*first = total > KMSG_KEEP ? total % KMSG_KEEP : 0;
	return total > KMSG_KEEP ? KMSG_KEEP : total;
}

/* The same from the whole log (syslog(2)): the lines after the last place the previous read's end
 * appears, each without its "<level>" prefix; all of them when it appears nowhere (the log wrapped
 * past it). -1 when the log cannot be read. */
static int klog_collect(pid_t pid, bool *oom_killed, int *first)
{
	*oom_killed = false;
	*first = 0;
	if (!klog_buf) {
		void *p = mmap(NULL, KLOG_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -1;
		klog_buf = p;
	}
	int n = klogctl(SYSLOG_ACTION_READ_ALL, klog_buf, KLOG_SIZE - 1);
	if (n < 0)
		return -1;
	klog_buf[n] = '\0';
	char *start = klog_buf;
	if (klog_tail_len) {
		for (char *at = klog_buf; (at = memmem(at, (size_t)n - (size_t)(at - klog_buf), klog_tail, klog_tail_len));
		     at++)
			start = at + klog_tail_len;
	}
	klog_tail_len = (size_t)n < sizeof(klog_tail) ? (size_t)n : sizeof(klog_tail);
	memcpy(klog_tail, klog_buf + n - klog_tail_len, klog_tail_len);
	int total = 0;
	for (char *line = start, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			nl = line + strlen(line) - 1; /* the last line, unterminated */
		else
			*nl = '\0';
		char *text = line;
		if (text[0] == '<' && isdigit((unsigned char)text[1]) && text[2] == '>')
			text += 3;
		if (*text) {
			*oom_killed |= kmsg_keep(text, total, pid);
			total++;
		}
	}
	*first = total > KMSG_KEEP ? total % KMSG_KEEP : 0;
	return total > KMSG_KEEP ? KMSG_KEEP : total;
}

/* ---- parent ------------------------------------------------------------------------------ */

static char rec_buf[1 << 18];
static char line_buf[1 << 19];

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
	/* SIGCHLD blocked, so its arrival can be waited for (sigtimedwait) and is never lost between a
	 * waitpid() and the wait; the child gets the mask the probe started with. */
	sigset_t chld, before;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &before);
	struct mono clk = {false, 0, 0}; /* may go back on old kernels: measure.c mono_note() */
	double t0 = mono_read(&clk);
	pid_t pid = fork();
	if (pid < 0) {
		perror("probe: fork");
		exit(EXIT_SETUP);
	}
	if (pid == 0) {
		sigprocmask(SIG_SETMASK, &before, NULL);
		close(fds[0]);
		if (kmsg_fd >= 0)
			close(kmsg_fd);
		if (klog_buf)
			munmap(klog_buf, KLOG_SIZE); /* the case's address space is its own, on every era */
		run_child(cd, fds[1]);
	}
	close(fds[1]);

	size_t len = 0;
	bool overflow = false, pipe_open = true, reaped = false, timed_out = false;
	int status = 0;
	double deadline = t0 + timeout_s;
	while (!reaped) {
		double left = deadline - mono_read(&clk);
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
			/* The pipe closed but the child lives on (between closing its files and exiting, or in
			 * exit teardown of a big locked area): woken by its SIGCHLD, not after a fixed nap. A
			 * guest's idle nap is wall time under emulation, and the pipe's EOF usually wakes
			 * the probe just before its child is reapable. */
			double nap = left < 1 ? left : 1;
			struct timespec ts = {(time_t)nap, (long)((nap - (double)(time_t)nap) * 1e9)};
			sigtimedwait(&chld, NULL, &ts);
		}
		if (!pipe_open && waitpid(pid, &status, WNOHANG) == pid)
			reaped = true;
	}
	sigprocmask(SIG_SETMASK, &before, NULL);
	close(fds[0]);
	long long duration_ms = mono_ms(t0, mono_read(&clk));

	bool have_record = record_ok(rec_buf, len, overflow);
	struct json j;
	j_init(&j, line_buf, sizeof(line_buf));
	if (have_record) {
		j_raw(&j, rec_buf, len - 1); /* reopen the child's object to add the parent's fields */
		j_continue_object(&j);
	} else {
		struct ctx c;
		read_ctx(&c); /* the parent runs as the same user under the same limit as its child */
		j_open(&j, '{');
		j_kstr(&j, "kind", "case");
		j_kstr(&j, "case", cd->name);
		emit_context(&j, &c);
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
	if (clk.back_s > 0) /* only where CLOCK_MONOTONIC went back during the case */
		j_kint(&j, "clock_backwards_us", (long long)(clk.back_s * 1e6 + 0.999));
	j_kint(&j, "child_pid", (long long)pid);
	bool oom = false;
	int first = 0;
	int n = kmsg_fd >= 0 ? kmsg_collect(pid, &oom, &first) : klog_whole ? klog_collect(pid, &oom, &first) : -1;
	if (n >= 0) {
		j_key(&j, "kernel_log");
		j_open(&j, '[');
		for (int i = 0; i < n; i++)
			j_str(&j, kmsg_lines[(first + i) % KMSG_KEEP]);
		j_close(&j, ']');
		j_kbool(&j, "oom_killed", oom);
	} else {
		j_knull(&j, "kernel_log");
		j_knull(&j, "oom_killed");
	}
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
		"       probe exec [--memlock default|SOFT:HARD] [--user NAME] -- PROGRAM [ARG...]\n"
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

/* --memlock: "default" leaves the login's limit; SOFT:HARD sets both. */
static void set_memlock(const char *memlock)
{
	struct rlimit rl;
	if (strcmp(memlock, "default") == 0)
		return;
	if (!parse_memlock(memlock, &rl))
		bad_usage("--memlock: '%s' is not default or SOFT:HARD (bytes or unlimited, SOFT <= HARD)", memlock);
	if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
		fprintf(stderr, "probe: setrlimit(RLIMIT_MEMLOCK, %s): %s\n", memlock, strerror(errno));
		exit(EXIT_SETUP);
	}
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
	for (size_t i = 0; i < ncases(); i++)
		if (!case_at(i)->hidden)
			printf("%s\t%s\n", case_at(i)->name, case_at(i)->description);
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	const char *memlock = "default", *user = NULL;
	double timeout_s = 60.0;
	const struct case_def **sel = calloc((size_t)argc * ncases() + 1, sizeof(*sel));
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
			for (size_t k = 0; k < ncases(); k++)
				if (!case_at(k)->hidden)
					sel[nsel++] = case_at(k);
		} else {
			const struct case_def *cd = find_case(a);
			if (!cd)
				bad_usage("unknown case '%s' (see probe --list)", a);
			sel[nsel++] = cd;
		}
	}
	if (nsel == 0)
		bad_usage("no case given");

	set_memlock(memlock);
	/* Before dropping privileges: reading /dev/kmsg needs them at open time. */
	kmsg_open();
	/* The parent must outlive any case: the children raise their own score to 1000, which an
	 * unprivileged process may do from -1000 (proc(5), /proc/[pid]/oom_score_adj). Best effort. */
	write_text("/proc/self/oom_score_adj", "-1000");
	if (user)
		drop_to_user(user);

	for (size_t i = 0; i < nsel; i++)
		run_case(sel[i], timeout_s);
	printf("{\"kind\":\"end\",\"cases\":%zu}\n", nsel);
	fflush(stdout);
	free(sel);
	return 0;
}

/* `exec`: another suite's program (a kernel selftest) under the same limit and user as the cases,
 * in this process, so the caller's timeout and exit status are the program's own. */
static int cmd_exec(int argc, char **argv)
{
	const char *memlock = "default", *user = NULL;
	int i = 0;
	for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
		if (i + 1 >= argc)
			bad_usage("%s needs a value", argv[i]);
		if (strcmp(argv[i], "--memlock") == 0)
			memlock = argv[i + 1];
		else if (strcmp(argv[i], "--user") == 0)
			user = argv[i + 1];
		else
			bad_usage("unknown option %s", argv[i]);
	}
	if (i + 1 >= argc)
		bad_usage("exec: give -- PROGRAM");
	set_memlock(memlock);
	if (user)
		drop_to_user(user);
	execv(argv[i + 1], argv + i + 1);
	fprintf(stderr, "probe: exec %s: %s\n", argv[i + 1], strerror(errno));
	exit(EXIT_SETUP);
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
	if (argc >= 2 && strcmp(argv[1], "exec") == 0)
		return cmd_exec(argc - 2, argv + 2);
	if (argc < 2)
		bad_usage("no command given");
	bad_usage("unknown command '%s'", argv[1]);
}
