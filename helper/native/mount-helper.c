/*
 * The mount(8) and umount(8) personalities of fuse-svc-request: installed as
 * /sbin/mount.fuse-svc and /sbin/umount.fuse-svc (links to the one static client), they turn
 * util-linux's helper calling convention into an ordinary client request, so `mount -t
 * fuse-svc.ext4 IMG DIR`, fstab lines and `umount DIR` reach the broker with the same policy
 * and sandbox as `fuse-svc-request mount`.
 *
 * What util-linux 2.38 does (verified on Debian bookworm, docs/mount-helper.md):
 *  - `mount -t fuse-svc.TYPE` looks for /sbin/mount.fuse-svc.TYPE, then /sbin/mount.fuse-svc,
 *    and runs it as `mount.fuse-svc SOURCE DIR [-s] [-f] [-n] [-v] [-N NS] -o OPTS [-t TYPE]`
 *    (-t only when the helper's name does not already end in the type);
 *  - for a non-root user's fstab `user`/`users` entry it drops its setuid rights first: the
 *    helper runs with the user's real uid, so the broker sees the user through SO_PEERCRED. This
 *    program is never setuid: it can do nothing the user could not do with fuse-svc-request;
 *  - the user's own `-o` is appended after the fstab line's options (so `-o socket=` from the
 *    command line would come second: refused, the fstab line's socket stands);
 *  - umount(8) runs /sbin/umount.fuse-svc DIR [-flnrv] [-N NS] [-t TYPE] when the mount's utab
 *    entry carries `helper=fuse-svc` (the fstab line or -o put it there), as the calling user.
 *
 * Exit statuses are mount(8)'s, which it passes on: 1 bad invocation, 32 mount failure (the
 * broker's refusal, printed as "mount.fuse-svc: CODE: reason", or a local failure).
 */
#include <errno.h>
#include <fcntl.h>
#include <mntent.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mount-helper.h"

#define MH_EXIT_USAGE 1
#define MH_EXIT_FAIL 32
#define MH_MAX_OPTS 4096

static const char mount_usage[] =
    "NAME\n"
    "    mount.fuse-svc - mount(8) helper of fuse-svc: mount -t fuse-svc.TYPE, fstab lines\n"
    "\n"
    "SYNOPSIS\n"
    "    mount -t fuse-svc.TYPE [-o OPTS] SOURCE DIR\n"
    "    mount DIR                      (an fstab line; with user or users, as that user)\n"
    "    mount.fuse-svc SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t fuse-svc.TYPE]\n"
    "\n"
    "DESCRIPTION\n"
    "    fuse-svc-request under the name mount(8) gives it. It opens SOURCE and DIR with the\n"
    "    rights of whoever runs it (mount(8) runs it as the user for user/users fstab lines)\n"
    "    and asks the broker fuse-svcd to mount, exactly as `fuse-svc-request mount -t TYPE -o\n"
    "    OPTS SOURCE DIR` would. TYPE comes from -t fuse-svc.TYPE or from a name\n"
    "    mount.fuse-svc.TYPE; plain fuse-svc means ext4. The mount shows in findmnt as type\n"
    "    fuse.TYPE with SOURCE as its source. umount DIR (root, or the user who mounted) ends it;\n"
    "    with helper=fuse-svc in the options, umount(8) runs umount.fuse-svc, which waits until\n"
    "    the server has flushed and exited.\n"
    "\n"
    "OPTIONS (-o, comma-separated; no quotes or escapes)\n"
    "    ro, rw          the mode (the last wins)\n"
    "    socket=PATH     the broker socket (default: $FUSE_SVC_SOCKET, else\n"
    "                    /run/fuse-svc/broker.sock); at most once\n"
    "    noexec, exec    applied to the mount; nosuid and nodev are always on\n"
    "    other options   passed to the broker, which allows the server definition's options\n"
    "                    (e.g. norecovery) and refuses the rest with EOPTION\n"
    "    ignored         user, users, user=NAME, nouser, owner, group, defaults, auto, noauto,\n"
    "                    nofail, _netdev, comment=..., helper=..., uhelper=..., x-*, X-*\n"
    "                    (mount(8)'s own: it checked them before running this helper)\n"
    "    -f              fake: check the arguments, mount nothing\n"
    "    -N NS           mount in the mount namespace NS (a path or a pid; needs the rights\n"
    "                    to enter it)\n"
    "    -v              print \"mounted DIR (id N)\"; -s and -n are accepted and ignored\n"
    "\n"
    "EXAMPLES\n"
    "    mount -t fuse-svc.ext4 -o rw /srv/disk.img /mnt/disk\n"
    "    /home/u/disk.img /home/u/mnt fuse-svc.ext4 user,noauto,rw,helper=fuse-svc 0 0   (fstab)\n"
    "\n"
    "EXIT STATUS\n"
    "    0 mounted; 1 bad invocation; 32 the broker refused (\"mount.fuse-svc: CODE: reason\",\n"
    "    codes as in fuse-svc-request --help) or a local failure\n";

static const char umount_usage[] =
    "NAME\n"
    "    umount.fuse-svc - umount(8) helper of fuse-svc\n"
    "\n"
    "SYNOPSIS\n"
    "    umount DIR                     (a mount whose options carry helper=fuse-svc)\n"
    "    umount.fuse-svc DIR [-flnrv] [-N NS] [-t TYPE]\n"
    "\n"
    "DESCRIPTION\n"
    "    fuse-svc-request unmount DIR under the name umount(8) gives it: the broker detaches\n"
    "    the mount and waits until the filesystem server has flushed and exited. Runs with the\n"
    "    caller's rights; the broker lets the mount's owner and root unmount. The broker socket\n"
    "    is the socket= of DIR's fstab line, else $FUSE_SVC_SOCKET, else\n"
    "    /run/fuse-svc/broker.sock. -f, -l, -n, -r and -t are accepted and ignored (the\n"
    "    broker's unmount always detaches); -v prints what was done; -N NS enters the mount\n"
    "    namespace NS first. Without the broker, root can still run umount -i DIR: the\n"
    "    instance's launcher ends the server when its mount goes.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 unmounted; 1 bad invocation; 32 the broker refused or a local failure\n";

/* Messages may quote the caller's arguments: anything but printable ASCII is shown as \xNN,
 * so a crafted option cannot drive the terminal. */
static void mh_vsay(const char *prog, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mh_vsay(const char *prog, const char *fmt, va_list ap)
{
    char *msg = NULL;
    fprintf(stderr, "%s: ", prog);
    if (vasprintf(&msg, fmt, ap) < 0) {
        fputs("(out of memory)\n", stderr);
        return;
    }
    for (const unsigned char *s = (const unsigned char *)msg; *s; s++) {
        if (*s >= 0x20 && *s < 0x7f)
            fputc(*s, stderr);
        else
            fprintf(stderr, "\\x%02x", *s);
    }
    fputc('\n', stderr);
    free(msg);
}

static void mh_usage(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void mh_usage(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mh_vsay(prog, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try %s --help.\n", prog);
    exit(MH_EXIT_USAGE);
}

static void mh_fail(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void mh_fail(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mh_vsay(prog, fmt, ap);
    va_end(ap);
    exit(MH_EXIT_FAIL);
}

static const char *mh_errname(int e)
{
    static char buf[160];
    const char *n = strerrorname_np(e);
    snprintf(buf, sizeof buf, "%s (%s)", n ? n : "error", strerror(e));
    return buf;
}

/* -N NS: a pid (its mount namespace) or a path to a namespace file. setns moves our root and
 * cwd into it, and the broker attaches where the peer's pidfd says we are: in NS. */
static void enter_namespace(const char *prog, const char *ns)
{
    char path[64];
    const char *p = ns;
    size_t n = strspn(ns, "0123456789");
    if (n > 0 && ns[n] == 0 && n < 12) {
        snprintf(path, sizeof path, "/proc/%s/ns/mnt", ns);
        p = path;
    }
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        mh_fail(prog, "cannot open the mount namespace %s: %s", ns, mh_errname(errno));
    if (setns(fd, CLONE_NEWNS) < 0)
        mh_fail(prog, "cannot enter the mount namespace %s: %s", ns, mh_errname(errno));
    if (close(fd) < 0)
        mh_fail(prog, "close of the namespace descriptor: %s", mh_errname(errno));
}

/* Options mount(8) keeps for itself (permission and boot-time markers, comments, utab
 * notes): it has acted on them before running the helper, and the broker must not see them. */
static int ignored_option(const char *o)
{
    static const char *const exact[] = {"user", "users", "nouser", "owner", "group", "defaults",
                                        "auto", "noauto", "nofail", "_netdev"};
    static const char *const prefix[] = {"user=", "comment=", "helper=", "uhelper=", "x-", "X-"};
    for (size_t k = 0; k < sizeof exact / sizeof exact[0]; k++)
        if (strcmp(o, exact[k]) == 0)
            return 1;
    for (size_t k = 0; k < sizeof prefix / sizeof prefix[0]; k++)
        if (strncmp(o, prefix[k], strlen(prefix[k])) == 0)
            return 1;
    return 0;
}

/* Splits mount(8)'s option list: socket= is taken, mount(8)'s own options are dropped, the rest
 * goes to the broker unchanged (it is the one that decides). libmount keeps commas inside
 * double quotes and unescapes fstab's \ooo: a quote, a backslash, a space or a control
 * character could make this split and libmount's disagree, so they are refused. */
static void split_options(const char *prog, const char *opts, const char **socket, char *fwd, size_t fwdlen)
{
    char buf[MH_MAX_OPTS + 1];
    if (strlen(opts) > MH_MAX_OPTS)
        mh_usage(prog, "the options are longer than %d bytes", MH_MAX_OPTS);
    strcpy(buf, opts);
    size_t used = 0;
    fwd[0] = 0;
    char *save = NULL;
    for (char *o = strtok_r(buf, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        for (const unsigned char *c = (const unsigned char *)o; *c; c++)
            if (*c <= 0x20 || *c >= 0x7f || *c == '"' || *c == '\'' || *c == '\\')
                mh_usage(prog, "option \"%s\" holds a quote, backslash, space or control character; fuse-svc options have none", o);
        if (strncmp(o, "socket=", 7) == 0) {
            if (*socket)
                mh_usage(prog, "socket= is given twice (mount(8) appends command-line options to the fstab line's; the line's socket stands)");
            if (o[7] != '/')
                mh_usage(prog, "socket= needs an absolute path, not \"%s\"", o + 7);
            *socket = strdup(o + 7);
            if (!*socket)
                mh_fail(prog, "out of memory");
            continue;
        }
        if (ignored_option(o))
            continue;
        size_t n = strlen(o);
        if (used + (used ? 1 : 0) + n + 1 > fwdlen)
            mh_usage(prog, "the options are too long");
        if (used)
            fwd[used++] = ',';
        memcpy(fwd + used, o, n + 1);
        used += n;
    }
    if (used == 0)
        snprintf(fwd, fwdlen, "rw");
}

/* mount.fuse-svc[.TYPE] SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t fuse-svc.TYPE] */
static void mount_personality(int argc, char **argv, const char *name, struct personality *p)
{
    const char *prog = "mount.fuse-svc";
    const char *type = name[14] == '.' ? name + 15 : NULL; /* mount.fuse-svc.TYPE */
    const char *pos[2] = {NULL, NULL};
    int npos = 0, fake = 0, verbose = 0;
    const char *ns = NULL, *socket = NULL;
    static char opts[MH_MAX_OPTS + 1];
    size_t optslen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(mount_usage, stdout);
            exit(0);
        }
        if (a[0] != '-' || a[1] == 0) {
            if (npos == 2)
                mh_usage(prog, "too many arguments: give SOURCE and DIR");
            pos[npos++] = a;
            continue;
        }
        char f = a[1];
        if (f == 'o' || f == 't' || f == 'N') {
            const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                mh_usage(prog, "-%c needs a value", f);
            if (f == 'o') {
                /* mount(8) gives one -o; several are joined, as mount(8) would */
                size_t n = strlen(v);
                if (optslen + n + 2 > sizeof opts)
                    mh_usage(prog, "the options are longer than %d bytes", MH_MAX_OPTS);
                if (optslen)
                    opts[optslen++] = ',';
                memcpy(opts + optslen, v, n + 1);
                optslen += n;
            } else if (f == 't') {
                if (strcmp(v, "fuse-svc") == 0)
                    type = NULL;
                else if (strncmp(v, "fuse-svc.", 9) == 0 && v[9])
                    type = v + 9;
                else
                    mh_usage(prog, "-t must be fuse-svc.TYPE, not \"%s\"", v);
            } else {
                ns = v;
            }
            continue;
        }
        for (const char *c = a + 1; *c; c++) {
            if (*c == 'f')
                fake = 1;
            else if (*c == 'v')
                verbose = 1;
            else if (*c != 's' && *c != 'n')
                mh_usage(prog, "unknown option: %s", a);
        }
    }
    if (npos != 2 || !*pos[0] || !*pos[1])
        mh_usage(prog, "give SOURCE and DIR");
    if (type && (strchr(type, '/') || strchr(type, ',')))
        mh_usage(prog, "the type \"%s\" is malformed", type);
    static char fwd[MH_MAX_OPTS + 1];
    split_options(prog, opts, &socket, fwd, sizeof fwd);
    if (fake)
        exit(0);
    if (ns)
        enter_namespace(prog, ns);

    static char *out[16];
    int n = 0;
    out[n++] = argv[0];
    if (socket) {
        out[n++] = "--socket";
        out[n++] = (char *)socket;
    }
    out[n++] = "mount";
    if (type) {
        out[n++] = "-t";
        out[n++] = (char *)type;
    }
    out[n++] = "-o";
    out[n++] = fwd;
    out[n++] = "--";
    out[n++] = (char *)pos[0];
    out[n++] = (char *)pos[1];
    out[n] = NULL;
    p->argc = n;
    p->argv = out;
    p->prog = prog;
    p->quiet = !verbose;
}

/* umount(8) gives a helper no options, so the socket a mount was made through is found where
 * mount(8) found it: the socket= of the fstab line for DIR. NULL when there is none (then
 * $FUSE_SVC_SOCKET or the default, as for fuse-svc-request). /etc/fstab is root's file. */
static const char *fstab_socket(const char *prog, const char *dir)
{
    FILE *f = setmntent("/etc/fstab", "re");
    if (!f)
        return NULL;
    const char *found = NULL;
    struct mntent *m;
    while (!found && (m = getmntent(f)) != NULL) {
        if (strcmp(m->mnt_dir, dir) != 0 || strncmp(m->mnt_type, "fuse-svc", 8) != 0)
            continue;
        const char *o = hasmntopt(m, "socket");
        if (!o || strncmp(o, "socket=", 7) != 0)
            continue;
        size_t n = strcspn(o + 7, ",");
        char *v = strndup(o + 7, n);
        if (!v)
            mh_fail(prog, "out of memory");
        found = v;
    }
    endmntent(f);
    return found;
}

/* umount.fuse-svc DIR [-flnrv] [-N NS] [-t TYPE] */
static void umount_personality(int argc, char **argv, struct personality *p)
{
    const char *prog = "umount.fuse-svc";
    const char *dir = NULL, *ns = NULL;
    int verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(umount_usage, stdout);
            exit(0);
        }
        if (a[0] != '-' || a[1] == 0) {
            if (dir)
                mh_usage(prog, "too many arguments: give DIR");
            dir = a;
            continue;
        }
        if (a[1] == 't' || a[1] == 'N') {
            const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                mh_usage(prog, "-%c needs a value", a[1]);
            if (a[1] == 'N')
                ns = v;
            continue;
        }
        for (const char *c = a + 1; *c; c++) {
            if (*c == 'v')
                verbose = 1;
            else if (!strchr("flnr", *c))
                mh_usage(prog, "unknown option: %s", a);
        }
    }
    if (!dir || !*dir)
        mh_usage(prog, "give DIR");
    if (ns)
        enter_namespace(prog, ns);
    const char *socket = fstab_socket(prog, dir);
    static char *out[8];
    int n = 0;
    out[n++] = argv[0];
    if (socket) {
        out[n++] = "--socket";
        out[n++] = (char *)socket;
    }
    out[n++] = "unmount";
    out[n++] = "--";
    out[n++] = (char *)dir;
    out[n] = NULL;
    p->argc = n;
    p->argv = out;
    p->prog = prog;
    p->quiet = !verbose;
}

int personality_from_argv0(int argc, char **argv, struct personality *p)
{
    if (argc < 1 || !argv[0])
        return 0;
    const char *slash = strrchr(argv[0], '/');
    const char *name = slash ? slash + 1 : argv[0];
    if (strncmp(name, "mount.fuse-svc", 14) == 0 && (name[14] == 0 || (name[14] == '.' && name[15]))) {
        mount_personality(argc, argv, name, p);
    } else if (strcmp(name, "umount.fuse-svc") == 0) {
        umount_personality(argc, argv, p);
    } else {
        return 0;
    }
    p->exit_local = MH_EXIT_FAIL;
    p->exit_refused = MH_EXIT_FAIL;
    p->exit_usage = MH_EXIT_USAGE;
    return 1;
}
