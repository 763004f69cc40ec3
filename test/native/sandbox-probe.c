/* sandbox-probe: test-only. Started through the launcher in place of a filesystem server, it
 * tries what a compromised server might try and prints one JSON line per attempt:
 *   {"check":"NAME","allowed":false,"errno":"EL3RST","detail":"..."}
 * The tests decide what must be refused; this program only reports what happened. */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>
#ifdef __x86_64__
#include <sys/io.h>
#endif
#include <limits.h>

static const char *errname(int e)
{
	switch (e) {
	case 0: return "";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EACCES: return "EACCES";
	case EROFS: return "EROFS";
	case EINVAL: return "EINVAL";
	case ENOSYS: return "ENOSYS";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EL3RST: return "EL3RST";
	case ENETUNREACH: return "ENETUNREACH";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ENOTDIR: return "ENOTDIR";
	case EEXIST: return "EEXIST";
	case ETXTBSY: return "ETXTBSY";
	default: return "other";
	}
}

static void report(const char *check, int ok, int err, const char *detail)
{
	printf("{\"check\":\"%s\",\"allowed\":%s,\"errno\":\"%s\",\"errno_num\":%d,\"detail\":\"%s\"}\n",
	       check, ok ? "true" : "false", ok ? "" : errname(err), ok ? 0 : err, detail ? detail : "");
	fflush(stdout);
}

/* Runs one attempt: rc < 0 means refused (errno tells why). */
#define TRY(name, expr, detail) do { errno = 0; long rc_ = (long)(expr); report(name, rc_ >= 0, errno, detail); } while (0)

static void list_dir(const char *check, const char *path)
{
	char buf[2048] = "";
	DIR *d = opendir(path);
	if (!d) { report(check, 0, errno, ""); return; }
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		if (strlen(buf) + strlen(e->d_name) + 2 >= sizeof buf) break;
		strcat(buf, e->d_name);
		strcat(buf, " ");
	}
	closedir(d);
	report(check, 1, 0, buf);
}

static void status_line(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	if (!f) { report(key, 0, errno, ""); return; }
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, key, strlen(key)) == 0 && line[strlen(key)] == ':') {
			char *v = line + strlen(key) + 1;
			while (*v == ' ' || *v == '\t') v++;
			v[strcspn(v, "\n")] = 0;
			for (char *p = v; *p; p++) if (*p == '\t') *p = ' ';
			report(key, 1, 0, v);
		}
	}
	fclose(f);
}

static void file_line(const char *check, const char *path)
{
	char buf[512] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) { report(check, 0, errno, ""); return; }
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	for (char *p = buf; *p; p++) if (*p == '\n' || *p == '\t' || *p == '"' || *p == '\\') *p = ' ';
	report(check, 1, 0, buf);
}

static void ptrace_child(void)
{
	pid_t c = fork();
	if (c < 0) { report("ptrace_attach", 0, errno, "fork failed"); return; }
	if (c == 0) { pause(); _exit(0); }
	errno = 0;
	long rc = ptrace(PTRACE_ATTACH, c, 0, 0);
	report("ptrace_attach", rc == 0, errno, "");
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
}

static void x86_32_syscall(void)
{
	/* A 32-bit syscall through int 0x80: SystemCallArchitectures=native must refuse it. */
	pid_t c = fork();
	if (c == 0) {
		long ret;
		__asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory"); /* i386 getpid */
		_exit(ret > 0 ? 0 : 3);
	}
	int st = 0;
	waitpid(c, &st, 0);
	if (WIFSIGNALED(st)) report("int80_syscall", 0, 0, "killed");
	else report("int80_syscall", WEXITSTATUS(st) == 0, WEXITSTATUS(st) == 3 ? EPERM : 0, "");
}

/* The probe tries to mount, set the hostname and the clock: outside a sandbox, as root, that
 * would change the host. It runs only as pid 1 of its own pid namespace, under a uid map of
 * one line that does not map root. */
static int inside_sandbox(void)
{
	char buf[256] = "";
	int fd = open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	unsigned inside, outside, count;
	if (sscanf(buf, "%u %u %u", &inside, &outside, &count) != 3) return 0;
	return getpid() == 1 && count == 1 && inside != 0 && outside != 0 && strchr(buf, '\n') == buf + n - 1;
}


/* Added for the unit directives (supervisor/units/directives.ts names what each proves). */

static void ns_link(const char *ns)
{
	char path[64], buf[128] = "", check[32];
	snprintf(path, sizeof path, "/proc/self/ns/%s", ns);
	snprintf(check, sizeof check, "ns_%s", ns);
	ssize_t n = readlink(path, buf, sizeof buf - 1);
	if (n < 0) { report(check, 0, errno, ""); return; }
	buf[n] = 0;
	report(check, 1, 0, buf);
}

/* "MOUNTPOINT:ro|rw ..." from /proc/self/mountinfo (field 5 and the per-mount options). */
static void mount_table(void)
{
	char line[1024], out[3000] = "";
	FILE *f = fopen("/proc/self/mountinfo", "r");
	if (!f) { report("mounts", 0, errno, ""); return; }
	while (fgets(line, sizeof line, f)) {
		char mp[512], opts[256];
		if (sscanf(line, "%*s %*s %*s %*s %511s %255s", mp, opts) != 2) continue;
		const char *flag = (!strncmp(opts, "ro", 2) && (opts[2] == ',' || opts[2] == 0)) ? "ro" : "rw";
		if (strlen(out) + strlen(mp) + 5 >= sizeof out) break;
		strcat(out, mp); strcat(out, ":"); strcat(out, flag); strcat(out, " ");
	}
	fclose(f);
	report("mounts", 1, 0, out);
}

static void open_block_devices(void)
{
	static const char *const devs[] = {"/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/loop0", "/dev/mem", "/dev/kmem", "/dev/port"};
	int last = ENOENT;
	for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
		int fd = open(devs[i], O_RDONLY | O_CLOEXEC);
		if (fd >= 0) { close(fd); report("open_block", 1, 0, devs[i]); return; }
		last = errno;
	}
	report("open_block", 0, last, "sda vda nvme0n1 loop0 mem kmem port");
}

static void mprotect_exec(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) { report("mprotect_x", 0, errno, "mmap RW failed"); return; }
	errno = 0;
	int rc = mprotect(p, 4096, PROT_READ | PROT_EXEC);
	report("mprotect_x", rc == 0, errno, "");
	munmap(p, 4096);
}

static void limits(void)
{
	static const struct { const char *name; int res; } lim[] = {
		{"AS", RLIMIT_AS}, {"CORE", RLIMIT_CORE}, {"CPU", RLIMIT_CPU}, {"DATA", RLIMIT_DATA},
		{"FSIZE", RLIMIT_FSIZE}, {"LOCKS", RLIMIT_LOCKS}, {"MEMLOCK", RLIMIT_MEMLOCK},
		{"MSGQUEUE", RLIMIT_MSGQUEUE}, {"NICE", RLIMIT_NICE}, {"NOFILE", RLIMIT_NOFILE},
		{"NPROC", RLIMIT_NPROC}, {"RSS", RLIMIT_RSS}, {"RTPRIO", RLIMIT_RTPRIO},
		{"RTTIME", RLIMIT_RTTIME}, {"SIGPENDING", RLIMIT_SIGPENDING}, {"STACK", RLIMIT_STACK},
	};
	for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
		struct rlimit r;
		char check[32], v[64], s[24], h[24];
		snprintf(check, sizeof check, "limit_%s", lim[i].name);
		if (getrlimit(lim[i].res, &r) < 0) { report(check, 0, errno, ""); continue; }
		if (r.rlim_cur == RLIM_INFINITY) strcpy(s, "inf"); else snprintf(s, sizeof s, "%llu", (unsigned long long)r.rlim_cur);
		if (r.rlim_max == RLIM_INFINITY) strcpy(h, "inf"); else snprintf(h, sizeof h, "%llu", (unsigned long long)r.rlim_max);
		snprintf(v, sizeof v, "%s %s", s, h);
		report(check, 1, 0, v);
	}
}

static void unit_checks(const char *marker)
{
	static const char *const nss[] = {"user", "mnt", "pid", "net", "uts", "ipc", "cgroup"};
	for (size_t i = 0; i < sizeof nss / sizeof nss[0]; i++) ns_link(nss[i]);
	mount_table();
	status_line("Umask");
	{
		char cwd[PATH_MAX];
		if (getcwd(cwd, sizeof cwd)) report("cwd", 1, 0, cwd);
		else report("cwd", 0, errno, "");
	}
	list_dir("ls_root_home", "/root");
	list_dir("ls_run_user", "/run/user");
	list_dir("ls_sys", "/sys");
	list_dir("ls_lib_modules", "/usr/lib/modules");
	TRY("proc_kcore", open("/proc/kcore", O_RDONLY | O_CLOEXEC), "");
	if (marker) {
		struct stat st;
		TRY("tmp_marker", stat(marker, &st), marker);
	}
	open_block_devices();
	TRY("mknod_blk", mknod("/tmp/probe-blk", S_IFBLK | 0600, makedev(7, 0)), "");
	mprotect_exec();
#ifdef __x86_64__
	TRY("ioperm", ioperm(0x80, 1, 1), "");
#endif
	TRY("setpriority", setpriority(PRIO_PROCESS, 0, 5), "");
	{
		cpu_set_t set;
		CPU_ZERO(&set);
		sched_getaffinity(0, sizeof set, &set);
		TRY("sched_setaffinity", sched_setaffinity(0, sizeof set, &set), "");
	}
	limits();
	{
		char v[32];
		snprintf(v, sizeof v, "%d", (int)getpid());
		report("getpid", 1, 0, v);
		const char *lp = getenv("LISTEN_PID"), *lf = getenv("LISTEN_FDS"), *ln = getenv("LISTEN_FDNAMES");
		char e[160];
		snprintf(e, sizeof e, "LISTEN_PID=%s LISTEN_FDS=%s LISTEN_FDNAMES=%s", lp ? lp : "-", lf ? lf : "-", ln ? ln : "-");
		report("listen_env", 1, 0, e);
	}
}

/* Which fds the sandbox gave us, "N=target" each (the listing's own dir fd excluded). */
static void fd_targets(const char *check)
{
	char buf[2048] = "", link[PATH_MAX], path[300];
	DIR *d = opendir("/proc/self/fd");
	if (!d) { report(check, 0, errno, ""); return; }
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
		snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, link, sizeof link - 1);
		link[n < 0 ? 0 : n] = '\0';
		for (char *c = link; *c; c++)
			if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '_';
		if (strlen(buf) + strlen(e->d_name) + strlen(link) + 3 >= sizeof buf) break;
		strcat(buf, e->d_name);
		strcat(buf, "=");
		strcat(buf, link);
		strcat(buf, " ");
	}
	closedir(d);
	report(check, 1, 0, buf);
}

/* CVE-2019-5736 class: nothing that runs (or will run) on the host side may be reopened for
 * writing from inside: our own exe, the fusermount stand-in, the server, the dynamic loader. */
static void reopen_binaries(void)
{
	TRY("reopen_exe_wronly", open("/proc/self/exe", O_WRONLY | O_CLOEXEC), "");
	TRY("reopen_exe_rdwr", open("/proc/self/exe", O_RDWR | O_CLOEXEC), "");
	TRY("reopen_fusermount_wronly", open("/bin/fusermount", O_WRONLY | O_CLOEXEC), "");
	TRY("reopen_fusermount3_wronly", open("/bin/fusermount3", O_WRONLY | O_CLOEXEC), "");
	TRY("reopen_fuse2fs_wronly", open("/usr/bin/fuse2fs", O_WRONLY | O_CLOEXEC), "");
	TRY("reopen_ldso_wronly", open("/lib64/ld-linux-x86-64.so.2", O_WRONLY | O_CLOEXEC), "");
	TRY("reopen_libc_wronly", open("/usr/lib/x86_64-linux-gnu/libc.so.6", O_WRONLY | O_CLOEXEC), "");
}

int main(int argc, char **argv)
{
	if (!inside_sandbox()) {
		fputs("sandbox-probe: refusing to run outside a fuse-svc sandbox (must be pid 1 with a one-line, non-root uid map)\n", stderr);
		return 2;
	}
	fd_targets("fds_at_start");
	status_line("Uid");
	status_line("Gid");
	status_line("CapInh");
	status_line("CapPrm");
	status_line("CapEff");
	status_line("CapBnd");
	status_line("CapAmb");
	status_line("NoNewPrivs");
	status_line("Seccomp");
	file_line("uid_map", "/proc/self/uid_map");
	file_line("oom_score_adj", "/proc/self/oom_score_adj");
	TRY("socket_inet", socket(AF_INET, SOCK_STREAM, 0), "");
	TRY("socket_inet6", socket(AF_INET6, SOCK_DGRAM, 0), "");
	TRY("socket_netlink", socket(AF_NETLINK, SOCK_RAW, 0), "");
	TRY("socket_unix", socket(AF_UNIX, SOCK_STREAM, 0), "");
	TRY("mount_tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL), "");
	ptrace_child();
	TRY("open_etc_shadow", open("/etc/shadow", O_RDONLY), "");
	TRY("unshare_user", unshare(CLONE_NEWUSER), "");
	TRY("unshare_mnt", unshare(CLONE_NEWNS), "");
	TRY("setuid_0", setuid(0), "");
	TRY("write_usr", open("/usr/fuse-svc-probe", O_CREAT | O_WRONLY, 0600), "");
	TRY("write_root", mkdir("/fuse-svc-probe", 0700), "");
	TRY("write_etc", open("/etc/fuse-svc-probe", O_CREAT | O_WRONLY, 0600), "");
	TRY("write_tmp", open("/tmp/probe-file", O_CREAT | O_WRONLY | O_CLOEXEC, 0666), "");
	{
		struct stat st;
		if (stat("/tmp/probe-file", &st) == 0) {
			char m[16];
			snprintf(m, sizeof m, "%04o", st.st_mode & 07777);
			report("tmp_file_mode", 1, 0, m);
		}
	}
	TRY("chmod_suid", chmod("/tmp/probe-file", 04755), "");
	TRY("mmap_wx", (long)mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == (long)MAP_FAILED ? -1 : 0, "");
	TRY("personality", personality(PER_LINUX32) == -1 ? -1 : (personality(PER_LINUX), 0), "");
	{
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		TRY("clock_settime", clock_settime(CLOCK_REALTIME, &ts), "");
	}
	TRY("sethostname", sethostname("probe", 5), "");
	{
		struct sched_param sp = { .sched_priority = 1 };
		TRY("sched_fifo", sched_setscheduler(0, SCHED_FIFO, &sp), "");
	}
	TRY("init_module", syscall(SYS_init_module, NULL, 0, ""), "");
	TRY("syslog", syscall(SYS_syslog, 3 /* READ_ALL */, NULL, 0), "");
	TRY("open_dev_kmsg", open("/dev/kmsg", O_RDONLY), "");
	TRY("reboot", syscall(SYS_reboot, 0, 0, 0, NULL), "");
	TRY("swapon", syscall(SYS_swapon, "/tmp/x", 0), "");
	TRY("write_proc_sys", open("/proc/sys/kernel/hostname", O_WRONLY), "");
	TRY("write_cgroup", open("/sys/fs/cgroup/cgroup.procs", O_WRONLY), "");
	x86_32_syscall();
	list_dir("ls_root", "/");
	list_dir("ls_dev", "/dev");
	list_dir("ls_proc", "/proc");
	list_dir("ls_home", "/home");
	list_dir("ls_tmp", "/tmp");
	file_line("net_dev", "/proc/self/net/dev");
	{
		char h[256] = "";
		gethostname(h, sizeof h);
		report("hostname", 1, 0, h);
	}
	reopen_binaries();
	unit_checks(argc > 1 ? argv[1] : NULL);
	report("done", 1, 0, "");
	return 0;
}
