/* Shared between the launcher's modes (one program, one file per mode). */
#ifndef FUSE_SVC_LAUNCHER_H
#define FUSE_SVC_LAUNCHER_H

/* `fuse-svc-launcher init -- CMD...`: PID 1 of the broker container (launcher-init.c). */
int init_main(int argc, char **argv);

#endif
