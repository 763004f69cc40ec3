/* seccomp-load: test-only. Reads the launcher's seccomp records (docs/launcher.md) on stdin,
 * builds the filter with libseccomp exactly as the records say, and exports its BPF to /dev/null.
 * Each further seccomp_default record starts one more filter (the tests use that to rebuild
 * systemd's one-filter-per-directive arrangement); they are loaded in the order given.
 * Exits 1 if any record is malformed or any rule cannot be added; a syscall name libseccomp does
 * not know is skipped with one line on stderr, as the launcher does. Other records are ignored.
 *
 *   seccomp-load            build + export BPF (to /dev/null); a summary line on stderr
 *   seccomp-load --pfc      also print libseccomp's pseudo filter code on stdout
 *   seccomp-load --probe    then load the filter into this process and try a fixed set of
 *                           syscalls; one line per probe on stdout: NAME<TAB>RESULT, RESULT being
 *                           0 (success), an errno number, or sig:N (the probe child died of N).
 *
 * Build: cc -o seccomp-load test/native/seccomp-load.c -lseccomp */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	if (!*s || *s == '-')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static int parse_action(const char *a, const char *errno_s, uint32_t *out)
{
	uint64_t e = 0;
	if (!strcmp(a, "allow")) *out = SCMP_ACT_ALLOW;
	else if (!strcmp(a, "kill_process")) *out = SCMP_ACT_KILL_PROCESS;
	else if (!strcmp(a, "kill_thread")) *out = SCMP_ACT_KILL_THREAD;
	else if (!strcmp(a, "trap")) *out = SCMP_ACT_TRAP;
	else if (!strcmp(a, "log")) *out = SCMP_ACT_LOG;
	else if (!strcmp(a, "errno")) {
		if (!errno_s || parse_u64(errno_s, &e) || e > 4095)
			return -1;
		*out = SCMP_ACT_ERRNO((uint32_t)e);
	} else
		return -1;
	return 0;
}

static int parse_op(const char *s, enum scmp_compare *op)
{
	static const struct { const char *n; enum scmp_compare op; } ops[] = {
		{ "ne", SCMP_CMP_NE }, { "lt", SCMP_CMP_LT }, { "le", SCMP_CMP_LE }, { "eq", SCMP_CMP_EQ },
		{ "ge", SCMP_CMP_GE }, { "gt", SCMP_CMP_GT }, { "masked_eq", SCMP_CMP_MASKED_EQ },
	};
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (!strcmp(s, ops[i].n)) {
			*op = ops[i].op;
			return 0;
		}
	return -1;
}

/* IDX:OP:VALUE[:VALUE2] */
static int parse_arg(char *s, struct scmp_arg_cmp *c)
{
	char *f[5];
	int n = 0;
	char *save = NULL;
	for (char *t = strtok_r(s, ":", &save); t && n < 5; t = strtok_r(NULL, ":", &save))
		f[n++] = t;
	if (n < 3 || n > 4)
		return -1;
	uint64_t idx, a, b = 0;
	if (parse_u64(f[0], &idx) || idx > 5 || parse_op(f[1], &c->op) || parse_u64(f[2], &a))
		return -1;
	if (n == 4 && parse_u64(f[3], &b))
		return -1;
	if (c->op == SCMP_CMP_MASKED_EQ && n != 4)
		return -1;
	c->arg = (unsigned)idx;
	c->datum_a = a;
	c->datum_b = b;
	return 0;
}

static long probe_child(void (*fn)(void))
{
	pid_t p = fork();
	if (p < 0)
		return -errno;
	if (p == 0) {
		fn();
		_exit(0);
	}
	int st;
	if (waitpid(p, &st, 0) < 0)
		return -errno;
	if (WIFSIGNALED(st))
		return 1000 + WTERMSIG(st);
	return WEXITSTATUS(st) ? -WEXITSTATUS(st) : 0;
}

static void x32_getpid(void) { syscall(0x40000000 | 39); }
static void i386_getpid(void)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
	(void)r;
}

static void report(const char *name, long r)
{
	char buf[128];
	int n;
	if (r >= 1000)
		n = snprintf(buf, sizeof buf, "%s\tsig:%ld\n", name, r - 1000);
	else
		n = snprintf(buf, sizeof buf, "%s\t%ld\n", name, r < 0 ? -r : 0);
	if (write(1, buf, (size_t)n) < 0)
		_exit(3);
}

/* raw syscall: 0 or -errno */
#define RAW(...) (syscall(__VA_ARGS__) < 0 ? -(long)errno : 0L)

static void run_probes(const char *file, const char *newfile)
{
	long r;
	void *p;

	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	report("mmap_rwx", p == MAP_FAILED ? -errno : 0);
	p = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	report("mmap_rx", p == MAP_FAILED ? -errno : 0);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	report("mmap_rw", p == MAP_FAILED ? -errno : 0);
	if (p != MAP_FAILED) {
		report("mprotect_rx", mprotect(p, 4096, PROT_READ | PROT_EXEC) ? -errno : 0);
		report("mprotect_r", mprotect(p, 4096, PROT_READ) ? -errno : 0);
	}
	report("personality_linux32", RAW(SYS_personality, 0x0008UL));
	report("personality_query", RAW(SYS_personality, 0xffffffffUL));
	report("personality_linux", RAW(SYS_personality, 0UL));
	r = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
	report("socket_inet", r < 0 ? -errno : 0);
	r = syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 0);
	report("socket_netlink", r < 0 ? -errno : 0);
	r = syscall(SYS_socket, AF_UNSPEC, SOCK_STREAM, 0);
	report("socket_unspec", r < 0 ? -errno : 0);
	r = syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
	report("socket_unix", r < 0 ? -errno : 0);
	int sv[2];
	report("socketpair_unix", socketpair(AF_UNIX, SOCK_STREAM, 0, sv) ? -errno : 0);
	report("unshare_user", RAW(SYS_unshare, (long)CLONE_NEWUSER));
	report("unshare_net", RAW(SYS_unshare, (long)CLONE_NEWNET));
	report("unshare_files", RAW(SYS_unshare, (long)CLONE_FILES));
	report("clone3", RAW(435, 0L, 0L));
	report("setns", RAW(SYS_setns, -1L, 0L));
	report("mount", RAW(SYS_mount, "none", "/nonexistent", "tmpfs", 0L, 0L));
	report("umount2", RAW(SYS_umount2, "/nonexistent", 0L));
	report("fsopen", RAW(430, "tmpfs", 0L));
	report("pivot_root", RAW(SYS_pivot_root, "/nonexistent", "/nonexistent"));
	report("reboot", RAW(SYS_reboot, 0L, 0L, 0L, 0L));
	report("swapon", RAW(SYS_swapon, "/nonexistent", 0L));
	report("setpriority", RAW(SYS_setpriority, 0L, 0L, 0L));
	report("sched_setscheduler_fifo", RAW(SYS_sched_setscheduler, 0L, 1L, 0L));
	report("clock_settime", RAW(SYS_clock_settime, 0L, 0L)); /* NULL: EFAULT if allowed */
	report("sethostname", RAW(SYS_sethostname, 0L, 1L)); /* NULL: EFAULT if allowed */
	report("syslog", RAW(SYS_syslog, 3L, 0L, 0L));
	report("ptrace", RAW(SYS_ptrace, 3L /* PTRACE_PEEKUSER */, (long)getpid(), 0L, 0L)); /* ESRCH if allowed */
	report("init_module", RAW(SYS_init_module, 0L, 0L, ""));
	report("setuid", RAW(SYS_setuid, (long)getuid()));
	report("iopl", RAW(SYS_iopl, 0L));
	report("modify_ldt", RAW(SYS_modify_ldt, 0L, 0L, 0L));
	report("pkey_mprotect", RAW(SYS_pkey_mprotect, 0L, 0L, 0L, -1L));
	report("mbind", RAW(SYS_mbind, 0L, 0L, 0L, 0L, 0L, 0L));
	cpu_set_t set;
	CPU_ZERO(&set);
	report("sched_getaffinity", RAW(SYS_sched_getaffinity, 0L, sizeof set, &set));
	report("sched_setaffinity", RAW(SYS_sched_setaffinity, 0L, sizeof set, &set));
	report("chmod_suid", RAW(SYS_chmod, file, 04755L));
	report("chmod_sgid", RAW(SYS_chmod, file, 02755L));
	report("chmod_plain", RAW(SYS_chmod, file, 0600L));
	report("fchmodat_suid", RAW(SYS_fchmodat, (long)AT_FDCWD, file, 04755L));
	report("fchmodat_plain", RAW(SYS_fchmodat, (long)AT_FDCWD, file, 0640L));
	r = syscall(SYS_openat, (long)AT_FDCWD, newfile, (long)(O_CREAT | O_WRONLY), 04755L);
	report("openat_creat_suid", r < 0 ? -errno : 0);
	r = syscall(SYS_openat, (long)AT_FDCWD, newfile, (long)(O_CREAT | O_WRONLY), 0600L);
	report("openat_creat_plain", r < 0 ? -errno : 0);
	r = syscall(SYS_openat, (long)AT_FDCWD, file, (long)O_RDONLY, 04755L);
	report("openat_nocreat_suidmode", r < 0 ? -errno : 0);
	r = syscall(SYS_open, newfile, (long)(O_CREAT | O_WRONLY), 02755L);
	report("open_creat_sgid", r < 0 ? -errno : 0);
	report("openat2", RAW(437, (long)AT_FDCWD, file, 0L, 0L));
	report("getpid", RAW(SYS_getpid));
	report("x32_getpid", probe_child(x32_getpid));
	report("i386_int80_getpid", probe_child(i386_getpid));
}

int main(int argc, char **argv)
{
	int pfc = 0, probe = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--pfc")) pfc = 1;
		else if (!strcmp(argv[i], "--probe")) probe = 1;
		else {
			fprintf(stderr, "usage: seccomp-load [--pfc] [--probe] < records\n");
			return 2;
		}
	}

	scmp_filter_ctx ctxs[32];
	int nctx = 0;
	scmp_filter_ctx ctx = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	unsigned lineno = 0, added = 0, skipped = 0, failed = 0;
	while ((len = getline(&line, &cap, stdin)) >= 0) {
		lineno++;
		if (len && line[len - 1] == '\n')
			line[--len] = 0;
		char *f[16];
		int n = 0;
		char *s = line, *tab;
		while (n < 16) {
			f[n++] = s;
			if (!(tab = strchr(s, '\t')))
				break;
			*tab = 0;
			s = tab + 1;
		}
		if (n == 16 && strchr(s, '\t')) {
			fprintf(stderr, "seccomp-load: line %u: too many fields\n", lineno);
			return 1;
		}
		if (!strcmp(f[0], "seccomp_default")) {
			uint32_t act;
			if (nctx == 32 || n < 2 || n > 3 || parse_action(f[1], n == 3 ? f[2] : NULL, &act)) {
				fprintf(stderr, "seccomp-load: line %u: bad seccomp_default\n", lineno);
				return 1;
			}
			if (!(ctx = seccomp_init(act))) {
				fprintf(stderr, "seccomp-load: seccomp_init failed\n");
				return 1;
			}
			ctxs[nctx++] = ctx;
		} else if (!strcmp(f[0], "seccomp_arch")) {
			if (!ctx || n != 2) {
				fprintf(stderr, "seccomp-load: line %u: bad seccomp_arch (or before seccomp_default)\n", lineno);
				return 1;
			}
			if (strcmp(f[1], "native")) {
				uint32_t arch = seccomp_arch_resolve_name(f[1]);
				if (!arch) {
					fprintf(stderr, "seccomp-load: line %u: unknown architecture %s\n", lineno, f[1]);
					return 1;
				}
				int r = seccomp_arch_add(ctx, arch);
				if (r < 0 && r != -EEXIST) {
					fprintf(stderr, "seccomp-load: line %u: seccomp_arch_add(%s): %s\n", lineno, f[1], strerror(-r));
					return 1;
				}
			}
		} else if (!strcmp(f[0], "seccomp_rule")) {
			uint32_t act;
			struct scmp_arg_cmp args[6];
			if (!ctx || n < 4 || n > 10 || parse_action(f[1], f[2], &act)) {
				fprintf(stderr, "seccomp-load: line %u: bad seccomp_rule (or before seccomp_default)\n", lineno);
				return 1;
			}
			for (int i = 4; i < n; i++) {
				if (parse_arg(f[i], &args[i - 4])) {
					fprintf(stderr, "seccomp-load: line %u: bad argument comparison\n", lineno);
					return 1;
				}
			}
			int nr = seccomp_syscall_resolve_name(f[3]);
			if (nr == __NR_SCMP_ERROR) {
				fprintf(stderr, "seccomp-load: skipping %s: unknown to libseccomp\n", f[3]);
				skipped++;
				continue;
			}
			int r = seccomp_rule_add_array(ctx, act, nr, (unsigned)(n - 4), args);
			if (r < 0) {
				fprintf(stderr, "seccomp-load: line %u: seccomp_rule_add_array(%s): %s\n", lineno, f[3], strerror(-r));
				failed++;
				continue;
			}
			added++;
		}
	}
	free(line);
	if (!ctx) {
		fprintf(stderr, "seccomp-load: no seccomp_default record\n");
		return 1;
	}
	fprintf(stderr, "seccomp-load: %u rules added, %u skipped, %u failed\n", added, skipped, failed);
	if (failed)
		return 1;
	int r;
	for (int i = 0; i < nctx; i++) {
		int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
		r = seccomp_export_bpf(ctxs[i], devnull);
		close(devnull);
		if (r < 0) {
			fprintf(stderr, "seccomp-load: seccomp_export_bpf: %s\n", strerror(-r));
			return 1;
		}
		if (pfc) {
			fflush(stdout);
			if (seccomp_export_pfc(ctxs[i], 1) < 0)
				return 1;
		}
	}
	if (probe) {
		char file[] = "/tmp/seccomp-load-XXXXXX";
		int fd = mkstemp(file);
		if (fd < 0) {
			perror("mkstemp");
			return 1;
		}
		close(fd);
		char newfile[64];
		snprintf(newfile, sizeof newfile, "%s.new", file);
		fflush(stdout);
		/* The probes are chosen to be harmless when allowed (bad pointers, missing paths); as
		 * root, also keep them away from the host's UTS and mount namespaces. */
		if (unshare(CLONE_NEWUTS | CLONE_NEWNS) == 0)
			(void)mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
		/* A kernel built or booted without IA-32 emulation answers int 0x80 with SIGSEGV
		 * before seccomp sees it; say what this kernel does unfiltered so the caller can
		 * tell "the filter kills it" from "the kernel never runs it". */
		report("i386_int80_unfiltered", probe_child(i386_getpid));
		for (int i = 0; i < nctx; i++) {
			r = seccomp_load(ctxs[i]);
			if (r < 0) {
				fprintf(stderr, "seccomp-load: seccomp_load: %s\n", strerror(-r));
				unlink(file);
				return 1;
			}
		}
		run_probes(file, newfile);
		unlink(newfile);
		unlink(file);
	}
	for (int i = 0; i < nctx; i++)
		seccomp_release(ctxs[i]);
	return 0;
}
