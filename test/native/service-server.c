/* service-server: test-only. The server side of libfuse's contained-service protocol
 * (libfuse include/fuse_service_priv.h: every integer big-endian, one message per
 * SOCK_SEQPACKET packet), written from the protocol facts, without libfuse.
 *
 * Started by socket activation with the connection at fd 3 (LISTEN_FDS=1, LISTEN_PID = our
 * pid). Sequence: HELLO -> LAST; receives the `argv` memfd and the `fusedev` fd (FILE packets);
 * asks the helper to OPEN its source (argv: SUBTYPE SOURCE MOUNTPOINT); TYPE, NAME, MNTP, OPTS,
 * MTAB, DOIT, each answered with REPL; BYEE(0). Then it serves a tiny FUSE filesystem on the
 * received /dev/fuse fd, by hand with <linux/fuse.h>: the root directory and one file, `hello`,
 * whose content is the first 4 KiB of the source the helper opened for it. It exits 0 on
 * FUSE_DESTROY or when the connection goes away (ENODEV). Logs go to stderr. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <linux/fuse.h>

#include "service-protocol.h"

static const int sock = 3;
static char content[4096];
static size_t content_len;

static void logf_(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("service-server: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void die(const char *what)
{
	logf_("%s: %s", what, strerror(errno));
	exit(1);
}

static void put32(unsigned char *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static void put16(unsigned char *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }
static uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return ntohs(v); }

static void send_packet(const void *buf, size_t len)
{
	if (send(sock, buf, len, MSG_EOR | MSG_NOSIGNAL) != (ssize_t)len)
		die("send");
}

/* One packet, at most one fd (-1 if none). Returns its length. */
static ssize_t recv_packet(unsigned char *buf, size_t len, int *fd)
{
	union { struct cmsghdr h; char c[CMSG_SPACE(sizeof(int))]; } cm;
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.c, .msg_controllen = sizeof cm.c};
	ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	if (fd)
		*fd = -1;
	if (n < 0)
		die("recvmsg");
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int got;
			memcpy(&got, CMSG_DATA(c), sizeof got);
			if (fd && *fd < 0)
				*fd = got;
			else
				close(got);
		}
	}
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		errno = EMSGSIZE;
		die("recvmsg (truncated)");
	}
	return n;
}

/* A FILE reply named `name`: returns its fd, or -errno the helper sent. */
static int recv_file(const char *name)
{
	unsigned char buf[MAX_PACKET];
	int fd;
	ssize_t n = recv_packet(buf, sizeof buf - 1, &fd);
	if (n == 0) {
		logf_("the helper closed the connection");
		exit(1);
	}
	buf[n] = 0;
	if (n < 9 || get32(buf) != FILE_REPLY || strcmp((char *)buf + 8, name)) {
		logf_("expected FILE %s, got a packet of %zd bytes", name, n);
		exit(1);
	}
	if (get32(buf + 4)) {
		if (fd >= 0)
			close(fd);
		return -(int)get32(buf + 4);
	}
	if (fd < 0) {
		logf_("FILE %s without a descriptor", name);
		exit(1);
	}
	return fd;
}

/* Sends a command and returns the helper's REPL errno (0 = success). */
static uint32_t command(const unsigned char *pkt, size_t len, const char *what)
{
	unsigned char r[64];
	send_packet(pkt, len);
	ssize_t n = recv_packet(r, sizeof r, NULL);
	if (n != 8 || get32(r) != SIMPLE_REPLY) {
		logf_("%s: bad reply (%zd bytes)", what, n);
		exit(1);
	}
	uint32_t e = get32(r + 4);
	if (e)
		logf_("%s: the helper answered %s", what, strerror((int)e));
	return e;
}

static uint32_t string_command(uint32_t magic, const char *s, const char *what)
{
	unsigned char pkt[MAX_PACKET];
	size_t l = strlen(s);
	if (4 + l + 1 > sizeof pkt)
		exit(1);
	put32(pkt, magic);
	memcpy(pkt + 4, s, l + 1);
	return command(pkt, 4 + l + 1, what);
}

/* ---- FUSE --------------------------------------------------------------------------------- */

static int fuse_fd;

static void reply(uint64_t unique, int error, const void *arg, size_t len)
{
	struct fuse_out_header h = {.len = (uint32_t)(sizeof h + len), .error = error, .unique = unique};
	struct iovec iov[2] = {{&h, sizeof h}, {(void *)arg, len}};
	if (writev(fuse_fd, iov, arg && len ? 2 : 1) < 0 && errno != ENOENT)
		logf_("writev(/dev/fuse): %s", strerror(errno));
}

static void fill_attr(struct fuse_attr *a, uint64_t ino)
{
	memset(a, 0, sizeof *a);
	a->ino = ino;
	a->nlink = ino == FUSE_ROOT_ID ? 2 : 1;
	a->mode = ino == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | 0444);
	a->size = ino == FUSE_ROOT_ID ? 0 : content_len;
	a->blocks = (a->size + 511) / 512;
	a->blksize = 4096;
}

static size_t add_dirent(char *buf, size_t off, size_t max, uint64_t ino, const char *name, uint64_t next, uint32_t type)
{
	size_t nl = strlen(name), sz = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
	if (off + sz > max)
		return 0;
	struct fuse_dirent *d = (struct fuse_dirent *)(buf + off);
	memset(d, 0, sz);
	d->ino = ino;
	d->off = next;
	d->namelen = (uint32_t)nl;
	d->type = type;
	memcpy(d->name, name, nl);
	return sz;
}

static int serve(void)
{
	size_t bufsize = 128 * 1024 + 4096;
	char *buf = malloc(bufsize);
	if (!buf)
		die("malloc");
	for (;;) {
		ssize_t n = read(fuse_fd, buf, bufsize);
		if (n < 0) {
			if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
				continue;
			if (errno == ENODEV) {
				logf_("the mount is gone (ENODEV); exiting");
				return 0;
			}
			die("read(/dev/fuse)");
		}
		if ((size_t)n < sizeof(struct fuse_in_header))
			continue;
		struct fuse_in_header *in = (struct fuse_in_header *)buf;
		void *arg = buf + sizeof *in;
		switch (in->opcode) {
		case FUSE_INIT: {
			struct fuse_init_in *ii = arg;
			struct fuse_init_out o = {0};
			o.major = FUSE_KERNEL_VERSION;
			o.minor = ii->minor < FUSE_KERNEL_MINOR_VERSION ? ii->minor : FUSE_KERNEL_MINOR_VERSION;
			o.max_readahead = ii->max_readahead;
			o.max_background = 16;
			o.congestion_threshold = 12;
			o.max_write = 128 * 1024;
			o.time_gran = 1;
			logf_("FUSE_INIT %u.%u from the kernel; serving", ii->major, ii->minor);
			reply(in->unique, 0, &o, ii->minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
			break;
		}
		case FUSE_LOOKUP: {
			const char *name = arg;
			struct fuse_entry_out e = {0};
			if (in->nodeid != FUSE_ROOT_ID || strcmp(name, "hello")) {
				reply(in->unique, -ENOENT, NULL, 0);
				break;
			}
			e.nodeid = 2;
			e.generation = 1;
			e.entry_valid = 1;
			e.attr_valid = 1;
			fill_attr(&e.attr, 2);
			reply(in->unique, 0, &e, sizeof e);
			break;
		}
		case FUSE_GETATTR: {
			struct fuse_attr_out a = {0};
			if (in->nodeid != FUSE_ROOT_ID && in->nodeid != 2) {
				reply(in->unique, -ENOENT, NULL, 0);
				break;
			}
			a.attr_valid = 1;
			fill_attr(&a.attr, in->nodeid);
			reply(in->unique, 0, &a, sizeof a);
			break;
		}
		case FUSE_OPEN:
		case FUSE_OPENDIR: {
			struct fuse_open_out o = {0};
			reply(in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_READ: {
			struct fuse_read_in *r = arg;
			size_t off = r->offset < content_len ? r->offset : content_len;
			size_t len = content_len - off < r->size ? content_len - off : r->size;
			reply(in->unique, 0, content + off, len);
			break;
		}
		case FUSE_READDIR: {
			struct fuse_read_in *r = arg;
			char out[4096];
			size_t used = 0, sz, max = r->size < sizeof out ? r->size : sizeof out;
			static const struct { const char *name; uint64_t ino; uint32_t type; } ents[] = {
				{".", FUSE_ROOT_ID, S_IFDIR >> 12}, {"..", FUSE_ROOT_ID, S_IFDIR >> 12}, {"hello", 2, S_IFREG >> 12}};
			for (uint64_t i = r->offset; i < 3; i++) {
				if (!(sz = add_dirent(out, used, max, ents[i].ino, ents[i].name, i + 1, ents[i].type)))
					break;
				used += sz;
			}
			reply(in->unique, 0, out, used);
			break;
		}
		case FUSE_STATFS: {
			struct fuse_statfs_out s = {0};
			s.st.bsize = 4096;
			s.st.frsize = 4096;
			s.st.namelen = 255;
			s.st.files = 2;
			reply(in->unique, 0, &s, sizeof s);
			break;
		}
		case FUSE_RELEASE:
		case FUSE_RELEASEDIR:
		case FUSE_FLUSH:
			reply(in->unique, 0, NULL, 0);
			break;
		case FUSE_FORGET:
		case FUSE_BATCH_FORGET:
		case FUSE_INTERRUPT:
			break;
		case FUSE_DESTROY:
			reply(in->unique, 0, NULL, 0);
			logf_("FUSE_DESTROY; exiting");
			return 0;
		default:
			reply(in->unique, -ENOSYS, NULL, 0);
		}
	}
}

/* ---- the service protocol ------------------------------------------------------------------ */

int main(void)
{
	unsigned char pkt[MAX_PACKET];
	const char *lp = getenv("LISTEN_PID"), *lf = getenv("LISTEN_FDS");
	struct stat st;
	if (!lp || !lf || atol(lp) != (long)getpid() || strcmp(lf, "1") || fstat(sock, &st) < 0 || !S_ISSOCK(st.st_mode)) {
		logf_("not socket-activated (LISTEN_PID=%s, my pid %d, LISTEN_FDS=%s)", lp ? lp : "-", (int)getpid(), lf ? lf : "-");
		return 1;
	}
	logf_("started as pid %d, uid %u, LISTEN_FDNAMES=%s", (int)getpid(), (unsigned)getuid(), getenv("LISTEN_FDNAMES") ? getenv("LISTEN_FDNAMES") : "-");

	/* 1. HELLO / LAST */
	ssize_t n = recv_packet(pkt, sizeof pkt, NULL);
	if (n != 12 || get32(pkt) != HELLO_CMD) {
		logf_("expected HELLO (12 bytes), got %zd bytes", n);
		return 1;
	}
	uint16_t minv = get16(pkt + 4), maxv = get16(pkt + 6);
	if (minv > 1 || maxv < 1) {
		logf_("no common protocol version (helper %u..%u)", minv, maxv);
		return 1;
	}
	unsigned char hr[8] = {0};
	put32(hr, HELLO_REPLY);
	put16(hr + 4, 1);
	send_packet(hr, sizeof hr);

	/* 2. argv and fusedev */
	int argvfd = recv_file("argv");
	if (argvfd < 0) {
		logf_("argv: %s", strerror(-argvfd));
		return 1;
	}
	fuse_fd = recv_file("fusedev");
	if (fuse_fd < 0) {
		logf_("fusedev: %s", strerror(-fuse_fd));
		return 1;
	}
	unsigned char h[8];
	if (pread(argvfd, h, 8, 0) != 8 || get32(h) != ARGS_MAGIC)
		die("argv memfd header");
	uint32_t argc = get32(h + 4);
	if (argc < 1 || argc > 64) {
		logf_("argv: argc %u", argc);
		return 1;
	}
	char *args[64];
	for (uint32_t i = 0; i < argc; i++) {
		unsigned char e[8];
		if (pread(argvfd, e, 8, 8 + 8 * (off_t)i) != 8)
			die("argv memfd entry");
		uint32_t pos = get32(e), len = get32(e + 4);
		if (len > 4096)
			exit(1);
		args[i] = calloc(1, len + 1);
		if (!args[i] || pread(argvfd, args[i], len, pos) != (ssize_t)len)
			die("argv memfd string");
	}
	close(argvfd);
	const char *positional[2] = {NULL, NULL};
	int np = 0;
	for (uint32_t i = 1; i < argc; i++) {
		if (!strcmp(args[i], "-o") && i + 1 < argc) {
			i++;
			continue;
		}
		if (np < 2)
			positional[np++] = args[i];
	}
	if (np < 2) {
		logf_("usage (argv from the helper): %s SOURCE MOUNTPOINT", args[0]);
		return 1;
	}
	const char *source = positional[0], *mountpoint = positional[1];

	/* 3. OPEN the source through the helper (its permissions, not ours) */
	size_t sl = strlen(source);
	put32(pkt, OPEN_CMD);
	put32(pkt + 4, O_RDONLY);
	put32(pkt + 8, 0);
	put32(pkt + 12, 0);
	put32(pkt + 16, 0);
	memcpy(pkt + 20, source, sl + 1);
	send_packet(pkt, 20 + sl + 1);
	int src = recv_file(source);
	if (src < 0) {
		logf_("the helper could not open %s: %s", source, strerror(-src));
	} else {
		ssize_t r = pread(src, content, sizeof content, 0);
		content_len = r > 0 ? (size_t)r : 0;
		close(src);
	}
	int zero = 0;
	if (setsockopt(sock, SOL_SOCKET, SO_PASSRIGHTS, &zero, sizeof zero) < 0 && errno != ENOPROTOOPT && errno != EINVAL)
		logf_("SO_PASSRIGHTS: %s", strerror(errno));

	/* 4. TYPE NAME MNTP OPTS MTAB DOIT */
	uint32_t err;
	put32(pkt, FSOPEN_CMD);
	put32(pkt + 4, 0);
	if ((err = command(pkt, 8, "TYPE")))
		goto bye;
	if ((err = string_command(SOURCE_CMD, args[0], "NAME")))
		goto bye;
	size_t ml = strlen(mountpoint);
	put32(pkt, MNTPT_CMD);
	put16(pkt + 4, (uint16_t)S_IFDIR);
	put16(pkt + 6, 0);
	memcpy(pkt + 8, mountpoint, ml + 1);
	if ((err = command(pkt, 8 + ml + 1, "MNTP")))
		goto bye;
	if ((err = string_command(MNTOPTS_CMD, "default_permissions", "OPTS")))
		goto bye;
	if ((err = string_command(MTAB_CMD, "rw", "MTAB")))
		goto bye;
	put32(pkt, MOUNT_CMD);
	put32(pkt + 4, MS_NOSUID | MS_NODEV);
	if ((err = command(pkt, 8, "DOIT")))
		goto bye;
	logf_("mounted %s on %s (%zu bytes of content)", source, mountpoint, content_len);
bye:
	put32(pkt, BYE_CMD);
	put32(pkt + 4, err ? 1 : 0);
	send_packet(pkt, 8);
	shutdown(sock, SHUT_RDWR);
	close(sock);
	if (err)
		return 1;
	return serve();
}
