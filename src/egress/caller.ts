/**
 * Which process opened a proxied connection, for the `binaries` of a network
 * policy. Linux only, from /proc, and only among the processes the proxy's
 * own process started (its descendants):
 *
 * 1. the client's TCP socket is the line of /proc/net/tcp (or tcp6) whose
 *    local address is the client's and whose remote address is the proxy's
 *    listening one: its inode;
 * 2. the process tree is read from /proc/<pid>/stat (this kernel may have no
 *    /proc/<pid>/task/<tid>/children), and the descendants of `root` are
 *    searched for a descriptor that is `socket:[inode]`;
 * 3. each holder's executable is /proc/<pid>/exe, as the kernel resolved it
 *    (symlinks followed, `/bin/sh` is `/usr/bin/dash` on Debian), and its
 *    ancestors' executables up to, not including, `root`.
 *
 * argv is never used: any process can set its own. A process that left the
 * tree (a daemon that double-forked, reparented to init) or that closed the
 * socket is not found, and an endpoint that names binaries refuses it.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';
import { endianness } from 'node:os';
import { parseIp, type IpAddr } from './ip.js';

/** One process holding the client's socket. */
export interface CallerProcess {
  pid: number;
  /** `/proc/<pid>/exe`. */
  exe: string;
  /** Executables of its parent, grandparent, … below the proxy's process. */
  ancestors: string[];
}

/** Every process holding the connection, or why none was found. */
export type Caller = { procs: CallerProcess[] } | { unknown: string };

/** The two ends of an accepted client connection, as the proxy sees them. */
export interface ConnectionEnds {
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
  localAddress?: string | undefined;
  localPort?: number | undefined;
}

export interface CallerOptions {
  /** The process whose descendants may be callers (itself included); default this process. */
  root?: number;
  /** Default '/proc'. */
  proc?: string;
}

const LITTLE = endianness() === 'LE';

/** A 32-bit word as /proc/net/tcp prints it: the in-memory (network order) bytes read as a host-order integer. */
function word(n: number): string {
  const v = LITTLE ? ((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | (n >>> 24) : n;
  return (v >>> 0).toString(16).toUpperCase().padStart(8, '0');
}

function v6Words(v: bigint): string {
  let s = '';
  for (let i = 3; i >= 0; i--) s += word(Number((v >> BigInt(i * 32)) & 0xffffffffn));
  return s;
}

const hexPort = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');

/** The spellings of an address in /proc/net/tcp and tcp6 (an IPv4 peer may be on an IPv6 socket, mapped). */
function spellings(a: IpAddr): { file: 'tcp' | 'tcp6'; hex: string }[] {
  if (a.family === 6) return [{ file: 'tcp6', hex: v6Words(a.v6) }];
  return [
    { file: 'tcp', hex: word(a.v4) },
    { file: 'tcp6', hex: v6Words((0xffffn << 32n) | BigInt(a.v4)) },
  ];
}

/** The inode of the socket with this local and remote end, from one /proc/net table; null when absent. */
export function findSocketInode(table: string, localHex: string, remoteHex: string): string | null {
  for (const line of table.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] === localHex && f[2] === remoteHex) return f[9] ?? null;
  }
  return null;
}

/** Parent pid from the text of /proc/<pid>/stat; the command name may hold spaces and parentheses. */
export function parentOf(stat: string): number | null {
  const close = stat.lastIndexOf(')');
  if (close < 0) return null;
  const ppid = Number(stat.slice(close + 2).split(' ')[1]);
  return Number.isInteger(ppid) ? ppid : null;
}

async function inodeOf(proc: string, ends: ConnectionEnds): Promise<string | null> {
  const client = ends.remoteAddress ? parseIp(ends.remoteAddress) : null;
  const server = ends.localAddress ? parseIp(ends.localAddress) : null;
  if (!client || !server || !ends.remotePort || !ends.localPort) return null;
  const tables = new Map<string, string | null>();
  for (const c of spellings(client)) {
    const s = spellings(server).find((x) => x.file === c.file);
    if (!s) continue;
    if (!tables.has(c.file)) tables.set(c.file, await readFile(`${proc}/net/${c.file}`, 'latin1').catch(() => null));
    const table = tables.get(c.file);
    if (!table) continue;
    const inode = findSocketInode(table, `${c.hex}:${hexPort(ends.remotePort)}`, `${s.hex}:${hexPort(ends.localPort)}`);
    if (inode && inode !== '0') return inode;
  }
  return null;
}

/** Parent of every process on the machine (or in this pid namespace). */
async function processTree(proc: string): Promise<Map<number, number>> {
  const parents = new Map<number, number>();
  const pids = (await readdir(proc)).filter((n) => /^\d+$/.test(n));
  await Promise.all(
    pids.map(async (p) => {
      const stat = await readFile(`${proc}/${p}/stat`, 'latin1').catch(() => null);
      const ppid = stat === null ? null : parentOf(stat);
      if (ppid !== null) parents.set(Number(p), ppid);
    }),
  );
  return parents;
}

function descendants(parents: Map<number, number>, root: number): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, ppid] of parents) {
    let list = children.get(ppid);
    if (!list) children.set(ppid, (list = []));
    list.push(pid);
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}

async function holds(proc: string, pid: number, link: string): Promise<boolean> {
  const fds = await readdir(`${proc}/${pid}/fd`).catch(() => [] as string[]);
  for (const fd of fds) {
    if ((await readlink(`${proc}/${pid}/fd/${fd}`).catch(() => null)) === link) return true;
  }
  return false;
}

const exeOf = (proc: string, pid: number): Promise<string | null> => readlink(`${proc}/${pid}/exe`).catch(() => null);

/** The processes (descendants of `root`) holding the client end of an accepted connection. */
export async function identifyCaller(ends: ConnectionEnds, opts: CallerOptions = {}): Promise<Caller> {
  const proc = opts.proc ?? '/proc';
  const root = opts.root ?? process.pid;
  const inode = await inodeOf(proc, ends);
  if (inode === null) return { unknown: 'the connection is not in /proc/net/tcp (not from this host, or already closed)' };
  const parents = await processTree(proc);
  const tree = descendants(parents, root);
  const link = `socket:[${inode}]`;
  const held = await Promise.all(tree.map((pid) => holds(proc, pid, link)));
  const holders = tree.filter((_, i) => held[i]);
  if (holders.length === 0) return { unknown: "no process of the sandbox's own holds the connection" };
  const procs: CallerProcess[] = [];
  for (const pid of holders) {
    const exe = await exeOf(proc, pid);
    if (exe === null) return { unknown: `the executable of process ${pid} cannot be read` };
    const ancestors: string[] = [];
    // The chain ends below `root` (the supervisor is nobody's grant); 64 steps at most.
    for (let p = pid === root ? undefined : parents.get(pid), n = 0; p !== undefined && p !== root && n < 64; p = parents.get(p), n++) {
      const a = await exeOf(proc, p);
      if (a !== null) ancestors.push(a);
    }
    procs.push({ pid, exe, ancestors });
  }
  return { procs };
}

const MAX_SHOWN = 200;
const shown = (p: string): string => (p.length > MAX_SHOWN ? `${p.slice(0, MAX_SHOWN)}…` : p);

/** The executables of a caller, for decisions and deny reasons: `/usr/bin/curl` or `/usr/bin/curl (via /usr/bin/dash)`. */
export function describeCaller(c: Caller): string {
  if ('unknown' in c) return `unidentified process (${c.unknown})`;
  return c.procs
    .map((p) => (p.ancestors.length ? `${shown(p.exe)} (via ${p.ancestors.slice(0, 4).map(shown).join(', ')})` : shown(p.exe)))
    .join('; ');
}
