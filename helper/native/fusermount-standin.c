/*
 * fusermount stand-in: bound over /bin/fusermount and /bin/fusermount3 inside a fuse-svc
 * sandbox.
 *
 * An unmodified libfuse2 server (fuse2fs -o auto_unmount) does not open /dev/fuse itself:
 * it runs `/bin/fusermount -o OPTS -- MOUNTPOINT` with _FUSE_COMMFD=N in the environment and
 * takes the FUSE fd back over that socket. The mount already exists (the launcher made it
 * with fsopen/fsmount and attached it in the caller's namespace); the server inherited its
 * fd at the number in FUSE_SVC_FUSE_FD. So "mounting" here is only handing that fd over,
 * exactly as the real fusermount does: one byte of data plus the fd by SCM_RIGHTS.
 *
 *   -u / -z (unmount)   exit 0: the launcher detaches the real mount
 *   -V / --version      print a version
 *   anything else       error on stderr, exit 1
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define FUSE_MAJOR 10
#define FUSE_MINOR 229

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;
	fputs("fusermount (fuse-svc stand-in): ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

/* A non-negative decimal fd number from the environment, or -1. */
static int env_fd(const char *name)
{
	const char *s = getenv(name);
	char *end;
	long v;
	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 1 << 20)
		return -1;
	return (int)v;
}

static int send_fd(int sock, int fd)
{
	char byte = 0;
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = &byte, .iov_len = 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	struct cmsghdr *cm;
	ssize_t n;

	memset(cbuf, 0, sizeof cbuf);
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == 1 ? 0 : -1;
}

static int do_mount(void)
{
	int commfd = env_fd("_FUSE_COMMFD"), fusefd = env_fd("FUSE_SVC_FUSE_FD");
	struct stat st;

	if (commfd < 0)
		return fail("_FUSE_COMMFD is not set: only a libfuse server can use this");
	if (fusefd < 0)
		return fail("FUSE_SVC_FUSE_FD is not set");
	/* only ever hand over a FUSE device fd, never whatever else sits at that number */
	if (fstat(fusefd, &st) < 0)
		return fail("fstat(FUSE_SVC_FUSE_FD): %s", strerror(errno));
	if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != FUSE_MAJOR || minor(st.st_rdev) != FUSE_MINOR)
		return fail("FUSE_SVC_FUSE_FD is not /dev/fuse");
	if (send_fd(commfd, fusefd) < 0)
		return fail("sendmsg(_FUSE_COMMFD): %s", strerror(errno));
	return 0;
}

int main(int argc, char **argv)
{
	bool unmount = false, have_mountpoint = false;
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--")) {
			i++;
			break;
		}
		if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			puts("fusermount3 version: 3.14.0 (fuse-svc stand-in)");
			return 0;
		}
		if (!strcmp(a, "-o")) {
			if (++i == argc)
				return fail("-o needs an argument");
			continue;
		}
		if (!strncmp(a, "-o", 2))
			continue;
		if (a[0] == '-' && a[1] != '\0' && a[1] != '-') {
			/* short options, possibly clustered: -u -z -q, -uqz */
			for (const char *c = a + 1; *c; c++) {
				if (*c == 'u' || *c == 'z')
					unmount = true;
				else if (*c != 'q')
					return fail("unknown option: %s", a);
			}
			continue;
		}
		if (a[0] == '-')
			return fail("unknown option: %s", a);
		break;  /* the mount point */
	}
	if (i < argc)
		have_mountpoint = true;
	if (i + 1 < argc)
		return fail("more than one mount point");
	if (unmount)
		return 0;
	if (!have_mountpoint)
		return fail("no mount point given");
	return do_mount();
}
