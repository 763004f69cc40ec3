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

int main(void)
{
	if (!inside_sandbox()) {
		fputs("sandbox-probe: refusing to run outside a fuse-svc sandbox (must be pid 1 with a one-line, non-root uid map)\n", stderr);
		return 2;
	}
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
	report("done", 1, 0, "");
	return 0;
}
