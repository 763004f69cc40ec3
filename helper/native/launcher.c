/*
 * fuse-svc-launcher: the one program of fuse-svc that forks, enters namespaces and touches
 * mounts. docs/launcher.md is its contract (modes, fds, readiness line, state files, spec).
 *
 *   fuse-svc-launcher instance      one sandboxed server instance, spec on fd 3
 *   fuse-svc-launcher detach        detach a mount whose launcher is gone (pidfd fd 3, mount fd 4)
 *   fuse-svc-launcher init -- CMD   PID 1 of the broker container (launcher-init.c)
 *   fuse-svc-launcher version
 *
 * Single-threaded on purpose: setns(CLONE_NEWNS) fails in a multithreaded process, and with
 * one thread fork() is safe and every blocking point is visible in the event loop.
 *
 * Process tree of one instance:
 *   launcher (supervisor; holds the uid lock; until ready the pinned caller mount ns and the
 *             mount fd, after it only a file handle of that ns, which does not keep it alive)
 *     +- server, pid 1 of its own user/mnt/pid/net/ipc/uts/cgroup namespaces
 *     +- short-lived helpers: "checker" (waits for FUSE_INIT, as the mount's owner),
 *        "attacher" and "detacher" (attach/detach the mount in the caller's namespace)
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <seccomp.h>

#include "launcher.h"

#define LAUNCHER_VERSION "0.1.0"

/* ---- kernel interfaces newer than bookworm's headers (values from the kernel uapi) ---- */
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U          /* linux/stat.h, 6.8 */
#endif
#ifndef PIDFD_GET_MNT_NAMESPACE
#define PIDFD_GET_MNT_NAMESPACE _IO(0xFF, 3) /* linux/pidfd.h: _IO(PIDFS_IOCTL_MAGIC, 3), 6.11 */
#endif
#ifndef NS_GET_NSTYPE
#define NS_GET_NSTYPE _IO(0xb7, 0x3)         /* linux/nsfs.h */
#endif
#ifndef NS_GET_USERNS
#define NS_GET_USERNS _IO(0xb7, 0x1)         /* linux/nsfs.h */
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
/* struct clone_args, first published version (CLONE_ARGS_SIZE_VER0 = 64). */
struct clone_args_v0 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

/* ---- exit statuses and readiness codes (docs/launcher.md) ---- */
enum { EXIT_STOPPED = 0, EXIT_ENDED = 1, EXIT_START_FAILED = 2, EXIT_SPEC = 64, EXIT_BUSY = 75 };

#define SPEC_MAX (64 * 1024)
#define LOG_CAP (1024 * 1024)   /* server output copied into the instance log, at most */
#define LOG_RESERVE (16 * 1024) /* for the launcher's own last lines past LOG_CAP */
#define TAIL_MAX 2048           /* server output kept in memory for error messages */
#define HIGH_FD 64              /* fds are parked above this while the child rearranges them */
#define KILL_GRACE_MS 2000      /* SIGTERM -> SIGKILL during a stop */

/* The sandbox is built under these names in the child's own mount namespace. */
#define BASE_DIR "/tmp"         /* a tmpfs over it becomes a scratch root... */
#define OLD_ROOT "/oldroot"     /* ...holding the host tree (bind sources are resolved here) */
#define NEW_ROOT "/newroot"     /* ...and the server's root, pivoted into at the end */

/* ---------------------------------------------------------------------------------------- */
/* The spec                                                                                  */

struct root_entry {
	enum { ROOT_BIND, ROOT_DIR, ROOT_FILE } kind;
	const char *src, *dst;
	bool rw;
	unsigned long long size; /* root_file: apparent size (sparse), so stat() sees the source's */
};

struct rlimit_entry {
	int resource;
	struct rlimit limit;
};

struct seccomp_rule_entry {
	uint32_t action;
	const char *name;
	unsigned nargs;
	struct scmp_arg_cmp args[6];
};

/* A classic BPF program the broker had compiled once for the definition (seccomp_program). */
struct seccomp_program {
	struct sock_filter *insns;
	unsigned len;
};

struct spec {
	unsigned long long id;
	const char *rundir;
	uid_t uid;
	gid_t gid;
	int fd_source, fd_target, fd_caller_pidfd, fd_conn, fd_fuse, fd_transport;
	bool mount_fuse;
	bool mount_given;         /* mount given: the caller's helper mounted fd_fuse itself (libfuse's
	                           * contained-service protocol); we find that mount, never make one */
	const char *fsname, *subtype;
	bool have_owner;
	uid_t owner_uid;
	gid_t owner_gid;
	bool readonly;
	bool noexec, default_permissions, allow_other;
	long long max_read;
	int fuse_fd;
	bool fuse_notify;         /* hand-over "notify": open(/dev/fuse) and mount(2) answered here */
	const char *passwd_name;  /* root_passwd: an /etc/passwd + /etc/group entry for the uid */
	const char *sentinel;
	bool root_usr;
	const char *standin;
	struct root_entry *roots;
	size_t nroots;
	const char **devs;
	size_t ndevs;
	long long tmp_size;
	bool proc_invisible;
	const char *proc_source;
	const char *hostname;
	struct rlimit_entry *rlimits;
	size_t nrlimits;
	bool have_umask;
	mode_t umask_value;
	bool have_oom;
	int oom_score_adj;
	bool nnp;
	const char **cgroups;     /* instance cgroup dirs, one per hierarchy (broker-created) */
	size_t ncgroups;
	char **env;
	size_t nenv;
	const char *cwd;
	const char *exec;
	char **args;
	size_t nargs;
	bool have_seccomp;
	uint32_t seccomp_default;
	const char **arches;
	size_t narches;
	struct seccomp_rule_entry *rules;
	size_t nrules;
	struct seccomp_program prog_policy, prog_notify;
	long long stop_timeout_ms, ready_timeout_ms;
	bool listen_env;
	bool cgroup_joined;     /* pooled: the launcher itself joined S.cgroups before the request */
	bool reaper;            /* the server forks into the background: pid 1 of its pid namespace
	                         * is a reaper (run_reaper), the server pid 2 */
	const char *profile;    /* seccomp_profile: no policy; every syscall of the sandbox is
	                         * recorded by the notifier and let through; names written here */
};

static struct spec S = {
	.fd_source = -1, .fd_target = -1, .fd_caller_pidfd = -1, .fd_conn = -1, .fd_fuse = -1, .fd_transport = -1,
	.max_read = -1, .fuse_fd = -1, .tmp_size = -1,
	.stop_timeout_ms = 10000, .ready_timeout_ms = 10000,
};

/* ---------------------------------------------------------------------------------------- */
/* Instance state                                                                            */

enum role { ROLE_LAUNCHER, ROLE_SANDBOX, ROLE_HELPER, ROLE_COMPILER };
enum phase { PHASE_STARTING, PHASE_RUNNING, PHASE_STOPPING, PHASE_EXITED };

static struct {
	enum role role;
	enum phase phase;
	int sandbox_err_fd;       /* ROLE_SANDBOX: setup errors go to the parent through it */
	bool failing;             /* fail() is running: do not recurse */
	bool ready_sent;
	int instdir;              /* RUNDIR/instances */
	int lockfd;
	int sigfd;
	int devfuse;              /* our copy of the /dev/fuse fd; closed once the server exec'd */
	int mntfd;                /* the FUSE mount (from fsmount), closed once attached: a held
	                           * reference would make umount(8) "busy" and keep a lazily
	                           * unmounted superblock, and so the server, alive forever */
	unsigned int conn_minor;  /* the FUSE connection (fusectl's N), for abort_connection */
	bool maybe_attached;      /* the attacher ran: detach on the way out */
	bool detached;            /* the mount is gone from the caller's namespace (state file) */
	bool left_mounted;        /* a detach could not remove our attached mount (covered by
	                           * another mount, or a step failed): it stays in the caller's
	                           * namespace, dead once the server is gone (state file), and
	                           * only its owner's later unmount by path removes it */
	int nsfd;                 /* the caller's mount namespace, pinned until ready */
	bool ns_by_handle;        /* after ready: reached through ns_handle, nsfd closed */
	bool ns_gone;             /* the caller's mount namespace has ended (handle ESTALE) */
	pid_t server_pid;
	int server_pidfd;
	pid_t serving_pid;        /* reaper: the sandbox process holding the FUSE fd at ready */
	int notify_fd;            /* seccomp user notifications from the server */
	int log_fd;               /* read end of the server's stdout/stderr */
	pid_t checker_pid;
	int checker_pidfd, checker_rd;
	int inotify_fd;           /* IN_UNMOUNT on the mount's root: the caller's umount(2), seen
	                           * without holding the mount, the connection or the namespace */
	uint64_t mnt_id;
	unsigned long long mnt_id_old;  /* the reusable id fdinfo shows, for the broker's matching */
	char start_time[32];      /* /proc/self/stat field 22: with our pid, names us for a new broker */
	int exit_code, exit_signal;
	char reason[256];
	int cap_last;
	int source_accmode;
	int nr_open, nr_openat, nr_openat2;  /* native numbers of the notified syscalls */
	int nr_mount;
	int fuse_handed;          /* fuse_notify: the FUSE fd's number in the server, once handed */
	bool fuse_unheld;         /* reaper: the instance ended because no process held the FUSE fd */
	scmp_filter_ctx policy, notifier;
	int64_t ready_deadline, term_deadline, kill_deadline; /* CLOCK_MONOTONIC ms, 0 = none */
	size_t log_written, log_dropped;
	char tail[TAIL_MAX];
	size_t tail_len;
} G = {
	.instdir = -1, .lockfd = -1, .sigfd = -1, .devfuse = -1, .mntfd = -1, .nsfd = -1,
	.server_pidfd = -1, .notify_fd = -1, .log_fd = -1, .checker_pidfd = -1, .checker_rd = -1, .inotify_fd = -1,
	.sandbox_err_fd = -1, .exit_code = -1, .cap_last = 63, .fuse_handed = -1,
};

static void state_write(void);
static void teardown_before_ready(void);
static void mount_left(void);
static noreturn void exit_leaving_source(int status);
static bool reap_within(int *pidfd, int ms, siginfo_t *out);
static void abort_connection(void);
#define REAP_BOUND_MS 2000      /* longest wait for a killed child (it may be stuck in FUSE) */

/* ---------------------------------------------------------------------------------------- */
/* Small utilities                                                                           */

static int64_t clock_ms(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

static int64_t launcher_t0_us; /* CLOCK_MONOTONIC at start, for log timestamps */
static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	/* +ms since the launcher started: the log shows where an instance's start-up time goes */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - launcher_t0_us;
	int n = snprintf(buf, sizeof buf, "fuse-svc-launcher[%llu] +%lld.%lldms: ", S.id, (long long)(us / 1000), (long long)(us % 1000 / 100));
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	va_end(ap);
	strcat(buf, "\n");
	/* Our own lines count in the log cap with the server's output; past it a small reserve
	 * keeps the last lines (how the instance ended) and the rest is dropped. */
	size_t len = strlen(buf);
	if (G.log_written + len > LOG_CAP + LOG_RESERVE) {
		G.log_dropped += len;
		return;
	}
	G.log_written += len;
	/* fd 2 is the instance log; nothing useful can be done if it fails */
	if (write(STDERR_FILENO, buf, len) < 0) {}
}

/*
 * Step trace (issue 12 §2, 16 §2): where one instance's time and CPU go. Each mark keeps the
 * monotonic clock and the CPU of the launcher itself and of its reaped children (the server,
 * with its pre-exec sandbox set-up, and the short-lived helpers); one line at the end names
 * them all, so the trace costs a few clock reads and one write per instance.
 */
#define STEPS_MAX 16
static struct step_mark {
	const char *name;
	int64_t wall_us, self_us, kids_us;
} steps[STEPS_MAX];
static unsigned nsteps;

static int64_t tv_us(struct timeval tv) { return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec; }

static void step(const char *name)
{
	struct timespec ts;
	struct rusage self, kids;
	if (nsteps == STEPS_MAX)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (getrusage(RUSAGE_SELF, &self) < 0 || getrusage(RUSAGE_CHILDREN, &kids) < 0)
		return;
	steps[nsteps++] = (struct step_mark){name, (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
					     tv_us(self.ru_utime) + tv_us(self.ru_stime),
					     tv_us(kids.ru_utime) + tv_us(kids.ru_stime)};
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "steps: NAME +WALL/SELF/KIDS ..." in µs since the previous mark (the first: since exec). */
static void steps_log(void)
{
	char line[900];
	size_t off = 0;
	int64_t pw = launcher_t0_us, ps = 0, pk = 0;
	for (unsigned i = 0; i < nsteps && off < sizeof line - 64; i++) {
		const struct step_mark *m = &steps[i];
		int n = snprintf(line + off, sizeof line - off, " %s +%lld/%lld/%lld", m->name,
				 (long long)(m->wall_us - pw), (long long)(m->self_us - ps), (long long)(m->kids_us - pk));
		if (n < 0)
			break;
		off += (size_t)n;
		pw = m->wall_us, ps = m->self_us, pk = m->kids_us;
	}
	if (nsteps)
		logmsg("steps (us wall/launcher cpu/children cpu):%s", line);
}

/* Readiness and state messages are one line: no TAB, LF or control characters. */
static void sanitize_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = ' ';
}

static bool write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		logmsg("out of memory");
		_exit(EXIT_START_FAILED);
	}
	return p;
}

#define APPEND(arr, n, value)                                          \
	do {                                                               \
		(arr) = xrealloc((arr), ((n) + 2) * sizeof(*(arr)));           \
		(arr)[(n)++] = (value);                                        \
	} while (0)

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static pid_t clone_pidfd(uint64_t flags, int *pidfd)
{
	struct clone_args_v0 args = {
		.flags = flags | CLONE_PIDFD,
		.pidfd = (uint64_t)(uintptr_t)pidfd,
		.exit_signal = SIGCHLD,
	};
	return (pid_t)syscall(SYS_clone3, &args, sizeof args);
}

/* Close (flags 0) or mark close-on-exec (CLOSE_RANGE_CLOEXEC) every fd >= 3 except those
 * in keep[] (sorted ascending, all >= 3). */
static int close_fds_except(const int *keep, size_t n, unsigned flags)
{
	unsigned lo = 3;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned)keep[i] > lo &&
		    close_range(lo, (unsigned)keep[i] - 1, flags) < 0)
			return -1;
		lo = (unsigned)keep[i] + 1;
	}
	return close_range(lo, ~0U, flags);
}

/* ---------------------------------------------------------------------------------------- */
/* Instance cgroups (created by the broker, joined in configure_child, removed here)         */

/* A counter from a cgroup's key-value file ("oom_kill 3", "max 12"); -1 if absent. */
static long long cgroup_counter(const char *dir, const char *file, const char *key)
{
	char path[PATH_MAX], buf[2048];
	long long v = -1;
	size_t klen = strlen(key);
	snprintf(path, sizeof path, "%s/%s", dir, file);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (!strncmp(line, key, klen) && line[klen] == ' ')
			v = strtoll(line + klen + 1, NULL, 10);
	return v;
}

/*
 * Why the server ended, as far as its cgroups know: appended to the reason so `list` and the
 * broker's log line say "killed by signal 9; memory limit hit (1 OOM kill)". v1 memory:
 * memory.oom_control "oom_kill"; v1 pids and v2: pids.events "max"; v2: memory.events.
 */
static void cgroup_limits_reason(char *out, size_t size)
{
	out[0] = '\0';
	for (size_t i = 0; i < S.ncgroups; i++) {
		long long oom = cgroup_counter(S.cgroups[i], "memory.oom_control", "oom_kill");
		long long oom2 = cgroup_counter(S.cgroups[i], "memory.events", "oom_kill");
		long long pmax = cgroup_counter(S.cgroups[i], "pids.events", "max");
		if (oom2 > oom)
			oom = oom2;
		if (oom > 0)
			snprintf(out + strlen(out), size - strlen(out), "; memory limit hit (%lld OOM kill%s)",
				 oom, oom == 1 ? "" : "s");
		if (pmax > 0)
			snprintf(out + strlen(out), size - strlen(out), "; pids limit hit (%lld fork%s refused)",
				 pmax, pmax == 1 ? "" : "s");
	}
}

/*
 * Remove the instance's cgroups once the server is gone. The launcher does it, not the broker:
 * the launcher is the one process sure to see the end of the instance (the broker may be down
 * then). The kernel removes a task from its cgroups in do_exit, but the pid namespace's other
 * tasks may still be on their way out for a moment: EBUSY is retried for up to a second.
 */
static void cgroups_remove(void)
{
	/* A pooled launcher sits in them itself until it exits: the broker removes them after. */
	if (S.cgroup_joined)
		return;
	for (size_t i = 0; i < S.ncgroups; i++) {
		int tries = 0;
		while (rmdir(S.cgroups[i]) < 0) {
			if (errno == ENOENT)
				break;
			if (errno != EBUSY || ++tries > 100) {
				logmsg("rmdir(%s): %s", S.cgroups[i], strerror(errno));
				break;
			}
			usleep(10000);
		}
		/* Never the shared parent: the broker may be creating the next instance's cgroup in
		 * it right now (its mkdir would fail ENOENT). It goes at the full stop only. */
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Failing                                                                                   */

static void readiness(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void readiness(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	if (G.ready_sent)
		return;
	G.ready_sent = true;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	strcat(line, "\n");
	if (!write_all(STDOUT_FILENO, line, strlen(line)))
		logmsg("readiness pipe: %s", strerror(errno)); /* the broker may be gone */
	/* "close fd 1": replace it by /dev/null (fd 0) so no later open() lands on fd 1 */
	dup2(STDIN_FILENO, STDOUT_FILENO);
}

/*
 * fail(): the one way out when something goes wrong. Where it goes depends on who we are:
 * the sandbox child reports "CODE\tmessage" to its parent and exits; a helper just exits;
 * the launcher cleans up (no mount left, no process left), says `error` on the readiness
 * line, records the state and exits 2.
 */
static noreturn void vfail(const char *code, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
static noreturn void vfail(const char *code, int err, const char *fmt, va_list ap)
{
	char msg[700];
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (err)
		snprintf(msg + strlen(msg), sizeof msg - strlen(msg), ": %s", strerror(err));
	sanitize_line(msg);

	if (G.role == ROLE_SANDBOX) {
		char out[800];
		int n = snprintf(out, sizeof out, "%s\t%s", code, msg);
		if (write(G.sandbox_err_fd, out, (size_t)n) < 0) {}
		_exit(127);
	}
	if (G.role == ROLE_HELPER)
		_exit(err ? err : 1);
	if (G.role == ROLE_COMPILER) {
		readiness("error\t%s\t%s", code, msg);
		_exit(EXIT_START_FAILED);
	}

	if (G.failing) {
		logmsg("while failing: %s %s", code, msg);
		_exit(EXIT_START_FAILED);
	}
	G.failing = true;
	logmsg("%s: %s", code, msg);
	if (G.phase == PHASE_STARTING) {
		teardown_before_ready();
		readiness("error\t%s\t%s", code, msg);
		G.phase = PHASE_EXITED;
		snprintf(G.reason, sizeof G.reason, "start failed: %s %s", code, msg);
		cgroups_remove();
		state_write();
		exit_leaving_source(EXIT_START_FAILED);
	}
	/* after ready: nothing sensible is left to do but let the loop's cleanup happen */
	if (G.server_pidfd >= 0)
		pidfd_send_signal(G.server_pidfd, SIGKILL, NULL, 0);
	G.phase = PHASE_EXITED;
	snprintf(G.reason, sizeof G.reason, "launcher error: %s %s", code, msg);
	if (G.server_pidfd >= 0 && !reap_within(&G.server_pidfd, REAP_BOUND_MS, NULL)) {
		abort_connection();
		if (!reap_within(&G.server_pidfd, REAP_BOUND_MS, NULL))
			close_fd(&G.server_pidfd);
	}
	cgroups_remove();
	state_write();
	exit_leaving_source(EXIT_ENDED);
}

static noreturn void fail(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static noreturn void fail(const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(code, 0, fmt, ap);
}

/* die_errno("fsconfig(user_id)") style: the message names the call, errno is appended. */
static noreturn void die_errno(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static noreturn void die_errno(const char *code, const char *fmt, ...)
{
	int err = errno;
	va_list ap;
	va_start(ap, fmt);
	vfail(code, err, fmt, ap);
}

/* ---------------------------------------------------------------------------------------- */
/* Spec parsing (docs/launcher.md, "The spec"). TypeScript validated it; we still check.     */

static unsigned spec_line;

static noreturn void spec_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static noreturn void spec_error(const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	sanitize_line(msg);
	logmsg("spec line %u: %s", spec_line, msg);
	readiness("error\tEINTERNAL\tspec line %u: %s", spec_line, msg);
	_exit(EXIT_SPEC);
}

static unsigned long long spec_uint(const char *s, unsigned long long max)
{
	char *end;
	unsigned long long v;
	if (!isdigit((unsigned char)s[0]))
		spec_error("not a number: %s", s);
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		spec_error("bad number: %s", s);
	return v;
}

static long long spec_int(const char *s, long long min, long long max)
{
	char *end;
	long long v;
	if (!(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]))))
		spec_error("not a number: %s", s);
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end || v < min || v > max)
		spec_error("bad number: %s", s);
	return v;
}

/* A seccomp comparison value: decimal or 0x hex, may be negative (taken as 64-bit). */
static uint64_t spec_u64_any(const char *s)
{
	char *end;
	uint64_t v;
	errno = 0;
	v = s[0] == '-' ? (uint64_t)strtoll(s, &end, 0) : strtoull(s, &end, 0);
	if (!*s || errno || *end)
		spec_error("bad value: %s", s);
	return v;
}

/* Paths inside the sandbox: absolute, no "..", so nothing can escape the new root. */
static const char *spec_sandbox_path(const char *p)
{
	if (p[0] != '/' || strlen(p) >= PATH_MAX / 2)
		spec_error("not an absolute path: %s", p);
	for (const char *c = p; (c = strstr(c, "..")); c += 2)
		if (c[-1] == '/' && (c[2] == '/' || c[2] == '\0'))
			spec_error("path with '..': %s", p);
	return p;
}

static const char *spec_host_path(const char *p) { return spec_sandbox_path(p); }

static bool spec_bool(const char *s)
{
	if (strcmp(s, "0") && strcmp(s, "1"))
		spec_error("expected 0 or 1: %s", s);
	return s[0] == '1';
}

static int spec_inherited_fd(const char *s)
{
	int fd = (int)spec_uint(s, INT_MAX);
	if (fd < 4)
		spec_error("fd %d: inherited fds start at 4", fd);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) /* never leak into the server by accident */
		spec_error("fd %d is not open", fd);
	return fd;
}

static uint32_t spec_seccomp_action(const char *name, const char *errno_field)
{
	if (!strcmp(name, "allow"))
		return SCMP_ACT_ALLOW;
	if (!strcmp(name, "errno")) {
		if (!errno_field)
			spec_error("errno action without an errno");
		return SCMP_ACT_ERRNO((uint32_t)spec_uint(errno_field, 4095));
	}
	if (!strcmp(name, "kill_process"))
		return SCMP_ACT_KILL_PROCESS;
	if (!strcmp(name, "kill_thread"))
		return SCMP_ACT_KILL_THREAD;
	if (!strcmp(name, "trap"))
		return SCMP_ACT_TRAP;
	if (!strcmp(name, "log"))
		return SCMP_ACT_LOG;
	spec_error("unknown seccomp action: %s", name);
}

static struct scmp_arg_cmp spec_seccomp_arg(char *text)
{
	static const struct { const char *name; enum scmp_compare op; } ops[] = {
		{"ne", SCMP_CMP_NE}, {"lt", SCMP_CMP_LT}, {"le", SCMP_CMP_LE}, {"eq", SCMP_CMP_EQ},
		{"ge", SCMP_CMP_GE}, {"gt", SCMP_CMP_GT}, {"masked_eq", SCMP_CMP_MASKED_EQ},
	};
	char *part[4] = {0};
	unsigned n = 0;
	struct scmp_arg_cmp cmp = {0};
	for (char *save = NULL, *tok = strtok_r(text, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		if (n == 4)
			spec_error("bad seccomp argument");
		part[n++] = tok;
	}
	if (n < 3)
		spec_error("bad seccomp argument (IDX:OP:VALUE[:VALUE2])");
	cmp.arg = (unsigned)spec_uint(part[0], 5);
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (!strcmp(part[1], ops[i].name))
			cmp.op = ops[i].op;
	if (!cmp.op)
		spec_error("unknown comparison: %s", part[1]);
	cmp.datum_a = spec_u64_any(part[2]);
	if (cmp.op == SCMP_CMP_MASKED_EQ) {
		if (n != 4)
			spec_error("masked_eq needs IDX:masked_eq:MASK:VALUE");
		cmp.datum_b = spec_u64_any(part[3]);
	} else if (n != 3) {
		spec_error("only masked_eq takes a second value");
	}
	return cmp;
}

/* FNV-1a, 64 bit: catches a program cut or altered on its way, not a forger (the spec's
 * author, the broker, could write any filter it likes). */
static uint64_t fnv1a64(const void *data, size_t len)
{
	const unsigned char *b = data;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Whether the program compares a field of seccomp_data (the arch, the syscall number) with k
 * in the jumps that follow a load of that field: the shape libseccomp gives every check
 * (ld [0]; jge #X32_BIT; jeq #nr...). */
static bool program_tests(const struct seccomp_program *p, uint32_t field, uint32_t k)
{
	for (unsigned i = 0; i + 1 < p->len; i++)
		if (p->insns[i].code == (BPF_LD | BPF_W | BPF_ABS) && p->insns[i].k == field) {
			for (unsigned j = i + 1; j < p->len && BPF_CLASS(p->insns[j].code) == BPF_JMP; j++)
				if (p->insns[j].code == (BPF_JMP | BPF_JEQ | BPF_K) && p->insns[j].k == k)
					return true;
		}
	return false;
}

/*
 * seccomp_program KIND LEN FNV HEX: LEN instructions, their bytes in hex, FNV-1a of those
 * bytes. Checked here so that a program cut short, altered or built for another
 * architecture stops the instance before anything is set up (the kernel then checks the
 * instructions themselves when the sandbox loads them).
 */
static void spec_seccomp_program(struct seccomp_program *p, const char *kind, const char *len_s,
				 const char *fnv_s, const char *hex)
{
	unsigned len = (unsigned)spec_uint(len_s, BPF_MAXINSNS);
	size_t digits = strlen(hex);
	unsigned char *bytes;
	char *end;
	uint64_t want;
	if (len == 0)
		spec_error("seccomp_program %s: no instructions", kind);
	if (digits != (size_t)len * sizeof(struct sock_filter) * 2)
		spec_error("seccomp_program %s: %zu hex digits for %u instructions (cut short or padded)", kind, digits, len);
	if (strlen(fnv_s) != 16 || hex_digit(fnv_s[0]) < 0)
		spec_error("seccomp_program %s: bad checksum field", kind);
	errno = 0;
	want = strtoull(fnv_s, &end, 16);
	if (errno || *end)
		spec_error("seccomp_program %s: bad checksum field", kind);
	p->insns = xrealloc(NULL, (size_t)len * sizeof(struct sock_filter));
	p->len = len;
	bytes = (unsigned char *)p->insns;
	for (size_t i = 0; i < digits; i += 2) {
		int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
		if (hi < 0 || lo < 0)
			spec_error("seccomp_program %s: not lowercase hex at digit %zu", kind, i);
		bytes[i / 2] = (unsigned char)(hi << 4 | lo);
	}
	if (fnv1a64(bytes, digits / 2) != want)
		spec_error("seccomp_program %s: checksum mismatch (the program was altered or cut)", kind);
	if (p->insns[0].code != (BPF_LD | BPF_W | BPF_ABS) || p->insns[0].k != offsetof(struct seccomp_data, arch))
		spec_error("seccomp_program %s: does not begin by checking the architecture", kind);
	if (!program_tests(p, offsetof(struct seccomp_data, arch), seccomp_arch_native()))
		spec_error("seccomp_program %s: built for another architecture (no check for this machine's, AUDIT_ARCH 0x%08x)",
			   kind, seccomp_arch_native());
}

static int spec_rlimit_resource(const char *name)
{
	static const struct { const char *name; int res; } names[] = {
		{"AS", RLIMIT_AS}, {"CORE", RLIMIT_CORE}, {"CPU", RLIMIT_CPU}, {"DATA", RLIMIT_DATA},
		{"FSIZE", RLIMIT_FSIZE}, {"LOCKS", RLIMIT_LOCKS}, {"MEMLOCK", RLIMIT_MEMLOCK},
		{"MSGQUEUE", RLIMIT_MSGQUEUE}, {"NICE", RLIMIT_NICE}, {"NOFILE", RLIMIT_NOFILE},
		{"NPROC", RLIMIT_NPROC}, {"RSS", RLIMIT_RSS}, {"RTPRIO", RLIMIT_RTPRIO},
		{"RTTIME", RLIMIT_RTTIME}, {"SIGPENDING", RLIMIT_SIGPENDING}, {"STACK", RLIMIT_STACK},
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (!strcmp(name, names[i].name))
			return names[i].res;
	spec_error("unknown rlimit: %s", name);
}

static rlim_t spec_rlim(const char *s)
{
	return strcmp(s, "inf") ? (rlim_t)spec_uint(s, RLIM_INFINITY - 1) : RLIM_INFINITY;
}

/* Scalar keys may appear once; list keys (root_*, dev, env, arg, rlimit, cgroup, seccomp_*) append. */
static void spec_once(const char *key, bool *seen)
{
	if (*seen)
		spec_error("repeated key: %s", key);
	*seen = true;
}

static void spec_record(char **f, unsigned n)
{
	static struct {
		bool id, rundir, uid, gid, mount, fsname, subtype, owner, readonly, noexec, default_permissions, allow_other, max_read, fuse_fd,
			sentinel, fuse_handover, root_passwd, root_usr, root_bin, tmp_size, proc, proc_source, hostname, umask, oom,
			nnp, cwd, exec, seccomp_default, stop, ready, listen_env, cgroup_joined, reaper, profile;
	} seen;
	const char *k = f[0];
	/* compile-seccomp reads only what the filters are made of */
	if (G.role == ROLE_COMPILER && strcmp(k, "seccomp_default") && strcmp(k, "seccomp_arch") &&
	    strcmp(k, "seccomp_rule") && strcmp(k, "source_sentinel") && strcmp(k, "fuse_handover"))
		spec_error("compile-seccomp: %s is not a seccomp record", k);
#define NF(min, max)                                                            \
	do {                                                                        \
		if (n - 1 < (min) || n - 1 > (max))                                     \
			spec_error("%s: expected %d to %d fields, got %u", k, min, max, n - 1); \
	} while (0)
#define ONCE(flag) spec_once(k, &seen.flag)

	if (!strcmp(k, "id")) {
		NF(1, 1); ONCE(id);
		S.id = spec_uint(f[1], 1ULL << 53);
	} else if (!strcmp(k, "rundir")) {
		NF(1, 1); ONCE(rundir);
		S.rundir = spec_host_path(f[1]);
	} else if (!strcmp(k, "uid")) {
		NF(1, 1); ONCE(uid);
		S.uid = (uid_t)spec_uint(f[1], UINT32_MAX - 1);
	} else if (!strcmp(k, "gid")) {
		NF(1, 1); ONCE(gid);
		S.gid = (gid_t)spec_uint(f[1], UINT32_MAX - 1);
	} else if (!strcmp(k, "fd")) {
		int *slot;
		NF(2, 2);
		if (!strcmp(f[1], "source"))
			slot = &S.fd_source;
		else if (!strcmp(f[1], "target"))
			slot = &S.fd_target;
		else if (!strcmp(f[1], "caller_pidfd"))
			slot = &S.fd_caller_pidfd;
		else if (!strcmp(f[1], "conn"))
			slot = &S.fd_conn;
		else if (!strcmp(f[1], "fuse"))
			slot = &S.fd_fuse;
		else if (!strcmp(f[1], "transport"))
			slot = &S.fd_transport;
		else
			spec_error("unknown fd role: %s", f[1]);
		if (*slot >= 0)
			spec_error("fd role given twice: %s", f[1]);
		*slot = spec_inherited_fd(f[2]);
	} else if (!strcmp(k, "mount")) {
		NF(1, 1); ONCE(mount);
		if (!strcmp(f[1], "given"))
			S.mount_given = true;
		else if (strcmp(f[1], "fuse"))
			spec_error("unknown mount kind: %s", f[1]);
		S.mount_fuse = true;
	} else if (!strcmp(k, "mount_fsname")) {
		NF(1, 1); ONCE(fsname);
		S.fsname = f[1];
	} else if (!strcmp(k, "mount_subtype")) {
		NF(1, 1); ONCE(subtype);
		S.subtype = f[1];
	} else if (!strcmp(k, "mount_owner")) {
		NF(2, 2); ONCE(owner);
		S.have_owner = true;
		S.owner_uid = (uid_t)spec_uint(f[1], UINT32_MAX - 1);
		S.owner_gid = (gid_t)spec_uint(f[2], UINT32_MAX - 1);
	} else if (!strcmp(k, "mount_readonly")) {
		NF(1, 1); ONCE(readonly);
		S.readonly = spec_bool(f[1]);
	} else if (!strcmp(k, "mount_noexec")) {
		NF(1, 1); ONCE(noexec);
		S.noexec = spec_bool(f[1]);
	} else if (!strcmp(k, "mount_default_permissions")) {
		NF(1, 1); ONCE(default_permissions);
		S.default_permissions = spec_bool(f[1]);
	} else if (!strcmp(k, "mount_allow_other")) {
		NF(1, 1); ONCE(allow_other);
		S.allow_other = spec_bool(f[1]);
	} else if (!strcmp(k, "mount_max_read")) {
		NF(1, 1); ONCE(max_read);
		S.max_read = (long long)spec_uint(f[1], UINT32_MAX);
	} else if (!strcmp(k, "fuse_fd")) {
		NF(1, 1); ONCE(fuse_fd);
		S.fuse_fd = (int)spec_uint(f[1], HIGH_FD - 1);
		if (S.fuse_fd < 3)
			spec_error("fuse_fd must be >= 3");
	} else if (!strcmp(k, "fuse_handover")) {
		NF(1, 1); ONCE(fuse_handover);
		if (strcmp(f[1], "inherit") && strcmp(f[1], "notify"))
			spec_error("fuse_handover: inherit or notify, not %s", f[1]);
		S.fuse_notify = !strcmp(f[1], "notify");
	} else if (!strcmp(k, "root_passwd")) {
		NF(1, 1); ONCE(root_passwd);
		for (const char *c = f[1]; *c; c++)
			if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
				spec_error("root_passwd: a user name of [a-z0-9_-], not %s", f[1]);
		if (!*f[1] || strlen(f[1]) > 32)
			spec_error("root_passwd: 1 to 32 characters");
		S.passwd_name = f[1];
	} else if (!strcmp(k, "source_sentinel")) {
		NF(1, 1); ONCE(sentinel);
		S.sentinel = spec_sandbox_path(f[1]);
	} else if (!strcmp(k, "root_usr")) {
		NF(1, 1); ONCE(root_usr);
		S.root_usr = spec_bool(f[1]);
	} else if (!strcmp(k, "root_bin")) {
		NF(2, 2); ONCE(root_bin);
		if (strcmp(f[1], "standin"))
			spec_error("root_bin: only 'standin' is known");
		S.standin = spec_host_path(f[2]);
	} else if (!strcmp(k, "root_bind")) {
		struct root_entry e = {.kind = ROOT_BIND};
		NF(3, 3);
		e.src = spec_host_path(f[1]);
		e.dst = spec_sandbox_path(f[2]);
		if (strcmp(f[3], "ro") && strcmp(f[3], "rw"))
			spec_error("root_bind: ro or rw, not %s", f[3]);
		e.rw = !strcmp(f[3], "rw");
		APPEND(S.roots, S.nroots, e);
	} else if (!strcmp(k, "root_dir") || !strcmp(k, "root_file")) {
		struct root_entry e = {.kind = k[5] == 'd' ? ROOT_DIR : ROOT_FILE};
		if (e.kind == ROOT_FILE)
			NF(1, 2);
		else
			NF(1, 1);
		e.dst = spec_sandbox_path(f[1]);
		if (n > 2)
			e.size = spec_uint(f[2], 1ULL << 62);
		APPEND(S.roots, S.nroots, e);
	} else if (!strcmp(k, "dev")) {
		static const char *const allowed[] = {"null", "zero", "full", "random", "urandom", "tty"};
		bool ok = false;
		NF(1, 1);
		for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
			ok |= !strcmp(f[1], allowed[i]);
		if (!ok) /* PrivateDevices=: only the pseudo devices, never a block device */
			spec_error("device not allowed: %s", f[1]);
		APPEND(S.devs, S.ndevs, f[1]);
	} else if (!strcmp(k, "tmp_size")) {
		NF(1, 1); ONCE(tmp_size);
		S.tmp_size = (long long)spec_uint(f[1], 1ULL << 40);
	} else if (!strcmp(k, "proc")) {
		NF(1, 1); ONCE(proc);
		if (strcmp(f[1], "invisible"))
			spec_error("proc: only 'invisible' is known");
		S.proc_invisible = true;
	} else if (!strcmp(k, "proc_source")) {
		NF(1, 1); ONCE(proc_source);
		S.proc_source = spec_host_path(f[1]);
	} else if (!strcmp(k, "hostname")) {
		NF(1, 1); ONCE(hostname);
		if (strlen(f[1]) > 64)
			spec_error("hostname too long");
		S.hostname = f[1];
	} else if (!strcmp(k, "rlimit")) {
		struct rlimit_entry e;
		NF(3, 3);
		e.resource = spec_rlimit_resource(f[1]);
		e.limit.rlim_cur = spec_rlim(f[2]);
		e.limit.rlim_max = spec_rlim(f[3]);
		if (e.limit.rlim_cur > e.limit.rlim_max)
			spec_error("rlimit %s: soft > hard", f[1]);
		APPEND(S.rlimits, S.nrlimits, e);
	} else if (!strcmp(k, "umask")) {
		char *end;
		NF(1, 1); ONCE(umask);
		S.have_umask = true;
		S.umask_value = (mode_t)strtoul(f[1], &end, 8);
		if (*end || !f[1][0] || S.umask_value > 07777)
			spec_error("bad umask: %s", f[1]);
	} else if (!strcmp(k, "oom_score_adj")) {
		NF(1, 1); ONCE(oom);
		S.have_oom = true;
		S.oom_score_adj = (int)spec_int(f[1], -1000, 1000);
	} else if (!strcmp(k, "nnp")) {
		NF(1, 1); ONCE(nnp);
		S.nnp = spec_bool(f[1]);
	} else if (!strcmp(k, "cgroup")) {
		NF(1, 1);
		APPEND(S.cgroups, S.ncgroups, spec_host_path(f[1]));
	} else if (!strcmp(k, "env")) {
		NF(1, 1);
		if (!strchr(f[1], '=') || f[1][0] == '=')
			spec_error("env: not K=V: %s", f[1]);
		APPEND(S.env, S.nenv, f[1]);
		S.env[S.nenv] = NULL;
	} else if (!strcmp(k, "cwd")) {
		NF(1, 1); ONCE(cwd);
		S.cwd = spec_sandbox_path(f[1]);
	} else if (!strcmp(k, "exec")) {
		NF(1, 1); ONCE(exec);
		S.exec = spec_sandbox_path(f[1]);
	} else if (!strcmp(k, "arg")) {
		NF(1, 1);
		APPEND(S.args, S.nargs, f[1]);
		S.args[S.nargs] = NULL;
	} else if (!strcmp(k, "seccomp_default")) {
		NF(1, 2); ONCE(seccomp_default);
		S.have_seccomp = true;
		S.seccomp_default = spec_seccomp_action(f[1], n > 2 ? f[2] : NULL);
	} else if (!strcmp(k, "seccomp_arch")) {
		NF(1, 1);
		APPEND(S.arches, S.narches, f[1]);
	} else if (!strcmp(k, "seccomp_rule")) {
		struct seccomp_rule_entry r = {0};
		NF(3, 9);
		r.action = spec_seccomp_action(f[1], f[2]);
		r.name = f[3];
		for (unsigned i = 4; i < n; i++)
			r.args[r.nargs++] = spec_seccomp_arg(f[i]);
		APPEND(S.rules, S.nrules, r);
	} else if (!strcmp(k, "seccomp_program")) {
		NF(4, 4); /* before f[1] is read: a one-field record has none */
		struct seccomp_program *p = !strcmp(f[1], "policy") ? &S.prog_policy
					  : !strcmp(f[1], "notify") ? &S.prog_notify : NULL;
		if (!p)
			spec_error("seccomp_program: kind %s is neither policy nor notify", f[1]);
		if (p->insns)
			spec_error("repeated key: seccomp_program %s", f[1]);
		spec_seccomp_program(p, f[1], f[2], f[3], f[4]);
	} else if (!strcmp(k, "stop_timeout_ms")) {
		NF(1, 1); ONCE(stop);
		S.stop_timeout_ms = (long long)spec_uint(f[1], 86400000);
	} else if (!strcmp(k, "ready_timeout_ms")) {
		NF(1, 1); ONCE(ready);
		S.ready_timeout_ms = (long long)spec_uint(f[1], 86400000);
	} else if (!strcmp(k, "listen_env")) {
		NF(1, 1); ONCE(listen_env);
		S.listen_env = spec_bool(f[1]);
	} else if (!strcmp(k, "cgroup_joined")) {
		NF(1, 1); ONCE(cgroup_joined);
		S.cgroup_joined = spec_bool(f[1]);
	} else if (!strcmp(k, "seccomp_profile")) {
		NF(1, 1); ONCE(profile);
		S.profile = spec_host_path(f[1]);
	} else if (!strcmp(k, "reaper")) {
		NF(1, 1); ONCE(reaper);
		S.reaper = spec_bool(f[1]);
	} else {
		spec_error("unknown key: %s", k);
	}
#undef NF
#undef ONCE
}

/* Cross-record checks: what each feature needs. */
static void spec_check(void)
{
	spec_line = 0;
	if (G.role == ROLE_COMPILER) {
		if ((S.nrules || S.narches) && !S.have_seccomp)
			spec_error("seccomp_rule/seccomp_arch without seccomp_default");
		return;
	}
	if (!S.id || !S.rundir || !S.exec || S.nargs == 0)
		spec_error("id, rundir, exec and arg are required");
	if (S.uid == 0 || S.gid == 0)
		spec_error("uid and gid are required and never 0");
	if (S.mount_given) {
		if (S.fd_fuse < 0 || S.fd_target >= 0 || S.fd_caller_pidfd < 0 || S.fuse_fd < 0 || !S.have_owner)
			spec_error("mount given needs fd fuse, fd caller_pidfd, fuse_fd and mount_owner, and no fd target");
	} else if (S.mount_fuse) {
		if (S.fd_target < 0 || S.fd_caller_pidfd < 0 || S.fuse_fd < 0 || !S.have_owner)
			spec_error("mount fuse needs fd target, fd caller_pidfd, fuse_fd and mount_owner");
	} else if (S.fuse_fd >= 0) {
		spec_error("fuse_fd without mount fuse");
	}
	if (S.sentinel && S.fd_source < 0)
		spec_error("source_sentinel without fd source");
	if (S.fuse_notify && (!S.mount_fuse || !S.sentinel))
		spec_error("fuse_handover notify needs mount fuse and source_sentinel (the notifier answers it)");
	if (S.fd_fuse >= 0 && !S.mount_given)
		spec_error("fd fuse without mount given");
	if (S.fd_transport >= 0 && (S.fd_source >= 0 || S.listen_env))
		spec_error("fd transport is the server's stdin and stdout: not with fd source or listen_env");
	if (S.profile && S.have_seccomp)
		spec_error("seccomp_profile records what the server calls: not with a seccomp policy");
	/* LISTEN_PID=1 names the server; with a reaper that is pid 2 (and a unit never forks away) */
	if (S.reaper && S.listen_env)
		spec_error("reaper is for a mounted server that forks into the background, not listen_env");
	if (S.listen_env && S.fd_conn < 0)
		spec_error("listen_env without fd conn");
	if (S.listen_env && S.fuse_fd == 3)
		spec_error("listen_env puts the connection at fd 3; fuse_fd must differ");
	if ((S.nrules || S.narches) && !S.have_seccomp)
		spec_error("seccomp_rule/seccomp_arch without seccomp_default");
	if (S.prog_policy.insns || S.prog_notify.insns) {
		/* precompiled: the launcher builds nothing, so every filter the sandbox needs is here */
		if (S.have_seccomp)
			spec_error("seccomp_program excludes seccomp_default/seccomp_rule/seccomp_arch");
		/* a profile run's notify filter stops every call, which no precompiled program does */
		if (S.profile)
			spec_error("seccomp_program excludes seccomp_profile");
		if (S.sentinel && !S.prog_notify.insns)
			spec_error("source_sentinel with precompiled filters needs seccomp_program notify");
		if (S.prog_notify.insns && !S.sentinel)
			spec_error("seccomp_program notify without source_sentinel");
		if (S.prog_notify.insns &&
		    !program_tests(&S.prog_notify, offsetof(struct seccomp_data, nr), (uint32_t)seccomp_syscall_resolve_name("openat")))
			spec_error("seccomp_program notify does not notify openat(2)");
		if (S.fuse_notify &&
		    !program_tests(&S.prog_notify, offsetof(struct seccomp_data, nr), (uint32_t)seccomp_syscall_resolve_name("mount")))
			spec_error("fuse_handover notify needs a seccomp_program notify that notifies mount(2)");
	}
	if (S.listen_env) {
		/* sd_listen_fds(3): one fd at 3; the server is pid 1 of its pid namespace */
		static char *const listen[] = {"LISTEN_FDS=1", "LISTEN_PID=1", "LISTEN_FDNAMES=connection"};
		for (size_t i = 0; i < 3; i++) {
			APPEND(S.env, S.nenv, listen[i]);
			S.env[S.nenv] = NULL;
		}
	}
}

static void spec_parse(char *buf, size_t len);
static noreturn void pool_leave(void);
static void write_proc_file(int procdir, const char *name, const char *text);

static void spec_read(int fd)
{
	char *buf = xrealloc(NULL, SPEC_MAX + 1);
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, buf + len, SPEC_MAX + 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			spec_error("read(spec fd 3): %s", strerror(errno));
		if (r == 0)
			break;
		len += (size_t)r;
		if (len > SPEC_MAX)
			spec_error("spec larger than %d bytes", SPEC_MAX);
	}
	close(fd);
	spec_parse(buf, len);
}

/*
 * Pooled: the spec arrives later, as one SOCK_SEQPACKET message on fd 3 with the request's
 * descriptors attached; they are placed at 4, 5, 6... in order, where the spec's `fd` records
 * expect them. EOF (the broker closed the pool) ends the launcher quietly: it never started.
 */
static void spec_receive(int fd)
{
	char *buf = xrealloc(NULL, SPEC_MAX + 1);
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 8)];
	} cm;
	struct iovec iov = {.iov_base = buf, .iov_len = SPEC_MAX + 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof cm.b};
	ssize_t r;
	do
		r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		spec_error("recvmsg(spec fd 3): %s", strerror(errno));
	if (r == 0)
		pool_leave(); /* never used: the broker exited or closed the pool */
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		spec_error("spec message truncated");
	int next = 4;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t j = 0; j < k; j++) {
			int got;
			memcpy(&got, CMSG_DATA(c) + j * sizeof(int), sizeof got);
			/* dup2 leaves the copy without CLOEXEC, as an inherited descriptor would be */
			if (got != next && dup2(got, next) < 0)
				spec_error("dup2(received fd, %d): %s", next, strerror(errno));
			if (got != next)
				close(got);
			else if (fcntl(next, F_SETFD, 0) < 0)
				spec_error("fcntl(%d, F_SETFD): %s", next, strerror(errno));
			next++;
		}
	}
	close(fd);
	spec_parse(buf, (size_t)r);
}

static char **pool_cgroups;
static size_t pool_ncgroups;

/* An unused pooled launcher ends: back into the broker's cgroup (two levels up: DIR is
 * BROKER/fuse-svc/NAME), then its own cgroups go, so nothing is left when no broker will
 * sweep them (it was killed). Failures only leave an empty cgroup for the next sweep. */
static noreturn void pool_leave(void)
{
	char text[32], up[PATH_MAX];
	snprintf(text, sizeof text, "%d", (int)getpid());
	for (size_t i = 0; i < pool_ncgroups; i++) {
		snprintf(up, sizeof up, "%s", pool_cgroups[i]);
		for (int k = 0; k < 2; k++) {
			char *slash = strrchr(up, '/');
			if (slash && slash != up)
				*slash = '\0';
		}
		strncat(up, "/cgroup.procs", sizeof up - strlen(up) - 1);
		int fd = open(up, O_WRONLY | O_CLOEXEC);
		if (fd >= 0) {
			if (write(fd, text, strlen(text)) < 0) {}
			close(fd);
		}
		rmdir(pool_cgroups[i]);
	}
	_exit(0);
}

/* Pooled: join the instance cgroups now, before any request, so the slow migration (an RCU
 * grace period per hierarchy) is off the mount's path; every child inherits them. */
static void join_cgroups_early(char **dirs, size_t n)
{
	pool_cgroups = dirs;
	pool_ncgroups = n;
	char text[32];
	snprintf(text, sizeof text, "%d", (int)getpid());
	for (size_t i = 0; i < n; i++) {
		int fd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			die_errno("ESANDBOX", "open(%s)", dirs[i]);
		write_proc_file(fd, "cgroup.procs", text);
		close(fd);
	}
}

/*
 * A pooled launcher's spec names the cgroups (renamed to the instance's name) it sits in: each
 * one must list our pid in cgroup.procs, or the server would run outside the limits it names.
 */
static void check_cgroups_joined(void)
{
	char me[32];
	int n = snprintf(me, sizeof me, "%d", (int)getpid());
	if (S.ncgroups != pool_ncgroups)
		fail("ESANDBOX", "the spec names %zu cgroups, the launcher joined %zu", S.ncgroups, pool_ncgroups);
	for (size_t i = 0; i < S.ncgroups; i++) {
		char path[PATH_MAX], buf[4096];
		snprintf(path, sizeof path, "%s/cgroup.procs", S.cgroups[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die_errno("ESANDBOX", "open(%s)", path);
		ssize_t r = read(fd, buf, sizeof buf - 1);
		if (r < 0)
			die_errno("ESANDBOX", "read(%s)", path);
		close(fd);
		buf[r] = '\0';
		bool found = false;
		for (char *line = buf; *line;) {
			char *nl = strchr(line, '\n');
			if ((nl ? nl - line : (long)strlen(line)) == n && !strncmp(line, me, (size_t)n))
				found = true;
			if (!nl)
				break;
			line = nl + 1;
		}
		if (!found)
			fail("ESANDBOX", "the launcher is not in its cgroup %s", S.cgroups[i]);
	}
}

static void spec_parse(char *buf, size_t len)
{
	buf[len] = '\0';
	if (memchr(buf, '\0', len))
		spec_error("NUL byte in spec");

	char *line = buf;
	for (spec_line = 1; *line; spec_line++) {
		char *end = strchr(line, '\n');
		char *fields[16];
		unsigned n = 0;
		if (!end)
			spec_error("last record does not end with a newline");
		*end = '\0';
		for (char *p = line;; ) {
			char *tab = strchr(p, '\t');
			if (n == 16)
				spec_error("too many fields");
			fields[n++] = p;
			if (!tab)
				break;
			*tab = '\0';
			p = tab + 1;
		}
		if (spec_line == 1) {
			if (strcmp(fields[0], "version") || n != 2 || strcmp(fields[1], "1"))
				spec_error("first record must be 'version\\t1'");
		} else {
			spec_record(fields, n);
		}
		line = end + 1;
	}
	if (spec_line == 1)
		spec_error("empty spec");
	spec_check();
}

/* ---------------------------------------------------------------------------------------- */
/* Runtime directory: the uid lock and the state file                                        */

/* A subdirectory someone else owns or can write to may hold entries they planted (a forged
 * state file, a link at ID.state.tmp): refused, like the runtime dir itself. */
static int open_subdir(int parent, const char *name)
{
	struct stat st;
	int fd;
	if (mkdirat(parent, name, 0700) < 0 && errno != EEXIST)
		die_errno("EINTERNAL", "mkdir(%s/%s)", S.rundir, name);
	fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		die_errno("EINTERNAL", "open(%s/%s, O_NOFOLLOW)", S.rundir, name);
	if (fstat(fd, &st) < 0)
		die_errno("EINTERNAL", "fstat(%s/%s)", S.rundir, name);
	if (st.st_uid != 0 || (st.st_mode & 022))
		fail("EINTERNAL", "%s/%s is not owned by root and writable by root alone", S.rundir, name);
	return fd;
}

/* Opens an absolute directory path one component at a time, each O_NOFOLLOW: a symlink
 * anywhere on the way fails ELOOP/ENOTDIR instead of being followed. The last component is
 * made (0700) when missing. */
static int open_dir_nofollow(const char *path)
{
	char buf[PATH_MAX], *p, *slash;
	int fd, next;

	if (path[0] != '/' || strlen(path) >= sizeof buf)
		fail("EINTERNAL", "rundir %s: not an absolute path", path);
	strcpy(buf, path);
	fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die_errno("EINTERNAL", "open(/)");
	for (p = buf + 1; *p; p = slash + 1) {
		slash = strchr(p, '/');
		if (slash)
			*slash = '\0';
		if (*p) {
			if (!slash && mkdirat(fd, p, 0700) < 0 && errno != EEXIST)
				die_errno("EINTERNAL", "mkdir(%s)", path);
			next = openat(fd, p, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (next < 0)
				die_errno("EINTERNAL", "open(%s: component %s, O_NOFOLLOW)", path, p);
			close(fd);
			fd = next;
		}
		if (!slash)
			break;
	}
	return fd;
}

static void rundir_open_and_lock(void)
{
	char name[64];
	int rundir, uids;

	/* The broker checked the whole path; the walk refuses a link at any component and the
	 * check below a directory someone else could write to, so nothing below is ever created
	 * through a planted link. */
	rundir = open_dir_nofollow(S.rundir);
	{
		struct stat st;
		if (fstat(rundir, &st) < 0)
			die_errno("EINTERNAL", "fstat(%s)", S.rundir);
		if (st.st_uid != 0 || (st.st_mode & 022))
			fail("EINTERNAL", "%s is not owned by root and writable by root alone", S.rundir);
	}
	G.instdir = open_subdir(rundir, "instances");
	uids = open_subdir(rundir, "uids");
	close(rundir);

	snprintf(name, sizeof name, "%u.lock", (unsigned)S.uid);
	/* The lock file outlives instances (it is the uid's, reused): opened, not recreated, so
	 * it must be root's own regular file with one link. O_NONBLOCK: a planted FIFO must not
	 * block the open. Nothing is ever written to it. */
	G.lockfd = openat(uids, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	if (G.lockfd < 0)
		die_errno("EINTERNAL", "open(uids/%s, O_NOFOLLOW)", name);
	close(uids);
	{
		struct stat st;
		if (fstat(G.lockfd, &st) < 0)
			die_errno("EINTERNAL", "fstat(uids/%s)", name);
		if (!S_ISREG(st.st_mode) || st.st_uid != 0 || st.st_nlink != 1 || (st.st_mode & 022))
			fail("EINTERNAL", "uids/%s is not a regular file of root's with one link; refusing it", name);
	}
	/* held for the launcher's whole life: one live instance per sandbox uid */
	if (flock(G.lockfd, LOCK_EX | LOCK_NB) < 0) {
		if (errno != EWOULDBLOCK)
			die_errno("EINTERNAL", "flock(uids/%s)", name);
		logmsg("uid %u is in use by another instance", (unsigned)S.uid);
		readiness("error\tEUID_BUSY\tuid %u is in use by another instance", (unsigned)S.uid);
		G.phase = PHASE_EXITED;
		snprintf(G.reason, sizeof G.reason, "uid %u busy", (unsigned)S.uid);
		cgroups_remove();
		state_write();
		_exit(EXIT_BUSY);
	}
}

/* RUNDIR/instances/ID.state: ID.state.tmp, then rename, so a reader sees old or new. No fsync:
 * the state must survive a crash of the broker or launcher, not of the machine (after a reboot
 * no instance lives, and RUNDIR is a tmpfs), and fsync cost milliseconds on every mount. */
static void state_write(void)
{
	static const char *const names[] = {"starting", "running", "stopping", "exited"};
	char tmp[64], final[64], text[1024];
	int fd, n;

	if (G.instdir < 0)
		return;
	sanitize_line(G.reason);
	n = snprintf(text, sizeof text,
		     "state=%s\nlauncher_pid=%d\nlauncher_start=%s\nserver_pid=%d\nmnt_id=%llu\n"
		     "mnt_id_old=%llu\nexit_code=%d\nexit_signal=%d\nreason=%s\nended_at=%lld\n"
		     "detached=%d\nleft_mounted=%d\n",
		     names[G.phase], (int)getpid(), G.start_time, (int)(G.serving_pid ? G.serving_pid : G.server_pid),
		     (unsigned long long)G.mnt_id, G.mnt_id_old, G.exit_code, G.exit_signal, G.reason,
		     G.phase == PHASE_EXITED ? (long long)clock_ms(CLOCK_REALTIME) : 0LL, G.detached,
		     G.left_mounted && !G.detached);
	snprintf(tmp, sizeof tmp, "%llu.state.tmp", S.id);
	snprintf(final, sizeof final, "%llu.state", S.id);
	/* Always a fresh inode: a stale ID.state.tmp (or a hard link someone planted under that
	 * name) is unlinked, never truncated and written. */
	if (unlinkat(G.instdir, tmp, 0) < 0 && errno != ENOENT)
		logmsg("unlink(instances/%s): %s", tmp, strerror(errno));
	fd = openat(G.instdir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		logmsg("open(instances/%s): %s", tmp, strerror(errno));
		return;
	}
	if (!write_all(fd, text, (size_t)n))
		logmsg("write(instances/%s): %s", tmp, strerror(errno));
	close(fd);
	if (renameat(G.instdir, tmp, G.instdir, final) < 0)
		logmsg("rename(instances/%s): %s", final, strerror(errno));
}

/* Our start time (field 22 of /proc/self/stat), written into every state file: the broker
 * writes the instance record before it spawns us, so a broker killed right after the spawn
 * never recorded our pid; the next one takes pid and start time from the state file and
 * checks them against the process its pidfd pins. Empty if unreadable (never adopted then). */
static void read_start_time(void)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	ssize_t n;
	if (fd < 0) {
		logmsg("open(/proc/self/stat): %s", strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof buf - 1);
	if (n < 0)
		logmsg("read(/proc/self/stat): %s", strerror(errno));
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	/* comm (field 2) may hold spaces and ')': count fields after the last ')' (field 3 on). */
	char *p = strrchr(buf, ')');
	if (!p)
		return;
	p++;
	for (int field = 2; field < 21 && p; field++)
		p = strchr(p + 1, ' ');
	if (!p)
		return;
	p++;
	size_t len = strcspn(p, " ");
	if (len == 0 || len >= sizeof G.start_time)
		return;
	memcpy(G.start_time, p, len);
	G.start_time[len] = 0;
}

static void set_phase(enum phase p)
{
	G.phase = p;
	state_write();
}

/* ---------------------------------------------------------------------------------------- */
/* Process setup of the launcher itself                                                      */

static void launcher_setup_process(void)
{
	sigset_t mask;

	/* The broker may start us as a session leader already (detached spawn). */
	if (setsid() < 0 && getsid(0) != getpid())
		die_errno("EINTERNAL", "setsid");
	/* The broker may be gone: a write to the readiness pipe must fail, not kill us. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die_errno("EINTERNAL", "signal(SIGPIPE)");
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		die_errno("EINTERNAL", "sigprocmask");
	G.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (G.sigfd < 0)
		die_errno("EINTERNAL", "signalfd");
	/*
	 * Supplementary groups of the launcher (root's, e.g. 0) would follow the sandbox child
	 * into its user namespace, where setgroups is denied and they cannot be dropped any
	 * more. The launcher needs none of them.
	 */
	if (setgroups(0, NULL) < 0)
		die_errno("EINTERNAL", "setgroups(0)");
}

static int read_cap_last_cap(void)
{
	char buf[16] = {0};
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 63;  /* PR_CAPBSET_DROP then fails EINVAL above the last cap: harmless */
	if (read(fd, buf, sizeof buf - 1) <= 0)
		buf[0] = '\0';
	close(fd);
	return buf[0] ? atoi(buf) : 63;
}

/* ---------------------------------------------------------------------------------------- */
/* The caller's mount namespace                                                              */

/*
 * The caller's pid as our pid namespace sees it, from its pidfd's fdinfo. Only a name: whoever
 * opens /proc/PID by it confirms afterwards, with the pidfd, that PID was not reused meanwhile.
 */
static int caller_pid(void)
{
	char path[64], line[128];
	int pid = -1;
	FILE *fi;
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", S.fd_caller_pidfd);
	fi = fopen(path, "re");
	if (!fi)
		die_errno("EATTACH", "open(%s)", path);
	while (fgets(line, sizeof line, fi))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			break;
	fclose(fi);
	if (pid <= 0)
		fail("EATTACH", "the caller process is gone or not in our pid namespace");
	return pid;
}

/*
 * Pin the caller's mount namespace for the instance's life: the mount is attached there and
 * must be detached there later, maybe after the caller process has exited.
 */
static void pin_caller_mntns(void)
{
	int fd = ioctl(S.fd_caller_pidfd, PIDFD_GET_MNT_NAMESPACE, 0);
	if (fd < 0 && (errno == ENOTTY || errno == EINVAL)) {
		/* Before 6.11: /proc/PID/ns/mnt, then make sure PID was still the caller. */
		char path[64];
		int pid = caller_pid();
		snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die_errno("EATTACH", "open(%s)", path);
		/* The pidfd still names a live process, so PID was not reused meanwhile. */
		if (pidfd_send_signal(S.fd_caller_pidfd, 0, NULL, 0) < 0)
			die_errno("EATTACH", "pidfd_send_signal(caller, 0)");
	} else if (fd < 0) {
		die_errno("EATTACH", "ioctl(caller pidfd, PIDFD_GET_MNT_NAMESPACE)");
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		die_errno("EINTERNAL", "fcntl(mntns, FD_CLOEXEC)");
	if (ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNS)
		fail("EATTACH", "the caller's namespace fd is not a mount namespace");
	G.nsfd = fd;
}

/*
 * Once the mount is attached, the launcher keeps the namespace only by name: an nsfs file
 * handle (Linux 6.18), which holds no reference. So the namespace ends with its last process
 * (or last nsfs descriptor or bind mount), its mounts go with it, the FUSE superblock with the
 * last of them, the kernel aborts the connection and the server, reading ENODEV, flushes and
 * exits: the instance ends as after a umount(8). Namespace ids are never reused, so the handle
 * of an ended namespace fails ESTALE and never opens another one. Without handles (an older
 * kernel) the pin stays: the instance then lives as long as the launcher (the old behaviour).
 */
static union {
	struct file_handle fh;
	char space[sizeof(struct file_handle) + MAX_HANDLE_SZ];
} ns_handle;

static int caller_mntns_open(void);

static void unpin_caller_mntns(void)
{
	int mount_id;
	ns_handle.fh.handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(G.nsfd, "", &ns_handle.fh, &mount_id, AT_EMPTY_PATH) < 0) {
		logmsg("name_to_handle_at(caller mount namespace): %s; it stays pinned for the instance's "
		       "life (no nsfs file handles before Linux 6.18)", strerror(errno));
		return;
	}
	/* A handle that cannot be opened again is no handle: try it now, while the pin still
	 * holds (in a container, seccomp or a missing capability may refuse open_by_handle_at
	 * although name_to_handle_at worked; the stop path must not find that out too late). */
	G.ns_by_handle = true;
	int probe = caller_mntns_open();
	if (probe < 0) {
		G.ns_by_handle = false;
		logmsg("open_by_handle_at(caller mount namespace): %s; it stays pinned for the instance's "
		       "life", strerror(-probe));
		return;
	}
	close(probe);
	close_fd(&G.nsfd);
}

/* A descriptor of the caller's mount namespace for one detach, or -errno (-ESTALE: it ended).
 * The handle is opened relative to our own namespace's nsfs file (any nsfs file will do). */
static int caller_mntns_open(void)
{
	if (!G.ns_by_handle) {
		int fd = G.nsfd < 0 ? -1 : fcntl(G.nsfd, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -(G.nsfd < 0 ? EBADF : errno) : fd;
	}
	int own = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (own < 0)
		return -errno;
	int fd = open_by_handle_at(own, &ns_handle.fh, O_RDONLY | O_CLOEXEC);
	int err = errno;
	close(own);
	return fd < 0 ? -err : fd;
}

/* ---------------------------------------------------------------------------------------- */
/* The FUSE mount (detached until the attacher attaches it)                                   */

/* The kernel explains a failed fsconfig in the fs context's log; fetch the last line. */
static const char *fs_context_log(int fsfd)
{
	static char msg[600];
	char buf[512];
	ssize_t n;
	msg[0] = '\0';
	while ((n = read(fsfd, buf, sizeof buf - 1)) > 0) {
		buf[n] = '\0';
		if (buf[n - 1] == '\n')
			buf[n - 1] = '\0';
		snprintf(msg, sizeof msg, " (%s)", buf);
	}
	return msg;
}

static void fsconfig_string(int fsfd, const char *key, const char *value)
{
	if (fsconfig(fsfd, FSCONFIG_SET_STRING, key, value, 0) < 0) {
		int err = errno;
		const char *log = fs_context_log(fsfd);
		errno = err;
		die_errno("EMOUNT", "fsconfig(%s)%s", key, log);
	}
}

static void fsconfig_uint(int fsfd, const char *key, unsigned long long value)
{
	char s[32];
	snprintf(s, sizeof s, "%llu", value);
	fsconfig_string(fsfd, key, s);
}

/* ---------------------------------------------------------------------------------------- */
/* Callers whose mount namespace belongs to another user namespace                           */

/*
 * Such a caller (unshare -Urm, rootless Podman) is CAP_SYS_ADMIN over its own mount
 * namespace and may remount, bind or mount_setattr anything attached there: mount flags
 * cannot keep nodev/nosuid. So its FUSE superblock is made owned by its user namespace
 * (s_user_ns): the kernel then never honours device nodes on it (SB_I_NODEV, set by
 * alloc_super for any non-initial s_user_ns), and mnt_may_suid() ignores set-id bits and file
 * capabilities unless the superblock's namespace is the caller's or an ancestor, so they
 * give nothing beyond the caller's own namespace. The image's ids are read through that
 * namespace as well: root-owned files show as the namespace's root.
 */
static struct {
	bool active;     /* the caller's mount namespace is owned by a user namespace not ours */
	int userns;      /* that user namespace */
	unsigned long long uid, gid; /* S.owner_uid/gid as that namespace sees them */
} CU = {.active = false, .userns = -1};

/* "inside outside count" lines of /proc/PID/{uid,gid}_map, read from our (parent) namespace */
static bool map_id_into(int procdir, const char *file, unsigned long long id, unsigned long long *out)
{
	char buf[4096];
	int fd = openat(procdir, file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_errno("EATTACH", "open(caller's %s)", file);
	ssize_t n = read(fd, buf, sizeof buf - 1);
	if (n < 0)
		die_errno("EATTACH", "read(caller's %s)", file);
	close(fd);
	buf[n] = '\0';
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		unsigned long long in, outside, count;
		if (sscanf(line, "%llu %llu %llu", &in, &outside, &count) == 3 &&
		    id >= outside && id - outside < count) {
			*out = in + (id - outside);
			return true;
		}
	}
	return false;
}

/*
 * Find the user namespace that owns the pinned caller mount namespace; if it is not ours,
 * learn how it sees the owner's uid and gid. The maps are read from the caller's /proc
 * directory, opened first and then confirmed by the pidfd (a reused pid fails the check),
 * and only when the caller's own user namespace is the mount namespace's owner.
 */
static void enter_caller_userns_prepare(void)
{
	struct stat mine, theirs, procns;
	char path[64];
	int pid, procdir, nsfd;

	CU.userns = ioctl(G.nsfd, NS_GET_USERNS);
	if (CU.userns < 0)
		die_errno("EATTACH", "ioctl(caller mount namespace, NS_GET_USERNS)");
	if (fcntl(CU.userns, F_SETFD, FD_CLOEXEC) < 0)
		die_errno("EINTERNAL", "fcntl(userns, FD_CLOEXEC)");
	if (stat("/proc/self/ns/user", &mine) < 0)
		die_errno("EINTERNAL", "stat(/proc/self/ns/user)");
	if (fstat(CU.userns, &theirs) < 0)
		die_errno("EINTERNAL", "fstat(caller user namespace)");
	if (mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino) {
		close_fd(&CU.userns);
		return;
	}
	pid = caller_pid();
	snprintf(path, sizeof path, "/proc/%d", pid);
	procdir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (procdir < 0)
		die_errno("EATTACH", "open(%s)", path);
	if (pidfd_send_signal(S.fd_caller_pidfd, 0, NULL, 0) < 0)
		die_errno("EATTACH", "pidfd_send_signal(caller, 0)");
	nsfd = openat(procdir, "ns/user", O_RDONLY | O_CLOEXEC);
	if (nsfd < 0 || fstat(nsfd, &procns) < 0)
		die_errno("EATTACH", "open(caller's ns/user)");
	close(nsfd);
	if (procns.st_dev != theirs.st_dev || procns.st_ino != theirs.st_ino)
		fail("EATTACH", "the caller's user namespace does not own its mount namespace");
	if (!map_id_into(procdir, "uid_map", S.owner_uid, &CU.uid) ||
	    !map_id_into(procdir, "gid_map", S.owner_gid, &CU.gid))
		fail("EATTACH", "the caller's uid or gid has no mapping in its own user namespace");
	close(procdir);
	CU.active = true;
	logmsg("caller in a user namespace: its superblock is owned there (uid %llu gid %llu inside)",
	       CU.uid, CU.gid);
}

struct cu_result { int err; char call[48]; };

/*
 * Open /dev/fuse and make the superblock from inside the caller's user namespace, in a child:
 * setns(userns) drops every capability we have in our own namespace, which the launcher
 * still needs. /dev/fuse is opened after setns(userns) because FUSE requires the device
 * file's creds to carry the superblock's user namespace; fsopen comes after setns(mntns)
 * because it needs CAP_SYS_ADMIN over the current mount namespace's owner. The detached
 * mount and the device fd come back by SCM_RIGHTS.
 */
static void fsconfig_or_report(int fsfd, const char *key, const char *value, struct cu_result *r)
{
	if (r->err == 0 && fsconfig(fsfd, FSCONFIG_SET_STRING, key, value, 0) < 0) {
		r->err = errno;
		snprintf(r->call, sizeof r->call, "fsconfig(%s)", key);
	}
}

static void create_fuse_mount_in_caller_userns(unsigned attrs)
{
	int sv[2], pidfd;
	pid_t pid;
	struct cu_result r = {0};

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die_errno("EINTERNAL", "socketpair(userns mount)");
	pid = clone_pidfd(0, &pidfd);
	if (pid < 0)
		die_errno("EINTERNAL", "clone3(userns mount)");
	if (pid == 0) {
		int dev = -1, fsfd = -1, mnt = -1;
		char num[32];
		char cbuf[CMSG_SPACE(2 * sizeof(int))] = {0};
		struct iovec iov = {.iov_base = &r, .iov_len = sizeof r};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		G.role = ROLE_HELPER;
		close(sv[0]);
#define CU_STEP(cond, name) \
	if (r.err == 0 && (cond)) { r.err = errno; snprintf(r.call, sizeof r.call, "%s", name); }
		CU_STEP(setns(CU.userns, CLONE_NEWUSER) < 0, "setns(caller user namespace)");
		CU_STEP((dev = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0, "open(/dev/fuse)");
		CU_STEP(setns(G.nsfd, CLONE_NEWNS) < 0, "setns(caller mount namespace)");
		CU_STEP((fsfd = fsopen("fuse", FSOPEN_CLOEXEC)) < 0, "fsopen(fuse)");
		snprintf(num, sizeof num, "%d", dev);
		fsconfig_or_report(fsfd, "fd", num, &r);
		fsconfig_or_report(fsfd, "rootmode", "40000", &r);
		snprintf(num, sizeof num, "%llu", CU.uid);
		fsconfig_or_report(fsfd, "user_id", num, &r);
		snprintf(num, sizeof num, "%llu", CU.gid);
		fsconfig_or_report(fsfd, "group_id", num, &r);
		fsconfig_or_report(fsfd, "source", S.fsname ? S.fsname : "fuse-svc", &r);
		if (S.subtype)
			fsconfig_or_report(fsfd, "subtype", S.subtype, &r);
		if (S.max_read >= 0) {
			snprintf(num, sizeof num, "%lld", (long long)S.max_read);
			fsconfig_or_report(fsfd, "max_read", num, &r);
		}
		CU_STEP(fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0, "fsconfig(FSCONFIG_CMD_CREATE)");
		CU_STEP((mnt = fsmount(fsfd, FSMOUNT_CLOEXEC, attrs)) < 0, "fsmount");
#undef CU_STEP
		if (r.err == 0) {
			int fds[2] = {dev, mnt};
			struct cmsghdr *cm;
			msg.msg_control = cbuf;
			msg.msg_controllen = sizeof cbuf;
			cm = CMSG_FIRSTHDR(&msg);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof fds);
			memcpy(CMSG_DATA(cm), fds, sizeof fds);
		}
		_exit(sendmsg(sv[1], &msg, MSG_NOSIGNAL) == (ssize_t)sizeof r ? 0 : 1);
	}
	close(sv[1]);
	{
		char cbuf[CMSG_SPACE(2 * sizeof(int))];
		struct iovec iov = {.iov_base = &r, .iov_len = sizeof r};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cbuf, .msg_controllen = sizeof cbuf};
		struct cmsghdr *cm;
		ssize_t n;
		do
			n = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
		while (n < 0 && errno == EINTR);
		close(sv[0]);
		/* it has answered (or died): its exit is immediate; never wait without a bound */
		if (!reap_within(&pidfd, REAP_BOUND_MS, NULL)) {
			pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
			close_fd(&pidfd);
		}
		if (n != (ssize_t)sizeof r)
			fail("EMOUNT", "the userns mount helper died");
		if (r.err) {
			r.call[sizeof r.call - 1] = '\0';
			errno = r.err;
			die_errno("EMOUNT", "%s (in the caller's user namespace)", r.call);
		}
		cm = CMSG_FIRSTHDR(&msg);
		if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len != CMSG_LEN(2 * sizeof(int)))
			fail("EINTERNAL", "the userns mount helper sent no descriptors");
		int fds[2];
		memcpy(fds, CMSG_DATA(cm), sizeof fds);
		G.devfuse = fds[0];
		G.mntfd = fds[1];
	}
	close_fd(&CU.userns);
}

static void create_fuse_mount(void)
{
	int fsfd;
	unsigned attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (S.readonly ? MOUNT_ATTR_RDONLY : 0) |
			 (S.noexec ? MOUNT_ATTR_NOEXEC : 0);

	enter_caller_userns_prepare();
	if (CU.active) {
		/* allow_other is given for driver mounts, whose caller is the broker in the initial
		 * user namespace; anywhere else it would open a user's mount to every uid. */
		if (S.allow_other)
			fail("EMOUNT", "mount_allow_other is refused for a caller in another user namespace");
		create_fuse_mount_in_caller_userns(attrs);
		return;
	}
	G.devfuse = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (G.devfuse < 0)
		die_errno("EMOUNT", "open(/dev/fuse)");
	fsfd = fsopen("fuse", FSOPEN_CLOEXEC);
	if (fsfd < 0)
		die_errno("EMOUNT", "fsopen(fuse)");
	fsconfig_uint(fsfd, "fd", (unsigned)G.devfuse);
	fsconfig_string(fsfd, "rootmode", "40000");
	fsconfig_uint(fsfd, "user_id", S.owner_uid);
	fsconfig_uint(fsfd, "group_id", S.owner_gid);
	fsconfig_string(fsfd, "source", S.fsname ? S.fsname : "fuse-svc");
	if (S.subtype)
		fsconfig_string(fsfd, "subtype", S.subtype);
	if (S.max_read >= 0)
		fsconfig_uint(fsfd, "max_read", (unsigned long long)S.max_read);
	/* The kernel then checks mode bits itself, so a server that ignores them cannot widen access. */
	if (S.default_permissions && fsconfig(fsfd, FSCONFIG_SET_FLAG, "default_permissions", NULL, 0) < 0)
		die_errno("EMOUNT", "fsconfig(default_permissions)");
	/* Docker volume driver mounts only (the broker is the caller): container processes of every
	 * uid reach the mount, and default_permissions makes the image's own mode bits decide. */
	if (S.allow_other && fsconfig(fsfd, FSCONFIG_SET_FLAG, "allow_other", NULL, 0) < 0)
		die_errno("EMOUNT", "fsconfig(allow_other)");
	if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		int err = errno;
		const char *log = fs_context_log(fsfd);
		errno = err;
		die_errno("EMOUNT", "fsconfig(FSCONFIG_CMD_CREATE)%s", log);
	}
	G.mntfd = fsmount(fsfd, FSMOUNT_CLOEXEC, attrs);
	if (G.mntfd < 0)
		die_errno("EMOUNT", "fsmount");
	close(fsfd);
}

/* ---------------------------------------------------------------------------------------- */
/* mount given: the caller's helper (libfuse's fuservicemount3) mounted the connection itself */

static int find_own_mount(int procself);

/* The FUSE connection a /dev/fuse descriptor serves: Linux 6.x prints "fuse_connection: N" in
 * its fdinfo once it is mounted (N = the superblock's minor device = fusectl's N). 0: never
 * mounted, or a kernel that does not say (then nothing can be matched: refused). */
static unsigned int fuse_fd_connection(int fd)
{
	char path[64], buf[1024];
	ssize_t n;
	int f, e;
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		die_errno("EINTERNAL", "open(%s)", path);
	n = read(f, buf, sizeof buf - 1);
	e = errno;
	close(f);
	if (n < 0) {
		errno = e;
		die_errno("EINTERNAL", "read(%s)", path);
	}
	buf[n] = 0;
	char *p = strstr(buf, "fuse_connection:");
	return p ? (unsigned int)strtoul(p + 16, NULL, 10) : 0;
}

struct given_result {
	int err;                 /* 0, or an errno of the search itself */
	unsigned long long id;   /* the mount's (reusable) id in the caller's namespace */
	char why[200];           /* set when the mount found is refused */
};

static bool has_token(const char *list, const char *tok)
{
	size_t l = strlen(tok);
	for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
		if (!strncmp(p, tok, l) && (p[l] == ',' || p[l] == 0 || p[l] == ' '))
			return true;
	return false;
}

/*
 * In the caller's mount namespace: the one mount of FUSE connection `minor`. Read from our own
 * /proc/self/mountinfo after setns (it lists the namespace we are in; the caller cannot fake
 * it). Exactly one mount must show that device (a second one, a bind the helper made, is
 * refused: we could detach only one), with nosuid and nodev, owned by the caller (user_id=,
 * group_id= as the broker derived the caller, not as the helper claims).
 */
static noreturn void given_search_child(int wr, unsigned int minor)
{
	struct given_result r = {0};
	char want[32], *buf = NULL;
	size_t have = 0, cap = 0;
	unsigned count = 0;
	G.role = ROLE_HELPER;
	snprintf(want, sizeof want, "0:%u", minor);
	/* our own /proc/PID (this child's), opened before setns: it then lists the caller's mounts */
	int procself = open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (procself < 0 || setns(G.nsfd, CLONE_NEWNS) < 0) {
		r.err = errno;
		goto out;
	}
	int f = openat(procself, "mountinfo", O_RDONLY | O_CLOEXEC);
	if (f < 0) {
		r.err = errno;
		goto out;
	}
	for (;;) {
		if (have + 4096 + 1 > cap) {
			if (cap >= (64u << 20)) {
				r.err = EFBIG;
				break;
			}
			cap = cap ? cap * 2 : 65536;
			buf = xrealloc(buf, cap);
		}
		ssize_t n = read(f, buf + have, cap - have - 1);
		if (n < 0) {
			r.err = errno;
			break;
		}
		if (n == 0)
			break;
		have += (size_t)n;
	}
	close(f);
	if (r.err)
		goto out;
	buf[have] = 0;
	for (char *line = buf, *nl; *line; line = nl ? nl + 1 : line + strlen(line)) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = 0;
		/* id parent maj:min root mountpoint mountopts [optional...] - fstype source superopts */
		char *fld[6] = {0}, *save = NULL, *dash = strstr(line, " - ");
		char *tok = strtok_r(line, " ", &save);
		for (int i = 0; i < 6 && tok; i++, tok = strtok_r(NULL, " ", &save))
			fld[i] = tok;
		if (!fld[5] || strcmp(fld[2], want) || !dash)
			continue;
		char *fstype = dash + 3, *sp = strchr(fstype, ' ');
		char *super = sp ? strchr(sp + 1, ' ') : NULL;
		if (sp)
			*sp = 0;
		count++;
		r.id = strtoull(fld[0], NULL, 10);
		char owner[64];
		if (strncmp(fstype, "fuse", 4))
			snprintf(r.why, sizeof r.why, "device 0:%u is a %.40s mount, not FUSE", minor, fstype);
		else if (!has_token(fld[5], "nosuid") || !has_token(fld[5], "nodev"))
			snprintf(r.why, sizeof r.why, "the helper's mount lacks nosuid or nodev (%.60s)", fld[5]);
		else if (snprintf(owner, sizeof owner, "user_id=%u", (unsigned)S.owner_uid), !super || !has_token(super + 1, owner))
			snprintf(r.why, sizeof r.why, "the helper's mount is not owned by the caller (uid %u): %.80s", (unsigned)S.owner_uid, super ? super + 1 : "");
		else if (snprintf(owner, sizeof owner, "group_id=%u", (unsigned)S.owner_gid), !has_token(super + 1, owner))
			snprintf(r.why, sizeof r.why, "the helper's mount is not owned by the caller's group (gid %u): %.80s", (unsigned)S.owner_gid, super + 1);
	}
	if (count == 0)
		snprintf(r.why, sizeof r.why, "FUSE connection %u is not mounted in the caller's mount namespace", minor);
	else if (count > 1)
		snprintf(r.why, sizeof r.why, "FUSE connection %u is mounted %u times in the caller's namespace; only one mount is accepted", minor, count);
out:
	_exit(write(wr, &r, sizeof r) == sizeof r ? 0 : 1);
}

static void adopt_given_mount(void)
{
	struct stat st;
	struct given_result r = {.err = -1};
	int p[2], pidfd;
	pid_t pid;

	if (fstat(S.fd_fuse, &st) < 0)
		die_errno("EINTERNAL", "fstat(fuse fd)");
	if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 10 || minor(st.st_rdev) != 229)
		fail("EBADFD_FUSE", "the FUSE descriptor is not /dev/fuse");
	G.conn_minor = fuse_fd_connection(S.fd_fuse);
	if (G.conn_minor == 0)
		fail("EMOUNT_GIVEN", "the /dev/fuse descriptor is not mounted (no fuse_connection in its fdinfo)");
	if (pipe2(p, O_CLOEXEC) < 0)
		die_errno("EINTERNAL", "pipe2(mount search)");
	pid = clone_pidfd(0, &pidfd);
	if (pid < 0)
		die_errno("EINTERNAL", "clone3(mount search)");
	if (pid == 0) {
		close(p[0]);
		given_search_child(p[1], G.conn_minor);
	}
	close(p[1]);
	/* reading mountinfo asks no FUSE server, but stay bounded anyway */
	struct pollfd pp = {.fd = p[0], .events = POLLIN};
	if (poll(&pp, 1, REAP_BOUND_MS) != 1 || read(p[0], &r, sizeof r) != sizeof r)
		r.err = -1;
	close(p[0]);
	if (r.err == -1)
		pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
	if (!reap_within(&pidfd, REAP_BOUND_MS, NULL))
		close_fd(&pidfd);
	if (r.err == -1)
		fail("EINTERNAL", "the mount search in the caller's namespace did not finish");
	if (r.err > 0) {
		errno = r.err;
		die_errno("EMOUNT_GIVEN", "reading the caller's mount table");
	}
	/* A mount we found is ours to detach from here on, also if it is refused below. */
	if (r.id) {
		G.mnt_id_old = r.id;
		G.maybe_attached = r.why[0] == 0 || !strstr(r.why, "times");
	}
	if (r.why[0]) {
		r.why[sizeof r.why - 1] = 0;
		sanitize_line(r.why);
		fail("EMOUNT_GIVEN", "%s", r.why);
	}
	G.devfuse = S.fd_fuse;
	S.fd_fuse = -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Seccomp filters (built in the launcher, loaded by the sandbox child)                      */

static scmp_filter_ctx build_policy_filter(void)
{
	scmp_filter_ctx ctx = seccomp_init(S.seccomp_default);
	int r;
	if (!ctx)
		fail("ESANDBOX", "seccomp_init failed");
	/* seccomp_init() already added the native arch; other arches only when listed. */
	for (size_t i = 0; i < S.narches; i++) {
		uint32_t arch = strcmp(S.arches[i], "native") ? seccomp_arch_resolve_name(S.arches[i])
							      : seccomp_arch_native();
		if (!arch)
			fail("ESANDBOX", "unknown seccomp arch: %s", S.arches[i]);
		r = seccomp_arch_add(ctx, arch);
		if (r < 0 && r != -EEXIST) {
			errno = -r;
			die_errno("ESANDBOX", "seccomp_arch_add(%s)", S.arches[i]);
		}
	}
	for (size_t i = 0; i < S.nrules; i++) {
		const struct seccomp_rule_entry *e = &S.rules[i];
		int nr = seccomp_syscall_resolve_name(e->name);
		if (nr == __NR_SCMP_ERROR) {
			logmsg("seccomp: syscall %s unknown to libseccomp, rule skipped", e->name);
			continue;
		}
		r = seccomp_rule_add_array(ctx, e->action, nr, e->nargs, e->args);
		if (r == -EACCES) {
			/* libseccomp refuses a rule whose action equals the default: it is a no-op */
			continue;
		}
		if (r < 0) {
			errno = -r;
			die_errno("ESANDBOX", "seccomp_rule_add(%s)", e->name);
		}
	}
	return ctx;
}

/* Whether the sandbox gets the launcher's notify filter: a source to hand, or a profile. */
static bool has_notifier(void) { return S.sentinel || S.profile; }

/*
 * open/openat/openat2 stop and wait for the launcher (see handle_notification). seccomp_profile:
 * every native call does (recorded, then let through), and a foreign-arch call kills: with no
 * policy filter behind it, nothing else would stop one.
 */
static scmp_filter_ctx build_notify_filter(void)
{
	static const char *const calls[] = {"open", "openat", "openat2"};
	scmp_filter_ctx ctx = seccomp_init(S.profile ? SCMP_ACT_NOTIFY : SCMP_ACT_ALLOW);
	int r;
	if (!ctx)
		fail("ESANDBOX", "seccomp_init(notify) failed");
	/* foreign-arch calls are the policy filter's business, not this one's */
	r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, S.profile ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_ALLOW);
	if (r < 0) {
		errno = -r;
		die_errno("ESANDBOX", "seccomp_attr_set(BADARCH)");
	}
	if (S.profile)
		return ctx;
	for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
		int nr = seccomp_syscall_resolve_name(calls[i]);
		if (nr == __NR_SCMP_ERROR)
			continue;
		r = seccomp_rule_add(ctx, SCMP_ACT_NOTIFY, nr, 0);
		if (r < 0) {
			errno = -r;
			die_errno("ESANDBOX", "seccomp_rule_add(notify %s)", calls[i]);
		}
	}
	/* fuse_handover notify: every mount(2) is answered by the launcher, never performed
	 * (the policy must let it reach this filter; see handle_mount) */
	if (S.fuse_notify) {
		r = seccomp_rule_add(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(mount), 0);
		if (r < 0) {
			errno = -r;
			die_errno("ESANDBOX", "seccomp_rule_add(notify mount)");
		}
	}
	return ctx;
}

/* ---------------------------------------------------------------------------------------- */
/* The sandbox child: everything here runs in the new namespaces, before exec               */

struct child_fds {
	int release_rd, release_wr;  /* parent -> child: maps written, go on */
	int err_rd, err_wr;          /* child -> parent: "CODE\tmsg", or EOF at exec (CLOEXEC) */
	int sock_parent, sock_child; /* child -> parent: the seccomp listener, by SCM_RIGHTS */
	int log_rd, log_wr;          /* server stdout/stderr -> launcher */
};

static void mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(buf, mode) < 0 && errno != EEXIST)
				die_errno("ESANDBOX", "mkdir(%s)", buf);
			if (c == '\0')
				return;
			*p = c;
		}
	}
}

static void mkdir_parent(const char *path)
{
	char buf[PATH_MAX];
	char *slash;
	snprintf(buf, sizeof buf, "%s", path);
	slash = strrchr(buf, '/');
	if (slash && slash != buf) {
		*slash = '\0';
		mkdir_p(buf, 0755);
	}
}

static void create_file(const char *path, mode_t mode)
{
	int fd;
	mkdir_parent(path);
	fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		die_errno("ESANDBOX", "create(%s)", path);
	close(fd);
}

static void set_mount_attrs(const char *path, unsigned attrs, bool recursive)
{
	struct mount_attr attr = {.attr_set = attrs};
	if (mount_setattr(AT_FDCWD, path, recursive ? AT_RECURSIVE : 0, &attr, sizeof attr) < 0)
		die_errno("ESANDBOX", "mount_setattr(%s)", path);
}

/* Bind host path SRC (seen under OLD_ROOT) to DST in the new root, nosuid,nodev (+ro). */
static void bind_into_root(const char *src, const char *dst, bool rw, unsigned extra_attrs)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct stat st;
	snprintf(from, sizeof from, OLD_ROOT "%s", src);
	snprintf(to, sizeof to, NEW_ROOT "%s", dst);
	if (stat(from, &st) < 0)
		die_errno("ESANDBOX", "stat(%s)", src);
	if (S_ISDIR(st.st_mode))
		mkdir_p(to, 0755);
	else
		create_file(to, 0644);
	if (mount(from, to, NULL, MS_BIND | MS_REC, NULL) < 0)
		die_errno("ESANDBOX", "mount(bind %s on %s)", src, dst);
	set_mount_attrs(to, MOUNT_ATTR_NOSUID | extra_attrs | (rw ? 0 : MOUNT_ATTR_RDONLY), true);
}

static void mount_tmpfs(const char *path, unsigned long flags, const char *opts)
{
	if (mount("tmpfs", path, "tmpfs", flags, opts) < 0)
		die_errno("ESANDBOX", "mount(tmpfs on %s)", path);
}

static void make_symlink(const char *target, const char *path)
{
	if (symlink(target, path) < 0)
		die_errno("ESANDBOX", "symlink(%s)", path);
}

/*
 * Step 1: a scratch tmpfs becomes "/", the host tree is reachable at OLD_ROOT (that is
 * where bind sources are resolved, so nothing of ours can shadow them), and a second tmpfs
 * at NEW_ROOT will become the server's root.
 */
static void enter_scratch_root(void)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die_errno("ESANDBOX", "mount(/, MS_REC|MS_PRIVATE)");
	mount_tmpfs(BASE_DIR, MS_NOSUID | MS_NODEV, "mode=0755,size=64k");
	if (mkdir(BASE_DIR OLD_ROOT, 0755) < 0)
		die_errno("ESANDBOX", "mkdir(%s)", BASE_DIR OLD_ROOT);
	if (syscall(SYS_pivot_root, BASE_DIR, BASE_DIR OLD_ROOT) < 0)
		die_errno("ESANDBOX", "pivot_root(%s)", BASE_DIR);
	if (chdir("/") < 0)
		die_errno("ESANDBOX", "chdir(/)");
	if (mkdir(NEW_ROOT, 0755) < 0)
		die_errno("ESANDBOX", "mkdir(%s)", NEW_ROOT);
	mount_tmpfs(NEW_ROOT, MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096");
}

/* root_usr: /usr read-only, and the merged-/usr symlinks the host has. */
static void setup_usr(void)
{
	static const char *const links[] = {"lib", "lib32", "lib64", "libx32", "sbin"};
	bind_into_root("/usr", "/usr", false, MOUNT_ATTR_NODEV);
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
		char host[PATH_MAX], target[64], link[PATH_MAX];
		struct stat st;
		snprintf(host, sizeof host, OLD_ROOT "/usr/%s", links[i]);
		if (lstat(host, &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		snprintf(target, sizeof target, "usr/%s", links[i]);
		snprintf(link, sizeof link, NEW_ROOT "/%s", links[i]);
		make_symlink(target, link);
	}
}

/*
 * /bin: libfuse2 runs /bin/fusermount (compiled-in path) to get the FUSE fd, so with
 * root_bin the real /bin holds only the stand-in, under both names. Otherwise bin -> usr/bin.
 */
static void setup_bin(void)
{
	if (!S.standin) {
		if (S.root_usr)
			make_symlink("usr/bin", NEW_ROOT "/bin");
		return;
	}
	if (mkdir(NEW_ROOT "/bin", 0755) < 0)
		die_errno("ESANDBOX", "mkdir(/bin)");
	bind_into_root(S.standin, "/bin/fusermount", false, MOUNT_ATTR_NODEV);
	bind_into_root(S.standin, "/bin/fusermount3", false, MOUNT_ATTR_NODEV);
}

/* PrivateDevices=: a tmpfs /dev with only the listed pseudo devices, bound from the host. */
static void setup_dev(void)
{
	if (mkdir(NEW_ROOT "/dev", 0755) < 0)
		die_errno("ESANDBOX", "mkdir(/dev)");
	mount_tmpfs(NEW_ROOT "/dev", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=256");
	for (size_t i = 0; i < S.ndevs; i++) {
		char path[64];
		snprintf(path, sizeof path, "/dev/%s", S.devs[i]);
		bind_into_root(path, path, true, MOUNT_ATTR_NOEXEC);
	}
	make_symlink("/proc/self/fd", NEW_ROOT "/dev/fd");
	make_symlink("/proc/self/fd/0", NEW_ROOT "/dev/stdin");
	make_symlink("/proc/self/fd/1", NEW_ROOT "/dev/stdout");
	make_symlink("/proc/self/fd/2", NEW_ROOT "/dev/stderr");
}

/* PrivateTmp=: a size-limited tmpfs on /tmp, /var/tmp -> /tmp. */
static void setup_tmp(void)
{
	char opts[64];
	if (S.tmp_size < 0)
		return;
	snprintf(opts, sizeof opts, "mode=1777,size=%lld", S.tmp_size);
	mkdir_p(NEW_ROOT "/tmp", 0755);
	mount_tmpfs(NEW_ROOT "/tmp", MS_NOSUID | MS_NODEV, opts);
	mkdir_p(NEW_ROOT "/var", 0755);
	make_symlink("/tmp", NEW_ROOT "/var/tmp");
}

/*
 * ProtectProc=invisible, ProcSubset=pid: a fresh procfs of our pid namespace. The kernel
 * allows it only while a fully visible procfs is in our mount namespace: the host's /proc
 * under OLD_ROOT, or inside Docker (whose /proc is masked) the broker's unmasked proc_source.
 */
static void setup_proc(void)
{
	if (S.proc_source) {
		char path[PATH_MAX];
		struct statfs sf;
		snprintf(path, sizeof path, OLD_ROOT "%s", S.proc_source);
		if (statfs(path, &sf) < 0)
			die_errno("ESANDBOX", "statfs(proc_source %s)", S.proc_source);
		if (sf.f_type != 0x9fa0 /* PROC_SUPER_MAGIC */)
			fail("ESANDBOX", "proc_source %s is not a procfs", S.proc_source);
	}
	if (!S.proc_invisible)
		return;
	if (mkdir(NEW_ROOT "/proc", 0755) < 0)
		die_errno("ESANDBOX", "mkdir(/proc)");
	if (mount("proc", NEW_ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "hidepid=invisible,subset=pid") < 0)
		die_errno("ESANDBOX", "mount(proc, hidepid=invisible,subset=pid)");
}

static void write_root_file(const char *path, const char *text)
{
	int fd;
	size_t n = strlen(text);
	mkdir_parent(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		die_errno("ESANDBOX", "create(%s)", path);
	if (write(fd, text, n) != (ssize_t)n)
		die_errno("ESANDBOX", "write(%s)", path);
	if (close(fd) < 0)
		die_errno("ESANDBOX", "close(%s)", path);
}

/* root_passwd: servers that ask getpwuid() for their own uid (exfat-fuse) find a name. */
static void setup_passwd(void)
{
	char line[128];
	if (!S.passwd_name)
		return;
	snprintf(line, sizeof line, "%s:x:%u:%u::/:/usr/sbin/nologin\n", S.passwd_name, (unsigned)S.uid, (unsigned)S.gid);
	write_root_file(NEW_ROOT "/etc/passwd", line);
	snprintf(line, sizeof line, "%s:x:%u:\n", S.passwd_name, (unsigned)S.gid);
	write_root_file(NEW_ROOT "/etc/group", line);
}

/* root_bind / root_dir / root_file, in spec order (after /dev and /tmp exist). */
static void setup_extras(void)
{
	setup_passwd();
	for (size_t i = 0; i < S.nroots; i++) {
		const struct root_entry *e = &S.roots[i];
		char path[PATH_MAX];
		snprintf(path, sizeof path, NEW_ROOT "%s", e->dst);
		switch (e->kind) {
		case ROOT_BIND:
			bind_into_root(e->src, e->dst, e->rw, MOUNT_ATTR_NODEV);
			break;
		case ROOT_DIR:
			mkdir_p(path, 0755);
			break;
		case ROOT_FILE:
			create_file(path, 0644);
			/* sparse: nothing is copied, but servers that stat() their source path (libzip)
			 * see its size */
			if (e->size && truncate(path, (off_t)e->size) < 0)
				die_errno("ESANDBOX", "truncate(%s, %llu)", path, e->size);
			break;
		}
	}
}

/* Step 3: pivot into NEW_ROOT, drop the scratch root (and the host tree with it), seal "/". */
static void switch_to_new_root(void)
{
	set_mount_attrs(NEW_ROOT "/dev", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, false);
	if (chdir(NEW_ROOT) < 0)
		die_errno("ESANDBOX", "chdir(%s)", NEW_ROOT);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		die_errno("ESANDBOX", "pivot_root(.)");
	/* the old root is now stacked on "/": detach it, host tree included */
	if (umount2(".", MNT_DETACH) < 0)
		die_errno("ESANDBOX", "umount2(old root)");
	if (chdir("/") < 0)
		die_errno("ESANDBOX", "chdir(/)");
	set_mount_attrs("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, false);
}

static void drop_capabilities(void)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2] = {{0}};
	for (int c = 0; c <= G.cap_last; c++)
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
			die_errno("ESANDBOX", "prctl(PR_CAPBSET_DROP, %d)", c);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		die_errno("ESANDBOX", "prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
	if (syscall(SYS_capset, &hdr, data) < 0)
		die_errno("ESANDBOX", "capset(0)");
}

/* Park an fd above HIGH_FD (CLOEXEC) so the final dup2()s cannot clobber each other. */
static int park_fd(int fd)
{
	int high = fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD);
	if (high < 0)
		die_errno("ESANDBOX", "fcntl(F_DUPFD_CLOEXEC, %d)", fd);
	return high;
}

static void place_fd(int from, int to)
{
	if (dup2(from, to) < 0)  /* the copy at `to` is not CLOEXEC: the server inherits it */
		die_errno("ESANDBOX", "dup2(%d, %d)", from, to);
}

/* The transport as the server's stdin and stdout (the parked copy goes at exec: CLOEXEC). */
static void place_transport(int transport)
{
	place_fd(transport, STDIN_FILENO);
	place_fd(transport, STDOUT_FILENO);
}

/*
 * Final fd layout of the server: 0 /dev/null, 1+2 the log pipe, fuse_fd the FUSE fd,
 * 3 the unit connection (listen_env); with fd transport, 0+1 the transport (sshfs -o passive
 * speaks SFTP on its stdin and stdout) and 2 alone the log. Everything else is marked close-on-exec, so the
 * error pipe and the listener socket keep working until the exec itself.
 */
static void arrange_fds(struct child_fds *c)
{
	int log_wr = park_fd(c->log_wr), fuse = -1, conn = -1, keep[2];
	size_t nkeep = 0;
	G.sandbox_err_fd = c->err_wr = park_fd(c->err_wr);
	if (c->sock_child >= 0)  /* none with seccomp_profile (fetch_listener) */
		c->sock_child = park_fd(c->sock_child);
	if (S.mount_fuse && !S.fuse_notify)
		fuse = park_fd(G.devfuse);
	if (S.listen_env)
		conn = park_fd(S.fd_conn);
	if (S.fd_transport >= 0)
		place_transport(park_fd(S.fd_transport));
	else
		place_fd(log_wr, STDOUT_FILENO);
	place_fd(log_wr, STDERR_FILENO);
	if (conn >= 0) {
		place_fd(conn, 3);
		keep[nkeep++] = 3;
	}
	if (fuse >= 0) {
		place_fd(fuse, S.fuse_fd);
		keep[nkeep++] = S.fuse_fd;
	}
	if (nkeep == 2 && keep[0] > keep[1]) {  /* close_fds_except wants them sorted */
		int t = keep[0];
		keep[0] = keep[1];
		keep[1] = t;
	}
	if (close_fds_except(keep, nkeep, CLOSE_RANGE_CLOEXEC) < 0)
		die_errno("ESANDBOX", "close_range(CLOSE_RANGE_CLOEXEC)");
}

static void send_fd(int sock, int fd)
{
	char byte = 0, cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	if (sendmsg(sock, &msg, MSG_NOSIGNAL) != 1)
		die_errno("ESANDBOX", "sendmsg(seccomp listener)");
}

/*
 * The notify filter goes in before the policy filter: the policy may deny seccomp(2) or
 * sendmsg(2), and the order does not change the result (the kernel takes the strictest
 * action of all filters: ERRNO and KILL win over USER_NOTIF). Between here and execve()
 * nothing may open a file, or the child would wait for a launcher that waits for it.
 */
static int load_program(const struct seccomp_program *p, unsigned flags, const char *what)
{
	struct sock_fprog prog = {.len = (unsigned short)p->len, .filter = p->insns};
	long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	if (r < 0)
		die_errno("ESANDBOX", "seccomp(SECCOMP_SET_MODE_FILTER, %s)", what);
	return (int)r;
}

static void install_filters(struct child_fds *c)
{
	int r;
	if (has_notifier()) {
		int listener;
		if (S.prog_notify.insns) {
			listener = load_program(&S.prog_notify, SECCOMP_FILTER_FLAG_NEW_LISTENER, "notify filter");
		} else {
			r = seccomp_load(G.notifier);
			if (r < 0) {
				errno = -r;
				die_errno("ESANDBOX", "seccomp_load(notify filter)");
			}
			listener = seccomp_notify_fd(G.notifier);
			if (listener < 0)
				fail("ESANDBOX", "seccomp_notify_fd failed");
		}
		/* seccomp_profile: this very sendmsg would wait for a launcher that has no listener
		 * yet; the launcher takes it from our fd table instead (fetch_listener) */
		if (!S.profile) {
			send_fd(c->sock_child, listener);
			close(c->sock_child);
		}
		close(listener);
	}
	if (S.prog_policy.insns)
		load_program(&S.prog_policy, 0, "policy");
	if (G.policy) {
		r = seccomp_load(G.policy);
		if (r < 0) {
			errno = -r;
			die_errno("ESANDBOX", "seccomp_load(policy)");
		}
	}
}

/*
 * S.reaper: pid 1 of the sandbox's pid namespace, for a server that forks into the background
 * (libfuse's fuse_daemonize without -f: the parent exits 0 once its child serves). The kernel
 * kills a pid namespace whose pid 1 ends, so a pid-1 server that forks takes its child with it.
 * Here pid 1 is this loop instead: the launcher's own code, never exec'd, under the server's
 * uid, with no capability, NoNewPrivs and the same seccomp filters (it forks after they are
 * loaded), holding no descriptor but the log (fd 2): not the FUSE fd, the source or a
 * transport, so a dead server still leaves a connection that answers ENOTCONN and a caller's
 * transport that sees EOF.
 * It reaps every process of the namespace (orphans are reparented to it), forwards the stop
 * signals to all of them and exits when none is left: the instance ends when nothing in the
 * sandbox can serve the mount any more, not when the server's first process exits 0.
 * Exit status: the first process's if it failed (non-zero or a signal; the others are killed,
 * a start that failed is over), otherwise the last process's. A signal N is reported as
 * 128 + N (pid 1 cannot die of a signal it sends itself); describe_exit decodes it.
 */
static noreturn void reaper_die(const char *what)
{
	logmsg("reaper: %s: %s", what, strerror(errno));
	/* pid 1 ending kills the namespace: nothing is left behind */
	_exit(127);
}

static noreturn void run_reaper(pid_t server)
{
	static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	sigset_t set;
	int last = 0;
	bool server_done = false;

	G.role = ROLE_HELPER;
	/* A signal queued for pid 1 is delivered only if it is blocked or handled: block them
	 * all and take them with sigwaitinfo, SIGCHLD included (its default would drop it). */
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
		sigaddset(&set, forwarded[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		reaper_die("sigprocmask");
	/* only the log: see above (the error pipe must see EOF at the server's exec, too) */
	if (close(STDIN_FILENO) < 0 && errno != EBADF)
		reaper_die("close(0)");
	if (close(STDOUT_FILENO) < 0 && errno != EBADF)
		reaper_die("close(1)");
	if (close_range(3, ~0U, 0) < 0)
		reaper_die("close_range");
	for (;;) {
		int st;
		pid_t pid;
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
			int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			if (pid == server && !server_done) {
				server_done = true;
				if (code != 0) {
					if (kill(-1, SIGKILL) < 0 && errno != ESRCH)
						reaper_die("kill(-1, SIGKILL)");
					while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
						;
					_exit(code);
				}
				logmsg("reaper: the server's first process exited 0 (it forked into the background); the instance lives while a process of its sandbox does");
			}
			last = code;
		}
		if (pid < 0 && errno == ECHILD)
			_exit(last);
		if (pid < 0 && errno != EINTR)
			reaper_die("waitpid");
		siginfo_t si;
		int sig = sigwaitinfo(&set, &si);
		if (sig < 0) {
			if (errno == EINTR)
				continue;
			reaper_die("sigwaitinfo");
		}
		/* kill(-1) from pid 1: every other process of the namespace */
		if (sig != SIGCHLD && kill(-1, sig) < 0 && errno != ESRCH)
			reaper_die("kill(-1)");
	}
}

static noreturn void sandbox_child(struct child_fds *c)
{
	char byte;
	sigset_t none;

	G.role = ROLE_SANDBOX;
	G.sandbox_err_fd = c->err_wr;
	close(c->err_rd);
	close(c->release_wr);
	close(c->log_rd);
	if (c->sock_parent >= 0)
		close(c->sock_parent);
	umask(0);  /* explicit modes while building the root */

	/* Die with the launcher; and nobody may ptrace or read us while we hold fds. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die_errno("ESANDBOX", "prctl(PR_SET_PDEATHSIG)");
	if (prctl(PR_SET_DUMPABLE, 0) < 0)
		die_errno("ESANDBOX", "prctl(PR_SET_DUMPABLE)");

	/* Wait until the parent wrote uid_map/gid_map (EOF: the parent failed; just exit). */
	if (read(c->release_rd, &byte, 1) != 1)
		_exit(127);
	close(c->release_rd);

	/*
	 * Become the sandbox uid/gid now: inodes we create in our tmpfs need a mapped owner.
	 * Our capabilities in the user namespace survive this: only a change away from the
	 * namespace's uid 0 clears them, and uid 0 is not mapped here.
	 */
	if (setresgid(S.gid, S.gid, S.gid) < 0)
		die_errno("ESANDBOX", "setresgid(%u)", (unsigned)S.gid);
	if (setresuid(S.uid, S.uid, S.uid) < 0)
		die_errno("ESANDBOX", "setresuid(%u)", (unsigned)S.uid);
	/* A credential change cleared the death signal and reset dumpable to suid_dumpable. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die_errno("ESANDBOX", "prctl(PR_SET_PDEATHSIG)");
	if (prctl(PR_SET_DUMPABLE, 0) < 0)
		die_errno("ESANDBOX", "prctl(PR_SET_DUMPABLE)");
	/* The parent moved us into the instance cgroup; that becomes our cgroup ns root. */
	if (unshare(CLONE_NEWCGROUP) < 0)
		die_errno("ESANDBOX", "unshare(CLONE_NEWCGROUP)");

	enter_scratch_root();
	if (S.root_usr)
		setup_usr();
	setup_bin();
	setup_dev();
	setup_tmp();
	setup_proc();
	setup_extras();
	switch_to_new_root();

	if (S.hostname && sethostname(S.hostname, strlen(S.hostname)) < 0)
		die_errno("ESANDBOX", "sethostname");
	if (chdir(S.cwd ? S.cwd : "/") < 0)
		die_errno("ESANDBOX", "chdir(%s)", S.cwd ? S.cwd : "/");
	drop_capabilities();
	if ((S.nnp || G.policy || S.prog_policy.insns || has_notifier()) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die_errno("ESANDBOX", "prctl(PR_SET_NO_NEW_PRIVS)");
	arrange_fds(c);
	umask(S.have_umask ? S.umask_value : 022);
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0 || signal(SIGPIPE, SIG_DFL) == SIG_ERR)
		die_errno("ESANDBOX", "reset signals");
	install_filters(c);

	if (S.reaper) {
		pid_t server = fork();
		if (server < 0)
			die_errno("ESANDBOX", "fork(server under the reaper)");
		if (server > 0) {
			close(c->err_wr);
			run_reaper(server);
		}
	}
	execve(S.exec, S.args, S.env ? S.env : (char *[]){NULL});
	die_errno("ESERVER_START", "execve(%s)", S.exec);
}

/* ---------------------------------------------------------------------------------------- */
/* Starting the sandbox (launcher side)                                                      */

static void write_proc_file(int procdir, const char *name, const char *text)
{
	int fd = openat(procdir, name, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die_errno("ESANDBOX", "open(/proc/PID/%s)", name);
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		die_errno("ESANDBOX", "write(/proc/PID/%s)", name);
	close(fd);
}

/*
 * Lowering oom_score_adj needs CAP_SYS_RESOURCE, which a container may not have (this
 * machine's root lacks it). Like systemd ("assuming containerized execution"), log and go on.
 */
static void set_oom_score_adj(int procdir)
{
	char text[16];
	int fd = openat(procdir, "oom_score_adj", O_WRONLY | O_CLOEXEC);
	snprintf(text, sizeof text, "%d", S.oom_score_adj);
	if (fd < 0)
		die_errno("ESANDBOX", "open(/proc/PID/oom_score_adj)");
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		if (errno != EACCES && errno != EPERM)
			die_errno("ESANDBOX", "write(/proc/PID/oom_score_adj)");
		logmsg("oom_score_adj %d not set (%s), ignoring", S.oom_score_adj, strerror(errno));
	}
	close(fd);
}

/* Same for raising a hard rlimit without CAP_SYS_RESOURCE: clamp to what we have, log. */
static void set_rlimit(pid_t pid, const struct rlimit_entry *e)
{
	struct rlimit have, want = e->limit;
	if (prlimit(pid, e->resource, &want, NULL) == 0)
		return;
	if (errno != EPERM || prlimit(pid, e->resource, NULL, &have) < 0)
		die_errno("ESANDBOX", "prlimit(%d)", e->resource);
	if (want.rlim_max > have.rlim_max)
		want.rlim_max = have.rlim_max;
	if (want.rlim_cur > want.rlim_max)
		want.rlim_cur = want.rlim_max;
	if (prlimit(pid, e->resource, &want, NULL) < 0)
		die_errno("ESANDBOX", "prlimit(%d)", e->resource);
	logmsg("rlimit %d: hard limit clamped to the launcher's own", e->resource);
}

/* What a privileged parent must do for the child before it may go on. */
static void configure_child(pid_t pid)
{
	char path[64], text[64];
	int procdir;

	/*
	 * /proc/PID names exactly our child here: it is our unreaped child, so PID cannot be
	 * recycled until we wait for it, and the dirfd keeps naming that process after.
	 */
	snprintf(path, sizeof path, "/proc/%d", (int)pid);
	procdir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (procdir < 0)
		die_errno("ESANDBOX", "open(%s)", path);
	snprintf(text, sizeof text, "%u %u 1\n", (unsigned)S.uid, (unsigned)S.uid);
	write_proc_file(procdir, "uid_map", text);
	write_proc_file(procdir, "setgroups", "deny");
	snprintf(text, sizeof text, "%u %u 1\n", (unsigned)S.gid, (unsigned)S.gid);
	write_proc_file(procdir, "gid_map", text);
	/* Lowering oom_score_adj and raising hard rlimits need privileges in the initial
	 * user namespace, which the child no longer has: done from here. */
	if (S.have_oom)
		set_oom_score_adj(procdir);
	close(procdir);
	for (size_t i = 0; i < S.nrlimits; i++)
		set_rlimit(pid, &S.rlimits[i]);
	/* One directory per hierarchy (cgroup v1 controllers, cgroup2): join them all (a pooled
	 * launcher is in them already, and the child inherited them at clone). */
	for (size_t i = 0; i < S.ncgroups && !S.cgroup_joined; i++) {
		int fd = open(S.cgroups[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			die_errno("ESANDBOX", "open(%s)", S.cgroups[i]);
		snprintf(text, sizeof text, "%d", (int)pid);
		write_proc_file(fd, "cgroup.procs", text);
		close(fd);
	}
}

static int recv_fd(int sock)
{
	char byte, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	struct cmsghdr *cm;
	int fd = -1;
	ssize_t n;
	do
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	cm = CMSG_FIRSTHDR(&msg);
	if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
	    cm->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&fd, CMSG_DATA(cm), sizeof fd);
	return fd;
}

static void handle_notification(void);

/*
 * seccomp_profile: the child's filter notifies on every call, its sendmsg of the listener
 * too, so the listener is taken from its fd table (pidfd_getfd; we are its privileged parent)
 * as soon as its seccomp(2) made it. Polled, bounded: until then the child is not blocked on
 * us, and an error it hits arrives on the error pipe (then wait_for_exec reports it).
 */
static void fetch_listener(int err_rd)
{
	char dir[64];
	snprintf(dir, sizeof dir, "/proc/%d/fd", (int)G.server_pid);
	for (int64_t end = now_ms() + 10000; now_ms() < end;) {
		DIR *d = opendir(dir);
		struct dirent *e;
		if (!d)
			die_errno("ESANDBOX", "opendir(%s)", dir);
		while ((e = readdir(d))) {
			char link[64];
			ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			if (strcmp(link, "anon_inode:seccomp notify"))
				continue;
			G.notify_fd = (int)syscall(SYS_pidfd_getfd, G.server_pidfd, atoi(e->d_name), 0);
			if (G.notify_fd < 0)
				die_errno("ESANDBOX", "pidfd_getfd(seccomp listener)");
			closedir(d);
			return;
		}
		closedir(d);
		struct pollfd p = {.fd = err_rd, .events = POLLIN};
		if (poll(&p, 1, 2) == 1)
			return;
	}
	fail("ESANDBOX", "seccomp_profile: the sandbox made no seccomp listener within 10 s");
}

/* EOF on the CLOEXEC error pipe = the child exec'd; otherwise "CODE\tmessage". */
static void wait_for_exec(int err_rd)
{
	char buf[800];
	size_t len = 0;
	ssize_t n;
	long long until = clock_ms(CLOCK_MONOTONIC) + 10000;
	for (;;) {
		/* seccomp_profile: the child's last calls before its exec wait for our answers */
		if (S.profile && G.notify_fd >= 0) {
			struct pollfd p[2] = {{.fd = err_rd, .events = POLLIN}, {.fd = G.notify_fd, .events = POLLIN}};
			long long left = until - clock_ms(CLOCK_MONOTONIC);
			int r = left > 0 ? poll(p, 2, (int)left) : 0;
			if (r == 0)
				fail("ESANDBOX", "seccomp_profile: the sandbox did not exec the server within 10 s");
			if (r < 0) {
				if (errno == EINTR)
					continue;
				die_errno("EINTERNAL", "poll(sandbox error pipe)");
			}
			if (p[1].revents & POLLIN)
				handle_notification();
			else if (p[1].revents)
				close_fd(&G.notify_fd);  /* no task uses the filter any more */
			if (!p[0].revents)
				continue;
		}
		n = read(err_rd, buf + len, sizeof buf - 1 - len);
		if (n == 0)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die_errno("EINTERNAL", "read(sandbox error pipe)");
		len += (size_t)n;
		if (len == sizeof buf - 1)
			break;
	}
	close(err_rd);
	if (len == 0)
		return;
	buf[len] = '\0';
	char *tab = strchr(buf, '\t');
	if (!tab)
		fail("ESANDBOX", "sandbox setup failed");
	*tab = '\0';
	fail(buf, "%s", tab + 1);
}

static void start_sandbox(void)
{
	struct child_fds c;
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		die_errno("EINTERNAL", "pipe2(release)");
	c.release_rd = p[0], c.release_wr = p[1];
	if (pipe2(p, O_CLOEXEC) < 0)
		die_errno("EINTERNAL", "pipe2(error)");
	c.err_rd = p[0], c.err_wr = p[1];
	if (pipe2(p, O_CLOEXEC) < 0)
		die_errno("EINTERNAL", "pipe2(log)");
	c.log_rd = p[0], c.log_wr = p[1];
	c.sock_parent = c.sock_child = -1;
	if (S.sentinel && !S.profile) {
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p) < 0)
			die_errno("EINTERNAL", "socketpair(listener)");
		c.sock_parent = p[0], c.sock_child = p[1];
	}

	/* CLONE_NEWCGROUP is left to the child (unshare after the cgroup move). */
	G.server_pid = clone_pidfd(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
					   CLONE_NEWIPC | CLONE_NEWUTS, &G.server_pidfd);
	if (G.server_pid < 0)
		die_errno("ESANDBOX", "clone3(namespaces)");
	if (G.server_pid == 0)
		sandbox_child(&c);

	close(c.release_rd);
	close(c.err_wr);
	close(c.log_wr);
	if (c.sock_child >= 0)
		close(c.sock_child);
	G.log_fd = c.log_rd;
	if (fcntl(G.log_fd, F_SETFL, O_NONBLOCK) < 0)
		die_errno("EINTERNAL", "fcntl(log, O_NONBLOCK)");

	configure_child(G.server_pid);
	if (write(c.release_wr, "g", 1) != 1)
		die_errno("ESANDBOX", "write(release pipe)");
	close(c.release_wr);

	if (S.profile)
		fetch_listener(c.err_rd);
	else if (S.sentinel) {
		/* EOF here means the child failed before its filter: the error pipe says why. */
		G.notify_fd = recv_fd(c.sock_parent);
		close(c.sock_parent);
	}
	if (G.notify_fd >= 0 && fcntl(G.notify_fd, F_SETFL, O_NONBLOCK) < 0)
		die_errno("EINTERNAL", "fcntl(listener, O_NONBLOCK)");
	wait_for_exec(c.err_rd);
	if (has_notifier() && G.notify_fd < 0)
		fail("ESANDBOX", "no seccomp listener from the sandbox");
	/* The server holds the FUSE fd now. If we kept a copy, a dead server would leave a
	 * hung mount instead of one that answers ENOTCONN. (fuse_handover notify: it is handed
	 * at the server's open of /dev/fuse, and closed here then.) */
	if (!S.fuse_notify)
		close_fd(&G.devfuse);
	/* Only the server may hold the sandbox end of a transport: with our copy open, the
	 * caller's side would never see the server end, and a dead server would leave it waiting. */
	if (S.fd_transport >= 0)
		close_fd(&S.fd_transport);
	state_write();
}

/* ---------------------------------------------------------------------------------------- */
/* Helpers: checker (ready), attacher, detacher                                               */

enum check_stage { CHECK_OK, CHECK_STATFS, CHECK_STATX, CHECK_CREDS, CHECK_SETNS, CHECK_MOVE_MOUNT };
struct check_result {
	int stage;
	int err;
	uint64_t mnt_id;
	int watch_err; /* 0: the unmount watch is set (G.inotify_fd) */
};

/*
 * The checker blocks in fstatfs() until the server answered FUSE_INIT and STATFS (or fails
 * ENOTCONN when the server died), so it runs in its own process while the launcher keeps
 * serving the server's seccomp notifications. It runs as the mount's owner: without
 * allow_other FUSE answers anybody else's statfs itself, without asking the server, which
 * would prove nothing. Before it changes uid it keeps only the mount fd and its pipe, and
 * it stays non-dumpable, so the owner cannot take anything from it.
 */
static noreturn void checker_child(int wr)
{
	struct check_result r = {0};
	struct statfs sf;
	struct statx stx;

	G.role = ROLE_HELPER;
	/* Our own fd directory, opened before any setns: the unmount watch names the mount by
	 * its descriptor there, never by a path of the caller's namespace. */
	int fddir = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (S.mount_given) {
		/* No descriptor of a mount the helper made: reach it by its id in the caller's
		 * namespace (find_own_mount checks the id of what the path reached). */
		int procself = open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (procself < 0 || setns(G.nsfd, CLONE_NEWNS) < 0) {
			r.stage = CHECK_SETNS, r.err = errno;
			_exit(write(wr, &r, sizeof r) == sizeof r ? 0 : 1);
		}
		G.mntfd = find_own_mount(procself);
		if (G.mntfd < 0) {
			r.stage = CHECK_SETNS, r.err = -G.mntfd;
			_exit(write(wr, &r, sizeof r) == sizeof r ? 0 : 1);
		}
	}
	int keep[4] = {G.mntfd, wr, G.inotify_fd, fddir}, nkeep = 0;
	for (int i = 0; i < 4; i++)
		if (keep[i] >= 0)
			keep[nkeep++] = keep[i];
	for (int i = 1; i < nkeep; i++) /* ascending, as close_fds_except wants */
		for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	if (close_fds_except(keep, (size_t)nkeep, 0) < 0 ||
	    setresgid(S.owner_gid, S.owner_gid, S.owner_gid) < 0 ||
	    setresuid(S.owner_uid, S.owner_uid, S.owner_uid) < 0 ||
	    prctl(PR_SET_DUMPABLE, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
		r.stage = CHECK_CREDS, r.err = errno;
	} else if (fstatfs(G.mntfd, &sf) < 0) {
		r.stage = CHECK_STATFS, r.err = errno;
	} else if (statx(G.mntfd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE, &stx) < 0) {
		r.stage = CHECK_STATX, r.err = errno;
	} else {
		/* the unique mount id, for the broker's records (0 if the kernel has none) */
		r.mnt_id = (stx.stx_mask & STATX_MNT_ID_UNIQUE) ? stx.stx_mnt_id : 0;
		/* As the owner (FUSE refuses others without allow_other), now that the server
		 * answered; the watch lives on in the launcher's inotify instance. Not with
		 * default_permissions: its permission check would ask the server (GETATTR), and
		 * readiness would then wait on more than STATFS. */
		char name[16];
		snprintf(name, sizeof name, "%d", G.mntfd);
		r.watch_err = S.default_permissions ? EOPNOTSUPP : G.inotify_fd < 0 ? EBADF : fddir < 0 ? errno : 0;
		if (!r.watch_err && (fchdir(fddir) < 0 || inotify_add_watch(G.inotify_fd, name, IN_UNMOUNT) < 0))
			r.watch_err = errno;
	}
	if (write(wr, &r, sizeof r) != sizeof r)
		_exit(1);
	_exit(0);
}

static void start_checker(void)
{
	int p[2];
	G.inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (G.inotify_fd < 0)
		logmsg("inotify_init1: %s; a plain umount will not be noticed if the server stays", strerror(errno));
	if (pipe2(p, O_CLOEXEC) < 0)
		die_errno("EINTERNAL", "pipe2(checker)");
	G.checker_pid = clone_pidfd(0, &G.checker_pidfd);
	if (G.checker_pid < 0)
		die_errno("EINTERNAL", "clone3(checker)");
	if (G.checker_pid == 0) {
		close(p[0]);
		checker_child(p[1]);
	}
	close(p[1]);
	G.checker_rd = p[0];
	G.ready_deadline = now_ms() + S.ready_timeout_ms;
}

/*
 * Attach the mount on the caller's target, in the caller's mount namespace. A forked
 * helper does it because setns() would change the launcher's own namespace; it resolves
 * no path there (both ends are fds). Returns 0 or an errno; *what names the failed call.
 */
/* The reusable mount id of our mount fd, as /proc/self/fdinfo shows it. The broker matches an
 * unmount request's descriptor by the same field, since it may not stat inside a FUSE mount
 * that only its owner can reach. 0 if unreadable. */
static unsigned long long fdinfo_mnt_id(int fd)
{
	char path[64], buf[512];
	unsigned long long id = 0;
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return 0;
	ssize_t n = read(f, buf, sizeof buf - 1);
	close(f);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strstr(buf, "mnt_id:");
	if (p)
		id = strtoull(p + 7, NULL, 10);
	return id;
}

static int run_attacher(const char **what)
{
	struct check_result r = {.stage = -1};
	int p[2], pidfd;
	pid_t pid;

	*what = "attach helper";
	if (pipe2(p, O_CLOEXEC) < 0)
		return errno;
	pid = clone_pidfd(0, &pidfd);
	if (pid < 0)
		return errno;
	if (pid == 0) {
		G.role = ROLE_HELPER;
		r.stage = CHECK_OK;
		if (setns(G.nsfd, CLONE_NEWNS) < 0)
			r.stage = CHECK_SETNS, r.err = errno;
		else if (move_mount(G.mntfd, "", S.fd_target, "",
				    MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
			r.stage = CHECK_MOVE_MOUNT, r.err = errno;
		_exit(write(p[1], &r, sizeof r) == sizeof r ? 0 : 1);
	}
	G.maybe_attached = true;
	close(p[1]);
	/* move_mount onto a caller's target should not reach a filesystem, but a caller's FUSE
	 * target must not be able to hold the launcher in any case: bounded (ETIMEDOUT). */
	struct pollfd pp = {.fd = p[0], .events = POLLIN};
	if (poll(&pp, 1, (int)S.ready_timeout_ms) != 1 || read(p[0], &r, sizeof r) != sizeof r)
		r.stage = -1;
	close(p[0]);
	if (r.stage == -1)
		pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
	if (!reap_within(&pidfd, REAP_BOUND_MS, NULL)) {
		close_fd(&pidfd);
		if (r.stage == -1)
			return ETIMEDOUT;
	}
	switch (r.stage) {
	case CHECK_OK:
		return 0;
	case CHECK_SETNS:
		*what = "setns(caller mount namespace)";
		return r.err;
	case CHECK_MOVE_MOUNT:
		*what = "move_mount(onto the caller's target)";
		return r.err;
	default:
		return EINTR;
	}
}

/*
 * Wait at most ms for a child. A child that has sent a FUSE request its server read waits
 * for the answer whatever the signal (SIGKILL too), until the connection is aborted; so no
 * wait on a child is unbounded. Gives up after ms with false (the pidfd stays open, so the
 * caller can abort the connection and try again, or close it and leave the child to
 * whoever reaps orphans).
 */
static bool reap_within(int *pidfd, int ms, siginfo_t *out)
{
	siginfo_t si = {0};
	int64_t end = now_ms() + ms;
	if (*pidfd < 0)
		return true;
	for (;;) {
		si.si_pid = 0;
		if (waitid((idtype_t)P_PIDFD, (id_t)*pidfd, &si, WEXITED | WNOHANG) == 0 && si.si_pid != 0)
			break;
		if (errno == ECHILD) {
			si.si_pid = 0;
			break;  /* already reaped elsewhere */
		}
		int64_t left = end - now_ms();
		if (left <= 0) {
			return false;
		}
		struct pollfd p = {.fd = *pidfd, .events = POLLIN};
		if (poll(&p, 1, (int)left) < 0 && errno != EINTR) {
			logmsg("poll(child pidfd): %s", strerror(errno));
			return false;
		}
	}
	close_fd(pidfd);
	if (out)
		*out = si;
	return true;
}

/*
 * _exit without closing the caller's source fd here: close() of a file on a FUSE mount the
 * caller runs sends FLUSH and waits for that server as long as the caller likes (and so would
 * our exit). Everything else is closed first; then a child sharing our fd table (CLONE_FILES)
 * does the one close of the source, so the FLUSH waits in it, not in us. Our exit only drops
 * our reference to the table.
 */
static void profile_write(void);
static noreturn void exit_leaving_source(int status)
{
	if (S.profile && G.role == ROLE_LAUNCHER)
		profile_write();
	if (S.fd_source >= 0) {
		int keep[1] = {S.fd_source}, pidfd = -1;
		if (S.fd_source < 3 || close_fds_except(keep, 1, 0) < 0)
			_exit(status);
		pid_t pid = clone_pidfd(CLONE_FILES, &pidfd);
		if (pid == 0) {
			close(S.fd_source);
			_exit(0);
		}
		/* pid < 0: our own exit closes it, as before */
	}
	_exit(status);
}

static void kill_and_reap(int *pidfd)
{
	if (*pidfd < 0)
		return;
	pidfd_send_signal(*pidfd, SIGKILL, NULL, 0);
	if (!reap_within(pidfd, REAP_BOUND_MS, NULL)) {
		logmsg("a killed helper did not exit within %d ms (stuck in a FUSE request?): left behind",
		       REAP_BOUND_MS);
		close_fd(pidfd);
	}
}

/*
 * End the FUSE connection without the server's help, so that every request waiting on it
 * (the checker's statfs, a caller's stat) fails ENOTCONN: our own /dev/fuse copy goes,
 * and where fusectl is mounted the connection's abort file is written (it names the
 * connection by the superblock's minor device; statx with DONT_SYNC asks no server).
 */
static void abort_connection(void)
{
	struct statx stx;
	char path[80];
	close_fd(&G.devfuse);
	unsigned int minor = G.conn_minor;
	if (G.mntfd >= 0 && statx(G.mntfd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, 0, &stx) == 0)
		minor = stx.stx_dev_minor;
	if (minor == 0)
		return;
	snprintf(path, sizeof path, "/sys/fs/fuse/connections/%u/abort", minor);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;  /* fusectl not mounted: killing the server is what ends the connection */
	if (write(fd, "1", 1) != 1)
		logmsg("write(%s): %s", path, strerror(errno));
	else
		logmsg("FUSE connection %u aborted", minor);
	close(fd);
}

/*
 * Detaching, in a helper that enters the caller's mount namespace. Before ready the mount is
 * reached through our fsmount descriptor. After ready we hold none (see G.mntfd), so the
 * mount is found by its id: the line of our own /proc/PID/mountinfo (opened through the /proc
 * of our namespace, never the caller's, which it could fake; it lists the namespace we are in)
 * whose first field is mnt_id_old gives its mount point; the path is opened without
 * following links and taken only if fdinfo says the mount it reached is that one. A mount
 * point the caller covered with another mount, or moved and replaced, is left alone (exit
 * ESTALE): the wrong mount is never detached.
 */
static int find_own_mount(int procself)
{
	char buf[8192], want[32], path[PATH_MAX];
	int f = openat(procself, "mountinfo", O_RDONLY | O_CLOEXEC);
	if (f < 0)
		return -errno;
	snprintf(want, sizeof want, "%llu ", G.mnt_id_old);
	size_t have = 0;
	int found = -ESRCH;
	for (;;) {
		ssize_t n = read(f, buf + have, sizeof buf - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = 0;
		char *line = buf, *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = 0;
			if (strncmp(line, want, strlen(want)) == 0) {
				/* fields: id parent major:minor root mountpoint ... (octal escapes) */
				char *mp = line;
				for (int i = 0; i < 4 && mp; i++)
					mp = strchr(mp + 1, ' ');
				size_t k = 0;
				for (char *q = mp ? mp + 1 : NULL; q && *q && *q != ' ' && k < sizeof path - 1; q++) {
					if (q[0] == '\\' && q[1] >= '0' && q[1] <= '3' && q[2] >= '0' && q[2] <= '7' && q[3] >= '0' && q[3] <= '7') {
						path[k++] = (char)((q[1] - '0') * 64 + (q[2] - '0') * 8 + (q[3] - '0'));
						q += 3;
					} else {
						path[k++] = *q;
					}
				}
				path[k] = 0;
				found = k ? 0 : -EINVAL;
				break;
			}
			line = nl + 1;
		}
		if (found != -ESRCH)
			break;
		/* keep the unfinished line for the next read */
		have = strlen(line);
		memmove(buf, line, have);
		if (have >= sizeof buf - 1)
			have = 0; /* a line longer than the buffer is not ours (ours is short) */
	}
	close(f);
	if (found < 0)
		return found;
	int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* Which mount the path reached, from fdinfo (through our /proc): statx would ask FUSE,
	 * which answers nobody but the owner of a mount without allow_other. */
	char info[512], name[32];
	snprintf(name, sizeof name, "fdinfo/%d", fd);
	f = openat(procself, name, O_RDONLY | O_CLOEXEC);
	ssize_t n = f < 0 ? -1 : read(f, info, sizeof info - 1);
	if (f >= 0)
		close(f);
	char *p = n > 0 ? (info[n] = 0, strstr(info, "mnt_id:")) : NULL;
	if (!p || strtoull(p + 7, NULL, 10) != G.mnt_id_old) {
		close(fd);
		return -ESTALE;
	}
	return fd;
}

static noreturn void detacher_child(int nsfd)
{
	char name[16];
	int fddir, procself, fd;
	G.role = ROLE_HELPER;
	close_fd(&G.lockfd);
	fddir = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
	procself = open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fddir < 0 || procself < 0)
		_exit(errno);
	if (setns(nsfd, CLONE_NEWNS) < 0 || fchdir(fddir) < 0)
		_exit(errno);
	fd = G.mntfd >= 0 ? G.mntfd : find_own_mount(procself);
	if (fd == -ESRCH)
		_exit(EINVAL); /* not in the caller's namespace any more: already unmounted */
	if (fd < 0)
		_exit(-fd);
	snprintf(name, sizeof name, "%d", fd);
	if (umount2(name, MNT_DETACH) < 0)
		_exit(errno);
	_exit(0);
}

static void detach_mount(void)
{
	int pidfd, nsfd;
	pid_t pid;
	siginfo_t si;

	if (!G.maybe_attached)
		return;
	if ((G.nsfd < 0 && !G.ns_by_handle) || (G.mntfd < 0 && G.mnt_id_old == 0)) {
		logmsg("detach: neither the caller's namespace nor the mount can be reached; the mount is left");
		mount_left();
		return;
	}
	nsfd = caller_mntns_open();
	if (nsfd == -ESTALE) {
		G.ns_gone = true;
		G.maybe_attached = false;
		G.detached = true; /* nothing of ours can be left mounted in a namespace that is gone */
		logmsg("detach: the caller's mount namespace has ended, and the mount with it");
		return;
	}
	if (nsfd < 0) {
		logmsg("detach: open_by_handle_at(caller mount namespace): %s; the mount is left", strerror(-nsfd));
		mount_left();
		return;
	}
	pid = clone_pidfd(0, &pidfd);
	if (pid < 0) {
		logmsg("clone3(detacher): %s; the mount is left", strerror(errno));
		close(nsfd);
		mount_left();
		return;
	}
	if (pid == 0)
		detacher_child(nsfd);
	close(nsfd);
	/* umount2(MNT_DETACH) asks no server, but stay bounded anyway */
	if (!reap_within(&pidfd, REAP_BOUND_MS, &si)) {
		close_fd(&pidfd);
		logmsg("detach: helper did not finish");
	}
	else if (si.si_code != CLD_EXITED)
		logmsg("detach: helper killed by signal %d", si.si_status);
	else if (si.si_status == EINVAL) {
		logmsg("detach: not mounted in the caller's namespace (already unmounted)");
		G.detached = true;
	} else if (si.si_status == ESTALE)
		logmsg("detach: the mount point now shows another mount (covered or replaced); ours is left to end with its last user");
	else if (si.si_status != 0)
		logmsg("detach: umount2: %s", strerror(si.si_status));
	else {
		logmsg("detached the mount in the caller's namespace");
		G.detached = true;
	}
	G.maybe_attached = false;
	if (!G.detached)
		G.left_mounted = true;
	/* Said at once: a launcher killed after this (while its server flushes) left no dead
	 * mount, and the broker must not list one for its owner to remove (fault runs); one
	 * that is left is the broker's to list (as it would after a kill), not to report gone. */
	if (G.phase != PHASE_STARTING)
		state_write();
}

/* A detach that could not even try: the attached mount stays where it is (detach_mount). */
static void mount_left(void)
{
	G.maybe_attached = false;
	G.left_mounted = true;
	if (G.phase != PHASE_STARTING)
		state_write();
}

/* Everything that must not outlive a failed start: helpers, server, mount, fds. */
/* The order matters: the checker may wait in a FUSE request that no signal ends, so the
 * connection is aborted first (server killed, our /dev/fuse copy closed, fusectl abort if
 * the server does not go at once), and only then are the helpers reaped. */
static void teardown_before_ready(void)
{
	if (G.server_pidfd >= 0)
		pidfd_send_signal(G.server_pidfd, SIGKILL, NULL, 0);
	close_fd(&G.devfuse);
	if (G.server_pidfd >= 0) {
		siginfo_t si;
		bool gone = reap_within(&G.server_pidfd, 200, &si);
		if (!gone) {
			/* its exit may be stuck closing a FUSE file of someone else's: abort ours */
			abort_connection();
			gone = reap_within(&G.server_pidfd, REAP_BOUND_MS, &si);
		}
		if (!gone) {
			logmsg("the killed server did not exit within %d ms: left behind", REAP_BOUND_MS);
			close_fd(&G.server_pidfd);
		} else if (si.si_code == CLD_EXITED) {
			G.exit_code = si.si_status;
		} else {
			G.exit_signal = si.si_status;
		}
	}
	if (G.checker_pidfd >= 0 && !reap_within(&G.checker_pidfd, 200, NULL))
		abort_connection();  /* the server is gone, yet the checker still waits */
	kill_and_reap(&G.checker_pidfd);
	detach_mount();
	close_fd(&G.mntfd);
}

/* ---------------------------------------------------------------------------------------- */
/* Serving the server: seccomp notifications, its output                                     */

/* Read a NUL-terminated string from the target, page by page (a page may be unmapped). */
static bool read_remote_string(pid_t pid, uint64_t addr, char *buf, size_t size)
{
	size_t got = 0;
	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	while (got < size - 1) {
		size_t chunk = page - (size_t)((addr + got) % page);
		if (chunk > size - 1 - got)
			chunk = size - 1 - got;
		struct iovec local = {.iov_base = buf + got, .iov_len = chunk};
		struct iovec remote = {.iov_base = (void *)(uintptr_t)(addr + got), .iov_len = chunk};
		ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
		if (n <= 0)
			return false;
		if (memchr(buf + got, '\0', (size_t)n))
			return true;
		got += (size_t)n;
	}
	return false;  /* longer than PATH_MAX: not our sentinel */
}

/* One "source handed" line per interval: a server opening its sentinel in a loop must not
 * fill the instance log with it. */
#define HANDED_INTERVAL_MS 5000
static int64_t handed_since;
static unsigned long handed_repeats;
static void source_handed_flush(void)
{
	if (handed_repeats)
		logmsg("source handed to the server %lu more times in the last %lld s", handed_repeats,
		       (long long)((now_ms() - handed_since + 999) / 1000));
	handed_repeats = 0;
}
static void source_handed_note(void)
{
	int64_t now = now_ms();
	if (handed_since && now - handed_since < HANDED_INTERVAL_MS) {
		handed_repeats++;
		return;
	}
	source_handed_flush();
	handed_since = now;
	logmsg("source handed to the server");
}

static void notify_respond(uint64_t id, int error, uint32_t flags)
{
	struct seccomp_notif_resp resp = {.id = id, .error = error ? -error : 0, .flags = flags};
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT)
		logmsg("SECCOMP_IOCTL_NOTIF_SEND: %s", strerror(errno));
}

/*
 * One open/openat/openat2 of the server. The sentinel path gets the caller's source fd,
 * injected atomically as the syscall's result (ADDFD + SEND); every other open continues
 * as if nothing happened. Reading the path is racy against the target's other threads,
 * which is fine: the answer only ever grants the server its own source, never a check.
 * A read-write open of a read-only source fails EROFS rather than quietly getting a
 * read-only fd (the server should learn at open time, not at its first write).
 */
/*
 * fuse_handover notify, the open of /dev/fuse: the server gets the descriptor of the mount the
 * launcher already made, once; the launcher drops its own copy then (a dead server must leave
 * a mount that answers ENOTCONN). Any later open of /dev/fuse fails ENODEV.
 */
static void hand_fuse(const struct seccomp_notif *req, uint64_t flags)
{
	if (G.devfuse < 0) {
		notify_respond(req->id, ENODEV, 0);
		return;
	}
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0) {
		if (errno != ENOENT)
			notify_respond(req->id, EIO, 0);
		return;
	}
	struct seccomp_notif_addfd addfd = {
		.id = req->id,
		.flags = SECCOMP_ADDFD_FLAG_SEND,
		.srcfd = (uint32_t)G.devfuse,
		.newfd_flags = (uint32_t)(flags & O_CLOEXEC),
	};
	int fd = ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
	if (fd < 0) {
		int err = errno;
		if (err != ENOENT) {
			logmsg("SECCOMP_IOCTL_NOTIF_ADDFD(/dev/fuse): %s", strerror(err));
			notify_respond(req->id, err, 0);
		}
		return;
	}
	G.fuse_handed = fd;
	close_fd(&G.devfuse);
	logmsg("FUSE descriptor handed to the server at its open of /dev/fuse (fd %d)", fd);
}

/* Whether the mount(2) data string names fd=N for the descriptor we handed. */
static bool data_names_handed_fd(const char *data)
{
	char want[32];
	size_t n = (size_t)snprintf(want, sizeof want, "fd=%d", G.fuse_handed);
	for (const char *p = data; *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (len == n && !memcmp(p, want, n))
			return true;
		if (!comma)
			break;
		p = comma + 1;
	}
	return false;
}

/*
 * fuse_handover notify, mount(2): the FUSE mount already exists (the launcher made it with
 * the broker's options), so a FUSE mount carrying the handed descriptor is answered as done,
 * without doing anything. Everything else is refused EPERM. Never CONTINUE: the kernel
 * performs no mount for the server.
 */
static void handle_mount(const struct seccomp_notif *req)
{
	char type[64], data[PATH_MAX];
	bool type_ok = req->data.args[2] && read_remote_string(req->pid, req->data.args[2], type, sizeof type);
	/* fuseblk too (exfat-fuse asks for it): nothing is mounted either way, and the mount that
	 * exists keeps the broker's options, not the server's (allow_other, blkdev... are moot) */
	bool fuse_type = type_ok && (!strcmp(type, "fuse") || !strncmp(type, "fuse.", 5) ||
				     !strcmp(type, "fuseblk") || !strncmp(type, "fuseblk.", 8));
	bool ours = fuse_type && G.fuse_handed >= 0 && req->data.args[4] &&
		    read_remote_string(req->pid, req->data.args[4], data, sizeof data) &&
		    data_names_handed_fd(data);
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0)
		return;
	if (!ours) {
		/* what it asked for, printable only (the strings are the server's) */
		if (!type_ok)
			snprintf(type, sizeof type, "?");
		if (!req->data.args[4] || !read_remote_string(req->pid, req->data.args[4], data, sizeof data))
			snprintf(data, sizeof data, "?");
		data[96] = '\0';
		for (char *c = type; *c; c++)
			if (*c < 0x20 || *c > 0x7e)
				*c = '?';
		for (char *c = data; *c; c++)
			if (*c < 0x20 || *c > 0x7e)
				*c = '?';
		logmsg("mount(2) by the server refused (EPERM): not a FUSE mount of the handed descriptor (fd %d): type %s, data %s",
		       G.fuse_handed, type, data);
		notify_respond(req->id, EPERM, 0);
		return;
	}
	logmsg("the server's FUSE mount(2) answered as done (the mount exists already)");
	notify_respond(req->id, 0, 0);
}

/*
 * seccomp_profile: the set of native syscall numbers the sandbox made (the filter kills a
 * foreign-arch call, so every number here is native; x32's bit would be past the set).
 */
#define PROFILE_NR_MAX 1024
static unsigned char profile_seen[PROFILE_NR_MAX / 8];
static unsigned long profile_odd;
static void profile_note(int nr)
{
	if (nr >= 0 && nr < PROFILE_NR_MAX)
		profile_seen[nr / 8] |= (unsigned char)(1u << (nr % 8));
	else
		profile_odd++;
}

/* One name per line, sorted by number, into S.profile (a new file: never written through). */
static void profile_write(void)
{
	uint32_t arch = seccomp_arch_native();
	unsigned count = 0;
	int fd = open(S.profile, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		logmsg("seccomp_profile: open(%s): %s", S.profile, strerror(errno));
		return;
	}
	for (int nr = 0; nr < PROFILE_NR_MAX; nr++) {
		if (!(profile_seen[nr / 8] & (1u << (nr % 8))))
			continue;
		char *name = seccomp_syscall_resolve_num_arch(arch, nr), line[96];
		int n = name ? snprintf(line, sizeof line, "%s\n", name) : snprintf(line, sizeof line, "#%d\n", nr);
		free(name);
		if (!write_all(fd, line, (size_t)n)) {
			logmsg("seccomp_profile: write(%s): %s", S.profile, strerror(errno));
			break;
		}
		count++;
	}
	if (close(fd) < 0)
		logmsg("seccomp_profile: close(%s): %s", S.profile, strerror(errno));
	logmsg("seccomp_profile: %u distinct system calls recorded%s", count, profile_odd ? " (and calls out of range)" : "");
}

static void handle_notification(void)
{
	struct seccomp_notif req;
	char path[PATH_MAX];
	uint64_t path_arg, flags;

	memset(&req, 0, sizeof req);
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
		if (errno != ENOENT && errno != EINTR && errno != EAGAIN)
			logmsg("SECCOMP_IOCTL_NOTIF_RECV: %s", strerror(errno));
		return;
	}
	if (S.profile)
		profile_note(req.data.nr);
	if (req.data.nr == G.nr_open) {
		path_arg = req.data.args[0];
		flags = req.data.args[1];
	} else if (req.data.nr == G.nr_openat) {
		path_arg = req.data.args[1];
		flags = req.data.args[2];
	} else if (req.data.nr == G.nr_openat2) {
		struct iovec local = {.iov_base = &flags, .iov_len = sizeof flags};
		struct iovec remote = {.iov_base = (void *)(uintptr_t)req.data.args[2],
				       .iov_len = sizeof flags};  /* open_how.flags comes first */
		path_arg = req.data.args[1];
		if (process_vm_readv(req.pid, &local, 1, &remote, 1, 0) != sizeof flags)
			flags = 0;
	} else if (S.fuse_notify && req.data.nr == G.nr_mount) {
		handle_mount(&req);
		return;
	} else {
		notify_respond(req.id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
		return;
	}

	if (S.fuse_notify && read_remote_string(req.pid, path_arg, path, sizeof path) &&
	    !strcmp(path, "/dev/fuse")) {
		hand_fuse(&req, flags);
		return;
	}
	if (!S.sentinel || !read_remote_string(req.pid, path_arg, path, sizeof path) ||
	    strcmp(path, S.sentinel) != 0) {
		notify_respond(req.id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
		return;
	}
	/* the pid we read from is still the task that made this call (ENOENT: it is gone) */
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) < 0) {
		if (errno != ENOENT)
			notify_respond(req.id, EIO, 0);
		return;
	}
	if ((flags & O_ACCMODE) != O_RDONLY && G.source_accmode == O_RDONLY) {
		notify_respond(req.id, EROFS, 0);
		return;
	}
	struct seccomp_notif_addfd addfd = {
		.id = req.id,
		.flags = SECCOMP_ADDFD_FLAG_SEND,
		.srcfd = (uint32_t)S.fd_source,
		.newfd_flags = (uint32_t)(flags & O_CLOEXEC),
	};
	if (ioctl(G.notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0) {
		/* ENOENT: the task is gone. Anything else (EMFILE at the server's RLIMIT_NOFILE,
		 * ...) left the call unanswered: answer it with that errno, or the open waits
		 * for ever. */
		int err = errno;
		if (err != ENOENT) {
			logmsg("SECCOMP_IOCTL_NOTIF_ADDFD: %s", strerror(err));
			notify_respond(req.id, err, 0);
		}
		return;
	}
	source_handed_note();
}

static void tail_append(const char *buf, size_t n)
{
	if (n >= TAIL_MAX) {
		memcpy(G.tail, buf + n - TAIL_MAX, TAIL_MAX);
		G.tail_len = TAIL_MAX;
		return;
	}
	if (G.tail_len + n > TAIL_MAX) {
		size_t drop = G.tail_len + n - TAIL_MAX;
		memmove(G.tail, G.tail + drop, G.tail_len - drop);
		G.tail_len -= drop;
	}
	memcpy(G.tail + G.tail_len, buf, n);
	G.tail_len += n;
}

/*
 * The server's last two non-empty output lines, joined by a space, for ESERVER_START:
 * servers tend to print the cause, then advice ("Bad magic number..." / "Please run e2fsck").
 */
static const char *tail_last_lines(void)
{
	static char out[TAIL_MAX + 2];
	size_t end = G.tail_len, start = end;
	int lines = 0;
	while (lines < 2) {
		while (end > 0 && isspace((unsigned char)G.tail[end - 1]))
			end--;
		if (end == 0)
			break;
		start = end;
		while (start > 0 && G.tail[start - 1] != '\n')
			start--;
		lines++;
		if (lines < 2)
			end = start;
	}
	if (lines == 0)
		return "";
	/* from the start of the earliest line kept to the end of the output */
	size_t from = start, to = G.tail_len;
	while (to > from && isspace((unsigned char)G.tail[to - 1]))
		to--;
	memcpy(out, G.tail + from, to - from);
	out[to - from] = '\0';
	sanitize_line(out);
	if (strlen(out) > 400)
		memmove(out, out + strlen(out) - 400, 401);
	return out;
}

/* Copy server output into the instance log (fd 2), at most LOG_CAP bytes in all. */
#define PUMP_PER_WAKEUP (64 * 1024)
static void pump_log(void)
{
	char buf[8192];
	/* At most PUMP_PER_WAKEUP per call: a server that writes without pause must not keep the
	 * loop from its notifications and signals; poll() brings us back for the rest. */
	for (size_t done = 0; done < PUMP_PER_WAKEUP;) {
		ssize_t n = read(G.log_fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			close_fd(&G.log_fd);
			return;
		}
		done += (size_t)n;
		tail_append(buf, (size_t)n);
		size_t room = G.log_written < LOG_CAP ? LOG_CAP - G.log_written : 0, take = (size_t)n < room ? (size_t)n : room;
		if (take && write_all(STDERR_FILENO, buf, take))
			G.log_written += take;
		if (take < (size_t)n) {
			if (!G.log_dropped) {
				if (take && buf[take - 1] != '\n')
					write_all(STDERR_FILENO, "\n", 1);
				logmsg("server output exceeds %d bytes; dropping the rest", LOG_CAP);
			}
			G.log_dropped += (size_t)n - take;
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Endings                                                                                   */

static void describe_exit(const siginfo_t *si, char *out, size_t size)
{
	/* the reaper reports a signal N as 128 + N (run_reaper) */
	if (S.reaper && si->si_code == CLD_EXITED && si->si_status > 128 && si->si_status <= 128 + 64) {
		G.exit_code = -1, G.exit_signal = si->si_status - 128;
		snprintf(out, size, "killed by signal %d", G.exit_signal);
	} else if (si->si_code == CLD_EXITED) {
		G.exit_code = si->si_status, G.exit_signal = 0;
		snprintf(out, size, "server exited with code %d", si->si_status);
	} else {
		G.exit_code = -1, G.exit_signal = si->si_status;
		snprintf(out, size, "killed by signal %d", si->si_status);
	}
}

/* After the server is gone: last output, the end state, exit. */
static noreturn void finish(int status)
{
	/* the server is gone: its pipe has an end, but stay bounded (a grandchild may write) */
	for (int i = 0; i < 32 && G.log_fd >= 0; i++)
		pump_log();
	source_handed_flush();
	if (G.log_dropped)
		logmsg("%zu bytes of server output were dropped", G.log_dropped);
	close_fd(&G.notify_fd);
	close_fd(&G.nsfd);
	if (S.ncgroups) {
		char why[160];
		cgroup_limits_reason(why, sizeof why);
		snprintf(G.reason + strlen(G.reason), sizeof G.reason - strlen(G.reason), "%s", why);
		cgroups_remove();
	}
	logmsg("%s", G.reason);
	set_phase(PHASE_EXITED);
	step("end");
	steps_log();
	exit_leaving_source(status);
}

static void on_server_exit(void)
{
	siginfo_t si = {0};
	char what[128];

	if (waitid((idtype_t)P_PIDFD, (id_t)G.server_pidfd, &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0)
		return;
	close_fd(&G.server_pidfd);
	step("server_exit");
	describe_exit(&si, what, sizeof what);

	switch (G.phase) {
	case PHASE_STARTING: {
		const char *last;
		if (G.log_fd >= 0)
			pump_log();
		last = tail_last_lines();
		if (*last)
			fail("ESERVER_START", "%s", last);
		fail("ESERVER_START", "%s before it was ready", what);
	}
	case PHASE_RUNNING:
		/* a crash must not leave an ENOTCONN mount behind: detach at once */
		detach_mount();
		close_fd(&G.mntfd);
		if (G.ns_gone)
			snprintf(G.reason, sizeof G.reason, "the caller's mount namespace ended; %s", what);
		else if (G.fuse_unheld)
			snprintf(G.reason, sizeof G.reason, "no process of the sandbox held the FUSE connection; the rest was killed");
		else
			snprintf(G.reason, sizeof G.reason, "%s", what);
		finish(EXIT_ENDED);
	case PHASE_STOPPING:
		if (G.exit_code == 0)
			snprintf(G.reason, sizeof G.reason, "%s", S.mount_fuse ? "unmounted" : "stopped");
		else
			snprintf(G.reason, sizeof G.reason, "%s; %s", S.mount_fuse ? "unmounted" : "stopped", what);
		finish(G.exit_code == 0 ? EXIT_STOPPED : EXIT_ENDED);
	case PHASE_EXITED:
		break;
	}
}

#define HOLDER_CHECK_MS 1000
static int64_t holder_check;   /* reaper, running: when to look for the FUSE fd's holder next */

/* Whether process pid holds a descriptor of /dev/fuse (in the sandbox that is only ours). */
static bool holds_devfuse(pid_t pid)
{
	char path[64], link[32];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	struct dirent *e;
	bool found = false;
	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link - 1);
		if (n > 0) {
			link[n] = '\0';
			found = !strcmp(link, "/dev/fuse");
		}
	}
	closedir(d);
	return found;
}

/*
 * reaper: the process that serves is not the one the launcher started (it forked away), so
 * the pid the readiness line and the state name is the sandbox process holding the FUSE fd,
 * found breadth-first from the reaper through /proc/PID/task/TID/children (host pids; the
 * cgroup's pids.max bounds the walk). 0 if none holds it (the reaper's pid is named then).
 */
/* The sandbox process holding the FUSE fd; 0 if none; -1 when the walk could not see the whole
 * tree (too many processes, a children list longer than the buffer): never read as "none". */
static pid_t find_serving_pid(void)
{
	pid_t queue[256];
	size_t head = 0, tail = 0;
	bool partial = false;
	queue[tail++] = G.server_pid;
	while (head < tail) {
		pid_t p = queue[head++];
		char path[64];
		if (p != G.server_pid && holds_devfuse(p))
			return p;
		snprintf(path, sizeof path, "/proc/%d/task", (int)p);
		DIR *d = opendir(path);
		struct dirent *e;
		if (!d)
			continue;
		while ((e = readdir(d))) {
			char file[sizeof e->d_name + 16], buf[1024];
			if (e->d_name[0] == '.')
				continue;
			snprintf(file, sizeof file, "%s/children", e->d_name);
			int fd = openat(dirfd(d), file, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, buf, sizeof buf - 1);
			close(fd);
			if (n <= 0)
				continue;
			if ((size_t)n == sizeof buf - 1)
				partial = true; /* maybe cut: the last pid may be wrong, others unread */
			buf[n] = '\0';
			for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
				if (tail == sizeof queue / sizeof queue[0]) {
					partial = true;
					break;
				}
				queue[tail++] = (pid_t)atoi(tok);
			}
		}
		closedir(d);
	}
	return partial ? -1 : 0;
}

static void on_checker_done(void)
{
	struct check_result r = {.stage = -1};
	const char *what;
	siginfo_t si;
	int err;

	if (read(G.checker_rd, &r, sizeof r) != sizeof r)
		r.stage = -1;
	close_fd(&G.checker_rd);
	if (!reap_within(&G.checker_pidfd, REAP_BOUND_MS, &si))
		close_fd(&G.checker_pidfd);

	switch (r.stage) {
	case CHECK_OK:
		break;
	case CHECK_STATFS:
		/* the server died or broke the connection: its own exit tells more, if it comes */
		if (G.server_pidfd >= 0) {
			struct pollfd p = {.fd = G.server_pidfd, .events = POLLIN};
			if (poll(&p, 1, 200) == 1)
				on_server_exit();
		}
		errno = r.err;
		die_errno("ESERVER_START", "statfs on the new mount");
	case CHECK_STATX:
		errno = r.err;
		die_errno("EMOUNT", "statx(new mount)");
	case CHECK_CREDS:
		errno = r.err;
		die_errno("EINTERNAL", "ready checker: becoming the mount owner");
	case CHECK_SETNS:
		errno = r.err;
		die_errno("EMOUNT_GIVEN", "ready checker: finding the helper's mount in the caller's namespace");
	default:
		fail("EINTERNAL", "ready checker died (status %d)", si.si_status);
	}
	G.ready_deadline = 0;
	G.mnt_id = r.mnt_id;
	if (r.watch_err) {
		logmsg("unmount watch: %s; a plain umount will not be noticed if the server stays",
		       r.watch_err == EOPNOTSUPP ? "not with default_permissions (it would ask the server)" : strerror(r.watch_err));
		close_fd(&G.inotify_fd);
	}

	if (!S.mount_given) {
		/* The mount keeps its id when it is moved. Said before the attach: a launcher killed
		 * between the attach and its next state write leaves a mount the broker must know
		 * of (it lists it as possibly dead for its owner to remove), not a mount with no
		 * record. A kill before the attach makes that a false "may be left dead", which the
		 * owner's unmount answers with ENOENT_MOUNT once; never a mount nobody knows. */
		G.mnt_id_old = fdinfo_mnt_id(G.mntfd);
		state_write();
		err = run_attacher(&what);
		if (err) {
			errno = err;
			die_errno("EATTACH", "%s", what);
		}
	}
	/* The caller's fds did their job; the namespace is kept by name only (unpin_caller_mntns). */
	close_fd(&S.fd_target);
	close_fd(&S.fd_caller_pidfd);
	unpin_caller_mntns();
	/* Before the state says running: a broker that died before our readiness line reads the
	 * mount ids from the state file to adopt the instance (unmount by path needs the old id).
	 * A given mount: both came from the search, and we never held a descriptor of it. */
	if (!S.mount_given) {
		G.mnt_id_old = fdinfo_mnt_id(G.mntfd);
		struct statx stx;
		if (statx(G.mntfd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, 0, &stx) == 0)
			G.conn_minor = stx.stx_dev_minor;
	}
	/* From here the mount is the caller's: umount(8), umount -l or fusermount3 -u end the
	 * instance (the server sees its connection go); a stop finds it again by its id. */
	close_fd(&G.mntfd);
	if (S.reaper) {
		G.serving_pid = find_serving_pid();
		if (G.serving_pid < 0)
			G.serving_pid = 0;
		if (!G.serving_pid)
			logmsg("reaper: no process of the sandbox holds the FUSE fd at ready (or too many to tell)");
		holder_check = now_ms() + HOLDER_CHECK_MS;
	}
	pid_t named = G.serving_pid ? G.serving_pid : G.server_pid;
	set_phase(PHASE_RUNNING);
	step("ready");
	readiness("ready\t%d\t%llu\t%llu", (int)named, (unsigned long long)G.mnt_id, G.mnt_id_old);
	if (S.reaper)
		logmsg("ready: server pid %d (under the reaper, pid %d), mount id %llu (%llu)", (int)named, (int)G.server_pid, (unsigned long long)G.mnt_id, G.mnt_id_old);
	else
		logmsg("ready: server pid %d, mount id %llu (%llu)", (int)named, (unsigned long long)G.mnt_id, G.mnt_id_old);
}

static int64_t stop_end;       /* PHASE_STOPPING: when SIGKILL goes, at the latest */
static int64_t abandon_deadline; /* after SIGKILL: a server whose exit is stuck is left */

/* SIGTERM/SIGINT/SIGHUP: unmount, then let the server finish (docs/launcher.md). */
static void begin_stop(int signo)
{
	step("stop");
	if (G.phase == PHASE_STARTING)
		fail("EINTERNAL", "stopped by signal %d before ready", signo);
	if (G.phase == PHASE_STOPPING) {
		/* asked again: stop waiting for a voluntary exit */
		if (G.term_deadline)
			G.term_deadline = now_ms();
		return;
	}
	logmsg("signal %d: stopping", signo);
	set_phase(PHASE_STOPPING);
	detach_mount();
	close_fd(&G.mntfd);
	/* With a mount, detaching it ends the connection and a FUSE server exits by itself;
	 * without one (unit mode) there is nothing to wait for. */
	/* The whole stop fits in stop_timeout_ms: SIGTERM leaves KILL_GRACE_MS (at most half)
	 * before SIGKILL at the end of it. */
	int64_t grace = S.stop_timeout_ms / 2 < KILL_GRACE_MS ? S.stop_timeout_ms / 2 : KILL_GRACE_MS;
	stop_end = now_ms() + (S.mount_fuse ? S.stop_timeout_ms : 0);
	G.term_deadline = stop_end - (S.mount_fuse ? grace : 0);
	/* A mount the detach could not reach (covered) keeps its connection: the server would
	 * never see it end, so waiting for a voluntary exit only delays the answer. SIGTERM now
	 * (it flushes and exits); SIGKILL stays at stop_end. */
	if (G.left_mounted && !G.detached)
		G.term_deadline = now_ms();
	if (G.term_deadline <= 0)
		G.term_deadline = 1;
}

/*
 * The caller unmounted (umount(2), umount -l, fusermount3 -u: the superblock went, and the
 * connection with it). A server exits on that by itself; one that stays is ended as a stop
 * ends it, within stop_timeout_ms. The phase stays RUNNING, so its exit reads as before.
 */
static void on_unmount_event(void)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool unmounted = false;
	ssize_t n;
	while ((n = read(G.inotify_fd, buf, sizeof buf)) > 0)
		for (char *q = buf; q < buf + n; q += sizeof(struct inotify_event) + ((struct inotify_event *)q)->len)
			if (((struct inotify_event *)q)->mask & (IN_UNMOUNT | IN_IGNORED))
				unmounted = true;
	if (n < 0 && errno != EAGAIN)
		unmounted = true; /* cannot watch any more: arm the bound anyway */
	if (!unmounted)
		return;
	close_fd(&G.inotify_fd);
	if (G.phase != PHASE_RUNNING || G.term_deadline || G.kill_deadline)
		return;
	logmsg("the mount was unmounted; the server has %lld ms to exit", S.stop_timeout_ms);
	int64_t grace = S.stop_timeout_ms / 2 < KILL_GRACE_MS ? S.stop_timeout_ms / 2 : KILL_GRACE_MS;
	stop_end = now_ms() + S.stop_timeout_ms;
	G.term_deadline = stop_end - grace;
	if (G.term_deadline <= 0)
		G.term_deadline = 1;
}

static void on_signals(void)
{
	struct signalfd_siginfo si;
	while (read(G.sigfd, &si, sizeof si) == sizeof si) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGHUP)
			begin_stop((int)si.ssi_signo);
		/* SIGCHLD: children are watched through their pidfds */
	}
}

static void on_timeouts(void)
{
	int64_t now = now_ms();
	/* reaper: a FUSE descriptor cannot be reopened, so once no process of the sandbox holds
	 * one the connection is aborted for good: the instance is over even if a helper lingers */
	if (holder_check && now >= holder_check) {
		holder_check = G.phase == PHASE_RUNNING ? now + HOLDER_CHECK_MS : 0;
		/* Two misses in a row, a check apart: a daemonizing hand-over (parent exits, child
		 * reparented) seen half-way by one walk must not end a serving instance. */
		static int misses;
		misses = holder_check && G.server_pidfd >= 0 && find_serving_pid() == 0 ? misses + 1 : 0;
		if (misses >= 2) {
			holder_check = 0;
			G.fuse_unheld = true;
			logmsg("reaper: no process of the sandbox holds the FUSE connection any more: ending the instance (SIGKILL to the rest)");
			pidfd_send_signal(G.server_pidfd, SIGKILL, NULL, 0);
		}
	}
	if (G.ready_deadline && now >= G.ready_deadline)
		fail("ETIMEDOUT_SERVER", "the server did not answer FUSE_INIT within %lld ms",
		     S.ready_timeout_ms);
	if (G.term_deadline && now >= G.term_deadline) {
		logmsg("server still running: SIGTERM");
		pidfd_send_signal(G.server_pidfd, SIGTERM, NULL, 0);
		G.term_deadline = 0;
		G.kill_deadline = stop_end > now ? stop_end : now + KILL_GRACE_MS;
	}
	if (G.kill_deadline && now >= G.kill_deadline) {
		logmsg("server still running: SIGKILL");
		pidfd_send_signal(G.server_pidfd, SIGKILL, NULL, 0);
		G.kill_deadline = 0;
		abandon_deadline = now + REAP_BOUND_MS;
	}
	if (abandon_deadline && now >= abandon_deadline && G.server_pidfd >= 0) {
		/* its exit is stuck (closing a FUSE file of someone else's): the instance ends
		 * without it; whoever reaps orphans gets it once that file lets go */
		abandon_deadline = 0;
		close_fd(&G.server_pidfd);
		snprintf(G.reason, sizeof G.reason, "%s; the killed server did not exit",
			 S.mount_fuse ? "unmounted" : "stopped");
		finish(EXIT_ENDED);
	}
}

static int poll_timeout(void)
{
	int64_t next = 0, now = now_ms();
	int64_t d[] = {G.ready_deadline, G.term_deadline, G.kill_deadline, abandon_deadline, holder_check};
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		if (d[i] && (!next || d[i] < next))
			next = d[i];
	if (!next)
		return -1;
	return next <= now ? 0 : (int)(next - now);
}

static noreturn void event_loop(void)
{
	for (;;) {
		enum { P_SIG, P_NOTIFY, P_LOG, P_CHECKER, P_SERVER, P_UNMOUNT, P_N };
		struct pollfd p[P_N] = {
			[P_SIG] = {.fd = G.sigfd, .events = POLLIN},
			[P_NOTIFY] = {.fd = G.notify_fd, .events = POLLIN},
			[P_LOG] = {.fd = G.log_fd, .events = POLLIN},
			[P_CHECKER] = {.fd = G.checker_pidfd, .events = POLLIN},
			[P_SERVER] = {.fd = G.server_pidfd, .events = POLLIN},
			/* only once ready: the checker adds the watch, and a failed start reports itself */
			[P_UNMOUNT] = {.fd = G.phase == PHASE_RUNNING ? G.inotify_fd : -1, .events = POLLIN},
		};
		int n = poll(p, P_N, poll_timeout());
		if (n < 0 && errno != EINTR)
			die_errno("EINTERNAL", "poll");
		if (n <= 0) {
			on_timeouts();
			continue;
		}
		if (p[P_NOTIFY].revents & POLLIN)
			handle_notification();
		else if (p[P_NOTIFY].revents & (POLLHUP | POLLERR | POLLNVAL))
			close_fd(&G.notify_fd);  /* no task uses the filter any more */
		if (p[P_LOG].revents)
			pump_log();
		if (p[P_SIG].revents)
			on_signals();
		if (p[P_CHECKER].revents && G.checker_pidfd >= 0)
			on_checker_done();
		if (p[P_SERVER].revents && G.server_pidfd >= 0)
			on_server_exit();
		if (p[P_UNMOUNT].revents && G.inotify_fd >= 0)
			on_unmount_event();
		on_timeouts();
	}
}

/* ---------------------------------------------------------------------------------------- */

static int instance_main(bool pooled, char **cgroups, size_t ncgroups)
{
	/* Privileged until the end: nobody (not even root without CAP_SYS_PTRACE) may ptrace us,
	 * read our memory or environment, or take fds from /proc/PID/fd. Inherited by every
	 * child; the sandbox child sets it again after its credential change. */
	if (prctl(PR_SET_DUMPABLE, 0) < 0)
		die_errno("EINTERNAL", "prctl(PR_SET_DUMPABLE)");
	if (pooled) {
		join_cgroups_early(cgroups, ncgroups);
		/* Tell the broker we are in our cgroups: only now may it rename them and use us. */
		if (send(3, "joined", 6, MSG_NOSIGNAL) != 6)
			pool_leave(); /* the broker is gone already */
		step("pooled");
		spec_receive(3);
		if (S.ncgroups && !S.cgroup_joined)
			spec_error("a pooled launcher's spec must say cgroup_joined 1");
	} else {
		spec_read(3);
		/* it would skip joining them: the server would run outside its limits */
		if (S.cgroup_joined)
			spec_error("cgroup_joined 1 is for a pooled launcher only");
	}
	step("spec");
	read_start_time();
	rundir_open_and_lock();
	state_write();
	step("rundir");
	/* Fail closed: the server inherits our cgroups, so they must be the spec's, all of them. */
	if (pooled && S.cgroup_joined)
		check_cgroups_joined();
	launcher_setup_process();
	G.cap_last = read_cap_last_cap();

	if (S.fd_source >= 0) {
		int fl = fcntl(S.fd_source, F_GETFL);
		if (fl < 0)
			die_errno("EINTERNAL", "fcntl(source, F_GETFL)");
		G.source_accmode = fl & O_ACCMODE;
	}
	if (S.mount_given) {
		pin_caller_mntns();
		adopt_given_mount();
		logmsg("FUSE mount given: connection %u, mount id %llu in the caller's namespace", G.conn_minor, G.mnt_id_old);
	} else if (S.mount_fuse) {
		pin_caller_mntns();
		create_fuse_mount();
		logmsg("FUSE mount created");
		step("mount");
	}
	/* Precompiled programs (seccomp_program) need no libseccomp here. Otherwise: libseccomp
	 * probes the kernel once; do it here, not after the notify filter is on. */
	if (S.have_seccomp || (has_notifier() && !S.prog_notify.insns))
		seccomp_api_get();
	if (S.have_seccomp)
		G.policy = build_policy_filter();
	if (has_notifier()) {
		if (!S.prog_notify.insns)
			G.notifier = build_notify_filter();
		G.nr_open = seccomp_syscall_resolve_name("open");
		G.nr_openat = seccomp_syscall_resolve_name("openat");
		G.nr_openat2 = seccomp_syscall_resolve_name("openat2");
		G.nr_mount = seccomp_syscall_resolve_name("mount");
	}

	step("seccomp");
	start_sandbox();
	step("sandbox");
	logmsg("server started, pid %d", (int)G.server_pid);
	if (S.mount_fuse) {
		start_checker();
	} else {
		set_phase(PHASE_RUNNING);
		readiness("ready\t%d\t0", (int)G.server_pid);
	}
	event_loop();
}

/* ---------------------------------------------------------------------------------------- */
/* `fuse-svc-launcher detach`: fd 3 = the caller's pidfd, fd 4 = a descriptor of the root of a
 * mount in the caller's namespace. Detaches that mount there. The broker uses it for mounts
 * whose launcher is gone (killed with its container), which answer ENOTCONN and which the
 * caller cannot remove itself; it has already matched the descriptor to an instance record of
 * that caller. Like the instance's own detacher it never resolves a path in the caller's
 * namespace: the magic link is looked up in our /proc, opened before setns. */
static noreturn void die_plain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static noreturn void die_plain(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int detach_main(void)
{
	const int pidfd = 3, target = 4;
	int fddir, nsfd;
	char name[16];

	if (prctl(PR_SET_DUMPABLE, 0) < 0)
		die_plain("detach: prctl(PR_SET_DUMPABLE): %s", strerror(errno));
	fddir = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fddir < 0)
		die_plain("detach: open(/proc/self/fd): %s", strerror(errno));
	nsfd = ioctl(pidfd, PIDFD_GET_MNT_NAMESPACE, 0);
	if (nsfd < 0 && setns(pidfd, CLONE_NEWNS) < 0)
		die_plain("detach: setns(caller pidfd, CLONE_NEWNS): %s", strerror(errno));
	if (nsfd >= 0 && setns(nsfd, CLONE_NEWNS) < 0)
		die_plain("detach: setns(caller mount namespace): %s", strerror(errno));
	if (fchdir(fddir) < 0)
		die_plain("detach: fchdir(/proc/self/fd): %s", strerror(errno));
	snprintf(name, sizeof name, "%d", target);
	if (umount2(name, MNT_DETACH) < 0)
		die_plain("detach: umount2: %s", strerror(errno));
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* `fuse-svc-launcher compile-seccomp`: the filters of a definition, built once (issue 12 §2,
 * 16 §2). Reads seccomp_default/arch/rule (and source_sentinel, fuse_handover: they decide the
 * notify filter) on fd 3; writes the seccomp_program records an instance spec takes instead of
 * the rules, or one `error CODE message` line. Nothing in the filters depends on the instance. */

static void export_program(const char *kind, scmp_filter_ctx ctx)
{
	int fd = memfd_create("seccomp-bpf", MFD_CLOEXEC);
	struct stat st;
	unsigned char *bytes;
	char head[96], *hex;
	size_t len;
	int r;
	if (fd < 0)
		die_errno("EINTERNAL", "memfd_create");
	r = seccomp_export_bpf(ctx, fd);
	if (r < 0) {
		errno = -r;
		die_errno("ESANDBOX", "seccomp_export_bpf(%s)", kind);
	}
	if (fstat(fd, &st) < 0)
		die_errno("EINTERNAL", "fstat(memfd)");
	len = (size_t)st.st_size;
	if (len == 0 || len % sizeof(struct sock_filter) || len / sizeof(struct sock_filter) > BPF_MAXINSNS)
		fail("ESANDBOX", "seccomp_export_bpf(%s): %zu bytes is no loadable program", kind, len);
	bytes = xrealloc(NULL, len);
	if (pread(fd, bytes, len, 0) != (ssize_t)len)
		die_errno("EINTERNAL", "pread(memfd)");
	close(fd);
	hex = xrealloc(NULL, len * 2 + 2);
	for (size_t i = 0; i < len; i++) {
		static const char digits[] = "0123456789abcdef";
		hex[2 * i] = digits[bytes[i] >> 4];
		hex[2 * i + 1] = digits[bytes[i] & 15];
	}
	hex[2 * len] = '\n';
	snprintf(head, sizeof head, "seccomp_program\t%s\t%zu\t%016llx\t", kind, len / sizeof(struct sock_filter),
		 (unsigned long long)fnv1a64(bytes, len));
	if (!write_all(STDOUT_FILENO, head, strlen(head)) || !write_all(STDOUT_FILENO, hex, len * 2 + 1))
		die_errno("EINTERNAL", "write(stdout)");
	free(hex);
	free(bytes);
	seccomp_release(ctx);
}

static int compile_main(void)
{
	G.role = ROLE_COMPILER;
	/* the broker waits for our output: whatever happens, it ends (SIGALRM kills) */
	alarm(10);
	spec_read(3);
	seccomp_api_get();
	if (S.have_seccomp)
		export_program("policy", build_policy_filter());
	if (S.sentinel)
		export_program("notify", build_notify_filter());
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	launcher_t0_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	if (argc == 2 && !strcmp(argv[1], "instance"))
		return instance_main(false, NULL, 0);
	if (argc >= 3 && !strcmp(argv[1], "instance") && !strcmp(argv[2], "--pooled")) {
		/* instance --pooled [--cgroup DIR]... : wait for the spec on fd 3 (docs/launcher.md) */
		char **dirs = calloc((size_t)argc, sizeof *dirs);
		size_t n = 0;
		if (!dirs)
			return 1;
		for (int i = 3; i < argc; i += 2) {
			if (strcmp(argv[i], "--cgroup") || i + 1 >= argc || argv[i + 1][0] != '/') {
				fprintf(stderr, "usage: fuse-svc-launcher instance --pooled [--cgroup DIR]...\n");
				return 64;
			}
			dirs[n++] = argv[i + 1];
		}
		return instance_main(true, dirs, n);
	}
	if (argc >= 2 && !strcmp(argv[1], "init"))
		return init_main(argc - 1, argv + 1);
	if (argc == 2 && !strcmp(argv[1], "detach"))
		return detach_main();
	if (argc == 2 && !strcmp(argv[1], "compile-seccomp"))
		return compile_main();
	if (argc == 2 && !strcmp(argv[1], "version")) {
		printf("fuse-svc-launcher %s\n", LAUNCHER_VERSION);
		return 0;
	}
	fprintf(stderr, "usage: fuse-svc-launcher instance [--pooled [--cgroup DIR]...] | detach | compile-seccomp | init -- CMD... | version\n");
	return EXIT_SPEC;
}
