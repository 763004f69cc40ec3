/*
 * fuse-svc-request, static C edition: the same command line, protocol, output and exit
 * status as the TypeScript client (helper/request.ts), for containers without Node (Alpine,
 * distroless, scratch). Built by node-gyp as build/Release/fuse-svc-client, linked -static.
 *
 * One request per connection (docs/protocol.md): connect an AF_UNIX SOCK_SEQPACKET socket,
 * send one JSON packet with the descriptors attached by SCM_RIGHTS, read one reply packet.
 * The descriptors are opened here, with the caller's own rights; nothing is resolved by the
 * broker. No shell, no environment besides FUSE_SVC_SOCKET, no locale, no allocation that
 * outlives main.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define CLIENT_VERSION "0.1.0"
#define DEFAULT_SOCKET "/run/fuse-svc/broker.sock"
#define PROTOCOL_VERSION 1
#define MAX_MESSAGE_BYTES 16384 /* supervisor/protocol.ts MAX_MESSAGE_BYTES */
#define MAX_REPLY_BYTES 65536   /* supervisor/protocol.ts encodeReply's limit */
#define MAX_FDS 4

#define EXIT_LOCAL 1
#define EXIT_REFUSED 2
#define EXIT_USAGE 64

/* The protocol's error table: supervisor/protocol.ts ERRORS, code and text (test/client-static.test.ts
 * checks that the two agree). A code not in it is shown as EINTERNAL, and a reply without a message
 * gets the code's text, as in the TS client's decodeReply. */
static const struct {
    const char *code, *text;
} error_table[] = {
    {"EPROTO_JSON", "the message is not a JSON object"},
    {"EPROTO_SIZE", "the message is empty, larger than the limit, or was truncated"},
    {"EPROTO_VERSION", "the protocol version is not supported"},
    {"EPROTO_FIELD", "a field is missing, unknown, or of the wrong type"},
    {"EPROTO_FDS", "the descriptors attached do not match the roles named in \"fds\""},
    {"EOP", "the operation is unknown"},
    {"EPEER", "the caller could not be identified by the kernel (no pidfd)"},
    {"EBADFD_SOURCE", "the source descriptor is not an open regular file or block device"},
    {"EROFS_SOURCE", "rw was asked for, but the source descriptor is open read-only"},
    {"EBADFD_TARGET", "the target descriptor is not a directory (symlinks are never followed)"},
    {"EPERM_TARGET", "the caller may not mount on the target (needs write access; owner in a sticky directory)"},
    {"EFSTYPE_TARGET", "the target lies on a filesystem that may not be mounted over"},
    {"EFSTYPE", "the filesystem type is not allowed by the configuration"},
    {"EOPTION", "a mount option is unknown, malformed or not allowed"},
    {"ELIMIT_MOUNTS", "the caller has reached the per-user limit of live mounts"},
    {"ELIMIT_TOTAL", "the broker has reached its limit of live mounts (mount_max)"},
    {"ELIMIT_RATE", "the caller sends requests faster than the per-user rate limit"},
    {"ELIMIT_CONN", "the caller (or all callers) hold the limit of open connections"},
    {"ELIMIT_STUCK", "descriptors the caller sent earlier are still stuck closing on its own FUSE server"},
    {"EUIDS_EXHAUSTED", "no dynamic uid is free in the configured range"},
    {"EUID_BUSY", "the dynamic uid picked for the sandbox was taken by another instance"},
    {"ESERVER_START", "the filesystem server failed before it answered FUSE_INIT"},
    {"ETIMEDOUT_SERVER", "the filesystem server did not answer FUSE_INIT in time"},
    {"ESERVER_TIMEOUT", "the launcher did not answer by the broker's deadline and was killed"},
    {"EMOUNT", "the kernel refused to create the FUSE mount"},
    {"EATTACH", "the mount could not be attached in the caller's mount namespace"},
    {"ESANDBOX", "the sandbox could not be set up"},
    {"ENOENT_MOUNT", "no broker mount matches (not a mount root made by the broker, or no such id)"},
    {"EPERM_MOUNT", "the mount belongs to another user"},
    {"ESHUTDOWN", "the broker is stopping"},
    {"EINTERNAL", "an internal error; the broker log has details"},
};

static const char usage_text[] =
    "NAME\n"
    "    fuse-svc-request - mount filesystem images through fuse-svcd, without privileges\n"
    "\n"
    "SYNOPSIS\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] mount [-t TYPE] [-o OPTS] SOURCE TARGET\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] unmount [--wait SEC] TARGET\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] unmount [--wait SEC] --id N\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] list\n"
    "    fuse-svc-request --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    Asks the broker fuse-svcd to mount an ext2/3/4 image for you. The image and the mount\n"
    "    point are opened here, with your own rights, and passed to the broker as descriptors\n"
    "    (SCM_RIGHTS); the mount appears in your own mount namespace. You need neither\n"
    "    CAP_SYS_ADMIN nor /dev/fuse, only access to the broker socket. This is the static build\n"
    "    of the client (no Node needed); it behaves exactly like the Node one.\n"
    "\n"
    "COMMANDS\n"
    "    mount SOURCE TARGET\n"
    "        Mount the image SOURCE (a regular file or block device; opened read-write, or\n"
    "        read-only when OPTS holds ro) on the directory TARGET (an empty directory you may\n"
    "        write to; never a symbolic link). Prints \"mounted TARGET (id N)\" once the\n"
    "        filesystem answers.\n"
    "    unmount TARGET | unmount --id N      (alias: umount)\n"
    "        Unmount a broker mount you own, by mount point or by id; waits until the\n"
    "        filesystem server has flushed and exited.\n"
    "    list\n"
    "        List your mounts (root: all), including ones that ended since the last list.\n"
    "\n"
    "OPTIONS\n"
    "    --socket PATH   broker socket (default: $FUSE_SVC_SOCKET, else " DEFAULT_SOCKET ")\n"
    "    --json          print the broker's reply as JSON instead of text\n"
    "    --timeout SEC   seconds to wait for the broker's reply (default 60)\n"
    "    -t, --type TYPE filesystem type for mount: ext2, ext3, ext4 (default ext4)\n"
    "    -o, --options OPTS\n"
    "                    comma-separated mount options: ro or rw (default rw), plus server\n"
    "                    options the broker allows (e.g. norecovery)\n"
    "    --id N          unmount the mount with this id (as shown by mount and list)\n"
    "    --wait SEC      unmount: seconds the server gets to exit before it is terminated\n"
    "                    (default: the broker's, 10)\n"
    "    -h, --help      this text\n"
    "    --version       the version\n"
    "\n"
    "ENVIRONMENT\n"
    "    FUSE_SVC_SOCKET the broker socket, when --socket is not given\n"
    "\n"
    "EXIT STATUS\n"
    "    0   done\n"
    "    1   a local error (cannot open a file, cannot reach the broker, no reply in time)\n"
    "    2   the broker refused; \"fuse-svc-request: CODE: reason\" is printed on stderr, the\n"
    "        codes are listed in docs/protocol.md\n"
    "    64  usage error\n"
    "\n"
    "EXAMPLES\n"
    "    fuse-svc-request mount -t ext4 -o rw ./disk.img ./mnt\n"
    "    fuse-svc-request list\n"
    "    fuse-svc-request unmount ./mnt\n";

static const char *prog = "fuse-svc-request";

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry %s --help.\n", prog);
    exit(EXIT_USAGE);
}

static void die_local(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_local(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_LOCAL);
}

/* "ENOENT (No such file or directory)" */
static const char *errname(int e)
{
    static char buf[160];
    const char *n = strerrorname_np(e);
    snprintf(buf, sizeof buf, "%s (%s)", n ? n : "error", strerror(e));
    return buf;
}

/* Prints s with control characters (and DEL) replaced by '?', so a name from the broker cannot
 * drive the terminal. */
static void put_safe(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, f);
}

/* ---------------------------------------------------------------- arguments */

enum op { OP_NONE, OP_MOUNT, OP_UNMOUNT, OP_LIST };

struct args {
    const char *socket;
    int json;
    double timeout_s;
    enum op op;
    const char *fstype;
    const char *options;
    const char *pos[3];
    int npos;
    int have_id;
    int64_t id;
    int have_wait;
    double wait_s;
};

static double parse_seconds(const char *opt, const char *v, double max)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d > 0) || d > max || isspace((unsigned char)v[0]))
        die_usage("%s must be a number of seconds from 0 to %g, not \"%s\"", opt, max, v);
    return d;
}

/* Matches --name VALUE, --name=VALUE, and for a short option -x VALUE and -xVALUE. */
static int take_value(int argc, char **argv, int *i, const char *longname, char shortname, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(longname);
    if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, longname, n) == 0) {
        if (a[2 + n] == '=') {
            *out = a + 3 + n;
            return 1;
        }
        if (a[2 + n] == 0) {
            if (*i + 1 >= argc)
                die_usage("--%s needs a value", longname);
            *out = argv[++*i];
            return 1;
        }
        return 0;
    }
    if (shortname && a[0] == '-' && a[1] == shortname) {
        if (a[2] == '=') {
            *out = a + 3;
            return 1;
        }
        if (a[2]) {
            *out = a + 2;
            return 1;
        }
        if (*i + 1 >= argc)
            die_usage("-%c needs a value", shortname);
        *out = argv[++*i];
        return 1;
    }
    return 0;
}

static void parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof *a);
    a->timeout_s = 60;
    a->fstype = "ext4";
    a->options = "rw";
    const char *words[8];
    int nwords = 0, only_pos = 0;
    int saw_t = 0, saw_o = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *v;
        if (only_pos || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (nwords == (int)(sizeof words / sizeof words[0]))
                die_usage("too many arguments");
            words[nwords++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_pos = 1;
        } else if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (strcmp(arg, "--version") == 0) {
            puts(CLIENT_VERSION);
            exit(0);
        } else if (strcmp(arg, "--json") == 0) {
            a->json = 1;
        } else if (strcmp(arg, "--no-json") == 0) {
            a->json = 0;
        } else if (take_value(argc, argv, &i, "socket", 0, &v)) {
            if (!*v)
                die_usage("--socket needs a path");
            a->socket = v;
        } else if (take_value(argc, argv, &i, "timeout", 0, &v)) {
            a->timeout_s = parse_seconds("--timeout", v, 86400);
        } else if (take_value(argc, argv, &i, "type", 't', &v)) {
            a->fstype = v;
            saw_t = 1;
        } else if (take_value(argc, argv, &i, "options", 'o', &v)) {
            a->options = v;
            saw_o = 1;
        } else if (take_value(argc, argv, &i, "id", 0, &v)) {
            char *end;
            errno = 0;
            long long id = strtoll(v, &end, 10);
            if (errno || end == v || *end || id < 1 || id > INT32_MAX || !(v[0] >= '0' && v[0] <= '9'))
                die_usage("--id must be a mount id (a positive integer), not \"%s\"", v);
            a->have_id = 1;
            a->id = id;
        } else if (take_value(argc, argv, &i, "wait", 0, &v)) {
            a->have_wait = 1;
            a->wait_s = parse_seconds("--wait", v, 600);
        } else {
            die_usage("unknown option: %s", arg);
        }
    }
    if (nwords == 0)
        die_usage("give a command: mount, unmount or list");
    const char *cmd = words[0];
    if (strcmp(cmd, "mount") == 0)
        a->op = OP_MOUNT;
    else if (strcmp(cmd, "unmount") == 0 || strcmp(cmd, "umount") == 0)
        a->op = OP_UNMOUNT;
    else if (strcmp(cmd, "list") == 0)
        a->op = OP_LIST;
    else
        die_usage("unknown command: %s (give mount, unmount or list)", cmd);
    a->npos = nwords - 1;
    for (int k = 1; k < nwords && k <= 3; k++)
        a->pos[k - 1] = words[k];
    if (a->op != OP_MOUNT && (saw_t || saw_o))
        die_usage("-t and -o are options of mount");
    if (a->op != OP_UNMOUNT && (a->have_id || a->have_wait))
        die_usage("--id and --wait are options of unmount");
    switch (a->op) {
    case OP_MOUNT:
        if (a->npos != 2)
            die_usage("mount takes SOURCE and TARGET");
        if (!*a->pos[0] || !*a->pos[1])
            die_usage("SOURCE and TARGET must not be empty");
        break;
    case OP_UNMOUNT:
        if (a->npos > 1 || (a->npos == 1) == a->have_id)
            die_usage("give either TARGET or --id");
        if (a->npos == 1 && !*a->pos[0])
            die_usage("TARGET must not be empty");
        break;
    case OP_LIST:
        if (a->npos != 0)
            die_usage("list takes no arguments");
        break;
    case OP_NONE:
        break;
    }
}

/* ---------------------------------------------------------------- request */

/* A JSON string from user input: invalid UTF-8 becomes U+FFFD, as it does when Node decodes
 * argv; everything else is escaped by json_buf_put_string. */
static void put_user_string(struct json_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (json_utf8_valid(s, n)) {
        json_buf_put_string(b, s, n);
        return;
    }
    struct json_buf tmp;
    json_buf_init(&tmp);
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        for (size_t len = 4; len >= 1; len--) {
            if (i + len <= n && json_utf8_valid(s + i, len)) {
                k = len;
                break;
            }
        }
        if (k == 1 && (unsigned char)s[i] >= 0x80)
            json_buf_put(&tmp, "\xef\xbf\xbd", 3);
        else
            json_buf_put(&tmp, s + i, k);
        i += k;
    }
    if (tmp.failed)
        die_local("out of memory");
    json_buf_put_string(b, tmp.data, tmp.len);
    json_buf_free(&tmp);
}

/* "rw" unless the options name "ro" with no "rw" after the last "ro" (the TS client's rule). */
static int options_read_only(const char *opts)
{
    int ro = 0;
    const char *p = opts;
    while (1) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n == 2 && strncmp(p, "ro", 2) == 0)
            ro = 1;
        else if (n == 2 && strncmp(p, "rw", 2) == 0)
            ro = 0;
        if (!c)
            break;
        p = c + 1;
    }
    return ro;
}

static int open_role(const char *path, int flags, const char *role)
{
    int fd = open(path, flags | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0)
        return fd;
    int e = errno;
    struct stat st;
    /* O_DIRECTORY|O_NOFOLLOW on a symlink fails ENOTDIR, not ELOOP: say what it really is */
    if (e == ENOTDIR && strcmp(role, "target") == 0 && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        e = ELOOP;
    if (e == ELOOP && strcmp(role, "target") == 0)
        die_local("cannot open %s %s: it is a symbolic link (never followed)", role, path);
    if (e == ENOTDIR)
        die_local("cannot open %s %s: not a directory", role, path);
    die_local("cannot open %s %s: %s", role, path, errname(e));
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Connects, sends body + fds, returns the reply's length in buf (0 on EOF). */
static size_t exchange(const char *path, const struct json_buf *body, int *fds, int nfds, double timeout_s,
                       char *buf, size_t buflen)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path)
        die_local("cannot connect to %s: the path is longer than %zu bytes", path, sizeof sa.sun_path - 1);
    memcpy(sa.sun_path, path, strlen(path) + 1);

    int64_t timeout_ms = (int64_t)(timeout_s * 1000);
    if (timeout_ms < 1)
        timeout_ms = 1;
    int64_t deadline = now_ms() + timeout_ms;

    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        die_local("cannot create a socket: %s", errname(errno));
    /* connect() and sendmsg() on AF_UNIX honour SO_SNDTIMEO: a stuck broker cannot hang us */
    struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000), .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        const char *hint = e == ENOENT || e == ECONNREFUSED ? " (is fuse-svcd running? set --socket or FUSE_SVC_SOCKET)" : "";
        if (e == EAGAIN || e == EINPROGRESS)
            die_local("cannot connect to %s: the broker did not accept within %lld ms", path, (long long)timeout_ms);
        die_local("cannot connect to %s: %s%s", path, errname(e), hint);
    }

    struct iovec iov = {.iov_base = body->data, .iov_len = body->len};
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    } cm;
    memset(&cm, 0, sizeof cm);
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds > 0) {
        mh.msg_control = cm.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t w;
    do
        w = sendmsg(s, &mh, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        if (errno == EAGAIN)
            die_local("cannot send the request to %s: the broker did not take it within %lld ms", path, (long long)timeout_ms);
        die_local("cannot send the request to %s: %s", path, errname(errno));
    }
    if ((size_t)w != body->len)
        die_local("cannot send the request to %s: short write", path);
    /* The broker has its own copies now. Ours must go at once: an unmount's descriptor pins
     * the mount, and the server cannot end while anyone holds it. */
    for (int k = 0; k < nfds; k++) {
        close(fds[k]);
        fds[k] = -1;
    }

    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            die_local("no reply from the broker within %lld ms", (long long)timeout_ms);
        struct pollfd pfd = {.fd = s, .events = POLLIN};
        int r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die_local("poll: %s", errname(errno));
        }
        if (r == 0)
            continue;
        break;
    }

    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    } rcm;
    struct iovec riov = {.iov_base = buf, .iov_len = buflen};
    struct msghdr rmh;
    memset(&rmh, 0, sizeof rmh);
    rmh.msg_iov = &riov;
    rmh.msg_iovlen = 1;
    rmh.msg_control = rcm.b;
    rmh.msg_controllen = sizeof rcm.b;
    ssize_t n;
    do
        n = recvmsg(s, &rmh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == ECONNRESET)
            die_local("the broker closed the connection without a reply");
        die_local("cannot read the reply from %s: %s", path, errname(errno));
    }
    /* the broker never sends descriptors; close any that came */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmh); c; c = CMSG_NXTHDR(&rmh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t j = 0; j < k; j++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof fd);
                close(fd);
            }
        }
    }
    close(s);
    if (rmh.msg_flags & MSG_TRUNC)
        die_local("the broker's reply is larger than %zu bytes", buflen);
    return (size_t)n;
}

/* ---------------------------------------------------------------- reply */

/* The table's text for a code, or NULL when the code is not in the table. */
static const char *code_text(const char *c)
{
    for (size_t k = 0; k < sizeof error_table / sizeof error_table[0]; k++)
        if (strcmp(c, error_table[k].code) == 0)
            return error_table[k].text;
    return NULL;
}

static void refused(const char *code, const char *msg) __attribute__((noreturn));
static void refused(const char *code, const char *msg)
{
    fprintf(stderr, "%s: %s: ", prog, code);
    put_safe(stderr, msg);
    fputc('\n', stderr);
    exit(EXIT_REFUSED);
}

/* Checks the reply like the TS decodeReply: returns the root object when ok is true; exits 2
 * with the code and message otherwise. */
static const struct json_value *decode_reply(struct json_doc **docp, const char *buf, size_t n)
{
    struct json_error err;
    struct json_doc *doc = json_parse(buf, n, MAX_REPLY_BYTES, &err);
    if (!doc)
        refused("EPROTO_JSON", "the broker sent a reply that is not JSON");
    const struct json_value *r = json_root(doc);
    int64_t v;
    if (r->type != JSON_OBJECT || json_int(json_get(r, "v"), &v) < 0 || v != PROTOCOL_VERSION)
        refused("EPROTO_VERSION", "the broker speaks another protocol version");
    if (json_get_type(r, "ok", JSON_TRUE)) {
        *docp = doc;
        return r;
    }
    const char *code = json_cstr(json_get(r, "code"));
    if (!code || !code_text(code))
        code = "EINTERNAL";
    const char *msg = json_cstr(json_get(r, "message"));
    if (!msg)
        msg = code_text(code);
    refused(code, msg);
}

/* A field as text for the list table: strings as they are, integers in decimal, else "". */
static const char *field_text(const struct json_value *m, const char *key, char *tmp, size_t tmplen)
{
    const struct json_value *v = json_get(m, key);
    if (!v)
        return "undefined";
    switch (v->type) {
    case JSON_STRING: {
        const char *s = json_cstr(v);
        return s ? s : "";
    }
    case JSON_NUMBER:
        snprintf(tmp, tmplen, "%s", v->u.num.text);
        return tmp;
    case JSON_NULL:
        return "null";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "";
    }
}

/* Display width in code points (the TS client pads by string length). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

#define LIST_COLS 9

static void print_list(const struct json_value *r)
{
    const struct json_value *ms = json_get_type(r, "mounts", JSON_ARRAY);
    if (!ms) {
        refused("EPROTO_FIELD", "the broker's list reply has no \"mounts\" array");
    }
    if (ms->u.list.count == 0) {
        puts("no mounts");
        return;
    }
    size_t rows = ms->u.list.count + 1;
    /* every cell is copied, so the table can be measured before it is printed */
    char *(*cells)[LIST_COLS] = calloc(rows, sizeof *cells);
    if (!cells)
        die_local("out of memory");
    static const char *const head[LIST_COLS] = {"ID", "STATE", "TYPE", "OPTS", "SOURCE", "TARGET", "UID", "SANDBOX", "EXIT"};
    for (int c = 0; c < LIST_COLS; c++)
        cells[0][c] = strdup(head[c]);
    size_t row = 1;
    for (const struct json_value *m = ms->u.list.first; m; m = m->next, row++) {
        static const char *const keys[LIST_COLS - 1] = {"id", "state", "fstype", "options", "source", "target", "owner_uid", "uid"};
        char tmp[64];
        for (int c = 0; c < LIST_COLS - 1; c++)
            cells[row][c] = strdup(field_text(m, keys[c], tmp, sizeof tmp));
        char exitbuf[96] = "";
        const char *state = json_cstr(json_get(m, "state"));
        if (state && strcmp(state, "exited") == 0) {
            int64_t sig = 0, code;
            const struct json_value *es = json_get(m, "exit_signal");
            int has_sig = es && json_int(es, &sig) == 0 && sig != 0;
            if (has_sig)
                snprintf(exitbuf, sizeof exitbuf, "signal %lld", (long long)sig);
            else if (json_int(json_get(m, "exit_code"), &code) == 0)
                snprintf(exitbuf, sizeof exitbuf, "status %lld", (long long)code);
            else
                snprintf(exitbuf, sizeof exitbuf, "status ?");
        }
        cells[row][LIST_COLS - 1] = strdup(exitbuf);
    }
    size_t w[LIST_COLS] = {0};
    for (size_t i = 0; i < rows; i++)
        for (int c = 0; c < LIST_COLS; c++) {
            if (!cells[i][c])
                die_local("out of memory");
            size_t cw = width(cells[i][c]);
            if (cw > w[c])
                w[c] = cw;
        }
    for (size_t i = 0; i < rows; i++) {
        /* like the TS client: cells padded and joined by two spaces, trailing blanks trimmed */
        struct json_buf line;
        json_buf_init(&line);
        for (int c = 0; c < LIST_COLS; c++) {
            if (c)
                json_buf_put(&line, "  ", 2);
            json_buf_puts(&line, cells[i][c]);
            for (size_t k = width(cells[i][c]); k < w[c]; k++)
                json_buf_put(&line, " ", 1);
        }
        if (line.failed)
            die_local("out of memory");
        while (line.len && line.data[line.len - 1] == ' ')
            line.data[--line.len] = 0;
        put_safe(stdout, line.data);
        fputc('\n', stdout);
        json_buf_free(&line);
        for (int c = 0; c < LIST_COLS; c++)
            free(cells[i][c]);
    }
    free(cells);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    struct args a;
    parse_args(argc, argv, &a);

    const char *sock = a.socket;
    if (!sock) {
        const char *env = getenv("FUSE_SVC_SOCKET");
        sock = env && *env ? env : DEFAULT_SOCKET;
    }

    struct json_buf body;
    json_buf_init(&body);
    int fds[2];
    int nfds = 0;
    json_buf_puts(&body, "{\"v\":1,\"op\":");
    switch (a.op) {
    case OP_MOUNT: {
        const char *source = a.pos[0], *target = a.pos[1];
        int ro = options_read_only(a.options);
        fds[nfds++] = open_role(source, ro ? O_RDONLY : O_RDWR, "source");
        fds[nfds++] = open_role(target, O_PATH | O_DIRECTORY | O_NOFOLLOW, "target");
        json_buf_puts(&body, "\"mount\",\"fstype\":");
        put_user_string(&body, a.fstype);
        json_buf_puts(&body, ",\"options\":");
        put_user_string(&body, a.options);
        json_buf_puts(&body, ",\"fds\":[\"source\",\"target\"],\"source_name\":");
        put_user_string(&body, source);
        json_buf_puts(&body, ",\"target_name\":");
        put_user_string(&body, target);
        break;
    }
    case OP_UNMOUNT:
        json_buf_puts(&body, "\"unmount\"");
        if (a.have_id) {
            char num[32];
            snprintf(num, sizeof num, ",\"id\":%lld", (long long)a.id);
            json_buf_puts(&body, num);
        } else {
            fds[nfds++] = open_role(a.pos[0], O_PATH | O_NOFOLLOW, "target");
            json_buf_puts(&body, ",\"fds\":[\"target\"]");
        }
        if (a.have_wait) {
            char num[48];
            snprintf(num, sizeof num, ",\"timeout_ms\":%lld", (long long)(a.wait_s * 1000 + 0.5));
            json_buf_puts(&body, num);
        }
        break;
    case OP_LIST:
    case OP_NONE:
        json_buf_puts(&body, "\"list\"");
        break;
    }
    json_buf_puts(&body, "}");
    if (body.failed)
        die_local("out of memory");
    if (body.len > MAX_MESSAGE_BYTES)
        refused("EPROTO_SIZE", "request too large");

    static char reply[MAX_REPLY_BYTES + 1];
    size_t n = exchange(sock, &body, fds, nfds, a.timeout_s, reply, sizeof reply - 1);
    for (int k = 0; k < nfds; k++)
        if (fds[k] >= 0)
            close(fds[k]);
    json_buf_free(&body);
    if (n == 0)
        die_local("the broker closed the connection without a reply");

    struct json_doc *doc = NULL;
    const struct json_value *r = decode_reply(&doc, reply, n);

    struct json_buf out;
    json_buf_init(&out);
    switch (a.op) {
    case OP_MOUNT:
        if (a.json) {
            json_buf_put_value(&out, r);
        } else {
            json_buf_puts(&out, "mounted ");
            json_buf_puts(&out, a.pos[1]);
            char tmp[64];
            snprintf(tmp, sizeof tmp, " (id %s)", field_text(r, "id", (char[32]){0}, 32));
            json_buf_puts(&out, tmp);
        }
        break;
    case OP_UNMOUNT:
        if (a.json) {
            json_buf_put_value(&out, r);
        } else {
            json_buf_puts(&out, "unmounted ");
            if (a.have_id) {
                char tmp[48];
                snprintf(tmp, sizeof tmp, "id %lld", (long long)a.id);
                json_buf_puts(&out, tmp);
            } else {
                json_buf_puts(&out, a.pos[0]);
            }
            char tmp[64];
            snprintf(tmp, sizeof tmp, " (id %s)", field_text(r, "id", (char[32]){0}, 32));
            json_buf_puts(&out, tmp);
        }
        break;
    case OP_LIST:
    case OP_NONE:
        if (a.json) {
            const struct json_value *ms = json_get_type(r, "mounts", JSON_ARRAY);
            if (!ms)
                refused("EPROTO_FIELD", "the broker's list reply has no \"mounts\" array");
            json_buf_puts(&out, "{\"mounts\":");
            json_buf_put_value(&out, ms);
            json_buf_puts(&out, "}");
        } else {
            print_list(r);
        }
        break;
    }
    if (out.failed)
        die_local("out of memory");
    if (out.len) {
        if (a.json)
            fputs(out.data, stdout);
        else
            put_safe(stdout, out.data);
        fputc('\n', stdout);
    }
    json_buf_free(&out);
    json_free(doc);
    if (fflush(stdout) != 0 || ferror(stdout))
        die_local("cannot write the output: %s", errname(errno));
    return 0;
}
