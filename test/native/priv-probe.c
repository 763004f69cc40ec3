/*
 * priv-probe: what privilege a process really got (test/adversary/podman.test.ts and
 * userns-mountapi.test.ts). Static, so that a copy inside an image (setuid-root, or with a
 * security.capability attribute) runs in a busybox container or any root. busybox itself cannot
 * serve: it drops a set-id euid for most applets.
 *
 *   priv-probe [-r FILE]... [-w FILE]... [-d FILE]...
 *   priv-probe --as UID PROG ARG...   (setgroups none, gid and uid UID, then exec PROG: a
 *                                      plain user inside a busybox container, whose setpriv
 *                                      cannot change uids)
 *   priv-probe --nocaps PROG ARG...   (stays uid 0 but sets SECBIT_NOROOT, locked, and
 *                                      empties the capability sets, then exec PROG: what a
 *                                      set-id or file-capability file then grants is its own
 *                                      doing; the bounding set stays, so a file's capabilities
 *                                      can still be granted)
 *
 * Prints "ruid=R euid=E capeff=HEX" (ids as this process's user namespace sees them, the
 * effective capability set from /proc/self/status), then per option one line:
 *   -r FILE   "read FILE ok: FIRST-LINE" or "read FILE failed: ERRNO-NAME"
 *   -w FILE   creates FILE (O_CREAT|O_EXCL, 0644): "wrote FILE" or "write FILE failed: ..."
 *   -d FILE   opens FILE O_RDONLY|O_NONBLOCK (a device node): "open FILE ok" or "... failed"
 * Exit status 0 whatever the outcomes (the test reads the lines), 64 for bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *errname(int e) {
  switch (e) {
  case EACCES: return "EACCES";
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case ENXIO: return "ENXIO";
  case ENODEV: return "ENODEV";
  case EROFS: return "EROFS";
  case EEXIST: return "EEXIST";
  default: return strerror(e);
  }
}

static void capeff(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  if (!f) {
    printf(" capeff=unknown(%s)\n", errname(errno));
    return;
  }
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "CapEff:", 7) == 0) {
      char *v = line + 7;
      while (*v == '\t' || *v == ' ') v++;
      v[strcspn(v, "\n")] = 0;
      printf(" capeff=%s\n", v);
      fclose(f);
      return;
    }
  }
  if (fclose(f) != 0) perror("priv-probe: fclose");
  printf(" capeff=unknown\n");
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "--as") == 0) {
    char *end;
    unsigned long id = strtoul(argv[2], &end, 10);
    if (*end || end == argv[2]) {
      fprintf(stderr, "priv-probe: --as needs a number\n");
      return 64;
    }
    if (setgroups(0, NULL) != 0) {
      fprintf(stderr, "priv-probe: setgroups: %s\n", errname(errno));
      return 1;
    }
    if (setresgid((gid_t)id, (gid_t)id, (gid_t)id) != 0 || setresuid((uid_t)id, (uid_t)id, (uid_t)id) != 0) {
      fprintf(stderr, "priv-probe: setresuid/gid %lu: %s\n", id, errname(errno));
      return 1;
    }
    execv(argv[3], argv + 3);
    fprintf(stderr, "priv-probe: exec %s: %s\n", argv[3], errname(errno));
    return 127;
  }
  if (argc >= 3 && strcmp(argv[1], "--nocaps") == 0) {
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) != 0) {
      fprintf(stderr, "priv-probe: PR_SET_SECUREBITS: %s\n", errname(errno));
      return 1;
    }
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capset, &h, d) != 0) {
      fprintf(stderr, "priv-probe: capset: %s\n", errname(errno));
      return 1;
    }
    execv(argv[2], argv + 2);
    fprintf(stderr, "priv-probe: exec %s: %s\n", argv[2], errname(errno));
    return 127;
  }
  printf("ruid=%u euid=%u", (unsigned)getuid(), (unsigned)geteuid());
  capeff();
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2) {
      fprintf(stderr, "usage: priv-probe [-r FILE]... [-w FILE]... [-d FILE]...\n");
      return 64;
    }
    const char *p = argv[++i];
    int fd;
    switch (argv[i - 1][1]) {
    case 'r': {
      fd = open(p, O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        printf("read %s failed: %s\n", p, errname(errno));
        break;
      }
      char buf[128];
      ssize_t n = read(fd, buf, sizeof buf - 1);
      if (n < 0) {
        printf("read %s failed: %s\n", p, errname(errno));
      } else {
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        printf("read %s ok: %s\n", p, buf);
      }
      if (close(fd) != 0) perror("priv-probe: close");
      break;
    }
    case 'w':
      fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        printf("write %s failed: %s\n", p, errname(errno));
        break;
      }
      if (close(fd) != 0) perror("priv-probe: close");
      printf("wrote %s\n", p);
      break;
    case 'd':
      fd = open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd < 0) {
        printf("open %s failed: %s\n", p, errname(errno));
        break;
      }
      if (close(fd) != 0) perror("priv-probe: close");
      printf("open %s ok\n", p);
      break;
    default:
      fprintf(stderr, "usage: priv-probe [-r FILE]... [-w FILE]... [-d FILE]...\n");
      return 64;
    }
  }
  if (fflush(stdout) != 0) return 1;
  return 0;
}
