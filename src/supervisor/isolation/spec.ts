/**
 * The sandbox's confinement as plain data, and the argv of the well-kept
 * tools built from it (bwrap, nsenter, setsid, setpriv, ip, nft). Nothing
 * here touches the system: `confinement.ts` runs what these return, and tests
 * assert them.
 */
import type { ToolSet } from './tools.js';

/** Inside the sandbox's mount namespace, the sandbox's own root: every sandbox process is chrooted here. */
export const SANDBOX_ROOT = '/s';
export const SANDBOX_WORKSPACE = '/workspace';
export const SANDBOX_HOME = '/workspace/.home';
export const SANDBOX_USER = 'sandbox';
export const PROXY_PORT = 3128;

/** One read-only or writable bind of a host path into the sandbox. */
export interface Bind {
  host: string;
  /** Path inside the sandbox (under its root). */
  sandbox: string;
  writable?: boolean;
}

/** Where the system paths come from: a host directory is bound read-only, a host symlink is recreated. */
export interface SystemPath {
  path: string;
  symlink: string | null;
}

export interface ConfinementSpec {
  hostname: string;
  uid: number;
  gid: number;
  /** `/usr`, `/bin`, `/lib*`, `/sbin` as the host has them. */
  system: SystemPath[];
  /** The `/etc` files programs need (host paths that exist), bound read-only. */
  etc: string[];
  /** Generated files (passwd, group, hostname), bound read-only at /etc/<name>. */
  generatedEtc: Record<string, string>;
  /** Host directory mapped to /workspace. */
  workspace: string;
  /** Size of the sandbox's /tmp in MiB (tmpfs; counts toward its memory). */
  tmpMb: number;
  /** Extra read-only binds (the supervisor bundle, when the tools come from it). */
  extraBinds: Bind[];
  net: NetSpec;
}

export interface NetSpec {
  /** Host side of the veth pair (its name is unique in the supervisor's network namespace: it is the slot's lock). */
  hostIf: string;
  hostAddr: string;
  sandboxAddr: string;
  prefix: number;
  proxyPort: number;
}

/** The slot's addresses: slot n owns the /30 at base + 4n (.1 the proxy's side, .2 the sandbox's). */
export function netForSlot(slot: number, base = '10.231.0.0'): NetSpec {
  const [a, b, c, d] = base.split('.').map(Number) as [number, number, number, number];
  const start = ((a << 24) | (b << 16) | (c << 8) | d) + slot * 4;
  const ip = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
  return { hostIf: `osh${slot}h`, hostAddr: ip(start + 1), sandboxAddr: ip(start + 2), prefix: 30, proxyPort: PROXY_PORT };
}

/**
 * bwrap's arguments for the sandbox's init: new mount, PID, IPC, UTS,
 * network and cgroup namespaces; bwrap stays as PID 1 and reaps orphans; its
 * child, `sleep`, holds the namespaces. The sandbox's view is built under
 * SANDBOX_ROOT so that every process entering it is chrooted (and the kernel
 * refuses a chrooted process a new user namespace: clone(2), EPERM). The
 * top-level `/usr`, `/lib*` links only let the holder itself run. Options
 * only: the holder's argv follows `--` on bwrap's command line.
 */
export function initArgs(spec: ConfinementSpec): string[] {
  const r = SANDBOX_ROOT;
  const a: string[] = [
    '--unshare-pid', '--unshare-net', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try',
    '--die-with-parent', '--hostname', spec.hostname,
  ];
  // bwrap makes missing parents 0700; the sandbox's user must be able to walk them.
  const made = new Set<string>(['/']);
  const parents = (path: string): void => {
    const parts = path.split('/').filter(Boolean);
    for (let i = 1; i < parts.length; i++) {
      const dir = '/' + parts.slice(0, i).join('/');
      if (made.has(dir)) continue;
      made.add(dir);
      a.push('--perms', '0755', '--dir', dir);
    }
  };
  const bind = (op: string, src: string, dest: string): void => {
    parents(dest);
    a.push(op, src, dest);
  };
  for (const p of spec.system) {
    if (p.symlink !== null) bind('--symlink', p.symlink, `${r}${p.path}`);
    else bind('--ro-bind', p.path, `${r}${p.path}`);
    bind('--symlink', `${r.slice(1)}${p.path}`, p.path);
  }
  for (const f of spec.etc) bind('--ro-bind', f, `${r}${f}`);
  for (const [name, host] of Object.entries(spec.generatedEtc)) bind('--ro-bind', host, `${r}/etc/${name}`);
  parents(`${r}/proc`);
  a.push('--proc', `${r}/proc`, '--dev', `${r}/dev`);
  parents(`${r}/tmp`);
  a.push('--perms', '1777', '--size', String(spec.tmpMb * 1024 * 1024), '--tmpfs', `${r}/tmp`);
  bind('--symlink', '/tmp', `${r}/var/tmp`);
  a.push('--perms', '0755', '--tmpfs', `${r}/run`);
  bind('--bind', spec.workspace, `${r}${SANDBOX_WORKSPACE}`);
  for (const b of spec.extraBinds) {
    bind(b.writable ? '--bind' : '--ro-bind', b.host, `${r}${b.sandbox}`);
    // Absolute: a relative target resolves from the link's directory, wrong for a nested path such as /opt/openshell.
    bind('--symlink', `${r}${b.sandbox}`, b.sandbox);
  }
  a.push('--chdir', '/');
  return a;
}

export interface JoinOptions {
  /** Host pid of the sandbox's PID 1 (bwrap's init). */
  initPid: number;
  /** Working directory inside the sandbox. */
  cwd: string;
  /** A tty exec keeps the terminal as its controlling terminal in the new session. */
  tty: boolean;
}

/**
 * The argv that runs `command` inside the sandbox, as `docker exec` does: join
 * its namespaces and root (nsenter), start a new session so signals reach the
 * command's group and never the wrappers (setsid), drop to the sandbox's user
 * with no capabilities, an empty bounding set and no_new_privs (setpriv).
 * nsenter forks into the PID namespace and exits with the command's status
 * (or dies of its signal), so the supervisor sees the real result.
 */
export function joinArgv(spec: ConfinementSpec, tools: ToolSet, opts: JoinOptions, command: string[]): string[] {
  return [
    ...tools.nsenter,
    `--target=${opts.initPid}`,
    '--mount', '--uts', '--ipc', '--net', '--pid', '--cgroup',
    `--root=/proc/${opts.initPid}/root${SANDBOX_ROOT}`,
    `--wdns=${opts.cwd}`,
    '--',
    ...tools.setsid,
    ...(opts.tty ? ['--ctty'] : []),
    ...tools.setpriv,
    `--reuid=${spec.uid}`, `--regid=${spec.gid}`, '--clear-groups',
    '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--no-new-privs',
    '--',
    ...command,
  ];
}

/** `ip -batch` lines run in the supervisor's namespace: the veth pair, its peer created inside the sandbox as eth0. */
export function hostNetBatch(net: NetSpec, initPid: number): string {
  return [
    `link add ${net.hostIf} type veth peer name eth0 netns ${initPid}`,
    `addr add ${net.hostAddr}/${net.prefix} dev ${net.hostIf}`,
    `link set ${net.hostIf} up`,
    '',
  ].join('\n');
}

/** `ip -batch` lines run inside the sandbox's network namespace. */
export function sandboxNetBatch(net: NetSpec): string {
  return [`addr add ${net.sandboxAddr}/${net.prefix} dev eth0`, 'link set eth0 up', ''].join('\n');
}

/**
 * The sandbox's nftables rules, loaded inside its network namespace (where
 * its processes hold no capability to change them): out only to the proxy's
 * address and port and to its own loopback; everything else is refused at
 * once (a reset or an ICMP error, not a silent drop, so tools fail fast);
 * in only replies and loopback.
 */
export function nftRuleset(net: NetSpec): string {
  // Flushed first: loading again (a slot retried) replaces the rules, never adds to them.
  return `flush ruleset
table inet openshell {
  chain output {
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ip daddr ${net.hostAddr} tcp dport ${net.proxyPort} accept
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
  }
}
`;
}

/** passwd(5) for the sandbox: the host's system accounts (below 1000, no secrets in passwd), nobody, and the sandbox user. */
export function passwdFile(hostPasswd: string, uid: number, gid: number, shell: string): string {
  const keep = hostPasswd
    .split('\n')
    .filter((l) => {
      const f = l.split(':');
      const id = Number(f[2]);
      return f.length >= 7 && Number.isInteger(id) && (id < 1000 || id === 65534) && id !== uid && f[0] !== SANDBOX_USER;
    })
    .map((l) => {
      const f = l.split(':');
      f[1] = 'x';
      return f.join(':');
    });
  return [...keep, `${SANDBOX_USER}:x:${uid}:${gid}:openshell sandbox:${SANDBOX_HOME}:${shell}`, ''].join('\n');
}

export function groupFile(hostGroup: string, gid: number): string {
  const keep = hostGroup.split('\n').filter((l) => {
    const f = l.split(':');
    const id = Number(f[2]);
    return f.length >= 4 && Number.isInteger(id) && (id < 1000 || id === 65534) && id !== gid && f[0] !== SANDBOX_USER;
  });
  return [...keep.map((l) => l.split(':').slice(0, 3).join(':') + ':'), `${SANDBOX_USER}:x:${gid}:`, ''].join('\n');
}
