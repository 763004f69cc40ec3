/*
 * fuse-svc-request: the fuse-svc client, the only one (package.json's bin, PATH after
 * install, containers, and the copy the broker publishes in its runtime directory). Static, so
 * it runs in containers without Node or libc (Alpine, distroless, scratch). Built by node-gyp as
 * build/Release/fuse-svc-client, linked -static. Its help, messages and exit status live here;
 * test/client-static.test.ts checks them against docs/protocol.md. Programs that want a library
 * use helper/client.ts.
 *
 * One request per connection (docs/protocol.md): connect an AF_UNIX SOCK_SEQPACKET socket,
 * send one JSON packet with the descriptors attached by SCM_RIGHTS, read one reply packet
 * (list: one per page). The descriptors are opened here, with the caller's own rights; nothing
 * is resolved by the broker. No shell, no environment besides FUSE_SVC_SOCKET, no locale.
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
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "mount-helper.h"

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
    {"EMOUNT_LEFT", "the instance ended but its mount is still in the caller's namespace (covered by another mount, or its launcher was killed before it detached): unmount it by path once it is uncovered"},
    {"ESHUTDOWN", "the broker is stopping"},
    {"EINTERNAL", "an internal error; the broker log has details"},
    {"EROFS_SERVER", "rw was asked for, but the server of this filesystem type is read-only (mount with -o ro)"},
    {"EPROTO_SERVICE", "a packet of libfuse's contained-service protocol is malformed, truncated, oversized or out of order (upstream sockets)"},
    {"EBADFD_FUSE", "the fusedev descriptor the helper sent is not an open /dev/fuse (upstream sockets)"},
    {"EBADFD_ARGV", "the argv descriptor the helper sent is not a small memfd holding an ARGS block (upstream sockets)"},
    {"EMOUNT_GIVEN", "the helper's own mount is refused: not found, mounted twice, lacking nosuid/nodev, or not owned by the caller (upstream sockets)"},
    {"EMOUNT_HELPER", "the helper answered a mount step (TYPE, NAME, MNTP, OPTS, MTAB, DOIT) with an error (upstream sockets)"},
    {"EBADFD_TRANSPORT", "the transport descriptor is not a connected AF_UNIX stream socket"},
    {"ESOURCE_KIND", "the request carries a source image where the server takes a transport (--via), or the reverse"},
};

static const char usage_text[] =
    "NAME\n"
    "    fuse-svc-request - mount filesystem images through fuse-svcd, without privileges\n"
    "\n"
    "SYNOPSIS\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] mount [-t TYPE] [-o OPTS] SOURCE TARGET\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] mount -t sshfs [-o OPTS] --via COMMAND\n"
    "                     [HOST:]PATH TARGET\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] unmount [--wait SEC] TARGET\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] unmount [--wait SEC] --id N\n"
    "    fuse-svc-request [--socket PATH] [--json] [--timeout SEC] list\n"
    "    fuse-svc-request --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    Asks the broker fuse-svcd to mount a filesystem image for you, or (--via) a remote\n"
    "    directory over SFTP. The types are those of the broker's server definitions\n"
    "    (server/*.json) that its configuration allows: as shipped ext2, ext3, ext4, squashfs,\n"
    "    iso9660, vfat, exfat, ntfs, zip, archive (tar and the like) and sshfs; a type it does\n"
    "    not serve is refused EFSTYPE with the list of those it does. The image and the mount\n"
    "    point are opened here, with your own rights, and passed to the broker as descriptors\n"
    "    (SCM_RIGHTS); the broker checks them as fusermount would, runs the filesystem server in\n"
    "    a sandbox, and attaches the mount in your own mount namespace, nosuid and nodev. You\n"
    "    need neither CAP_SYS_ADMIN nor /dev/fuse, only access to the broker socket. Options and\n"
    "    commands may come in any order; \"--\" ends the options.\n"
    "\n"
    "COMMANDS\n"
    "    mount SOURCE TARGET\n"
    "        Mount the image SOURCE (a regular file or block device; opened read-write, or\n"
    "        read-only when OPTS holds ro) on the directory TARGET (an empty directory you may\n"
    "        write to; never a symbolic link). Prints \"mounted TARGET (id N)\" once the\n"
    "        filesystem answers.\n"
    "    mount -t sshfs --via COMMAND SOURCE TARGET\n"
    "        Mount a remote directory over SFTP, with no image: SOURCE is PATH, :PATH or\n"
    "        HOST:PATH (a colon before any slash ends HOST), the directory on the remote side\n"
    "        (empty or relative: from the remote start directory). HOST is only shown (list,\n"
    "        the mount table); where the data comes from is COMMAND's business. The broker's\n"
    "        sshfs runs sandboxed with no network at all and speaks SFTP over a socket whose\n"
    "        other end is COMMAND's stdin and stdout.\n"
    "    unmount TARGET | unmount --id N      (alias: umount)\n"
    "        Unmount a broker mount you own (root: any), by mount point or by id; waits until\n"
    "        the filesystem server has flushed and exited. Prints \"unmounted TARGET (id N)\".\n"
    "    list\n"
    "        List your mounts (root: everyone's), including ones that ended since you last\n"
    "        listed them (each ended mount is shown to its owner once). Follows the broker's\n"
    "        pages, so it shows every mount however many there are.\n"
    "\n"
    "OPTIONS\n"
    "    --socket PATH   broker socket (default: $FUSE_SVC_SOCKET, else " DEFAULT_SOCKET ")\n"
    "    --json          print the broker's reply as one line of JSON instead of text\n"
    "    --timeout SEC   seconds to wait for each reply of the broker (default 60)\n"
    "    -t, --type TYPE filesystem type for mount (default ext4): one the broker serves, see\n"
    "                    DESCRIPTION\n"
    "    -o, --options OPTS\n"
    "                    comma-separated mount options: ro or rw (default rw; the last wins),\n"
    "                    plus options the server definition allows (e.g. norecovery)\n"
    "    --id N          unmount the mount with this id (as shown by mount and list)\n"
    "    --via COMMAND   mount: serve the filesystem's transport with COMMAND, one argument run\n"
    "                    by /bin/sh -c as you, with your credentials, network and stderr, its\n"
    "                    stdin and stdout one end of an AF_UNIX stream socketpair (the other\n"
    "                    end is sent to the broker). For sshfs COMMAND speaks SFTP, e.g.\n"
    "                    'ssh -s alice@host sftp' or '/usr/lib/openssh/sftp-server -d DIR'.\n"
    "                    COMMAND keeps running after the mount is made and ends with it: when\n"
    "                    the mount ends, COMMAND's stdin reaches EOF; when COMMAND exits or is\n"
    "                    killed, the mount ends and its instance is shown as exited. If the\n"
    "                    mount is refused, COMMAND gets EOF, then SIGTERM after 2 s. Keep its\n"
    "                    stderr away from a pipe you wait on (2>FILE): it outlives this program\n"
    "    --wait SEC      unmount: seconds the server gets to exit before it is terminated\n"
    "                    (default: the broker's, 10)\n"
    "    -h, --help      this text\n"
    "    --version       the version\n"
    "\n"
    "OUTPUT\n"
    "    list prints a table: ID, STATE (running, stopping, exited), TYPE, OPTS, SOURCE,\n"
    "    TARGET, UID (the owner), SANDBOX (the uid the server ran as), EXIT (\"status N\" or\n"
    "    \"signal N\" once ended), or \"no mounts\". With --json: mount and unmount print the\n"
    "    broker's reply; list prints one object {\"mounts\":[...]} holding every mount, each\n"
    "    with the fields of docs/protocol.md. Names are the callers' own text: in the table and\n"
    "    in messages, control characters (C0, DEL, C1), U+2028/U+2029 and bidi controls are\n"
    "    shown as \\xNN / \\uNNNN, as in the broker log; in JSON they are \\uNNNN escapes.\n"
    "\n"
    "ENVIRONMENT\n"
    "    FUSE_SVC_SOCKET the broker socket, when --socket is not given\n"
    "\n"
    "EXIT STATUS\n"
    "    0   done\n"
    "    1   a local error (cannot open a file, cannot reach the broker, no reply in time)\n"
    "    2   the broker refused; \"fuse-svc-request: CODE: reason\" is printed on stderr (CODE\n"
    "        from the list below)\n"
    "    64  usage error\n"
    "\n"
    "ERRORS\n"
    "    The codes the broker refuses with (docs/protocol.md):\n";

static const char usage_tail[] =
    "\n"
    "EXAMPLES\n"
    "    fuse-svc-request mount -t ext4 -o rw ./disk.img ./mnt\n"
    "    fuse-svc-request mount -t sshfs --via 'ssh -s alice@host sftp' host:/srv/data ./mnt\n"
    "    fuse-svc-request mount -t sshfs --via '/usr/lib/openssh/sftp-server -d /srv/pub' : ./mnt\n"
    "    fuse-svc-request list\n"
    "    fuse-svc-request --json list\n"
    "    fuse-svc-request unmount ./mnt\n"
    "\n"
    "SEE ALSO\n"
    "    fuse-svcd --help; docs/protocol.md and docs/security.md of fuse-svc\n";

static const char *prog = "fuse-svc-request";
/* Exit statuses and silence on success: the mount(8) helper personality (mount-helper.c) sets
 * mount(8)'s own. */
static int exit_local = EXIT_LOCAL, exit_refused = EXIT_REFUSED, exit_usage = EXIT_USAGE;
static int quiet;

/* ---------------------------------------------------------------- escaping */

/* One code point of valid UTF-8 at s[0..n): its length (1-4) and *cp, or 0 when the bytes there
 * are not valid UTF-8 (json_utf8_valid's rules: no overlongs, no surrogates, <= U+10FFFF). */
static size_t utf8_next(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t len = u[0] < 0x80 ? 1 : (u[0] & 0xe0) == 0xc0 ? 2 : (u[0] & 0xf0) == 0xe0 ? 3 : (u[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || len > n || !json_utf8_valid(s, len))
        return 0;
    uint32_t c = len == 1 ? u[0] : len == 2 ? (u[0] & 0x1fu) : len == 3 ? (u[0] & 0x0fu) : (u[0] & 0x07u);
    for (size_t k = 1; k < len; k++)
        c = (c << 6) | (u[k] & 0x3fu);
    *cp = c;
    return len;
}

/* supervisor/log.ts escapeText's set: C0, DEL, C1, U+2028/2029 and the bidi controls. */
static int must_escape(uint32_t c)
{
    return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x2028 || c == 0x2029 || c == 0x200e || c == 0x200f ||
           (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

/* Text for a terminal, by escapeText's rule: \xNN for C0/DEL/C1, \uNNNN for U+2028/9 and the
 * bidi controls. A byte that is not valid UTF-8 is shown as \xNN too: to an 8-bit terminal a
 * lone 0x9b is CSI. Everything else is copied. */
static void put_escaped(struct json_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n;) {
        uint32_t c = 0;
        size_t k = utf8_next(s + i, n - i, &c);
        if (k == 0) {
            unsigned char x = (unsigned char)s[i];
            char e[4] = {'\\', 'x', hex[x >> 4], hex[x & 15]};
            json_buf_put(b, e, 4);
            i++;
            continue;
        }
        if (!must_escape(c)) {
            json_buf_put(b, s + i, k);
        } else if (c <= 0xff) {
            char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            json_buf_put(b, e, 4);
        } else {
            char e[6] = {'\\', 'u', hex[(c >> 12) & 15], hex[(c >> 8) & 15], hex[(c >> 4) & 15], hex[c & 15]};
            json_buf_put(b, e, 6);
        }
        i += k;
    }
}

/* Writes s to f escaped (put_escaped); on memory failure, only its printable ASCII. */
static void put_safe(FILE *f, const char *s)
{
    struct json_buf b;
    json_buf_init(&b);
    put_escaped(&b, s, strlen(s));
    if (b.failed) {
        for (; *s; s++)
            if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f)
                fputc(*s, f);
    } else if (b.len) {
        fwrite(b.data, 1, b.len, f);
    }
    json_buf_free(&b);
}

/* "prog: MESSAGE" on stderr, the message escaped: it may quote a path or a name. */
static void vsay(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vsay(const char *fmt, va_list ap)
{
    char *msg = NULL;
    fprintf(stderr, "%s: ", prog);
    if (vasprintf(&msg, fmt, ap) < 0) {
        fputs("(out of memory)", stderr);
        return;
    }
    put_safe(stderr, msg);
    free(msg);
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry %s --help.\n", prog);
    exit(exit_usage);
}

static void die_local(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_local(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(exit_local);
}

/* "ENOENT (No such file or directory)" */
static const char *errname(int e)
{
    static char buf[160];
    const char *n = strerrorname_np(e);
    snprintf(buf, sizeof buf, "%s (%s)", n ? n : "error", strerror(e));
    return buf;
}

/* The manual: usage_text, the error table (the same one the replies are read with), the tail. */
static void print_help(void)
{
    fputs(usage_text, stdout);
    for (size_t k = 0; k < sizeof error_table / sizeof error_table[0]; k++)
        printf("    %-17s %s\n", error_table[k].code, error_table[k].text);
    fputs(usage_tail, stdout);
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
    const char *via;
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
            print_help();
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
        } else if (take_value(argc, argv, &i, "via", 0, &v)) {
            if (!*v)
                die_usage("--via needs a command");
            a->via = v;
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
    if (a->op != OP_MOUNT && a->via)
        die_usage("--via is an option of mount");
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

/* A JSON string from user input: invalid UTF-8 becomes U+FFFD (what the TypeScript library
 * sends for such a name, as Node decodes argv); everything else is escaped by json_buf_put_string. */
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
    exit(exit_refused);
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

/* A JSON string for output: JSON.stringify's escapes, and also \uNNNN for DEL, C1, U+2028/9 and
 * the bidi controls, so that JSON shown on a terminal cannot drive it either. Same value, still
 * valid JSON. s is valid UTF-8 (the parser checked it). */
static void put_json_string_safe(struct json_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    json_buf_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        uint32_t c = 0;
        size_t k = utf8_next(s + i, n - i, &c);
        if (k == 0) { /* cannot happen for parsed input; never emit invalid UTF-8 */
            json_buf_put(b, "\xef\xbf\xbd", 3);
            i++;
            continue;
        }
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        default: break;
        }
        if (e) {
            json_buf_puts(b, e);
        } else if (must_escape(c)) {
            char u[6] = {'\\', 'u', hex[(c >> 12) & 15], hex[(c >> 8) & 15], hex[(c >> 4) & 15], hex[c & 15]};
            json_buf_put(b, u, 6);
        } else {
            json_buf_put(b, s + i, k);
        }
        i += k;
    }
    json_buf_put(b, "\"", 1);
}

/* json_buf_put_value with put_json_string_safe for every string and key. */
static void put_json_safe(struct json_buf *b, const struct json_value *v)
{
    json_buf_put_value_with(b, v, put_json_string_safe);
}

#define LIST_COLS 9

/* The replies of one list walk: each page's document, kept until the output is written. */
struct pages {
    struct json_doc **docs;
    const struct json_value **mounts; /* each page's "mounts" array */
    size_t n, cap, total;
};

/* A cell for the table: the text escaped for a terminal, in memory of its own. */
static char *cell(const char *text)
{
    struct json_buf b;
    json_buf_init(&b);
    put_escaped(&b, text, strlen(text));
    json_buf_put(&b, "", 0);
    if (b.failed)
        die_local("out of memory");
    if (!b.data) {
        char *e = strdup("");
        if (!e)
            die_local("out of memory");
        return e;
    }
    return b.data; /* json_buf keeps data NUL-terminated */
}

static void print_list(const struct pages *pg)
{
    if (pg->total == 0) {
        puts("no mounts");
        return;
    }
    size_t rows = pg->total + 1;
    /* every cell is copied, so the table can be measured before it is printed */
    char *(*cells)[LIST_COLS] = calloc(rows, sizeof *cells);
    if (!cells)
        die_local("out of memory");
    static const char *const head[LIST_COLS] = {"ID", "STATE", "TYPE", "OPTS", "SOURCE", "TARGET", "UID", "SANDBOX", "EXIT"};
    for (int c = 0; c < LIST_COLS; c++)
        cells[0][c] = cell(head[c]);
    size_t row = 1;
    for (size_t p = 0; p < pg->n; p++) {
        for (const struct json_value *m = pg->mounts[p]->u.list.first; m; m = m->next, row++) {
            static const char *const keys[LIST_COLS - 1] = {"id", "state", "fstype", "options", "source", "target", "owner_uid", "uid"};
            char tmp[64];
            for (int c = 0; c < LIST_COLS - 1; c++)
                cells[row][c] = cell(field_text(m, keys[c], tmp, sizeof tmp));
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
            cells[row][LIST_COLS - 1] = cell(exitbuf);
        }
    }
    size_t w[LIST_COLS] = {0};
    for (size_t i = 0; i < rows; i++)
        for (int c = 0; c < LIST_COLS; c++) {
            size_t cw = width(cells[i][c]);
            if (cw > w[c])
                w[c] = cw;
        }
    for (size_t i = 0; i < rows; i++) {
        /* cells padded and joined by two spaces, trailing blanks trimmed; already escaped */
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
        fwrite(line.data, 1, line.len, stdout);
        fputc('\n', stdout);
        json_buf_free(&line);
        for (int c = 0; c < LIST_COLS; c++)
            free(cells[i][c]);
    }
    free(cells);
}

/* Asks for every page of the list (docs/protocol.md: the reply's "next" is the next request's
 * "after") and keeps them all. The first request carries no cursor, so a broker from before
 * paging answers it with everything and no "next". */
static void list_all(const char *sock, double timeout_s, struct pages *pg)
{
    static char reply[MAX_REPLY_BYTES + 1];
    int64_t after = 0;
    memset(pg, 0, sizeof *pg);
    for (;;) {
        struct json_buf body;
        json_buf_init(&body);
        if (after == 0) {
            json_buf_puts(&body, "{\"v\":1,\"op\":\"list\"}");
        } else {
            char num[64];
            snprintf(num, sizeof num, "{\"v\":1,\"op\":\"list\",\"after\":%lld}", (long long)after);
            json_buf_puts(&body, num);
        }
        if (body.failed)
            die_local("out of memory");
        size_t n = exchange(sock, &body, NULL, 0, timeout_s, reply, sizeof reply - 1);
        json_buf_free(&body);
        if (n == 0)
            die_local("the broker closed the connection without a reply");
        struct json_doc *doc = NULL;
        const struct json_value *r = decode_reply(&doc, reply, n);
        const struct json_value *ms = json_get_type(r, "mounts", JSON_ARRAY);
        if (!ms)
            refused("EPROTO_FIELD", "the broker's list reply has no \"mounts\" array");
        if (pg->n == pg->cap) {
            size_t cap = pg->cap ? pg->cap * 2 : 8;
            struct json_doc **d = realloc(pg->docs, cap * sizeof *d);
            if (!d)
                die_local("out of memory");
            pg->docs = d;
            const struct json_value **m = realloc(pg->mounts, cap * sizeof *m);
            if (!m)
                die_local("out of memory");
            pg->mounts = m;
            pg->cap = cap;
        }
        pg->docs[pg->n] = doc;
        pg->mounts[pg->n] = ms;
        pg->n++;
        pg->total += ms->u.list.count;
        const struct json_value *next = json_get(r, "next");
        if (!next || next->type == JSON_NULL)
            return;
        int64_t nx;
        /* ids only grow from page to page: anything else would never end */
        if (json_int(next, &nx) < 0 || nx <= after || nx > INT32_MAX || ms->u.list.count == 0)
            refused("EPROTO_FIELD", "the broker's list reply has a bad \"next\"");
        after = nx;
    }
}

static void free_pages(struct pages *pg)
{
    for (size_t k = 0; k < pg->n; k++)
        json_free(pg->docs[k]);
    free(pg->docs);
    free(pg->mounts);
}

/* list: every page, then one table or one {"mounts":[...]} object. */
static int do_list(const char *sock, const struct args *a)
{
    struct pages pg;
    list_all(sock, a->timeout_s, &pg);
    if (a->json) {
        struct json_buf out;
        json_buf_init(&out);
        json_buf_puts(&out, "{\"mounts\":[");
        int first = 1;
        for (size_t p = 0; p < pg.n; p++)
            for (const struct json_value *m = pg.mounts[p]->u.list.first; m; m = m->next) {
                if (!first)
                    json_buf_put(&out, ",", 1);
                first = 0;
                put_json_safe(&out, m);
            }
        json_buf_puts(&out, "]}\n");
        if (out.failed)
            die_local("out of memory");
        fwrite(out.data, 1, out.len, stdout);
        json_buf_free(&out);
    } else {
        print_list(&pg);
    }
    free_pages(&pg);
    if (fflush(stdout) != 0 || ferror(stdout))
        die_local("cannot write the output: %s", errname(errno));
    return 0;
}

/* ---------------------------------------------------------------- --via transport */

/* The COMMAND serving the transport, until the broker has the mount (then it is left running). */
static pid_t via_child = -1;

/*
 * A refused or failed mount: the COMMAND must not outlive it. Our end of the transport is
 * closed already (exchange), and the broker's and launcher's copies go with the refusal, so a
 * COMMAND that reads its stdin sees EOF and ends by itself; one that does not is terminated.
 */
static void via_cleanup(void)
{
    if (via_child <= 0)
        return;
    for (int tries = 0; tries < 40; tries++) { /* 2 s for it to see EOF and exit */
        pid_t r = waitpid(via_child, NULL, WNOHANG);
        if (r == via_child || (r < 0 && errno != EINTR))
            return;
        usleep(50000);
    }
    if (kill(via_child, SIGTERM) < 0)
        return;
    for (int tries = 0; tries < 40; tries++) {
        if (waitpid(via_child, NULL, WNOHANG) != 0)
            return;
        usleep(50000);
    }
    kill(via_child, SIGKILL);
    waitpid(via_child, NULL, 0);
}

/*
 * --via COMMAND: a connected AF_UNIX stream pair; COMMAND runs under /bin/sh -c as us, with our
 * credentials, network and stderr, and one end as its stdin and stdout. The other end is
 * returned, to be sent as the request's transport. Both ends are close-on-exec; dup2 gives the
 * child its copies without the flag.
 */
static int via_start(const char *command)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die_local("cannot create the transport socketpair: %s", errname(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die_local("cannot start the --via command: fork: %s", errname(errno));
    if (pid == 0) {
        if (dup2(sv[1], STDIN_FILENO) < 0 || dup2(sv[1], STDOUT_FILENO) < 0) {
            fprintf(stderr, "%s: --via: dup2: %s\n", prog, errname(errno));
            _exit(127);
        }
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
        fprintf(stderr, "%s: --via: cannot run /bin/sh: %s\n", prog, errname(errno));
        _exit(127);
    }
    if (close(sv[1]) < 0)
        die_local("close(transport end of the --via command): %s", errname(errno));
    via_child = pid;
    if (atexit(via_cleanup) != 0)
        die_local("atexit failed");
    return sv[0];
}

/* The mount is up: the COMMAND is the mount's now; it ends when the mount ends. */
static void via_release(void)
{
    via_child = -1;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    struct personality pers;
    if (personality_from_argv0(argc, argv, &pers)) {
        argc = pers.argc;
        argv = pers.argv;
        prog = pers.prog;
        quiet = pers.quiet;
        exit_local = pers.exit_local;
        exit_refused = pers.exit_refused;
        exit_usage = pers.exit_usage;
    }
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
        if (a.via)
            fds[nfds++] = via_start(a.via);
        else
            fds[nfds++] = open_role(source, ro ? O_RDONLY : O_RDWR, "source");
        fds[nfds++] = open_role(target, O_PATH | O_DIRECTORY | O_NOFOLLOW, "target");
        json_buf_puts(&body, "\"mount\",\"fstype\":");
        put_user_string(&body, a.fstype);
        json_buf_puts(&body, ",\"options\":");
        put_user_string(&body, a.options);
        json_buf_puts(&body, a.via ? ",\"fds\":[\"transport\",\"target\"],\"source_name\":" : ",\"fds\":[\"source\",\"target\"],\"source_name\":");
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
        json_buf_free(&body);
        return do_list(sock, &a);
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
    if (a.op == OP_MOUNT && a.via)
        via_release();

    struct json_buf out;
    json_buf_init(&out);
    switch (a.op) {
    case OP_MOUNT:
        if (a.json) {
            put_json_safe(&out, r);
        } else {
            json_buf_puts(&out, "mounted ");
            put_escaped(&out, a.pos[1], strlen(a.pos[1]));
            char tmp[64];
            snprintf(tmp, sizeof tmp, " (id %s)", field_text(r, "id", (char[32]){0}, 32));
            json_buf_puts(&out, tmp);
        }
        break;
    case OP_UNMOUNT:
        if (a.json) {
            put_json_safe(&out, r);
        } else {
            json_buf_puts(&out, "unmounted ");
            if (a.have_id) {
                char tmp[48];
                snprintf(tmp, sizeof tmp, "id %lld", (long long)a.id);
                json_buf_puts(&out, tmp);
            } else {
                put_escaped(&out, a.pos[0], strlen(a.pos[0]));
            }
            char tmp[64];
            snprintf(tmp, sizeof tmp, " (id %s)", field_text(r, "id", (char[32]){0}, 32));
            json_buf_puts(&out, tmp);
        }
        break;
    case OP_LIST:
    case OP_NONE:
        break;
    }
    if (out.failed)
        die_local("out of memory");
    if (out.len && !quiet) {
        fwrite(out.data, 1, out.len, stdout);
        fputc('\n', stdout);
    }
    json_buf_free(&out);
    json_free(doc);
    if (fflush(stdout) != 0 || ferror(stdout))
        die_local("cannot write the output: %s", errname(errno));
    return 0;
}
