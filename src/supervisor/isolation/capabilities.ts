/**
 * The Linux capabilities the supervisor needs to confine its sandbox when it
 * runs inside a container or Pod (Docker `CapAdd`, Kubernetes
 * `securityContext.capabilities.add`); everything else is dropped. The
 * sandbox's own processes keep none of them.
 *
 * - SYS_ADMIN: the sandbox's namespaces and mounts (bwrap, nsenter)
 * - NET_ADMIN: the veth pair to the egress proxy and the nftables rules
 * - SETUID, SETGID, SETPCAP: the switch to the sandbox's uid and the empty bounding set (setpriv)
 * - SYS_CHROOT: entering the sandbox's root (nsenter --root)
 * - KILL: signals to the sandbox user's processes
 * - CHOWN, DAC_OVERRIDE, FOWNER: the workspace, owned by the sandbox user
 * - SYS_PTRACE: reading /proc/<pid>/ns of the sandbox's init and the egress proxy's caller lookup
 */
export const CONFINEMENT_CAPABILITIES = [
  'SYS_ADMIN',
  'NET_ADMIN',
  'SETUID',
  'SETGID',
  'SETPCAP',
  'SYS_CHROOT',
  'KILL',
  'CHOWN',
  'DAC_OVERRIDE',
  'FOWNER',
  'SYS_PTRACE',
] as const;
export type ConfinementCapability = (typeof CONFINEMENT_CAPABILITIES)[number];
