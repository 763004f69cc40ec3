/* The mount(8) and umount(8) helper personalities of fuse-svc-request (mount-helper.c). */
#ifndef FUSE_SVC_MOUNT_HELPER_H
#define FUSE_SVC_MOUNT_HELPER_H

/* The fuse-svc-request call a helper invocation stands for, and how the client must behave
 * while running it (its name in messages, mount(8)'s exit statuses, silence on success). */
struct personality {
    int argc;
    char **argv;
    const char *prog;
    int quiet;
    int exit_local, exit_refused, exit_usage;
};

/* 1 when argv[0]'s basename is mount.fuse-svc, mount.fuse-svc.TYPE or umount.fuse-svc: *p is
 * filled in. 0 otherwise (p untouched). Exits by itself for --help, -f and usage errors, and
 * after entering the namespace of -N when that fails. */
int personality_from_argv0(int argc, char **argv, struct personality *p);

#endif
