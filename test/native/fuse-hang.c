/*
 * fuse-hang: a test FUSE server that misbehaves on purpose (test/adversary/hung-server.test.ts).
 *
 *   fuse-hang MODE SOURCE /dev/fd/N
 *
 *   init      answers FUSE_INIT, then reads every request without answering
 *   ready     answers FUSE_INIT and the first STATFS (the launcher's readiness check), then
 *             reads without answering; when the connection ends it stays, ignoring SIGTERM
 *   openloop  opens SOURCE (the sentinel) 3000 times, then serves
 *   flood     a child writes to stderr without pause; the parent serves
 *   emfile    lowers its RLIMIT_NOFILE so no fd is free, opens SOURCE (the open must fail,
 *             not hang), restores the limit, says what it got, then serves
 *
 * "Serves" = INIT, STATFS, GETATTR of the root; everything else ENOSYS; exits at ENODEV.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <linux/fuse.h>

static int fuse_fd = -1;

static void reply(uint64_t unique, int error, const void *arg, size_t len)
{
	struct fuse_out_header h = {.len = (uint32_t)(sizeof h + len), .error = error, .unique = unique};
	struct iovec iov[2] = {{&h, sizeof h}, {(void *)arg, len}};
	if (writev(fuse_fd, iov, arg && len ? 2 : 1) < 0 && errno != ENOENT)
		fprintf(stderr, "fuse-hang: writev: %s\n", strerror(errno));
}

static void reply_init(const struct fuse_in_header *in, const struct fuse_init_in *ii)
{
	struct fuse_init_out o = {0};
	o.major = FUSE_KERNEL_VERSION;
	o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
	o.max_readahead = ii->max_readahead;
	o.max_background = 16;
	o.congestion_threshold = 12;
	o.max_write = 4096;
	o.time_gran = 1;
	reply(in->unique, 0, &o, ii->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
}

/* answer: 0 none, 1 INIT only, 2 INIT + first STATFS, 3 everything */
static int serve(int answer)
{
	static char buf[128 * 1024 + 4096];
	int statfs_answered = 0;
	for (;;) {
		ssize_t n = read(fuse_fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
				continue;
			fprintf(stderr, "fuse-hang: read(/dev/fuse): %s\n", strerror(errno));
			return errno == ENODEV ? 0 : 1;
		}
		if ((size_t)n < sizeof(struct fuse_in_header))
			continue;
		struct fuse_in_header *in = (struct fuse_in_header *)buf;
		void *arg = buf + sizeof *in;
		if (in->opcode == FUSE_INIT && answer >= 1) {
			reply_init(in, arg);
		} else if (in->opcode == FUSE_STATFS && (answer >= 3 || (answer == 2 && !statfs_answered))) {
			struct fuse_statfs_out s = {0};
			s.st.bsize = s.st.frsize = 4096;
			s.st.namelen = 255;
			statfs_answered = 1;
			reply(in->unique, 0, &s, sizeof s);
		} else if (answer >= 3 && in->opcode == FUSE_GETATTR) {
			struct fuse_attr_out a = {0};
			a.attr_valid = 1;
			a.attr.ino = FUSE_ROOT_ID;
			a.attr.mode = S_IFDIR | 0755;
			a.attr.nlink = 2;
			reply(in->unique, 0, &a, sizeof a);
		} else if (answer >= 3 && in->opcode != FUSE_FORGET && in->opcode != FUSE_BATCH_FORGET &&
			   in->opcode != FUSE_INTERRUPT) {
			reply(in->unique, in->opcode == FUSE_DESTROY ? 0 : -ENOSYS, NULL, 0);
		}
		/* else: read and never answered */
	}
}

int main(int argc, char **argv)
{
	if (argc != 4 || strncmp(argv[3], "/dev/fd/", 8)) {
		fprintf(stderr, "usage: fuse-hang init|ready|openloop|flood|emfile SOURCE /dev/fd/N\n");
		return 64;
	}
	const char *mode = argv[1], *source = argv[2];
	fuse_fd = atoi(argv[3] + 8);
	setvbuf(stderr, NULL, _IOLBF, 0);
	if (!strcmp(mode, "init"))
		return serve(1);
	if (!strcmp(mode, "ready")) {
		signal(SIGTERM, SIG_IGN);
		serve(2);
		fprintf(stderr, "fuse-hang: connection gone; staying\n");
		for (;;)
			pause();
	}
	if (!strcmp(mode, "openloop")) {
		int ok = 0;
		for (int i = 0; i < 3000; i++) {
			int fd = open(source, O_RDONLY | O_CLOEXEC);
			if (fd >= 0)
				ok++, close(fd);
		}
		fprintf(stderr, "fuse-hang: opened the source %d times\n", ok);
		return serve(3);
	}
	if (!strcmp(mode, "flood")) {
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "fuse-hang: fork: %s\n", strerror(errno));
			return 1;
		}
		if (pid == 0) {
			static char line[4096];
			memset(line, 'x', sizeof line - 1);
			line[sizeof line - 1] = '\n';
			for (;;)
				if (write(2, line, sizeof line) < 0 && errno != EINTR)
					_exit(0);
		}
		return serve(3);
	}
	if (!strcmp(mode, "emfile")) {
		struct rlimit old, none;
		if (getrlimit(RLIMIT_NOFILE, &old) < 0) {
			fprintf(stderr, "fuse-hang: getrlimit: %s\n", strerror(errno));
			return 1;
		}
		int probe = open("/dev/null", O_RDONLY | O_CLOEXEC); /* the lowest free fd */
		if (probe < 0) {
			fprintf(stderr, "fuse-hang: open(/dev/null): %s\n", strerror(errno));
			return 1;
		}
		close(probe);
		none = old;
		none.rlim_cur = (rlim_t)probe;  /* every fd below it is taken: no fd is free */
		if (setrlimit(RLIMIT_NOFILE, &none) < 0) {
			fprintf(stderr, "fuse-hang: setrlimit: %s\n", strerror(errno));
			return 1;
		}
		int fd = open(source, O_RDONLY | O_CLOEXEC);
		int err = errno;
		setrlimit(RLIMIT_NOFILE, &old);
		if (fd >= 0)
			fprintf(stderr, "fuse-hang: emfile open got fd %d\n", fd);
		else
			fprintf(stderr, "fuse-hang: emfile open failed: %s\n", strerror(err));
		return serve(3);
	}
	fprintf(stderr, "fuse-hang: unknown mode %s\n", mode);
	return 64;
}
