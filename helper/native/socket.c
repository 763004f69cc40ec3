/*
 * fuse_svc_socket: the socket syscalls Node's `net` does not have.
 *
 * AF_UNIX SOCK_SEQPACKET / SOCK_STREAM listen, accept and connect; sendmsg/recvmsg with
 * SCM_RIGHTS; the peer's identity (SO_PEERCRED, SO_PEERPIDFD with a pidfd_open fallback);
 * pidfds; a libuv poll handle so the broker waits for all of it on the main thread; and a few
 * fd inspection calls (fstat, statx mount ids, fstatfs, openat, flock, dup).
 *
 * Plain C on N-API (no C++). Every descriptor this file creates is O_CLOEXEC. Every failing
 * syscall throws an Error with `code` (errno name), `errno` (positive number), `syscall`, and
 * the message "syscall: strerror". Wrong argument types throw TypeError, out-of-range values
 * RangeError. The typed interface is helper/native/socket.ts.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define NAPI_VERSION 8 /* napi_add_async_cleanup_hook; Node 20 has 9 */
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/close_range.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Newer than Debian bookworm's headers. */
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5 */
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x00001000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U /* Linux 6.8 */
#endif
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif
#ifndef SCM_MAX_FD
#define SCM_MAX_FD 253 /* the kernel's limit of descriptors per SCM_RIGHTS message */
#endif

#define MAX_RECV_BYTES (64 * 1024 * 1024)

/* ------------------------------------------------------------------ errors and arguments */

/* Every napi_* call is checked; a failing one means a bug or a pending exception. */
#define NAPI_OK(call)                                                                      \
    do {                                                                                   \
        if ((call) != napi_ok) {                                                           \
            throw_napi_failure(env, #call);                                                \
            return NULL;                                                                   \
        }                                                                                  \
    } while (0)

static void throw_napi_failure(napi_env env, const char *what) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
        return;
    const napi_extended_error_info *info = NULL;
    char msg[256];
    napi_get_last_error_info(env, &info);
    snprintf(msg, sizeof msg, "fuse_svc_socket: %s failed: %s", what,
             info && info->error_message ? info->error_message : "unknown N-API error");
    napi_throw_error(env, NULL, msg);
}

static const char *errno_name(int err) {
    const char *name = strerrorname_np(err);
    return name ? name : "EUNKNOWN";
}

/* Builds the Error value for `syscall` failing with `err` (NULL if even that fails). */
static napi_value make_errno_error(napi_env env, const char *syscall_name, int err) {
    char msg[256];
    napi_value code, message, error, errno_value, syscall_value;
    snprintf(msg, sizeof msg, "%s: %s", syscall_name, strerror(err));
    if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
        napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
        napi_create_error(env, code, message, &error) != napi_ok ||
        napi_create_int32(env, err, &errno_value) != napi_ok ||
        napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
        napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
        napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok)
        return NULL;
    return error;
}

/* Throws and returns NULL, so callers can `return throw_errno(...)`. */
static napi_value throw_errno(napi_env env, const char *syscall_name, int err) {
    napi_value error = make_errno_error(env, syscall_name, err);
    if (error)
        napi_throw(env, error);
    else
        throw_napi_failure(env, "creating an Error");
    return NULL;
}

static napi_value throw_type(napi_env env, const char *fn, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", fn, what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
}

static napi_value throw_range(napi_env env, const char *fn, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", fn, what);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return NULL;
}

/* Fetches exactly `want` arguments (missing ones are `undefined`). */
static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
    size_t argc = want;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
        throw_napi_failure(env, "napi_get_cb_info");
        return false;
    }
    for (size_t i = argc; i < want; i++)
        napi_get_undefined(env, &argv[i]);
    return true;
}

/* An integer in [min, max]; TypeError for a non-number or a fraction, RangeError outside. */
static bool get_int(napi_env env, napi_value v, const char *fn, const char *name, int64_t min,
                    int64_t max, int64_t *out) {
    napi_valuetype t;
    double d;
    char what[160];
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
        snprintf(what, sizeof what, "%s must be a number", name);
        throw_type(env, fn, what);
        return false;
    }
    napi_get_value_double(env, v, &d);
    if (d != d) {
        snprintf(what, sizeof what, "%s must be an integer, not NaN", name);
        throw_type(env, fn, what);
        return false;
    }
    if (d < (double)min || d > (double)max) {
        snprintf(what, sizeof what, "%s must be in [%lld, %lld]", name, (long long)min,
                 (long long)max);
        throw_range(env, fn, what);
        return false;
    }
    if (d != (double)(int64_t)d) { /* the cast is defined: d is within [min, max] */
        snprintf(what, sizeof what, "%s must be an integer", name);
        throw_type(env, fn, what);
        return false;
    }
    *out = (int64_t)d;
    return true;
}

static bool get_fd(napi_env env, napi_value v, const char *fn, const char *name, int *fd) {
    int64_t x;
    if (!get_int(env, v, fn, name, 0, INT_MAX, &x))
        return false;
    *fd = (int)x;
    return true;
}

static bool get_bool(napi_env env, napi_value v, const char *fn, const char *name, bool *out) {
    napi_valuetype t;
    char what[160];
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean) {
        snprintf(what, sizeof what, "%s must be a boolean", name);
        throw_type(env, fn, what);
        return false;
    }
    napi_get_value_bool(env, v, out);
    return true;
}

/* A string without NUL bytes, at most `cap - 1` bytes; longer ones set *too_long. */
static bool get_string(napi_env env, napi_value v, const char *fn, const char *name, char *buf,
                       size_t cap, bool *too_long) {
    napi_valuetype t;
    size_t len = 0;
    char what[160];
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
        snprintf(what, sizeof what, "%s must be a string", name);
        throw_type(env, fn, what);
        return false;
    }
    napi_get_value_string_utf8(env, v, NULL, 0, &len);
    *too_long = len >= cap;
    if (*too_long)
        return true;
    napi_get_value_string_utf8(env, v, buf, cap, &len);
    if (strlen(buf) != len) {
        snprintf(what, sizeof what, "%s must not contain NUL bytes", name);
        throw_type(env, fn, what);
        return false;
    }
    return true;
}

/* --------------------------------------------------------------------- object building */

static bool set_int(napi_env env, napi_value obj, const char *key, int64_t v) {
    napi_value x;
    return napi_create_int64(env, v, &x) == napi_ok &&
           napi_set_named_property(env, obj, key, x) == napi_ok;
}

static bool set_bool(napi_env env, napi_value obj, const char *key, bool v) {
    napi_value x;
    return napi_get_boolean(env, v, &x) == napi_ok &&
           napi_set_named_property(env, obj, key, x) == napi_ok;
}

static bool set_str(napi_env env, napi_value obj, const char *key, const char *v) {
    napi_value x;
    if (v == NULL)
        return napi_get_null(env, &x) == napi_ok &&
               napi_set_named_property(env, obj, key, x) == napi_ok;
    return napi_create_string_utf8(env, v, NAPI_AUTO_LENGTH, &x) == napi_ok &&
           napi_set_named_property(env, obj, key, x) == napi_ok;
}

static napi_value make_int(napi_env env, int64_t v) {
    napi_value x;
    NAPI_OK(napi_create_int64(env, v, &x));
    return x;
}

/* ------------------------------------------------------------------------------ sockets */

static void close_keep_errno(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

/* Fills `addr` from the JS path; throws ENAMETOOLONG past sun_path's 107 usable bytes. */
static bool get_sockaddr(napi_env env, napi_value v, const char *fn, struct sockaddr_un *addr,
                         socklen_t *len) {
    bool too_long;
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    if (!get_string(env, v, fn, "path", addr->sun_path, sizeof addr->sun_path, &too_long))
        return false;
    if (too_long) {
        throw_errno(env, "bind", ENAMETOOLONG);
        return false;
    }
    if (addr->sun_path[0] == '\0') {
        throw_type(env, fn, "path must not be empty");
        return false;
    }
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(addr->sun_path) + 1);
    return true;
}

/*
 * socket + bind + listen. The socket file must never exist with a wider mode than 0600, even
 * for an instant: fchmod on the unbound socket sets the mode bind uses (Linux takes the
 * socket inode's mode), and umask 0177 around bind covers the same ground by the documented
 * route. The caller chmods/chowns the file afterwards to the configured mode and group.
 */
static napi_value do_listen(napi_env env, napi_callback_info info, int type, const char *fn) {
    napi_value argv[2];
    struct sockaddr_un addr;
    socklen_t addrlen;
    int64_t backlog;
    if (!get_args(env, info, 2, argv) || !get_sockaddr(env, argv[0], fn, &addr, &addrlen) ||
        !get_int(env, argv[1], fn, "backlog", 1, INT_MAX, &backlog))
        return NULL;

    int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return throw_errno(env, "socket", errno);
    if (fchmod(fd, 0600) < 0) {
        close_keep_errno(fd);
        return throw_errno(env, "fchmod", errno);
    }
    mode_t old_umask = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&addr, addrlen);
    int bind_errno = errno;
    umask(old_umask);
    if (rc < 0) {
        close(fd);
        return throw_errno(env, "bind", bind_errno);
    }
    if (listen(fd, (int)backlog) < 0) {
        close_keep_errno(fd);
        return throw_errno(env, "listen", errno);
    }
    return make_int(env, fd);
}

static napi_value ListenSeqpacket(napi_env env, napi_callback_info info) {
    return do_listen(env, info, SOCK_SEQPACKET, "listenSeqpacket");
}

static napi_value ListenStream(napi_env env, napi_callback_info info) {
    return do_listen(env, info, SOCK_STREAM, "listenStream");
}

/* A blocking, close-on-exec client socket. */
static napi_value do_connect(napi_env env, napi_callback_info info, int type, const char *fn) {
    napi_value argv[1];
    struct sockaddr_un addr;
    socklen_t addrlen;
    if (!get_args(env, info, 1, argv) || !get_sockaddr(env, argv[0], fn, &addr, &addrlen))
        return NULL;
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return throw_errno(env, "socket", errno);
    if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0) {
        if (errno != EINTR) {
            close_keep_errno(fd);
            return throw_errno(env, "connect", errno);
        }
        /* An interrupted connect goes on in the background: wait for it, read its result. */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t errlen = sizeof err;
        while (poll(&p, 1, -1) < 0) {
            if (errno != EINTR) {
                close_keep_errno(fd);
                return throw_errno(env, "poll", errno);
            }
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0) {
            close_keep_errno(fd);
            return throw_errno(env, "getsockopt(SO_ERROR)", errno);
        }
        if (err != 0) {
            close(fd);
            return throw_errno(env, "connect", err);
        }
    }
    return make_int(env, fd);
}

static napi_value ConnectSeqpacket(napi_env env, napi_callback_info info) {
    return do_connect(env, info, SOCK_SEQPACKET, "connectSeqpacket");
}

static napi_value ConnectStream(napi_env env, napi_callback_info info) {
    return do_connect(env, info, SOCK_STREAM, "connectStream");
}

static int sys_pidfd_open(pid_t pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

/*
 * Before Linux 6.5 the peer's pidfd comes from pidfd_open(SO_PEERCRED's pid), and that pid may
 * have been reused since the connect. The process behind the pidfd is taken for the caller only
 * if it started before the accept (a process started later cannot have connected), runs with
 * the uid SO_PEERCRED gave, and is still the pidfd's process after /proc was read (so what was
 * read is its). What is left: the caller exits between connect and accept and a process of the
 * same uid, started before the accept, takes its pid; it gains nothing its uid does not have.
 */
static bool peer_pid_is_caller(int pidfd, const struct ucred *cred, unsigned long long accepted_ticks) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)cred->pid);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return false;
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0)
        return false;
    buf[n] = 0;
    /* Field 22 (starttime, clock ticks since boot) counts from after the ")" that ends comm. */
    char *p = strrchr(buf, ')');
    unsigned long long start = 0;
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    if (!p || sscanf(p + 1, "%llu", &start) != 1 || start > accepted_ticks)
        return false;
    snprintf(path, sizeof path, "/proc/%d/status", (int)cred->pid);
    f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return false;
    n = read(f, buf, sizeof buf - 1);
    close(f);
    if (n <= 0)
        return false;
    buf[n] = 0;
    /* SO_PEERCRED's uid is the effective uid at connect (a setuid helper's 0): compare that. */
    char *uid_line = strstr(buf, "\nUid:");
    unsigned long real_uid, eff_uid;
    if (!uid_line || sscanf(uid_line + 5, "%lu %lu", &real_uid, &eff_uid) != 2 || eff_uid != (unsigned long)cred->uid)
        return false;
    return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0;
}

/*
 * accept(fd, nonblock) -> { fd, uid, gid, pid, pidfd, pidfdSource, pidfdError } | null.
 * pid is SO_PEERCRED's, as seen from this pid namespace: 0 when the peer lives in a pid
 * namespace we cannot see into. The pidfd comes from SO_PEERPIDFD (it names the very process
 * that connected, whatever its namespace); before Linux 6.5 from pidfd_open(pid), which has
 * the usual pid-reuse race. pidfd is -1 when neither works (pidfdError says why).
 */
static napi_value Accept(napi_env env, napi_callback_info info) {
    napi_value argv[2], peer;
    int lfd, fd;
    bool nonblock;
    if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], "accept", "fd", &lfd) ||
        !get_bool(env, argv[1], "accept", "nonblock", &nonblock))
        return NULL;
    do
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0));
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            napi_value null_value;
            NAPI_OK(napi_get_null(env, &null_value));
            return null_value;
        }
        return throw_errno(env, "accept4", errno);
    }

    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        close_keep_errno(fd);
        return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
    }

    int pidfd = -1;
    const char *source = "none", *pidfd_error = NULL;
    len = sizeof pidfd;
    struct timespec now;
    clock_gettime(CLOCK_BOOTTIME, &now);
    unsigned long long accepted_ticks = (unsigned long long)now.tv_sec * (unsigned long long)sysconf(_SC_CLK_TCK) +
                                        (unsigned long long)now.tv_nsec * (unsigned long long)sysconf(_SC_CLK_TCK) / 1000000000ULL;
    /* FUSE_SVC_NO_PEERPIDFD=1 takes the pre-6.5 path on any kernel (tests, docs/security.md). */
    const char *no_peerpidfd = getenv("FUSE_SVC_NO_PEERPIDFD");
    bool forced_fallback = no_peerpidfd && strcmp(no_peerpidfd, "1") == 0;
    if (forced_fallback)
        errno = ENOPROTOOPT;
    if (!forced_fallback && getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0) {
        source = "SO_PEERPIDFD";
    } else {
        int err = errno;
        pidfd = -1;
        pidfd_error = errno_name(err);
        if ((err == ENOPROTOOPT || err == EINVAL) && cred.pid > 0) {
            pidfd = sys_pidfd_open(cred.pid, 0);
            if (pidfd >= 0 && !peer_pid_is_caller(pidfd, &cred, accepted_ticks)) {
                close(pidfd);
                pidfd = -1;
                pidfd_error = "EPIDREUSED";
            } else if (pidfd >= 0) {
                source = "pidfd_open";
                pidfd_error = NULL;
            } else {
                pidfd_error = errno_name(errno);
            }
        }
    }

    if (napi_create_object(env, &peer) != napi_ok || !set_int(env, peer, "fd", fd) ||
        !set_int(env, peer, "uid", cred.uid) || !set_int(env, peer, "gid", cred.gid) ||
        !set_int(env, peer, "pid", cred.pid) || !set_int(env, peer, "pidfd", pidfd) ||
        !set_str(env, peer, "pidfdSource", source) ||
        !set_str(env, peer, "pidfdError", pidfd_error)) {
        close(fd);
        if (pidfd >= 0)
            close(pidfd);
        throw_napi_failure(env, "building the peer object");
        return NULL;
    }
    return peer;
}

/* send(fd, data, fds) -> bytes sent. MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE. */
static napi_value Send(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    int fd;
    bool is_buffer, is_array;
    void *data;
    size_t data_len;
    uint32_t nfds;
    int fds[SCM_MAX_FD];
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], "send", "fd", &fd))
        return NULL;
    NAPI_OK(napi_is_buffer(env, argv[1], &is_buffer));
    if (!is_buffer)
        return throw_type(env, "send", "data must be a Buffer or Uint8Array");
    NAPI_OK(napi_get_buffer_info(env, argv[1], &data, &data_len));
    NAPI_OK(napi_is_array(env, argv[2], &is_array));
    if (!is_array)
        return throw_type(env, "send", "fds must be an array of descriptors");
    NAPI_OK(napi_get_array_length(env, argv[2], &nfds));
    if (nfds > SCM_MAX_FD)
        return throw_range(env, "send", "at most 253 descriptors per message");
    for (uint32_t i = 0; i < nfds; i++) {
        napi_value element;
        NAPI_OK(napi_get_element(env, argv[2], i, &element));
        if (!get_fd(env, element, "send", "fds[i]", &fds[i]))
            return NULL;
    }

    struct iovec iov = {.iov_base = data, .iov_len = data_len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int) * SCM_MAX_FD)];
        struct cmsghdr align;
    } control;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return throw_errno(env, "sendmsg", errno);
    return make_int(env, n);
}

/* -------------------------------------------------- descriptors below LOW_FDS */

/*
 * Descriptors callers send never take a number below LOW_FDS: every free slot there holds a
 * /dev/null placeholder, refilled before each recvmsg. spawn_clean relies on it: the kernel
 * copies a descriptor table in whole words of 64 (dup_fd rounds its size up to BITS_PER_LONG),
 * so a child can drop the broker's table without a copy only from 64 up; the slots below are
 * then the broker's own descriptors (Node's, sockets, pipes), whose close never waits on a
 * caller's FUSE server.
 */
#define LOW_FDS 64
static int placeholder_fd = -1;

static void reserve_low_fds(void) {
    if (placeholder_fd < 0) {
        placeholder_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (placeholder_fd < 0)
            return;
    }
    for (;;) {
        int f = fcntl(placeholder_fd, F_DUPFD_CLOEXEC, 0);
        if (f < 0)
            return;
        if (f >= LOW_FDS) {
            close(f);
            return;
        }
    }
}

/* -------------------------------------------------- dropping a caller's descriptors */

/*
 * Closing a descriptor a caller sent may block without end: close() of a file on a FUSE
 * filesystem sends FUSE_FLUSH and waits uninterruptibly for the caller's own server, which the
 * caller can SIGSTOP (BRIEF.md, "FUSE waits that no signal ends"). So the broker never closes
 * one on its own thread unless it proves the close cannot block (close_cannot_block, below:
 * O_PATH, and files on memory filesystems or the broker's own root filesystem); it gives the
 * others to a child cloned with CLONE_FILES: it shares the broker's descriptor table, so its
 * close() removes the broker's own entry, and the flush waits in the child. Not a thread: a thread stuck in a FUSE wait would keep the broker from
 * exiting; a stuck child only keeps the shared table alive until its server answers. No
 * CLONE_VM: the child runs on a copy of the memory and only makes raw syscalls.
 * Each child is remembered with a tag (the caller's uid) so the broker can bound how many a
 * caller keeps stuck (closersAlive). With a share set (setCloserShare), a tag never has more
 * than that many children: the descriptors it drops beyond them wait in `pending` (still open
 * in our table, untouched) until one of its children ends; so a caller that repeats the trick
 * holds at most `share` processes, and the broker refuses its new connections meanwhile.
 */
#define MAX_CLOSERS 4096
#define MAX_PENDING 65536
static struct {
    int pidfd;
    int64_t tag;
} closers[MAX_CLOSERS];
static size_t n_closers;
static struct {
    int fd;
    int64_t tag;
} waiting[MAX_PENDING];
static size_t n_waiting;
static int64_t closer_share; /* 0: no share */

static size_t closers_of(int64_t tag) {
    size_t count = 0;
    for (size_t i = 0; i < n_closers; i++)
        if (tag < 0 || closers[i].tag == tag)
            count++;
    return count;
}

static int closer_start(const int *fds, size_t n, int64_t tag);

/* Reaps closers that finished; the rest stay listed. */
static void closers_reap(void) {
    size_t k = 0;
    for (size_t i = 0; i < n_closers; i++) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        int rc = waitid((idtype_t)3 /* P_PIDFD */, (id_t)closers[i].pidfd, &si, WEXITED | WNOHANG);
        if ((rc == 0 && si.si_pid != 0) || (rc < 0 && errno == ECHILD)) {
            close(closers[i].pidfd);
            continue;
        }
        closers[k++] = closers[i];
    }
    n_closers = k;
    /* Give waiting descriptors to a new child of their tag where the tag has room. */
    for (size_t i = 0; i < n_waiting;) {
        int64_t tag = waiting[i].tag;
        if (closer_share > 0 && (int64_t)closers_of(tag) >= closer_share) {
            i++;
            continue;
        }
        int batch[SCM_MAX_FD];
        size_t nb = 0, keep = 0;
        for (size_t j = 0; j < n_waiting; j++) {
            if (waiting[j].tag == tag && nb < SCM_MAX_FD)
                batch[nb++] = waiting[j].fd;
            else
                waiting[keep++] = waiting[j];
        }
        if (closer_start(batch, nb, tag) != 0) {
            /* No child now (process limit): put them back and try at the next reap. */
            for (size_t j = 0; j < nb; j++) {
                waiting[n_waiting - nb + j].fd = batch[j];
                waiting[n_waiting - nb + j].tag = tag;
            }
            return;
        }
        n_waiting = keep;
        i = 0;
    }
}

/* Remembers a closer (the caller checked there is room). */
static void closers_add(int pidfd, int64_t tag) {
    closers[n_closers].pidfd = pidfd;
    closers[n_closers].tag = tag;
    n_closers++;
}

struct clone3_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

/* A child sharing our descriptor table (and a copy of the rest), like fork(); pidfd set. */
static long clone_files_child(int *pidfd) {
    struct clone3_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_FILES | 0x00001000ULL /* CLONE_PIDFD */;
    ca.pidfd = (uint64_t)(uintptr_t)pidfd;
    ca.exit_signal = SIGCHLD;
    return syscall(SYS_clone3, &ca, sizeof ca);
}

/*
 * Which caller descriptors the broker may close on its own thread: THE allow-list, the only
 * place that decides. Everything not proven safe here goes to a closer child (above).
 *
 * A close can block only where it reaches code the caller controls or a device that may never
 * answer: the file's ->flush and POSIX-lock removal (FUSE sends FLUSH/SETLK to the caller's
 * server; NFS, CIFS, 9p send to a server), its ->release, and, when ours is the last
 * reference, the inode's eviction (truncating an unlinked file writes to the device) and the
 * mount's/superblock's teardown (a lazily unmounted mount: the filesystem's sync). The proof
 * is made without touching the file's filesystem: statx with AT_STATX_DONT_SYNC (answered
 * from the inode's cached attributes, never sent to a FUSE server: fs/fuse/dir.c
 * fuse_update_get_attr; overlay passes the flag down to its layers) gives the type, the link
 * count and the unique id of the descriptor's OWN mount (file->f_path.mnt, so a bind mount, a
 * dup, a path renamed since or a link followed when it was opened cannot stand in for another
 * mount); statmount(2) of that id gives its superblock's magic and device, which the kernel
 * sets, never the filesystem's server. Safe are:
 *  - O_PATH descriptors: no file operations at all (no flush, no release, no locks).
 *  - A regular file or directory with links left (no eviction at our close) whose mount is in
 *    the broker's own mount namespace (statmount finds only those: a mount the caller made or
 *    detached in its own namespace answers ENOENT and goes to a closer; one the caller cannot
 *    unmount is never torn down by our close), on:
 *     - tmpfs, ramfs, hugetlbfs: memory only; no ->flush, release frees memory, no device.
 *     - the superblock of the broker's own root filesystem, when that is ext2/3/4, xfs or
 *       btrfs: none of them has a ->flush, their locks are in memory, and what a release may
 *       write (ext4's and btrfs's flush-on-close after a truncate) goes to the device the
 *       broker itself lives on: if that device stops, the broker is stopped already. Other
 *       superblocks of these types are not trusted: one on a loop device can be backed by a
 *       file on the caller's FUSE filesystem, and its writes then wait for that server.
 * Not safe, so a closer: FUSE (any kind, sb magic 0x65735546), overlay (its layers may be
 * FUSE), NFS, CIFS, 9p, ecryptfs, any other or unknown magic, devices (a driver's release),
 * FIFOs, pipes and sockets (not verified), an unlinked file, a mount not in our namespace, a
 * kernel without statmount (before 6.8: ENOSYS) or without the unique mount id.
 */
#ifndef SYS_statmount
#define SYS_statmount 457 /* Linux 6.8, the same number on every architecture */
#endif
#define STATMOUNT_SB_BASIC 0x00000001U
struct mnt_id_req_v0 {
    uint32_t size, spare;
    uint64_t mnt_id, param;
};
/* Version 1 (Linux 6.11) names the mount namespace to look the mount up in. */
struct mnt_id_req_v1 {
    uint32_t size, spare;
    uint64_t mnt_id, param, mnt_ns_id;
};
#ifndef PIDFD_GET_MNT_NAMESPACE
#define PIDFD_GET_MNT_NAMESPACE _IO(0xFF, 3) /* linux/pidfd.h, 6.11 */
#endif
#ifndef NS_GET_MNTNS_ID
#define NS_GET_MNTNS_ID _IOR(0xb7, 0x5, uint64_t) /* linux/nsfs.h, 6.8 */
#endif
/* The head of struct statmount (include/uapi/linux/mount.h); the kernel fills the rest too. */
struct statmount_head {
    uint32_t size, mnt_opts;
    uint64_t mask;
    uint32_t sb_dev_major, sb_dev_minor;
    uint64_t sb_magic;
    uint32_t sb_flags, fs_type;
};
#define MAGIC_TMPFS 0x01021994U
#define MAGIC_RAMFS 0x858458f6U
#define MAGIC_HUGETLBFS 0x958458f6U
#define MAGIC_EXT234 0x0000EF53U
#define MAGIC_XFS 0x58465342U
#define MAGIC_BTRFS 0x9123683EU

/* The superblock of mount `mnt_id` in our namespace: 0, or an errno (ENOENT: not ours). */
/* mnt_ns_id 0: our own mount namespace. */
static int sb_of_mount(uint64_t mnt_id, uint64_t mnt_ns_id, struct statmount_head *out) {
    struct mnt_id_req_v1 req = {.size = sizeof req, .mnt_id = mnt_id, .param = STATMOUNT_SB_BASIC, .mnt_ns_id = mnt_ns_id};
    /* The kernel writes the whole struct statmount (512 bytes in 6.18) and refuses a smaller
     * buffer with EOVERFLOW; 4 KiB leaves room for later additions. */
    union {
        struct statmount_head head;
        uint64_t raw[512];
    } buf;
    if (syscall(SYS_statmount, &req, &buf, sizeof buf, 0) < 0)
        return errno;
    if (!(buf.head.mask & STATMOUNT_SB_BASIC))
        return EOPNOTSUPP;
    *out = buf.head;
    return 0;
}

/* The broker's root filesystem's superblock, looked up once (0 magic: unknown, not trusted). */
static struct statmount_head root_sb;
static bool root_sb_known;
static void root_sb_lookup(void) {
    if (root_sb_known)
        return;
    root_sb_known = true;
    struct statx st;
    if (statx(AT_FDCWD, "/", AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE, &st) < 0 ||
        !(st.stx_mask & STATX_MNT_ID_UNIQUE) || sb_of_mount(st.stx_mnt_id, 0, &root_sb) != 0)
        memset(&root_sb, 0, sizeof root_sb);
}

/*
 * The id of the mount namespace of the process behind `pidfd` (0: none, or unknown). A caller's
 * descriptors are mostly files of mounts in its own namespace, which statmount finds only when
 * told where to look; what decides is still the superblock, wherever the mount is attached.
 */
static uint64_t mntns_id_of(int pidfd) {
    if (pidfd < 0)
        return 0;
    int ns = ioctl(pidfd, PIDFD_GET_MNT_NAMESPACE, 0);
    if (ns < 0)
        return 0;
    uint64_t id = 0;
    if (ioctl(ns, NS_GET_MNTNS_ID, &id) < 0)
        id = 0;
    close(ns); /* an nsfs file: its close reaches no filesystem */
    return id;
}

/* The caller whose descriptors drop_fds is deciding on: its pidfd and, once looked up, its
 * mount namespace id (a lookup per drop, only when a mount is not in ours). */
struct caller_ns {
    int pidfd;
    bool looked_up;
    uint64_t id;
};

/* True only when closing `fd` (F_GETFL flags `fl`) on this thread provably cannot block. */
static bool close_cannot_block(int fd, int fl, struct caller_ns *cns) {
    if (fl & O_PATH)
        return true;
    struct statx st;
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
              STATX_TYPE | STATX_NLINK | STATX_MNT_ID_UNIQUE, &st) < 0)
        return false;
    if ((st.stx_mask & (STATX_TYPE | STATX_NLINK | STATX_MNT_ID_UNIQUE)) != (STATX_TYPE | STATX_NLINK | STATX_MNT_ID_UNIQUE))
        return false;
    if (!S_ISREG(st.stx_mode) && !S_ISDIR(st.stx_mode))
        return false;
    if (st.stx_nlink == 0)
        return false;
    struct statmount_head sb = {0};
    bool theirs = false;
    int r = sb_of_mount(st.stx_mnt_id, 0, &sb);
    if (r == ENOENT && cns && cns->pidfd >= 0) {
        theirs = true;
        /* Not attached in our namespace: maybe in the caller's (a container, `unshare -m`).
         * Lazily unmounted mounts are attached nowhere and stay unknown: a closer's. */
        if (!cns->looked_up) {
            cns->id = mntns_id_of(cns->pidfd);
            cns->looked_up = true;
        }
        if (cns->id)
            r = sb_of_mount(st.stx_mnt_id, cns->id, &sb);
    }
    if (r != 0)
        return false;
    switch ((uint32_t)sb.sb_magic) {
    case MAGIC_TMPFS:
    case MAGIC_RAMFS:
    case MAGIC_HUGETLBFS:
        /* Not one of the caller's: it could unmount its own tmpfs lazily between this check
         * and the close, which would then free the whole filesystem on this thread. */
        return !theirs && sb.sb_magic >> 32 == 0;
    case MAGIC_EXT234:
    case MAGIC_XFS:
    case MAGIC_BTRFS:
        /* Also through a mount of the caller's namespace: our own root mount holds this
         * superblock, so no close of theirs is ever its last reference. */
        root_sb_lookup();
        return sb.sb_magic == root_sb.sb_magic && sb.sb_dev_major == root_sb.sb_dev_major &&
               sb.sb_dev_minor == root_sb.sb_dev_minor;
    default:
        return false;
    }
}

/* Counts for tests and benchmarks: descriptors closed here, and closers started. */
static uint64_t n_closed_inline, n_closers_started;

/*
 * Returns 0, or an errno; on failure the descriptors are still open (the caller decides).
 * *nslow_out: how many went to a closer (started or waiting for the tag's share).
 */
static int drop_fds(const int *fds, size_t n, int64_t tag, int caller_pidfd, size_t *nslow_out) {
    int slow[SCM_MAX_FD];
    size_t nslow = 0;
    struct caller_ns cns = {.pidfd = caller_pidfd};
    if (nslow_out)
        *nslow_out = 0;
    for (size_t i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        int fl = fcntl(fds[i], F_GETFL);
        if (fl < 0)
            continue;
        if (close_cannot_block(fds[i], fl, &cns)) {
            close(fds[i]);
            n_closed_inline++;
        } else if (nslow < SCM_MAX_FD) {
            slow[nslow++] = fds[i];
        }
    }
    if (nslow == 0)
        return 0;
    if (nslow_out)
        *nslow_out = nslow;
    closers_reap();
    if (closer_share > 0 && (int64_t)closers_of(tag) >= closer_share) {
        if (n_waiting + nslow <= MAX_PENDING) {
            for (size_t i = 0; i < nslow; i++) {
                waiting[n_waiting].fd = slow[i];
                waiting[n_waiting].tag = tag;
                n_waiting++;
            }
            return 0;
        }
        /* The table is full (many uids at their share): a closer beyond this tag's share
         * rather than a close on this thread; MAX_CLOSERS still bounds them all. */
    }
    return closer_start(slow, nslow, tag);
}

/* A CLONE_FILES child closing fds[0..n) (see above); 0 or an errno, the fds open on failure. */
static int closer_start(const int *slow, size_t nslow, int64_t tag) {
    if (n_closers >= MAX_CLOSERS)
        return EAGAIN;
    int pidfd = -1;
    long pid = clone_files_child(&pidfd);
    if (pid < 0)
        return errno;
    if (pid == 0) {
        /* The child: raw syscalls only (glibc's state is a copy of another thread's). */
        for (size_t i = 0; i < nslow; i++)
            syscall(SYS_close, slow[i]);
        syscall(SYS_exit, 0);
        for (;;)
            ;
    }
    /* CLONE_FILES: the pidfd is in the shared table too; keep it out of exec'd children. */
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    closers_add(pidfd, tag);
    n_closers_started++;
    return 0;
}

/* dropFds(fds, tag): closes them off this thread (see drop_fds). Throws on failure, fds open. */
static napi_value DropFds(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    bool is_array;
    uint32_t n;
    int fds[SCM_MAX_FD];
    int64_t tag, caller_pidfd = -1;
    napi_valuetype t3;
    if (!get_args(env, info, 3, argv))
        return NULL;
    if (napi_typeof(env, argv[2], &t3) == napi_ok && t3 != napi_undefined &&
        !get_int(env, argv[2], "dropFds", "callerPidfd", -1, INT_MAX, &caller_pidfd))
        return NULL;
    if (napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, argv[0], &n) != napi_ok || n > SCM_MAX_FD)
        return throw_type(env, "dropFds", "fds must be an array of at most 253 descriptors");
    if (!get_int(env, argv[1], "dropFds", "tag", -1, INT64_MAX / 2, &tag))
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        napi_value v;
        int64_t x;
        napi_get_element(env, argv[0], i, &v);
        if (!get_int(env, v, "dropFds", "fds[i]", -1, INT_MAX, &x))
            return NULL;
        fds[i] = (int)x;
    }
    size_t nslow = 0;
    int err = drop_fds(fds, n, tag, (int)caller_pidfd, &nslow);
    if (err)
        return throw_errno(env, "clone3", err);
    return make_int(env, (int64_t)nslow);
}

/* closeStats() -> { inline, closers }: descriptors closed on this thread, closers started. */
static napi_value CloseStats(napi_env env, napi_callback_info info) {
    napi_value obj;
    (void)info;
    NAPI_OK(napi_create_object(env, &obj));
    if (!set_int(env, obj, "inline", (int64_t)n_closed_inline) || !set_int(env, obj, "closers", (int64_t)n_closers_started)) {
        throw_napi_failure(env, "building the closeStats result");
        return NULL;
    }
    return obj;
}

/* closersAlive(tag) -> how many closers of that tag (-1: all) have not finished. */
static napi_value ClosersAlive(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int64_t tag;
    if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], "closersAlive", "tag", -1, INT64_MAX / 2, &tag))
        return NULL;
    closers_reap();
    return make_int(env, (int64_t)closers_of(tag));
}

/* closersPending() -> descriptors waiting for a closer of their tag (a reap starts them). */
static napi_value ClosersPending(napi_env env, napi_callback_info info) {
    (void)info;
    closers_reap();
    return make_int(env, (int64_t)n_waiting);
}

/* setCloserShare(n): at most n closers (and statfs children) per tag; 0 for no share. */
static napi_value SetCloserShare(napi_env env, napi_callback_info info) {
    napi_value argv[1], out;
    int64_t n;
    if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], "setCloserShare", "n", 0, MAX_CLOSERS, &n))
        return NULL;
    closer_share = n;
    napi_get_undefined(env, &out);
    return out;
}

/*
 * fstatfsStart(fd, tag) -> readFd: fstatfs sends STATFS to a FUSE server (when the broker is
 * let through, e.g. allow_other), so it runs in a CLONE_FILES child (counted under `tag` like
 * a closer) that writes three int64 to the pipe: -errno or 0, f_type, f_flags. The caller
 * polls readFd with its own deadline and closes it (a pipe: its close never blocks).
 */
static napi_value FstatfsStart(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int fd, p[2];
    int64_t tag;
    if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], "fstatfsStart", "fd", &fd) ||
        !get_int(env, argv[1], "fstatfsStart", "tag", -1, INT64_MAX / 2, &tag))
        return NULL;
    closers_reap();
    if (n_closers >= MAX_CLOSERS)
        return throw_errno(env, "clone3", EAGAIN);
    /* The tag's share is used up (its earlier ones wait on a server): EDQUOT, refuse. */
    if (closer_share > 0 && (int64_t)closers_of(tag) >= closer_share)
        return throw_errno(env, "fstatfsStart", EDQUOT);
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return throw_errno(env, "pipe2", errno);
    int pidfd = -1;
    long pid = clone_files_child(&pidfd);
    if (pid < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        return throw_errno(env, "clone3", err);
    }
    if (pid == 0) {
        struct statfs sf;
        memset(&sf, 0, sizeof sf);
        long rc = syscall(SYS_fstatfs, fd, &sf);
        int64_t msg[3] = {rc < 0 ? -errno : 0, (uint32_t)sf.f_type, (int64_t)sf.f_flags};
        syscall(SYS_write, p[1], msg, sizeof msg);
        /* The write end is in the shared table: close it so the reader sees EOF, not a hang. */
        syscall(SYS_close, p[1]);
        syscall(SYS_exit, 0);
        for (;;)
            ;
    }
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    /* Not closed here: the child's write end is this very table entry; the child closes it. */
    closers_add(pidfd, tag);
    return make_int(env, p[0]);
}

/*
 * recv(fd, maxBytes, maxFds) -> { data, fds, truncated, eof } | null (EAGAIN on a
 * non-blocking fd). Descriptors arrive close-on-exec. `truncated` is MSG_TRUNC or MSG_CTRUNC
 * or more descriptors than maxFds (those extra ones are closed here, never leaked).
 * eof: 0 bytes and no descriptors, i.e. the peer closed (on SOCK_SEQPACKET an empty packet
 * looks the same; the protocol never sends one).
 */
static napi_value Recv(napi_env env, napi_callback_info info) {
    napi_value argv[4], result, buffer, fd_array;
    napi_valuetype tag_type;
    int fd;
    int64_t max_bytes, max_fds, tag = -1;
    if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], "recv", "fd", &fd) ||
        !get_int(env, argv[1], "recv", "maxBytes", 0, MAX_RECV_BYTES, &max_bytes) ||
        !get_int(env, argv[2], "recv", "maxFds", 0, SCM_MAX_FD, &max_fds))
        return NULL;
    NAPI_OK(napi_typeof(env, argv[3], &tag_type));
    if (tag_type != napi_undefined && !get_int(env, argv[3], "recv", "tag", -1, INT64_MAX / 2, &tag))
        return NULL;

    char *data = malloc(max_bytes > 0 ? (size_t)max_bytes : 1);
    if (!data)
        return throw_errno(env, "malloc", ENOMEM);
    union {
        char buf[CMSG_SPACE(sizeof(int) * SCM_MAX_FD)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = data, .iov_len = (size_t)max_bytes};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (max_fds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds);
    }
    ssize_t n;
    reserve_low_fds(); /* whatever arrives lands at LOW_FDS or above (see there) */
    do
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int err = errno;
        free(data);
        if (err == EAGAIN || err == EWOULDBLOCK) {
            napi_value null_value;
            NAPI_OK(napi_get_null(env, &null_value));
            return null_value;
        }
        return throw_errno(env, "recvmsg", err);
    }

    /* Take every descriptor out of every SCM_RIGHTS header before anything can fail. */
    int fds[SCM_MAX_FD], extra[SCM_MAX_FD];
    size_t nfds = 0, nextra = 0;
    bool truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    if (msg.msg_controllen > 0) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
                c->cmsg_len < CMSG_LEN(0))
                continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            const unsigned char *p = CMSG_DATA(c);
            for (size_t i = 0; i < count; i++) {
                int one;
                memcpy(&one, p + i * sizeof(int), sizeof(int));
                if (nfds < (size_t)max_fds) {
                    fds[nfds++] = one;
                } else {
                    extra[nextra++] = one; /* dropped below, never closed on this thread */
                    truncated = true;
                }
            }
        }
    }

    /* tag < 0: not a caller's descriptors (a client, a test): close them here. A caller's go to
     * drop_fds; if not even a closer can be started (MAX_CLOSERS, the process limit), they stay
     * open: a leak bounded by our descriptor limit (accept backs off at EMFILE) instead of a
     * close that may wait for the caller's stopped FUSE server with every other caller. */
    if (nextra && tag < 0) {
        for (size_t i = 0; i < nextra; i++)
            close(extra[i]);
    } else if (nextra) {
        (void)drop_fds(extra, nextra, tag, -1, NULL);
    }
    bool ok = napi_create_object(env, &result) == napi_ok &&
              napi_create_buffer_copy(env, (size_t)n, data, NULL, &buffer) == napi_ok &&
              napi_set_named_property(env, result, "data", buffer) == napi_ok &&
              napi_create_array_with_length(env, nfds, &fd_array) == napi_ok;
    free(data);
    for (size_t i = 0; ok && i < nfds; i++) {
        napi_value x;
        ok = napi_create_int32(env, fds[i], &x) == napi_ok &&
             napi_set_element(env, fd_array, (uint32_t)i, x) == napi_ok;
    }
    ok = ok && napi_set_named_property(env, result, "fds", fd_array) == napi_ok &&
         set_bool(env, result, "truncated", truncated) &&
         set_bool(env, result, "eof", n == 0 && nfds == 0 && !truncated);
    if (!ok) {
        if (tag < 0) {
            for (size_t i = 0; i < nfds; i++)
                close(fds[i]);
        } else {
            (void)drop_fds(fds, nfds, tag, -1, NULL); /* as above: never a close here */
        }
        throw_napi_failure(env, "building the recv result");
        return NULL;
    }
    return result;
}

/* ---------------------------------------------------------------------- libuv polling */

/*
 * poll(fd, events, callback) -> an external handle for pollStop/pollRef/pollUnref.
 * A uv_poll_t is level-triggered: the callback runs on every loop iteration while the fd
 * stays ready, so the caller drains it (accept/recv until null) or stops the watcher.
 *
 * Lifetimes: the watcher lives from poll() until uv_close completes. The JS external only
 * points at a small box; the box and the watcher forget each other when either goes away,
 * so a collected external never frees a live handle and a closed handle is never touched
 * through a stale external. An active watcher whose external was collected keeps running
 * (like any active Node handle) until the environment shuts down.
 */
typedef struct watch_box watch_box;

typedef struct {
    uv_poll_t handle;
    napi_env env;
    napi_ref callback;
    napi_async_context async;
    watch_box *box;
    napi_async_cleanup_hook_handle cleanup; /* NULL until registered */
    int fd;
    bool closing;
    bool js_released;
} watcher;

struct watch_box {
    watcher *w;
};

static void watcher_release_js(watcher *w) {
    if (w->js_released)
        return;
    w->js_released = true;
    napi_delete_reference(w->env, w->callback);
    napi_async_destroy(w->env, w->async);
}

/*
 * The last thing that touches a watcher. Removing the async cleanup hook here (not at stop)
 * tells Node the handle is gone: Node unloads this addon at environment teardown (worker
 * exit) only after every such hook is removed, so no close callback ever runs into unmapped
 * code.
 */
static void watcher_on_close(uv_handle_t *h) {
    watcher *w = h->data;
    watcher_release_js(w);
    if (w->box)
        w->box->w = NULL;
    if (w->cleanup)
        napi_remove_async_cleanup_hook(w->cleanup);
    free(w);
}

static void watcher_close(watcher *w) {
    if (w->closing)
        return;
    w->closing = true;
    uv_poll_stop(&w->handle);
    uv_close((uv_handle_t *)&w->handle, watcher_on_close);
}

/* The environment is going away (worker exit, process exit): close the handle, then finish. */
static void watcher_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
    watcher *w = arg;
    (void)handle;
    watcher_release_js(w);
    watcher_close(w); /* if already closing, its close callback removes the hook */
}

static void watch_box_finalize(napi_env env, void *data, void *hint) {
    watch_box *box = data;
    (void)env;
    (void)hint;
    if (box->w)
        box->w->box = NULL;
    free(box);
}

static void watcher_on_poll(uv_poll_t *h, int status, int events) {
    watcher *w = h->data;
    napi_env env = w->env;
    napi_handle_scope scope;
    napi_value callback, recv, argv[2], result;
    if (w->closing || w->js_released)
        return;
    if (napi_open_handle_scope(env, &scope) != napi_ok)
        return;
    if (napi_get_reference_value(env, w->callback, &callback) != napi_ok || !callback ||
        napi_get_global(env, &recv) != napi_ok) /* MakeCallback needs an object receiver */
        goto out;
    if (status < 0) {
        napi_value code, message;
        char msg[256];
        snprintf(msg, sizeof msg, "poll: %s", uv_strerror(status));
        if (napi_create_string_utf8(env, uv_err_name(status), NAPI_AUTO_LENGTH, &code) != napi_ok ||
            napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
            napi_create_error(env, code, message, &argv[0]) != napi_ok)
            goto out;
        set_int(env, argv[0], "errno", -status);
        set_str(env, argv[0], "syscall", "poll");
        events = 0;
    } else if (napi_get_null(env, &argv[0]) != napi_ok) {
        goto out;
    }
    if (napi_create_int32(env, events, &argv[1]) != napi_ok)
        goto out;
    /* May stop (and so start closing) this watcher; `w` stays valid until the close callback. */
    if (napi_make_callback(env, w->async, recv, callback, 2, argv, &result) != napi_ok) {
        bool pending = false;
        napi_value exception;
        if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
            napi_get_and_clear_last_exception(env, &exception) == napi_ok)
            napi_fatal_exception(env, exception); /* -> process 'uncaughtException' */
    }
out:
    napi_close_handle_scope(env, scope);
}

static napi_value Poll(napi_env env, napi_callback_info info) {
    napi_value argv[3], name, external;
    napi_valuetype t;
    int fd, events = 0, rc;
    char which[16];
    bool too_long;
    uv_loop_t *loop;
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], "poll", "fd", &fd) ||
        !get_string(env, argv[1], "poll", "events", which, sizeof which, &too_long))
        return NULL;
    if (!too_long && strcmp(which, "readable") == 0)
        events = UV_READABLE;
    else if (!too_long && strcmp(which, "writable") == 0)
        events = UV_WRITABLE;
    else if (!too_long && strcmp(which, "readwrite") == 0)
        events = UV_READABLE | UV_WRITABLE;
    else
        return throw_type(env, "poll", "events must be 'readable', 'writable' or 'readwrite'");
    NAPI_OK(napi_typeof(env, argv[2], &t));
    if (t != napi_function)
        return throw_type(env, "poll", "callback must be a function");
    NAPI_OK(napi_get_uv_event_loop(env, &loop));

    watcher *w = calloc(1, sizeof *w);
    if (!w)
        return throw_errno(env, "malloc", ENOMEM);
    w->env = env;
    w->fd = fd;
    w->js_released = true; /* until the callback reference and async context exist */
    rc = uv_poll_init(loop, &w->handle, fd); /* note: sets O_NONBLOCK on fd */
    if (rc < 0) {
        free(w); /* nothing registered with the loop yet */
        return throw_errno(env, "uv_poll_init", -rc);
    }
    w->handle.data = w;
    /* From here on, failures close the handle; its close callback frees `w`. */
    if (napi_create_string_utf8(env, "FuseSvcPoll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, NULL, name, &w->async) != napi_ok) {
        watcher_close(w);
        throw_napi_failure(env, "napi_async_init");
        return NULL;
    }
    if (napi_create_reference(env, argv[2], 1, &w->callback) != napi_ok) {
        napi_async_destroy(env, w->async);
        watcher_close(w);
        throw_napi_failure(env, "napi_create_reference");
        return NULL;
    }
    w->js_released = false;
    if (napi_add_async_cleanup_hook(env, watcher_env_cleanup, w, &w->cleanup) != napi_ok) {
        w->cleanup = NULL;
        watcher_close(w);
        throw_napi_failure(env, "napi_add_async_cleanup_hook");
        return NULL;
    }
    rc = uv_poll_start(&w->handle, events, watcher_on_poll);
    if (rc < 0) {
        watcher_close(w);
        return throw_errno(env, "uv_poll_start", -rc);
    }
    watch_box *box = calloc(1, sizeof *box);
    if (!box) {
        watcher_close(w);
        return throw_errno(env, "malloc", ENOMEM);
    }
    if (napi_create_external(env, box, watch_box_finalize, NULL, &external) != napi_ok) {
        free(box);
        watcher_close(w);
        throw_napi_failure(env, "napi_create_external");
        return NULL;
    }
    box->w = w;
    w->box = box;
    return external;
}

static bool get_watcher(napi_env env, napi_callback_info info, const char *fn, watcher **out) {
    napi_value argv[1];
    napi_valuetype t;
    void *data;
    if (!get_args(env, info, 1, argv))
        return false;
    if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external) {
        throw_type(env, fn, "handle must be a watcher from poll()");
        return false;
    }
    if (napi_get_value_external(env, argv[0], &data) != napi_ok) {
        throw_napi_failure(env, "napi_get_value_external");
        return false;
    }
    *out = ((watch_box *)data)->w; /* NULL once closed */
    return true;
}

/* Stops for good; the fd stays open. No callback runs after this returns. Idempotent. */
static napi_value PollStop(napi_env env, napi_callback_info info) {
    watcher *w;
    if (!get_watcher(env, info, "pollStop", &w))
        return NULL;
    if (w)
        watcher_close(w);
    return NULL;
}

static napi_value PollRef(napi_env env, napi_callback_info info) {
    watcher *w;
    if (!get_watcher(env, info, "pollRef", &w))
        return NULL;
    if (w && !w->closing)
        uv_ref((uv_handle_t *)&w->handle);
    return NULL;
}

static napi_value PollUnref(napi_env env, napi_callback_info info) {
    watcher *w;
    if (!get_watcher(env, info, "pollUnref", &w))
        return NULL;
    if (w && !w->closing)
        uv_unref((uv_handle_t *)&w->handle);
    return NULL;
}

/* ------------------------------------------------------------------ descriptors, pidfds */

static napi_value Close(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "close", "fd", &fd))
        return NULL;
    /* On Linux the descriptor is gone even when close reports EINTR: never retry. */
    if (close(fd) < 0 && errno != EINTR)
        return throw_errno(env, "close", errno);
    return NULL;
}

static napi_value PidfdOpen(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int64_t pid;
    if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], "pidfdOpen", "pid", 1, INT_MAX, &pid))
        return NULL;
    int fd = sys_pidfd_open((pid_t)pid, 0); /* pidfds are always close-on-exec */
    if (fd < 0)
        return throw_errno(env, "pidfd_open", errno);
    return make_int(env, fd);
}

static napi_value PidfdSendSignal(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int pidfd;
    int64_t sig;
    if (!get_args(env, info, 2, argv) || !get_fd(env, argv[0], "pidfdSendSignal", "pidfd", &pidfd) ||
        !get_int(env, argv[1], "pidfdSendSignal", "sig", 0, 64, &sig))
        return NULL;
    if (syscall(SYS_pidfd_send_signal, pidfd, (int)sig, NULL, 0) < 0)
        return throw_errno(env, "pidfd_send_signal", errno);
    return NULL;
}

/*
 * pidfdIsAlive(pidfd): poll for POLLIN with no wait; a pidfd turns readable when its process
 * exits. Unlike pidfd_send_signal(pidfd, 0), this works across pid namespaces (a broker in a
 * container cannot signal a client outside its namespace: EINVAL).
 */
static napi_value PidfdIsAlive(napi_env env, napi_callback_info info) {
    napi_value argv[1], out;
    int pidfd, rc;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "pidfdIsAlive", "pidfd", &pidfd))
        return NULL;
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    do
        rc = poll(&p, 1, 0);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return throw_errno(env, "poll", errno);
    if (p.revents & POLLNVAL)
        return throw_errno(env, "poll", EBADF);
    NAPI_OK(napi_get_boolean(env, rc == 0, &out));
    return out;
}

static const char *type_name(mode_t mode) {
    switch (mode & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "dir";
    case S_IFCHR: return "chr";
    case S_IFBLK: return "blk";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "sock";
    case S_IFLNK: return "lnk";
    default: return "unknown";
    }
}

/*
 * fdInfo(fd): fstat + F_GETFL + F_GETFD. dev/ino/rdev/size are numbers (exact below 2^53).
 * mode is the full st_mode (type bits included).
 */
static napi_value FdInfo(napi_env env, napi_callback_info info) {
    napi_value argv[1], obj;
    int fd, flags, fdflags;
    struct statx st;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "fdInfo", "fd", &fd))
        return NULL;
    /* AT_STATX_DONT_SYNC: a caller's descriptor may live on a FUSE filesystem the caller runs;
     * a plain fstat would send GETATTR and wait for as long as that server wants. With it the
     * kernel answers from its cached attributes (fs/fuse/dir.c fuse_update_get_attr). */
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_BASIC_STATS, &st) < 0)
        return throw_errno(env, "statx", errno);
    if ((flags = fcntl(fd, F_GETFL)) < 0)
        return throw_errno(env, "fcntl(F_GETFL)", errno);
    if ((fdflags = fcntl(fd, F_GETFD)) < 0)
        return throw_errno(env, "fcntl(F_GETFD)", errno);
    const char *accmode = (flags & O_PATH) ? "path"
                          : (flags & O_ACCMODE) == O_RDONLY ? "r"
                          : (flags & O_ACCMODE) == O_WRONLY ? "w"
                                                            : "rw";
    dev_t dev = makedev(st.stx_dev_major, st.stx_dev_minor);
    NAPI_OK(napi_create_object(env, &obj));
    if (!set_str(env, obj, "type", type_name(st.stx_mode)) || !set_int(env, obj, "mode", st.stx_mode) ||
        !set_int(env, obj, "uid", st.stx_uid) || !set_int(env, obj, "gid", st.stx_gid) ||
        !set_int(env, obj, "dev", (int64_t)dev) ||
        !set_int(env, obj, "devMajor", st.stx_dev_major) ||
        !set_int(env, obj, "devMinor", st.stx_dev_minor) ||
        !set_int(env, obj, "ino", (int64_t)st.stx_ino) ||
        !set_int(env, obj, "rdev", (int64_t)makedev(st.stx_rdev_major, st.stx_rdev_minor)) ||
        !set_int(env, obj, "rdevMajor", st.stx_rdev_major) ||
        !set_int(env, obj, "rdevMinor", st.stx_rdev_minor) ||
        !set_int(env, obj, "size", (int64_t)st.stx_size) || !set_int(env, obj, "nlink", (int64_t)st.stx_nlink) ||
        !set_str(env, obj, "accmode", accmode) || !set_int(env, obj, "flags", flags) ||
        !set_bool(env, obj, "cloexec", (fdflags & FD_CLOEXEC) != 0)) {
        throw_napi_failure(env, "building the fdInfo result");
        return NULL;
    }
    return obj;
}

/*
 * statxMount(fd): the kernel answers one kind of mount id per call (the unique one when both
 * are asked for), so ask twice. Throws EOPNOTSUPP (syscall "statx") when the kernel cannot
 * give the unique id (before 6.8) or the mount-root attribute.
 */
static napi_value StatxMount(napi_env env, napi_callback_info info) {
    napi_value argv[1], obj, unique;
    int fd;
    struct statx a, b;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "statxMount", "fd", &fd))
        return NULL;
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE, &a) < 0)
        return throw_errno(env, "statx", errno);
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID, &b) < 0)
        return throw_errno(env, "statx", errno);
    if (!(a.stx_mask & STATX_MNT_ID_UNIQUE) || !(b.stx_mask & STATX_MNT_ID) ||
        !(a.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        return throw_errno(env, "statx", EOPNOTSUPP);
    NAPI_OK(napi_create_object(env, &obj));
    NAPI_OK(napi_create_bigint_uint64(env, a.stx_mnt_id, &unique));
    NAPI_OK(napi_set_named_property(env, obj, "mntIdUnique", unique));
    if (!set_int(env, obj, "mntId", (int64_t)b.stx_mnt_id) ||
        !set_bool(env, obj, "isMountRoot", (a.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0)) {
        throw_napi_failure(env, "building the statxMount result");
        return NULL;
    }
    return obj;
}

/* openat(dirfd, path, flags[, mode]): O_CLOEXEC is always added. dirfd may be AT_FDCWD. */
static napi_value Openat(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    napi_valuetype t;
    int64_t dirfd, flags, mode = 0;
    char path[PATH_MAX];
    bool too_long;
    if (!get_args(env, info, 4, argv) ||
        !get_int(env, argv[0], "openat", "dirfd", AT_FDCWD, INT_MAX, &dirfd) ||
        !get_string(env, argv[1], "openat", "path", path, sizeof path, &too_long) ||
        !get_int(env, argv[2], "openat", "flags", 0, INT_MAX, &flags))
        return NULL;
    if (dirfd < 0 && dirfd != AT_FDCWD)
        return throw_range(env, "openat", "dirfd must be a descriptor or AT_FDCWD");
    NAPI_OK(napi_typeof(env, argv[3], &t));
    if (t != napi_undefined && !get_int(env, argv[3], "openat", "mode", 0, 07777, &mode))
        return NULL;
    if (too_long)
        return throw_errno(env, "openat", ENAMETOOLONG);
    int fd;
    do
        fd = openat((int)dirfd, path, (int)flags | O_CLOEXEC, (mode_t)mode);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return throw_errno(env, "openat", errno);
    return make_int(env, fd);
}

static napi_value Fstatfs(napi_env env, napi_callback_info info) {
    napi_value argv[1], obj;
    int fd;
    struct statfs sf;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "fstatfs", "fd", &fd))
        return NULL;
    if (fstatfs(fd, &sf) < 0)
        return throw_errno(env, "fstatfs", errno);
    NAPI_OK(napi_create_object(env, &obj));
    /* f_type is a 32-bit magic number (e.g. 0xEF53 ext4, 0x65735546 FUSE). */
    if (!set_int(env, obj, "type", (uint32_t)sf.f_type) || !set_int(env, obj, "flags", sf.f_flags)) {
        throw_napi_failure(env, "building the fstatfs result");
        return NULL;
    }
    return obj;
}

/* flock(fd, exclusive, nonblock) -> true when taken, false when held elsewhere (nonblock). */
static napi_value Flock(napi_env env, napi_callback_info info) {
    napi_value argv[3], out;
    int fd, rc;
    bool exclusive, nonblock;
    if (!get_args(env, info, 3, argv) || !get_fd(env, argv[0], "flock", "fd", &fd) ||
        !get_bool(env, argv[1], "flock", "exclusive", &exclusive) ||
        !get_bool(env, argv[2], "flock", "nonblock", &nonblock))
        return NULL;
    do
        rc = flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | (nonblock ? LOCK_NB : 0));
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EWOULDBLOCK)
        return throw_errno(env, "flock", errno);
    NAPI_OK(napi_get_boolean(env, rc == 0, &out));
    return out;
}

static napi_value DupCloexec(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int fd, copy;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "dupCloexec", "fd", &fd))
        return NULL;
    /* At least 3, so a copy never lands on a closed stdin/stdout/stderr slot. */
    if ((copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0)
        return throw_errno(env, "fcntl(F_DUPFD_CLOEXEC)", errno);
    return make_int(env, copy);
}


/* ------------------------------------------------------------------------------ processes */

#define SPAWN_MAX_ARGS 64
#define SPAWN_MAX_FDS 16
#define SPAWN_ARG_MAX 4096

/*
 * spawnDetached(path, args, fds) -> pid: starts `path` with argv `args`, an empty environment,
 * its own session, default signal handling, and exactly the descriptors `fds` at 0, 1, 2, ...
 * (-1 = /dev/null). The caller reaps it (pidfdReap): Node does not know this child.
 *
 * Why not posix_spawn or fork: a child starts with a copy of the broker's descriptor table,
 * which may hold descriptors callers sent (files on a FUSE filesystem the caller runs and can
 * SIGSTOP). Closing the copies, at exec for close-on-exec ones or by closefrom, sends FUSE_FLUSH
 * and waits uninterruptibly for that server; posix_spawn (CLONE_VFORK) would make the broker
 * wait with it. So the child never holds a copy of anything but what it is given:
 *   1. the descriptors to give travel in one SCM_RIGHTS message on a fresh socketpair (in
 *      flight they belong to the socket, and a dropped message releases them without a flush);
 *   2. for the moment of the clone, the broker's fd 0 is that socket (restored right after);
 *   3. the child, sharing the table (CLONE_FILES), calls close_range(LOW_FDS, ~0, UNSHARE):
 *      the kernel gives it a new table with copies of 0..LOW_FDS-1 only, without closing
 *      anything (the rest is simply not taken: no close, no flush); those are the broker's
 *      own (reserve_low_fds keeps callers' above), so closing all but fd 0 is safe;
 *   4. it receives the message: the descriptors land at 0, 1, 2, ... in order (lowest free),
 *      plus a close-on-exec status pipe last, and it execs.
 * CLONE_VM|CLONE_VFORK as posix_spawn, so the cost does not grow with the broker's heap.
 */
struct spawn_child {
    const char *path;
    char **args;
    int nfds; /* descriptors to land at 0..nfds-1; the status pipe lands at nfds */
};

/* The child, on its own stack and the broker's memory: async-signal-safe calls only. */
static int spawn_child_main(void *arg) {
    const struct spawn_child *c = arg;
    char *envp[] = {NULL};
    int got[SPAWN_MAX_FDS + 1];
    char byte;
    union {
        char buf[CMSG_SPACE(sizeof(int) * (SPAWN_MAX_FDS + 1))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};

    /* A table of our own holding copies of 0..LOW_FDS-1 only (callers' descriptors are all
     * above: reserve_low_fds); then those copies go too but fd 0, the socket. */
    if (syscall(SYS_close_range, (unsigned)LOW_FDS, ~0U, CLOSE_RANGE_UNSHARE) != 0 ||
        syscall(SYS_close_range, 1U, (unsigned)LOW_FDS - 1, 0U) != 0)
        _exit(127);
    int sock_fd = fcntl(0, F_DUPFD_CLOEXEC, SPAWN_MAX_FDS + 2);
    if (sock_fd < 0 || close(0) != 0)
        _exit(127);
    if (recvmsg(sock_fd, &msg, MSG_DONTWAIT) != 1)
        _exit(127);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int) * (size_t)(c->nfds + 1)))
        _exit(127);
    memcpy(got, CMSG_DATA(cm), sizeof(int) * (size_t)(c->nfds + 1));
    for (int i = 0; i <= c->nfds; i++)
        if (got[i] != i)
            _exit(127);
    if (fcntl(c->nfds, F_SETFD, FD_CLOEXEC) != 0 || close(sock_fd) != 0)
        _exit(127);
    if (setsid() < 0)
        _exit(127);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* SIGKILL, SIGSTOP and glibc's own fail: ignored */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(c->path, c->args, envp);
    int err = errno;
    if (write(c->nfds, &err, sizeof err) < 0) {
        /* nothing left to tell */
    }
    _exit(127);
}

/* The spawn itself (see above); 0 and *pid, or an errno with nothing started. */
static int spawn_clean(const char *path, char **args, const int *fds, int nfds, pid_t *pid) {
    int give[SPAWN_MAX_FDS + 1], sp[2] = {-1, -1}, st[2] = {-1, -1}, saved0 = -1;
    int err = 0;
    char byte = 0;
    void *stack = MAP_FAILED;
    const size_t stack_size = 256 * 1024;
    union {
        char buf[CMSG_SPACE(sizeof(int) * (SPAWN_MAX_FDS + 1))];
        struct cmsghdr align;
    } u;

    /* The placeholder (opened read-write at module load) is every spawn's /dev/null: no open on
     * the mount path, and no descriptor that appears only after the first spawn. */
    reserve_low_fds();
    const int shared_devnull = placeholder_fd;
    if (shared_devnull < 0)
        return EBADF;
    if (pipe2(st, O_CLOEXEC) < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
        err = errno;
        goto out;
    }
    for (int i = 0; i < nfds; i++)
        give[i] = fds[i] >= 0 ? fds[i] : shared_devnull;
    give[nfds] = st[1];
    {
        struct iovec iov = {.iov_base = &byte, .iov_len = 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)(nfds + 1))};
        memset(u.buf, 0, sizeof u.buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)(nfds + 1));
        memcpy(CMSG_DATA(cm), give, sizeof(int) * (size_t)(nfds + 1));
        if (sendmsg(sp[0], &msg, MSG_NOSIGNAL) != 1) {
            err = errno;
            goto out;
        }
    }
    /* Our copies of the pipe's write end and of the sending socket: not needed any more. */
    close(st[1]);
    st[1] = -1;
    close(sp[0]);
    sp[0] = -1;
    stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        err = errno;
        goto out;
    }
    saved0 = fcntl(0, F_DUPFD_CLOEXEC, 3);
    if (saved0 < 0) {
        err = errno;
        goto out;
    }
    {
        struct spawn_child c = {.path = path, .args = args, .nfds = nfds};
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (dup3(sp[1], 0, 0) < 0) {
            err = errno;
        } else {
            *pid = clone(spawn_child_main, (char *)stack + stack_size,
                         CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, &c);
            if (*pid < 0)
                err = errno;
            /* fd 0 is ours again (the socket it held is closed by this, never a caller's file). */
            if (dup3(saved0, 0, 0) < 0 && !err)
                err = errno;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (!err) {
        /* EOF: exec succeeded (close-on-exec); an int: the child's execve errno. */
        int child_err = 0;
        ssize_t n;
        do
            n = read(st[0], &child_err, sizeof child_err);
        while (n < 0 && errno == EINTR);
        if (n != 0) {
            err = n == (ssize_t)sizeof child_err ? child_err : EPROTO;
            int status;
            waitpid(*pid, &status, 0);
        }
    }
out:
    if (stack != MAP_FAILED)
        munmap(stack, stack_size);
    for (int *f = (int[]){sp[0], sp[1], st[0], st[1], saved0}, i = 0; i < 5; i++)
        if (f[i] >= 0)
            close(f[i]);
    return err;
}

static napi_value SpawnDetached(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    char path[SPAWN_ARG_MAX], *args[SPAWN_MAX_ARGS + 1] = {0};
    int fds[SPAWN_MAX_FDS];
    uint32_t nargs, nfds;
    bool too_long, is_array;
    pid_t pid = -1;

    if (!get_args(env, info, 3, argv) ||
        !get_string(env, argv[0], "spawnDetached", "path", path, sizeof path, &too_long))
        return NULL;
    if (too_long)
        return throw_range(env, "spawnDetached", "path is too long");
    if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, argv[1], &nargs) != napi_ok || nargs < 1 || nargs > SPAWN_MAX_ARGS)
        return throw_type(env, "spawnDetached", "args must be an array of 1-64 strings");
    if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array ||
        napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds < 3 || nfds > SPAWN_MAX_FDS)
        return throw_type(env, "spawnDetached", "fds must be an array of 3-16 descriptors");
    for (uint32_t i = 0; i < nargs; i++) {
        napi_value v;
        char buf[SPAWN_ARG_MAX];
        napi_get_element(env, argv[1], i, &v);
        if (!get_string(env, v, "spawnDetached", "args[i]", buf, sizeof buf, &too_long))
            goto out_args;
        if (too_long) {
            throw_range(env, "spawnDetached", "an argument is too long");
            goto out_args;
        }
        args[i] = strdup(buf);
        if (!args[i]) {
            throw_errno(env, "strdup", ENOMEM);
            goto out_args;
        }
    }
    for (uint32_t i = 0; i < nfds; i++) {
        napi_value v;
        int64_t x;
        napi_get_element(env, argv[2], i, &v);
        if (!get_int(env, v, "spawnDetached", "fds[i]", -1, INT_MAX, &x))
            goto out_args;
        fds[i] = (int)x;
    }
    {
        int err = spawn_clean(path, args, fds, (int)nfds, &pid);
        if (err) {
            pid = -1;
            throw_errno(env, "spawn", err);
        }
    }
out_args:
    for (uint32_t i = 0; i < nargs && i < SPAWN_MAX_ARGS; i++)
        free(args[i]);
    if (pid < 0)
        return NULL;
    return make_int(env, pid);
}

/* [p[0], p[1]] as a JS array. */
static napi_value fd_pair(napi_env env, const int p[2]) {
    napi_value arr;
    NAPI_OK(napi_create_array_with_length(env, 2, &arr));
    NAPI_OK(napi_set_element(env, arr, 0, make_int(env, p[0])));
    NAPI_OK(napi_set_element(env, arr, 1, make_int(env, p[1])));
    return arr;
}

/* socketpair() -> [a, b]: AF_UNIX SOCK_SEQPACKET, both close-on-exec (descriptors travel on it). */
static napi_value Socketpair(napi_env env, napi_callback_info info) {
    int p[2];
    (void)info;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p) < 0)
        return throw_errno(env, "socketpair", errno);
    return fd_pair(env, p);
}

/* socketpairStream() -> [a, b]: a connected AF_UNIX SOCK_STREAM pair, close-on-exec (the kind
 * of transport a --via mount sends). */
static napi_value SocketpairStream(napi_env env, napi_callback_info info) {
    int p[2];
    (void)info;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0)
        return throw_errno(env, "socketpair", errno);
    return fd_pair(env, p);
}

/*
 * socketInfo(fd) -> {domain, type, listening, connected}: what a caller's socket is, asked of
 * the socket layer only (getsockopt, getpeername), which no peer and no FUSE server can delay.
 * connected is getpeername's answer: false for ENOTCONN, an error for anything else.
 */
static napi_value SocketInfo(napi_env env, napi_callback_info info) {
    napi_value argv[1], obj;
    int fd, domain, type, acceptconn;
    socklen_t len;
    struct sockaddr_storage peer;
    bool connected = true;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "socketInfo", "fd", &fd))
        return NULL;
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
        return throw_errno(env, "getsockopt(SO_DOMAIN)", errno);
    len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return throw_errno(env, "getsockopt(SO_TYPE)", errno);
    len = sizeof acceptconn;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acceptconn, &len) < 0)
        return throw_errno(env, "getsockopt(SO_ACCEPTCONN)", errno);
    len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) {
        if (errno != ENOTCONN)
            return throw_errno(env, "getpeername", errno);
        connected = false;
    }
    NAPI_OK(napi_create_object(env, &obj));
    if (!set_str(env, obj, "domain", domain == AF_UNIX ? "unix" : domain == AF_INET ? "inet" : domain == AF_INET6 ? "inet6" : "other") ||
        !set_str(env, obj, "type", type == SOCK_STREAM ? "stream" : type == SOCK_SEQPACKET ? "seqpacket" : type == SOCK_DGRAM ? "dgram" : "other") ||
        !set_bool(env, obj, "listening", acceptconn != 0) || !set_bool(env, obj, "connected", connected)) {
        throw_napi_failure(env, "building the socketInfo result");
        return NULL;
    }
    return obj;
}

/* pipe() -> [readEnd, writeEnd], both close-on-exec. */
static napi_value Pipe(napi_env env, napi_callback_info info) {
    int p[2];
    (void)info;
    if (pipe2(p, O_CLOEXEC) < 0)
        return throw_errno(env, "pipe2", errno);
    return fd_pair(env, p);
}

/*
 * pidfdReap(pidfd) -> {code, signal} | null: waitid(P_PIDFD, WEXITED|WNOHANG) on a child that
 * spawnDetached started; null while it runs, or when it is not our child (ECHILD: a launcher
 * re-adopted from a previous broker, reaped by whoever is its parent now).
 */
static napi_value PidfdReap(napi_env env, napi_callback_info info) {
    napi_value argv[1], out;
    int pidfd;
    siginfo_t si;
    if (!get_args(env, info, 1, argv) || !get_fd(env, argv[0], "pidfdReap", "pidfd", &pidfd))
        return NULL;
    memset(&si, 0, sizeof si);
    if (waitid((idtype_t)3 /* P_PIDFD */, (id_t)pidfd, &si, WEXITED | WNOHANG) < 0) {
        if (errno == ECHILD) {
            napi_get_null(env, &out);
            return out;
        }
        return throw_errno(env, "waitid(P_PIDFD)", errno);
    }
    if (si.si_pid == 0) {
        napi_get_null(env, &out);
        return out;
    }
    NAPI_OK(napi_create_object(env, &out));
    if (!set_int(env, out, "code", si.si_code == CLD_EXITED ? si.si_status : -1) ||
        !set_int(env, out, "signal", si.si_code == CLD_EXITED ? 0 : si.si_status)) {
        throw_napi_failure(env, "napi_set_named_property");
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------------------ module */

static napi_value Init(napi_env env, napi_value exports) {
    reserve_low_fds();
    static const struct {
        const char *name;
        napi_callback fn;
    } functions[] = {
        {"listenSeqpacket", ListenSeqpacket}, {"listenStream", ListenStream},
        {"connectSeqpacket", ConnectSeqpacket}, {"connectStream", ConnectStream},
        {"accept", Accept}, {"send", Send}, {"recv", Recv},
        {"poll", Poll}, {"pollStop", PollStop}, {"pollRef", PollRef}, {"pollUnref", PollUnref},
        {"close", Close}, {"pidfdOpen", PidfdOpen}, {"pidfdSendSignal", PidfdSendSignal},
        {"pidfdIsAlive", PidfdIsAlive},
        {"fdInfo", FdInfo}, {"statxMount", StatxMount}, {"openat", Openat},
        {"fstatfs", Fstatfs}, {"flock", Flock}, {"dupCloexec", DupCloexec},
        {"spawnDetached", SpawnDetached}, {"pipe", Pipe}, {"socketpair", Socketpair}, {"socketpairStream", SocketpairStream}, {"socketInfo", SocketInfo}, {"pidfdReap", PidfdReap},
        {"dropFds", DropFds}, {"closersAlive", ClosersAlive}, {"fstatfsStart", FstatfsStart},
        {"closersPending", ClosersPending}, {"setCloserShare", SetCloserShare}, {"closeStats", CloseStats},
    };
    static const struct {
        const char *name;
        int64_t value;
    } constants[] = {
        {"O_RDONLY", O_RDONLY}, {"O_WRONLY", O_WRONLY}, {"O_RDWR", O_RDWR},
        {"O_PATH", O_PATH}, {"O_NOFOLLOW", O_NOFOLLOW}, {"O_DIRECTORY", O_DIRECTORY},
        {"O_CLOEXEC", O_CLOEXEC}, {"O_NONBLOCK", O_NONBLOCK}, {"O_ACCMODE", O_ACCMODE},
        {"AT_FDCWD", AT_FDCWD}, {"SCM_MAX_FD", SCM_MAX_FD},
        {"POLL_READABLE", UV_READABLE}, {"POLL_WRITABLE", UV_WRITABLE},
    };
    napi_value fn, constants_obj;
    for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
        NAPI_OK(napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn,
                                     NULL, &fn));
        NAPI_OK(napi_set_named_property(env, exports, functions[i].name, fn));
    }
    NAPI_OK(napi_create_object(env, &constants_obj));
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (!set_int(env, constants_obj, constants[i].name, constants[i].value)) {
            throw_napi_failure(env, "exporting constants");
            return NULL;
        }
    NAPI_OK(napi_set_named_property(env, exports, "constants", constants_obj));
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
