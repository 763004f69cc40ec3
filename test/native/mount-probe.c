/*
 * mount-probe: the new mount API's ways to change a mount's flags, for the device-node attacks
 * of test/adversary/userns-mountapi.test.ts and podman.test.ts. Static (runs in a busybox
 * container). Each step prints one line "STEP ok" or "STEP failed: ERRNO-NAME"; the test decides
 * which outcomes are acceptable. Exit status 0 after the steps ran, 64 for bad usage.
 *
 *   mount-probe setattr PATH NODE
 *       mount_setattr(PATH, AT_RECURSIVE, clear NODEV|NOSUID|NOEXEC), then open NODE
 *   mount-probe clone PATH NODE DEST
 *       open_tree(PATH, OPEN_TREE_CLONE|AT_RECURSIVE), mount_setattr on the detached copy to
 *       clear NODEV|NOSUID, open NODE relative to the copy (openat on the tree fd), then
 *       move_mount the copy onto DEST and open DEST/NODE
 *   mount-probe mknod PATH
 *       mknod PATH c 1 3 (a new device node on the mount)
 *
 * Nodes are opened O_RDONLY|O_NONBLOCK and, when that works, read once (a block device of a
 * root-only file would give its bytes): "read NODE ok: N bytes: TEXT".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#define P_MOUNT_ATTR_NOSUID 0x00000002
#define P_MOUNT_ATTR_NODEV 0x00000004
#define P_MOUNT_ATTR_NOEXEC 0x00000008

struct probe_mount_attr {
  uint64_t attr_set;
  uint64_t attr_clr;
  uint64_t propagation;
  uint64_t userns_fd;
};

static const char *errname(int e) {
  switch (e) {
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case EINVAL: return "EINVAL";
  case ENOENT: return "ENOENT";
  case ENOSYS: return "ENOSYS";
  case ENXIO: return "ENXIO";
  case EEXIST: return "EEXIST";
  default: return strerror(e);
  }
}

static int setattr_clear(int dfd, const char *path, unsigned flags, const char *step) {
  struct probe_mount_attr a = {.attr_clr = P_MOUNT_ATTR_NODEV | P_MOUNT_ATTR_NOSUID | P_MOUNT_ATTR_NOEXEC};
  if (syscall(SYS_mount_setattr, dfd, path, flags, &a, sizeof a) != 0) {
    printf("%s failed: %s\n", step, errname(errno));
    return -1;
  }
  printf("%s ok\n", step);
  return 0;
}

static void open_node(int dfd, const char *node, const char *label) {
  int fd = openat(dfd, node, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    printf("open %s failed: %s\n", label, errname(errno));
    return;
  }
  char buf[64];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  if (n < 0) {
    printf("open %s ok; read failed: %s\n", label, errname(errno));
  } else {
    buf[n] = 0;
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] < 0x20 || buf[i] > 0x7e) buf[i] = '.';
    printf("open %s ok; read %zd bytes: %s\n", label, n, buf);
  }
  if (close(fd) != 0) printf("close %s failed: %s\n", label, errname(errno));
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "setattr") == 0) {
    setattr_clear(AT_FDCWD, argv[2], AT_RECURSIVE, "mount_setattr");
    open_node(AT_FDCWD, argv[3], argv[3]);
  } else if (argc == 5 && strcmp(argv[1], "clone") == 0) {
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, argv[2], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (tree < 0) {
      printf("open_tree failed: %s\n", errname(errno));
      return 0;
    }
    printf("open_tree ok\n");
    setattr_clear(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, "mount_setattr(clone)");
    char label[4096];
    snprintf(label, sizeof label, "clone:%s", argv[3]);
    open_node(tree, argv[3], label);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, argv[4], MOVE_MOUNT_F_EMPTY_PATH) != 0) {
      printf("move_mount failed: %s\n", errname(errno));
    } else {
      printf("move_mount ok\n");
      snprintf(label, sizeof label, "%s/%s", argv[4], argv[3]);
      open_node(AT_FDCWD, label, label);
    }
    if (close(tree) != 0) printf("close tree failed: %s\n", errname(errno));
  } else if (argc == 3 && strcmp(argv[1], "mknod") == 0) {
    if (mknod(argv[2], S_IFCHR | 0666, makedev(1, 3)) != 0) printf("mknod failed: %s\n", errname(errno));
    else printf("mknod ok\n");
  } else {
    fprintf(stderr, "usage: mount-probe setattr PATH NODE | clone PATH NODE DEST | mknod PATH\n");
    return 64;
  }
  if (fflush(stdout) != 0) return 1;
  return 0;
}
