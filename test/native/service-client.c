/* service-client: test-only. The helper side of libfuse's contained-service protocol (what
 * fuservicemount3 does), written from the protocol facts, without libfuse:
 *
 *   service-client [--hold-ms N] [--no-umount] [OPTIONS] SOCKET SUBTYPE SOURCE MOUNTPOINT
 *   service-client --hello-only SOCKET
 *
 * Installed setuid root (as fuservicemount3 is) it acts for its real uid: files the server asks
 * for and /dev/fuse are opened with that fsuid, and the mount's user_id=/group_id= are the real
 * ids. OPTIONS (for upstream-socket tests, some hostile on purpose):
 *   -o OPTS            appended to the argv sent (-o OPTS)
 *   --just-mount       after BYEE print `bye N` and exit (0 if N is 0), leaving the mount
 *   --fusedev PATH     send PATH (opened O_RDWR) as fusedev instead of /dev/fuse
 *   --argv-file PATH   send PATH as argv instead of a memfd
 *   --answer-open PATH answer OPEN with a descriptor of PATH instead of the asked path
 *   --hello-flags N    HELLO flags (1 ALLOW_OTHER, 2 FUSEBLK: claims, never proof)
 *   --raw N            send one packet of N bytes (SAFT then zeros) instead of HELLO
 *   --quit-at MAGIC    exit 4 as soon as the server sends a MAGIC packet (disconnect mid-way)
 *   --user-id N        mount with user_id=N instead of the real uid
 *   --drop-nosuid      mount without MOUNT_ATTR_NOSUID
 *   --bind-also DIR    after the mount, bind it onto DIR too (a second mount of the connection)
 * A PATH of the form @N (for --fusedev, --argv-file, --answer-open) is descriptor N, inherited
 * open: a file on the caller's own FUSE server that it has stopped cannot be opened any more,
 * but one opened before the stop can still be sent.
 *
 * Connects to SOCKET (SOCK_SEQPACKET), HELLO; sends the `argv` memfd (SUBTYPE SOURCE
 * MOUNTPOINT) and an open /dev/fuse; answers the server's OPEN by opening the path itself (its
 * own permissions); on TYPE/NAME/MNTP/OPTS/DOIT it builds the mount itself with fsopen/fsconfig/
 * fsmount and move_mount onto MOUNTPOINT (which must be the literal argv MOUNTPOINT), then
 * closes its copy of the FUSE fd; BYEE ends the conversation. Then it stats MOUNTPOINT/hello,
 * reads it, prints one line `ok size=N content=...`, waits --hold-ms, and detaches the mount
 * (unless --no-umount). Run it as root in a private mount namespace.
 * --hello-only: connect, HELLO, print `hello ok` once the server answered, then wait until
 * stdin reaches EOF (holds one live instance; used to test connection limits).
 *
 * Exit: 0 ok; 2 no service (ENOENT/ECONNREFUSED at connect); 3 the service closed the
 * connection before answering HELLO (refused); 1 anything else. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "service-protocol.h"

static int sock = -1, devfuse = -1, fsfd = -1, mntpt_fd = -1;
static const char *mountpoint;
static char subtype[64];
static int mounted, hello_answered;
static long user_id = -1;
static int drop_nosuid;
static const char *bind_also, *answer_open;

/* As the caller: a setuid-root helper opens with its real uid's rights (fsuid), as
 * fuservicemount3 does; a plain one is the caller already. */
static int open_as_caller(const char *path, int flags)
{
	if (path[0] == '@') {
		char *end;
		long n = strtol(path + 1, &end, 10);
		if (*end || n < 0 || n > 1023) {
			errno = EBADF;
			return -1;
		}
		return fcntl((int)n, F_DUPFD_CLOEXEC, 3);
	}
	int setuid_helper = getuid() != geteuid();
	if (setuid_helper) {
		setfsgid(getgid());
		setfsuid(getuid());
	}
	int fd = open(path, flags);
	int e = errno;
	if (setuid_helper) {
		setfsuid(geteuid());
		setfsgid(getegid());
	}
	errno = e;
	return fd;
}

static void put32(unsigned char *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }
static uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return ntohs(v); }

static void fail(const char *what)
{
	fprintf(stderr, "service-client: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void send_with_fd(const void *buf, size_t len, int fd)
{
	union { struct cmsghdr h; char c[CMSG_SPACE(sizeof(int))]; } cm;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&cm, 0, sizeof cm);
		msg.msg_control = cm.c;
		msg.msg_controllen = sizeof cm.c;
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	if (sendmsg(sock, &msg, MSG_EOR | MSG_NOSIGNAL) != (ssize_t)len) {
		if (!hello_answered && (errno == EPIPE || errno == ECONNRESET)) {
			fprintf(stderr, "service-client: refused: the service closed the connection before HELLO was answered\n");
			exit(3);
		}
		fail("sendmsg");
	}
}

static void send_file(const char *name, int fd, uint32_t error)
{
	unsigned char p[MAX_PACKET];
	size_t l = strlen(name);
	put32(p, FILE_REPLY);
	put32(p + 4, error);
	memcpy(p + 8, name, l + 1);
	send_with_fd(p, 8 + l + 1, error ? -1 : fd);
}

static void send_repl(uint32_t error)
{
	unsigned char p[8];
	put32(p, SIMPLE_REPLY);
	put32(p + 4, error);
	send_with_fd(p, 8, -1);
}

static int set_string(const char *key, const char *value)
{
	return fsconfig(fsfd, FSCONFIG_SET_STRING, key, value, 0) < 0 ? errno : 0;
}

/* DOIT: the mount itself, as fuservicemount3 does it (no fallback to mount(2) here). */
static int do_mount(uint32_t ms_flags)
{
	char tmp[64];
	int e, mfd;
	if (fsfd < 0 || mntpt_fd < 0)
		return EINVAL;
	snprintf(tmp, sizeof tmp, "%d", devfuse);
	if ((e = set_string("fd", tmp)))
		return e;
	if ((e = set_string("rootmode", "40000")))
		return e;
	snprintf(tmp, sizeof tmp, "%ld", user_id >= 0 ? user_id : (long)getuid());
	if ((e = set_string("user_id", tmp)))
		return e;
	snprintf(tmp, sizeof tmp, "%u", (unsigned)getgid());
	if ((e = set_string("group_id", tmp)))
		return e;
	if ((e = set_string("subtype", subtype)))
		return e;
	if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		return errno;
	unsigned attrs = (drop_nosuid ? 0 : MOUNT_ATTR_NOSUID) | MOUNT_ATTR_NODEV;
	if (ms_flags & MS_RDONLY)
		attrs |= MOUNT_ATTR_RDONLY;
	if ((mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, attrs)) < 0)
		return errno;
	if (move_mount(mfd, "", mntpt_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
		e = errno;
		close(mfd);
		return e;
	}
	close(mfd);
	if (bind_also && mount(mountpoint, bind_also, NULL, MS_BIND, NULL) < 0)
		return errno;
	/* Our copy of the FUSE fd must go: a dead server then leaves ENOTCONN, not a hang. */
	close(devfuse);
	devfuse = -1;
	mounted = 1;
	return 0;
}

int main(int argc, char **argv)
{
	long hold_ms = 0, raw = -1;
	int no_umount = 0, hello_only = 0, just_mount = 0, i = 1;
	const char *opts = NULL, *fusedev_path = "/dev/fuse", *argv_file = NULL, *quit_at = NULL;
	uint32_t hello_flags = 0;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--hold-ms") && i + 1 < argc)
			hold_ms = atol(argv[++i]);
		else if (!strcmp(argv[i], "-o") && i + 1 < argc)
			opts = argv[++i];
		else if (!strcmp(argv[i], "--just-mount"))
			just_mount = 1;
		else if (!strcmp(argv[i], "--fusedev") && i + 1 < argc)
			fusedev_path = argv[++i];
		else if (!strcmp(argv[i], "--argv-file") && i + 1 < argc)
			argv_file = argv[++i];
		else if (!strcmp(argv[i], "--answer-open") && i + 1 < argc)
			answer_open = argv[++i];
		else if (!strcmp(argv[i], "--hello-flags") && i + 1 < argc)
			hello_flags = (uint32_t)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--raw") && i + 1 < argc)
			raw = atol(argv[++i]);
		else if (!strcmp(argv[i], "--quit-at") && i + 1 < argc)
			quit_at = argv[++i];
		else if (!strcmp(argv[i], "--user-id") && i + 1 < argc)
			user_id = atol(argv[++i]);
		else if (!strcmp(argv[i], "--drop-nosuid"))
			drop_nosuid = 1;
		else if (!strcmp(argv[i], "--bind-also") && i + 1 < argc)
			bind_also = argv[++i];
		else if (!strcmp(argv[i], "--no-umount"))
			no_umount = 1;
		else if (!strcmp(argv[i], "--hello-only"))
			hello_only = 1;
		else
			break;
	}
	if (hello_only ? argc - i != 1 : argc - i != 4) {
		fprintf(stderr, "usage: service-client [--hold-ms N] [--no-umount] SOCKET SUBTYPE SOURCE MOUNTPOINT\n");
		return 1;
	}
	const char *path = argv[i], *source = hello_only ? "" : argv[i + 2];
	snprintf(subtype, sizeof subtype, "%s", hello_only ? "" : argv[i + 1]);
	mountpoint = hello_only ? "" : argv[i + 3];

	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path) {
		fprintf(stderr, "service-client: socket path too long\n");
		return 1;
	}
	strcpy(sa.sun_path, path);
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0)
		fail("socket");
	if (connect(sock, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		fprintf(stderr, "service-client: connect %s: %s\n", path, strerror(e));
		return e == ENOENT || e == ECONNREFUSED ? 2 : 1;
	}
	int zero = 0;
	(void)setsockopt(sock, SOL_SOCKET, SO_PASSRIGHTS, &zero, sizeof zero);

	/* HELLO */
	static unsigned char p[2 * MAX_PACKET];
	if (raw >= 0) {
		/* a malformed first packet: what does the service do with it? */
		if ((size_t)raw > sizeof p)
			raw = sizeof p;
		memset(p, 0, (size_t)raw);
		if (raw >= 4)
			put32(p, HELLO_CMD);
		send_with_fd(p, (size_t)raw, -1);
	} else {
		put32(p, HELLO_CMD);
		p[4] = 0, p[5] = 1, p[6] = 0, p[7] = 1;
		put32(p + 8, hello_flags);
		send_with_fd(p, 12, -1);
	}
	ssize_t n = recv(sock, p, sizeof p, 0);
	if (n <= 0 && (n == 0 || errno == ECONNRESET)) {
		fprintf(stderr, "service-client: refused: the service closed the connection before HELLO was answered\n");
		return 3;
	}
	if (n < 0)
		fail("recv(HELLO reply)");
	if (n != 8 || get32(p) != HELLO_REPLY || get16(p + 4) != 1) {
		fprintf(stderr, "service-client: bad HELLO reply (%zd bytes)\n", n);
		return 1;
	}
	hello_answered = 1;
	if (hello_only) {
		char c;
		printf("hello ok\n");
		fflush(stdout);
		while (read(0, &c, 1) > 0)
			;
		return 0;
	}

	/* argv memfd: ARGS, argc, {pos,len}[argc], strings */
	const char *args[5] = {subtype, source, mountpoint, "-o", opts};
	const int nargs = opts ? 5 : 3;
	int mfd = memfd_create("fuse service argv", MFD_CLOEXEC);
	if (mfd < 0)
		fail("memfd_create");
	unsigned char hdr[8 + 5 * 8];
	uint32_t pos = 8 + 8 * (uint32_t)nargs;
	put32(hdr, ARGS_MAGIC);
	put32(hdr + 4, (uint32_t)nargs);
	for (int k = 0; k < nargs; k++) {
		uint32_t len = (uint32_t)strlen(args[k]);
		put32(hdr + 8 + 8 * k, pos);
		put32(hdr + 12 + 8 * k, len);
		if (pwrite(mfd, args[k], len, pos) != (ssize_t)len)
			fail("pwrite(argv)");
		pos += len;
	}
	if (pwrite(mfd, hdr, 8 + 8 * (size_t)nargs, 0) != (ssize_t)(8 + 8 * (size_t)nargs))
		fail("pwrite(argv)");
	if (argv_file) {
		close(mfd);
		if ((mfd = open_as_caller(argv_file, O_RDONLY | O_CLOEXEC)) < 0)
			fail("open(--argv-file)");
	}
	send_file("argv", mfd, 0);
	/* an inherited @N may be on a FUSE server the caller stopped: its close would wait in
	 * FLUSH before fusedev is sent; keep it until exit, so the service sees the whole request */
	if (!argv_file || argv_file[0] != '@')
		close(mfd);
	devfuse = open_as_caller(fusedev_path, O_RDWR | O_CLOEXEC);
	if (devfuse < 0)
		fail("open(fusedev)");
	send_file("fusedev", devfuse, 0);

	int exitcode = -1;
	for (;;) {
		n = recv(sock, p, MAX_PACKET, 0);
		if (n < 0)
			fail("recv");
		if (n == 0)
			break;
		p[n] = 0;
		uint32_t magic = n >= 4 ? get32(p) : 0;
		if (quit_at && strlen(quit_at) == 4 && magic == M(quit_at[0], quit_at[1], quit_at[2], quit_at[3])) {
			fprintf(stderr, "service-client: quitting at %s as asked\n", quit_at);
			return 4;
		}
		if ((magic == OPEN_CMD || magic == BDEV_CMD) && n >= 21) {
			const char *what = (char *)p + 20;
			int fd = open_as_caller(answer_open ? answer_open : what, (int)(get32(p + 4) & ~(uint32_t)O_CREAT) | O_CLOEXEC);
			send_file(what, fd, fd < 0 ? (uint32_t)errno : 0);
			if (fd >= 0)
				close(fd);
		} else if (magic == FSOPEN_CMD && n == 8) {
			fsfd = fsopen(get32(p + 4) & 1 ? "fuseblk" : "fuse", FSOPEN_CLOEXEC);
			send_repl(fsfd < 0 ? (uint32_t)errno : 0);
		} else if (magic == SOURCE_CMD && n >= 5) {
			send_repl(fsfd < 0 ? EINVAL : (uint32_t)set_string("source", (char *)p + 4));
		} else if (magic == MNTPT_CMD && n >= 9) {
			const char *mp = (char *)p + 8;
			uint32_t e = 0;
			if (strcmp(mp, mountpoint))
				e = EPERM; /* must be the mount point the caller named */
			else if (get16(p + 4) != S_IFDIR)
				e = ENOTDIR;
			else if ((mntpt_fd = open(mp, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
				e = (uint32_t)errno;
			send_repl(e);
		} else if (magic == MNTOPTS_CMD && n >= 5) {
			uint32_t e = 0;
			char *save = NULL;
			for (char *o = strtok_r((char *)p + 4, ",", &save); o && !e; o = strtok_r(NULL, ",", &save)) {
				char *eq = strchr(o, '=');
				if (!strcmp(o, "allow_other") && getuid() != 0)
					e = EPERM;
				else if (eq) {
					*eq = 0;
					e = (uint32_t)set_string(o, eq + 1);
				} else if (fsconfig(fsfd, FSCONFIG_SET_FLAG, o, NULL, 0) < 0)
					e = (uint32_t)errno;
			}
			send_repl(e);
		} else if (magic == MTAB_CMD) {
			send_repl(0);
		} else if (magic == MOUNT_CMD && n == 8) {
			send_repl((uint32_t)do_mount(get32(p + 4)));
		} else if (magic == BYE_CMD && n == 8) {
			exitcode = (int)get32(p + 4);
			break;
		} else {
			fprintf(stderr, "service-client: unexpected packet (%zd bytes)\n", n);
			return 1;
		}
	}
	close(sock);
	if (just_mount) {
		printf("bye %d\n", exitcode);
		return exitcode == 0 ? 0 : 1;
	}
	if (!mounted) {
		fprintf(stderr, "service-client: the service ended without a mount (exit code %d)\n", exitcode);
		return 1;
	}

	char file[4096], content[256] = "";
	struct stat st;
	snprintf(file, sizeof file, "%s/hello", mountpoint);
	if (stat(file, &st) < 0)
		fail("stat(hello)");
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("open(hello)");
	ssize_t r = read(fd, content, sizeof content - 1);
	close(fd);
	content[r > 0 ? r : 0] = 0;
	content[strcspn(content, "\n")] = 0;
	printf("ok size=%lld content=%s\n", (long long)st.st_size, content);
	fflush(stdout);
	if (hold_ms > 0) {
		struct timespec ts = {.tv_sec = hold_ms / 1000, .tv_nsec = (hold_ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	if (!no_umount && umount2(mountpoint, MNT_DETACH) < 0)
		fail("umount2");
	return exitcode == 0 ? 0 : 1;
}
