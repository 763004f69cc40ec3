/*
 * `fuse-svc-launcher init`: a tiny, tini-compatible init for the broker container.
 *
 *   fuse-svc-launcher init [--stop-cmd ARG]... [--restart-delay-ms N] [--] CMD [ARG]...
 *
 * - Marks itself a child subreaper (PR_SET_CHILD_SUBREAPER), so orphans of its subtree (for
 *   example instance launchers that the broker spawned detached) are re-parented to it even
 *   when it is not PID 1 (under docker-init with `init: true`). Every child is reaped
 *   (waitpid(-1, WNOHANG) loop on SIGCHLD); orphans are reaped, never signalled or killed.
 * - Spawns CMD with fork + execvp (no shell). Like tini, CMD runs in its own process group and,
 *   when stdin is a terminal, that group is made the terminal's foreground group.
 *   Children inherit init's environment unchanged (the broker needs PATH, FUSE_SVC_* ...) and its
 *   fds 0-2; init's own fds are close-on-exec. The signal mask and dispositions are restored.
 * - Signals are blocked and taken synchronously with sigtimedwait(). SIGHUP, SIGUSR1, SIGUSR2,
 *   SIGWINCH and SIGQUIT are forwarded to CMD (its pid, not its group; tini's default).
 * - SIGTERM / SIGINT = full stop: no more restarts; SIGTERM to CMD; SIGKILL to it after 10 s;
 *   then the stop command (if given: --stop-cmd words, in order, form its argv), waited for up to
 *   60 s (then SIGKILL). Exit 0 after a clean stop, 1 when the stop command failed or timed out.
 * - When CMD ends on its own (any exit status or signal) while not stopping, one line goes to
 *   stderr and CMD is started again after a back-off: --restart-delay-ms (default 500 ms),
 *   doubled after each quick failure, at most 30 s, back to the start after a run of >= 60 s.
 * - If the very first exec of CMD fails (no such program...), init exits 127 (126 for EACCES)
 *   at once: that is a configuration error, not a crash. A later exec failure is a crash.
 * - CMD exiting 64 (EX_USAGE: bad flags or configuration) or 78 (EX_CONFIG: a required host
 *   feature is missing, see `fuse-svcd check`) is not a crash either: restarting cannot help,
 *   so init exits with that status instead of retrying forever (nothing is live then).
 *
 * Single-threaded; no shell strings; no allocation after start-up besides the argv arrays.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "launcher.h"

#define INIT_DEFAULT_DELAY_MS 500
#define INIT_MAX_DELAY_MS 30000
#define INIT_RESET_AFTER_MS 60000
#define INIT_TERM_GRACE_MS 10000
#define INIT_STOP_CMD_TIMEOUT_MS 60000

/* Signals that must stay deliverable synchronously (a fault in init itself). */
static const int init_sync_signals[] = {SIGFPE, SIGILL, SIGSEGV, SIGBUS, SIGABRT, SIGTRAP, SIGSYS};
static const int init_forwarded[] = {SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGQUIT};

static const char init_usage[] =
    "usage: fuse-svc-launcher init [--stop-cmd ARG]... [--restart-delay-ms N] [--] CMD [ARG]...\n"
    "\n"
    "A small init (PID 1 or a subreaper below one) for the broker container.\n"
    "  - starts CMD (execvp, no shell) in its own process group, with init's environment;\n"
    "  - reaps every child, including orphans re-parented to it (never kills them);\n"
    "  - forwards SIGHUP SIGUSR1 SIGUSR2 SIGWINCH SIGQUIT to CMD;\n"
    "  - restarts CMD when it ends on its own, after 500 ms doubling up to 30 s\n"
    "    (reset after a run of 60 s or more);\n"
    "  - on SIGTERM or SIGINT: SIGTERM to CMD (SIGKILL after 10 s), then runs the stop command\n"
    "    (up to 60 s), then exits 0 (1 if the stop command failed).\n"
    "\n"
    "options:\n"
    "  --stop-cmd ARG          one word of the stop command's argv; repeat it for each word\n"
    "  --restart-delay-ms N    first restart delay in ms (default 500, 1..30000)\n"
    "  -h, --help              this text\n"
    "\n"
    "exit status: 0 after a full stop, 1 if the stop command failed, 126/127 if CMD could not\n"
    "be executed the first time, 64 on a usage error.\n";

struct init_state {
    char **cmd;               /* CMD argv (points into argv) */
    char **stop_cmd;          /* stop command argv (malloc'd array of argv pointers) or NULL */
    long base_delay_ms;
    long delay_ms;            /* the delay the next quick failure gets */
    pid_t child;              /* CMD, or 0 */
    int64_t child_started;    /* monotonic ms */
    int64_t restart_at;       /* monotonic ms, or -1 */
    int stopping;
    int64_t kill_at;          /* when CMD gets SIGKILL during a stop, or -1 */
    pid_t stop_child;         /* the stop command, or 0 */
    int stop_started;         /* the stop command was started (or there is none) */
    int64_t stop_kill_at;
    int stop_status;          /* wait status of the stop command */
    int stop_failed;
    int fatal_status;         /* CMD's exit status when it was a configuration error, or -1 */
    sigset_t saved_mask;      /* the mask children get back */
};

static int64_t init_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void init_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void init_log(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n = snprintf(line, sizeof line, "init: ");
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    /* one write(2), so lines from init and its children do not interleave mid-line */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

static void init_describe(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "ended (wait status 0x%x)", (unsigned)status);
}

/* In the child: undo what init changed, then exec. Never returns. errfd gets errno on failure. */
static void init_exec_child(struct init_state *st, char **argv, int own_group, int errfd)
{
    if (own_group) {
        if (setpgid(0, 0) < 0) {
            int e = errno;
            ssize_t w = write(errfd, &e, sizeof e);
            (void)w;
            _exit(127);
        }
        /* Only with a terminal: make the new group the foreground one (tini does the same).
         * SIGTTOU is still blocked here, so tcsetpgrp from a background group works. */
        if (isatty(STDIN_FILENO))
            (void)tcsetpgrp(STDIN_FILENO, getpgrp()); /* failure is not fatal: CMD runs in the background */
    }
    sigprocmask(SIG_SETMASK, &st->saved_mask, NULL);
    execvp(argv[0], argv);
    int e = errno;
    ssize_t w = write(errfd, &e, sizeof e);
    (void)w;
    _exit(e == ENOENT ? 127 : 126);
}

/*
 * fork + execvp with a close-on-exec pipe that reports an exec failure.
 * Returns the pid (> 0), or -1 with *exec_errno set (the child is reaped here then).
 */
static pid_t init_spawn(struct init_state *st, char **argv, int own_group, int *exec_errno)
{
    int p[2];
    *exec_errno = 0;
    if (pipe2(p, O_CLOEXEC) < 0) {
        *exec_errno = errno;
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        *exec_errno = errno;
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        init_exec_child(st, argv, own_group, p[1]);
    }
    close(p[1]);
    int e = 0;
    ssize_t r;
    do
        r = read(p[0], &e, sizeof e);
    while (r < 0 && errno == EINTR);
    close(p[0]);
    if (r == (ssize_t)sizeof e) {
        /* exec failed: collect that child now, it is ours and it is exiting */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        *exec_errno = e;
        return -1;
    }
    return pid;
}

static void init_start_cmd(struct init_state *st, int first)
{
    int e;
    pid_t pid = init_spawn(st, st->cmd, 1, &e);
    if (pid > 0) {
        st->child = pid;
        st->child_started = init_now_ms();
        st->restart_at = -1;
        return;
    }
    if (first) {
        init_log("cannot execute %s: %s", st->cmd[0], strerror(e));
        exit(e == ENOENT ? 127 : 126);
    }
    /* treat it as a quick crash */
    long d = st->delay_ms;
    init_log("cannot execute %s: %s; retrying in %ld ms", st->cmd[0], strerror(e), d);
    st->delay_ms = d * 2 > INIT_MAX_DELAY_MS ? INIT_MAX_DELAY_MS : d * 2;
    st->child = 0;
    st->restart_at = init_now_ms() + d;
}

static void init_start_stop_cmd(struct init_state *st)
{
    st->stop_started = 1;
    if (!st->stop_cmd)
        return;
    int e;
    pid_t pid = init_spawn(st, st->stop_cmd, 0, &e);
    if (pid < 0) {
        init_log("cannot execute stop command %s: %s", st->stop_cmd[0], strerror(e));
        st->stop_failed = 1;
        return;
    }
    st->stop_child = pid;
    st->stop_kill_at = init_now_ms() + INIT_STOP_CMD_TIMEOUT_MS;
}

static void init_begin_stop(struct init_state *st, int sig)
{
    if (st->stopping) {
        /* a second SIGTERM/SIGINT: pass it on to CMD if it is still there, nothing else */
        if (st->child > 0)
            kill(st->child, SIGTERM);
        return;
    }
    st->stopping = 1;
    st->restart_at = -1;
    init_log("%s received: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    if (st->child > 0) {
        kill(st->child, SIGTERM);
        st->kill_at = init_now_ms() + INIT_TERM_GRACE_MS;
    }
}

static void init_cmd_ended(struct init_state *st, int status)
{
    char what[64];
    init_describe(status, what, sizeof what);
    int64_t now = init_now_ms();
    int64_t ran = now - st->child_started;
    st->child = 0;
    st->kill_at = -1;
    if (st->stopping) {
        init_log("%s %s", st->cmd[0], what);
        return;
    }
    if (WIFEXITED(status) && (WEXITSTATUS(status) == 64 || WEXITSTATUS(status) == 78)) {
        init_log("%s %s: a configuration error, not restarting", st->cmd[0], what);
        st->fatal_status = WEXITSTATUS(status);
        st->stopping = 1;
        st->stop_started = 1; /* nothing was started, so there is nothing to stop */
        st->restart_at = -1;
        return;
    }
    long d = ran >= INIT_RESET_AFTER_MS ? st->base_delay_ms : st->delay_ms;
    st->delay_ms = d * 2 > INIT_MAX_DELAY_MS ? INIT_MAX_DELAY_MS : d * 2;
    st->restart_at = now + d;
    init_log("%s %s; restarting in %ld ms", st->cmd[0], what, d);
}

static void init_reap(struct init_state *st)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            if (pid < 0 && errno == EINTR)
                continue;
            return; /* 0: children left but none ended; -1 ECHILD: none left */
        }
        if (pid == st->child) {
            init_cmd_ended(st, status);
        } else if (pid == st->stop_child) {
            st->stop_child = 0;
            st->stop_status = status;
            if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                char what[64];
                init_describe(status, what, sizeof what);
                init_log("stop command %s %s", st->stop_cmd[0], what);
                st->stop_failed = 1;
            }
        }
        /* else: an orphan that was re-parented to us; reaped, nothing more */
    }
}

static int init_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max || s[0] == '+' || s[0] == '-' || s[0] == ' ')
        return -1;
    *out = v;
    return 0;
}

static int init_usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "fuse-svc-launcher init: %s%s%s\n%s", msg, arg ? ": " : "", arg ? arg : "", init_usage);
    return 64;
}

int init_main(int argc, char **argv)
{
    struct init_state st;
    memset(&st, 0, sizeof st);
    st.base_delay_ms = INIT_DEFAULT_DELAY_MS;
    st.restart_at = -1;
    st.kill_at = -1;
    st.stop_kill_at = -1;
    st.fatal_status = -1;

    /* argv[0] is "init" */
    int i = 1;
    size_t nstop = 0;
    char **stop = calloc((size_t)argc + 1, sizeof *stop);
    if (!stop) {
        perror("fuse-svc-launcher init");
        return 1;
    }
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(init_usage, stdout);
            free(stop);
            return 0;
        }
        if (strcmp(a, "--stop-cmd") == 0 || strncmp(a, "--stop-cmd=", 11) == 0) {
            const char *v = a[10] == '=' ? a + 11 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) {
                free(stop);
                return init_usage_error("--stop-cmd needs a value", NULL);
            }
            stop[nstop++] = (char *)v;
            continue;
        }
        if (strcmp(a, "--restart-delay-ms") == 0 || strncmp(a, "--restart-delay-ms=", 19) == 0) {
            const char *v = a[18] == '=' ? a + 19 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v || init_parse_long(v, 1, INIT_MAX_DELAY_MS, &st.base_delay_ms) < 0) {
                free(stop);
                return init_usage_error("--restart-delay-ms needs a number from 1 to 30000", v);
            }
            continue;
        }
        if (a[0] == '-') {
            free(stop);
            return init_usage_error("unknown option", a);
        }
        break; /* first word of CMD (tini also accepts CMD without "--") */
    }
    if (i >= argc) {
        free(stop);
        return init_usage_error("no command given", NULL);
    }
    st.cmd = argv + i;
    st.stop_cmd = nstop ? stop : NULL;
    st.delay_ms = st.base_delay_ms;

    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 && getpid() != 1)
        init_log("PR_SET_CHILD_SUBREAPER failed: %s (orphans will not be reaped here)", strerror(errno));

    /* Block every signal but the synchronous fault signals; take them with sigtimedwait. */
    sigset_t all;
    sigfillset(&all);
    for (size_t k = 0; k < sizeof init_sync_signals / sizeof init_sync_signals[0]; k++)
        sigdelset(&all, init_sync_signals[k]);
    if (sigprocmask(SIG_SETMASK, &all, &st.saved_mask) < 0) {
        init_log("sigprocmask: %s", strerror(errno));
        return 1;
    }

    init_start_cmd(&st, 1);

    for (;;) {
        int64_t now = init_now_ms();

        /* timers */
        if (st.restart_at >= 0 && now >= st.restart_at && !st.stopping && st.child == 0)
            init_start_cmd(&st, 0);
        if (st.kill_at >= 0 && now >= st.kill_at && st.child > 0) {
            init_log("%s did not exit %d s after SIGTERM: SIGKILL", st.cmd[0], INIT_TERM_GRACE_MS / 1000);
            kill(st.child, SIGKILL);
            st.kill_at = -1;
        }
        if (st.stop_kill_at >= 0 && now >= st.stop_kill_at && st.stop_child > 0) {
            init_log("stop command %s did not finish in %d s: SIGKILL", st.stop_cmd[0], INIT_STOP_CMD_TIMEOUT_MS / 1000);
            kill(st.stop_child, SIGKILL);
            st.stop_kill_at = -1;
            st.stop_failed = 1;
        }

        /* stop sequence: CMD gone -> stop command -> exit */
        if (st.stopping && st.child == 0) {
            if (!st.stop_started)
                init_start_stop_cmd(&st);
            if (st.stop_child == 0) {
                free(stop);
                if (st.fatal_status >= 0)
                    return st.fatal_status;
                return st.stop_failed ? 1 : 0;
            }
        }

        /* wait for the next signal or timer */
        int64_t next = -1;
        if (st.restart_at >= 0)
            next = st.restart_at;
        if (st.kill_at >= 0 && (next < 0 || st.kill_at < next))
            next = st.kill_at;
        if (st.stop_kill_at >= 0 && (next < 0 || st.stop_kill_at < next))
            next = st.stop_kill_at;
        int64_t wait_ms = next < 0 ? 60000 : next - now;
        if (wait_ms < 0)
            wait_ms = 0;
        struct timespec ts = {.tv_sec = wait_ms / 1000, .tv_nsec = (wait_ms % 1000) * 1000000};
        siginfo_t si;
        int sig = sigtimedwait(&all, &si, &ts);
        if (sig < 0) {
            if (errno != EAGAIN && errno != EINTR)
                init_log("sigtimedwait: %s", strerror(errno));
            init_reap(&st); /* belt and braces: never leave a zombie behind a lost SIGCHLD */
            continue;
        }
        switch (sig) {
        case SIGCHLD:
            init_reap(&st);
            break;
        case SIGTERM:
        case SIGINT:
            init_begin_stop(&st, sig);
            break;
        default:
            for (size_t k = 0; k < sizeof init_forwarded / sizeof init_forwarded[0]; k++) {
                if (sig == init_forwarded[k] && st.child > 0)
                    kill(st.child, sig);
            }
            /* any other signal (SIGPIPE, SIGALRM, SIGTTOU...) is consumed and ignored */
            break;
        }
    }
}
