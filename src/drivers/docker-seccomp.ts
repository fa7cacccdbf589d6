/**
 * The seccomp profile of sandbox containers. Docker's default profile
 * refuses pivot_root, which bubblewrap needs to build the sandbox's root
 * (`bwrap: pivot_root: Operation not permitted`, measured on Docker 20.10),
 * so containers get this one instead: everything allowed but the calls below,
 * which fail with EPERM. Most of them need a capability the container never
 * has (it keeps only CONFINEMENT_CAPABILITIES) and are listed anyway; the
 * rest reach kernel state no namespace separates (keyrings, perf, BPF) or are
 * common exploitation aids (userfaultfd, io_uring). The supervisor's own
 * confinement applies on top: no capabilities, no_new_privs, a chroot.
 */
export const DENIED_SYSCALLS = [
  // Kernel keyrings are not namespaced.
  'add_key', 'keyctl', 'request_key',
  // Kernel-wide state and tracing.
  'bpf', 'perf_event_open', 'lookup_dcookie', 'fanotify_init', 'syslog', 'acct', 'quotactl', 'quotactl_fd',
  // Modules and reboot (CAP_SYS_MODULE, CAP_SYS_BOOT).
  'init_module', 'finit_module', 'delete_module', 'create_module', 'get_kernel_syms', 'query_module',
  'kexec_load', 'kexec_file_load', 'reboot',
  // Swap, clocks, raw I/O (CAP_SYS_ADMIN, CAP_SYS_TIME, CAP_SYS_RAWIO).
  'swapon', 'swapoff', 'settimeofday', 'stime', 'clock_settime', 'clock_adjtime', 'adjtimex',
  'iopl', 'ioperm', 'vm86', 'vm86old',
  // File handles (the "shocker" escape) and obsolete calls.
  'open_by_handle_at', 'name_to_handle_at', 'nfsservctl', 'uselib', '_sysctl', 'sysfs', 'ustat',
  // Other processes' memory placement (CAP_SYS_NICE).
  'migrate_pages', 'move_pages',
  // Exploitation aids; nothing in a sandbox needs them (libuv falls back without io_uring).
  'userfaultfd', 'io_uring_setup', 'io_uring_enter', 'io_uring_register',
] as const;

const EPERM = 1;

/** The profile as the Engine API takes it: `SecurityOpt: ["seccomp=<json>"]`. */
export function seccompProfile(): string {
  return JSON.stringify({
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32', 'SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'],
    syscalls: [{ names: [...DENIED_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM }],
  });
}
