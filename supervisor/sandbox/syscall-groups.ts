// systemd's system call groups ("syscall filter sets"), as data.
//
// Source: systemd 252, src/shared/seccomp-util.c, the table `syscall_filter_sets[]`, as shipped by
// Debian bookworm (systemd 252.38-1~deb12u1). That is upstream tag v252 plus the stable-branch
// additions listed in STABLE_ADDITIONS below (taken from the systemd-stable tags v252.8 .. v252.31,
// plus `uretprobe`, added to @default after v252.31). The table was checked name for name against
// `systemd-analyze syscall-filter` of systemd 252.38 on Debian bookworm (test/seccomp.test.ts
// repeats that check where systemd-analyze 252 is installed).
//
// Not included: `@known` (every syscall the kernel headers systemd was built with declare; it is a
// generated list, not a policy group). 252 has no `@sandbox` group (later systemd releases add it).
//
// Members are syscall names for every architecture systemd supports (e.g. `mmap2`, `ugetrlimit`);
// names that libseccomp does not know on the filter's architecture are skipped when the filter is
// built, exactly as systemd does. An entry starting with `@` is a nested group.

export type GroupName = `@${string}`;

export interface SyscallGroup {
  readonly name: GroupName;
  readonly description: string;
  /** Syscall names and nested `@group` references, in systemd's order. */
  readonly members: readonly string[];
}

/** The groups of systemd 252 (Debian bookworm 252.38), in systemd's table order. */
export const SYSCALL_GROUPS: readonly SyscallGroup[] = [
  {
    name: '@default',
    description: 'System calls that are always permitted',
    members: [
      'arch_prctl', 'brk', 'cacheflush', 'clock_getres', 'clock_getres_time64', 'clock_gettime',
      'clock_gettime64', 'clock_nanosleep', 'clock_nanosleep_time64', 'execve', 'exit', 'exit_group',
      'futex', 'futex_time64', 'futex_waitv', 'get_robust_list', 'get_thread_area', 'getegid',
      'getegid32', 'geteuid', 'geteuid32', 'getgid', 'getgid32', 'getgroups', 'getgroups32',
      'getpgid', 'getpgrp', 'getpid', 'getppid', 'getrandom', 'getresgid', 'getresgid32', 'getresuid',
      'getresuid32', 'getrlimit', 'getsid', 'gettid', 'gettimeofday', 'getuid', 'getuid32',
      'membarrier', 'mmap', 'mmap2', 'mprotect', 'munmap', 'nanosleep', 'pause', 'prlimit64',
      'restart_syscall', 'riscv_flush_icache', 'riscv_hwprobe', 'rseq', 'rt_sigreturn',
      'sched_getaffinity', 'sched_yield', 'set_robust_list', 'set_thread_area', 'set_tid_address',
      'set_tls', 'sigreturn', 'time', 'ugetrlimit', 'uretprobe',
    ],
  },
  {
    name: '@aio',
    description: 'Asynchronous IO',
    members: [
      'io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_pgetevents_time64', 'io_setup',
      'io_submit', 'io_uring_enter', 'io_uring_register', 'io_uring_setup',
    ],
  },
  {
    name: '@basic-io',
    description: 'Basic IO',
    members: [
      '_llseek', 'close', 'close_range', 'dup', 'dup2', 'dup3', 'lseek', 'pread64', 'preadv',
      'preadv2', 'pwrite64', 'pwritev', 'pwritev2', 'read', 'readv', 'write', 'writev',
    ],
  },
  {
    name: '@chown',
    description: 'Change ownership of files and directories',
    members: [
      'chown', 'chown32', 'fchown', 'fchown32', 'fchownat', 'lchown', 'lchown32',
    ],
  },
  {
    name: '@clock',
    description: 'Change the system time',
    members: [
      'adjtimex', 'clock_adjtime', 'clock_adjtime64', 'clock_settime', 'clock_settime64',
      'settimeofday',
    ],
  },
  {
    name: '@cpu-emulation',
    description: 'System calls for CPU emulation functionality',
    members: [
      'modify_ldt', 'subpage_prot', 'switch_endian', 'vm86', 'vm86old',
    ],
  },
  {
    name: '@debug',
    description: 'Debugging, performance monitoring and tracing functionality',
    members: [
      'lookup_dcookie', 'perf_event_open', 'pidfd_getfd', 'ptrace', 'rtas', 's390_runtime_instr',
      'sys_debug_setcontext',
    ],
  },
  {
    name: '@file-system',
    description: 'File system operations',
    members: [
      'access', 'chdir', 'chmod', 'close', 'creat', 'faccessat', 'faccessat2', 'fallocate', 'fchdir',
      'fchmod', 'fchmodat', 'fchmodat2', 'fcntl', 'fcntl64', 'fgetxattr', 'flistxattr',
      'fremovexattr', 'fsetxattr', 'fstat', 'fstat64', 'fstatat64', 'fstatfs', 'fstatfs64',
      'ftruncate', 'ftruncate64', 'futimesat', 'getcwd', 'getdents', 'getdents64', 'getxattr',
      'inotify_add_watch', 'inotify_init', 'inotify_init1', 'inotify_rm_watch', 'lgetxattr', 'link',
      'linkat', 'listxattr', 'llistxattr', 'lremovexattr', 'lsetxattr', 'lstat', 'lstat64', 'mkdir',
      'mkdirat', 'mknod', 'mknodat', 'newfstatat', 'oldfstat', 'oldlstat', 'oldstat', 'open',
      'openat', 'openat2', 'readlink', 'readlinkat', 'removexattr', 'rename', 'renameat', 'renameat2',
      'rmdir', 'setxattr', 'stat', 'stat64', 'statfs', 'statfs64', 'statx', 'symlink', 'symlinkat',
      'truncate', 'truncate64', 'unlink', 'unlinkat', 'utime', 'utimensat', 'utimensat_time64',
      'utimes',
    ],
  },
  {
    name: '@io-event',
    description: 'Event loop system calls',
    members: [
      '_newselect', 'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait',
      'epoll_pwait2', 'epoll_wait', 'epoll_wait_old', 'eventfd', 'eventfd2', 'poll', 'ppoll',
      'ppoll_time64', 'pselect6', 'pselect6_time64', 'select',
    ],
  },
  {
    name: '@ipc',
    description: 'SysV IPC, POSIX Message Queues or other IPC',
    members: [
      'ipc', 'memfd_create', 'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive',
      'mq_timedreceive_time64', 'mq_timedsend', 'mq_timedsend_time64', 'mq_unlink', 'msgctl',
      'msgget', 'msgrcv', 'msgsnd', 'pipe', 'pipe2', 'process_madvise', 'process_vm_readv',
      'process_vm_writev', 'semctl', 'semget', 'semop', 'semtimedop', 'semtimedop_time64', 'shmat',
      'shmctl', 'shmdt', 'shmget',
    ],
  },
  {
    name: '@keyring',
    description: 'Kernel keyring access',
    members: [
      'add_key', 'keyctl', 'request_key',
    ],
  },
  {
    name: '@memlock',
    description: 'Memory locking control',
    members: [
      'mlock', 'mlock2', 'mlockall', 'munlock', 'munlockall',
    ],
  },
  {
    name: '@module',
    description: 'Loading and unloading of kernel modules',
    members: [
      'delete_module', 'finit_module', 'init_module',
    ],
  },
  {
    name: '@mount',
    description: 'Mounting and unmounting of file systems',
    members: [
      'chroot', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'mount', 'mount_setattr', 'move_mount',
      'open_tree', 'pivot_root', 'umount', 'umount2',
    ],
  },
  {
    name: '@network-io',
    description: 'Network or Unix socket IO, should not be needed if not network facing',
    members: [
      'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen',
      'recv', 'recvfrom', 'recvmmsg', 'recvmmsg_time64', 'recvmsg', 'send', 'sendmmsg', 'sendmsg',
      'sendto', 'setsockopt', 'shutdown', 'socket', 'socketcall', 'socketpair',
    ],
  },
  {
    name: '@obsolete',
    description: 'Unusual, obsolete or unimplemented system calls',
    members: [
      '_sysctl', 'afs_syscall', 'bdflush', 'break', 'create_module', 'ftime', 'get_kernel_syms',
      'getpmsg', 'gtty', 'idle', 'lock', 'mpx', 'prof', 'profil', 'putpmsg', 'query_module',
      'security', 'sgetmask', 'ssetmask', 'stime', 'stty', 'sysfs', 'tuxcall', 'ulimit', 'uselib',
      'ustat', 'vserver',
    ],
  },
  {
    name: '@pkey',
    description: 'System calls used for memory protection keys',
    members: [
      'pkey_alloc', 'pkey_free', 'pkey_mprotect',
    ],
  },
  {
    name: '@privileged',
    description: 'All system calls which need super-user capabilities',
    members: [
      '@chown', '@clock', '@module', '@raw-io', '@reboot', '@swap', '_sysctl', 'acct', 'bpf',
      'capset', 'chroot', 'fanotify_init', 'fanotify_mark', 'nfsservctl', 'open_by_handle_at',
      'pivot_root', 'quotactl', 'quotactl_fd', 'setdomainname', 'setfsuid', 'setfsuid32', 'setgroups',
      'setgroups32', 'sethostname', 'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setuid',
      'setuid32', 'vhangup',
    ],
  },
  {
    name: '@process',
    description: 'Process control, execution, namespacing operations',
    members: [
      'capget', 'clone', 'clone3', 'execveat', 'fork', 'getrusage', 'kill', 'pidfd_open',
      'pidfd_send_signal', 'prctl', 'rt_sigqueueinfo', 'rt_tgsigqueueinfo', 'setns', 'swapcontext',
      'tgkill', 'times', 'tkill', 'unshare', 'vfork', 'wait4', 'waitid', 'waitpid',
    ],
  },
  {
    name: '@raw-io',
    description: 'Raw I/O port access',
    members: [
      'ioperm', 'iopl', 'pciconfig_iobase', 'pciconfig_read', 'pciconfig_write', 's390_pci_mmio_read',
      's390_pci_mmio_write',
    ],
  },
  {
    name: '@reboot',
    description: 'Reboot and reboot preparation/kexec',
    members: [
      'kexec_file_load', 'kexec_load', 'reboot',
    ],
  },
  {
    name: '@resources',
    description: 'Alter resource settings',
    members: [
      'ioprio_set', 'mbind', 'migrate_pages', 'move_pages', 'nice', 'sched_setaffinity',
      'sched_setattr', 'sched_setparam', 'sched_setscheduler', 'set_mempolicy',
      'set_mempolicy_home_node', 'setpriority', 'setrlimit',
    ],
  },
  {
    name: '@setuid',
    description: 'Operations for changing user/group credentials',
    members: [
      'setgid', 'setgid32', 'setgroups', 'setgroups32', 'setregid', 'setregid32', 'setresgid',
      'setresgid32', 'setresuid', 'setresuid32', 'setreuid', 'setreuid32', 'setuid', 'setuid32',
    ],
  },
  {
    name: '@signal',
    description: 'Process signal handling',
    members: [
      'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask', 'rt_sigsuspend', 'rt_sigtimedwait',
      'rt_sigtimedwait_time64', 'sigaction', 'sigaltstack', 'signal', 'signalfd', 'signalfd4',
      'sigpending', 'sigprocmask', 'sigsuspend',
    ],
  },
  {
    name: '@swap',
    description: 'Enable/disable swap devices',
    members: [
      'swapoff', 'swapon',
    ],
  },
  {
    name: '@sync',
    description: 'Synchronize files and memory to storage',
    members: [
      'fdatasync', 'fsync', 'msync', 'sync', 'sync_file_range', 'sync_file_range2', 'syncfs',
    ],
  },
  {
    name: '@system-service',
    description: 'General system service operations',
    members: [
      '@aio', '@basic-io', '@chown', '@default', '@file-system', '@io-event', '@ipc', '@keyring',
      '@memlock', '@network-io', '@process', '@resources', '@setuid', '@signal', '@sync', '@timer',
      'arm_fadvise64_64', 'capget', 'capset', 'copy_file_range', 'fadvise64', 'fadvise64_64', 'flock',
      'get_mempolicy', 'getcpu', 'getpriority', 'ioctl', 'ioprio_get', 'kcmp', 'madvise', 'mremap',
      'name_to_handle_at', 'oldolduname', 'olduname', 'personality', 'readahead', 'readdir',
      'remap_file_pages', 'sched_get_priority_max', 'sched_get_priority_min', 'sched_getattr',
      'sched_getparam', 'sched_getscheduler', 'sched_rr_get_interval', 'sched_rr_get_interval_time64',
      'sched_yield', 'sendfile', 'sendfile64', 'setfsgid', 'setfsgid32', 'setfsuid', 'setfsuid32',
      'setpgid', 'setsid', 'splice', 'sysinfo', 'tee', 'umask', 'uname', 'userfaultfd', 'vmsplice',
    ],
  },
  {
    name: '@timer',
    description: 'Schedule operations by time',
    members: [
      'alarm', 'getitimer', 'setitimer', 'timer_create', 'timer_delete', 'timer_getoverrun',
      'timer_gettime', 'timer_gettime64', 'timer_settime', 'timer_settime64', 'timerfd_create',
      'timerfd_gettime', 'timerfd_gettime64', 'timerfd_settime', 'timerfd_settime64', 'times',
    ],
  },
];

/**
 * Names that upstream tag v252 (252.0) lacks and the Debian 252.38 table above has, with the stable
 * release that added them. `expandGroup(name, { release: 'v252.0' })` leaves them out.
 */
export const STABLE_ADDITIONS: Readonly<Record<string, { readonly group: GroupName; readonly since: string }>> = {
  futex_waitv: { group: '@default', since: 'v252.8' },
  quotactl_fd: { group: '@privileged', since: 'v252.8' },
  set_mempolicy_home_node: { group: '@resources', since: 'v252.8' },
  riscv_hwprobe: { group: '@default', since: 'v252.13' },
  arm_fadvise64_64: { group: '@system-service', since: 'v252.13' },
  fchmodat2: { group: '@file-system', since: 'v252.23' },
  uretprobe: { group: '@default', since: 'after v252.31 (in Debian 252.38)' },
};

const BY_NAME: ReadonlyMap<string, SyscallGroup> = new Map(SYSCALL_GROUPS.map((g) => [g.name, g]));

/** True if `name` is one of the groups above (`@known` is not). */
export function isGroup(name: string): name is GroupName {
  return BY_NAME.has(name);
}

/** The group record, or undefined. */
export function getGroup(name: string): SyscallGroup | undefined {
  return BY_NAME.get(name);
}

export interface ExpandOptions {
  /** 'debian-252.38' (default): the table above. 'v252.0': without STABLE_ADDITIONS. */
  readonly release?: 'debian-252.38' | 'v252.0';
}

/**
 * The syscall names of a group, nested groups resolved recursively, each name once, in the order of
 * first appearance (depth first, in table order). Throws for an unknown group.
 */
export function expandGroup(name: string, options: ExpandOptions = {}): string[] {
  const g = BY_NAME.get(name);
  if (!g) throw new Error(`unknown syscall group ${JSON.stringify(name)}`);
  const upstreamOnly = options.release === 'v252.0';
  const out: string[] = [];
  const seen = new Set<string>();
  const visiting = new Set<string>();
  const walk = (grp: SyscallGroup): void => {
    if (visiting.has(grp.name)) throw new Error(`syscall group cycle at ${grp.name}`);
    visiting.add(grp.name);
    for (const m of grp.members) {
      if (m.startsWith('@')) {
        const sub = BY_NAME.get(m);
        if (!sub) throw new Error(`syscall group ${grp.name} names unknown group ${m}`);
        walk(sub);
      } else if (!seen.has(m)) {
        if (upstreamOnly && STABLE_ADDITIONS[m]?.group === grp.name) continue;
        seen.add(m);
        out.push(m);
      }
    }
    visiting.delete(grp.name);
  };
  walk(g);
  return out;
}

/** The names of all groups, in table order. */
export function groupNames(): GroupName[] {
  return SYSCALL_GROUPS.map((g) => g.name);
}
