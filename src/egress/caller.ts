/**
 * Which process opened a proxied connection, for the `binaries` of a network
 * policy. Linux only, from /proc, and only among the processes the proxy's
 * own process started (its descendants):
 *
 * 1. the client's TCP socket is the line of /proc/net/tcp (or tcp6) whose
 *    local address is the client's and whose remote address is the proxy's
 *    listening one: its inode;
 * 2. the process tree is read from /proc/<pid>/stat (this kernel may have no
 *    /proc/<pid>/task/<tid>/children), and the descendants of `root` (the
 *    supervisor, itself not a candidate) are searched for a descriptor that
 *    is `socket:[inode]`;
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
  /** The process whose descendants may be callers (not itself); default this process. */
  root?: number;
  /** Default '/proc'. */
  proc?: string;
  /** Where the TCP tables of the callers' network namespace are; default `<proc>/net` (this process's). */
  netDir?: string;
  /**
   * The callers' root as this process sees it (a confined sandbox's, `/s`):
   * executables are named as the sandbox sees them, and processes outside it
   * (the wrappers that started them) are no ancestors.
   */
  exeRoot?: string;
}

const LITTLE = endianness() === 'LE';

/** `map`'s value for `key`, made and kept on first use. */
function entry<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) map.set(key, (v = make()));
  return v;
}

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
  // The kernel writes the two ends one space apart; only the matching line is split (a table may hold thousands).
  const at = table.indexOf(` ${localHex} ${remoteHex} `);
  if (at < 0) return null;
  const end = table.indexOf('\n', at);
  const f = table.slice(table.lastIndexOf('\n', at) + 1, end < 0 ? undefined : end).trim().split(/\s+/);
  return f[1] === localHex && f[2] === remoteHex ? (f[9] ?? null) : null;
}

/** Parent pid from the text of /proc/<pid>/stat; the command name may hold spaces and parentheses. */
export function parentOf(stat: string): number | null {
  const close = stat.lastIndexOf(')');
  if (close < 0) return null;
  const ppid = Number(stat.slice(close + 2).split(' ')[1]);
  return Number.isInteger(ppid) ? ppid : null;
}

/** /proc/net/tcp's spelling of an accepted connection's client end and the proxy's end, per table. */
function wanted(ends: ConnectionEnds): { file: 'tcp' | 'tcp6'; local: string; remote: string }[] {
  const client = ends.remoteAddress ? parseIp(ends.remoteAddress) : null;
  const server = ends.localAddress ? parseIp(ends.localAddress) : null;
  if (!client || !server || !ends.remotePort || !ends.localPort) return [];
  const out: { file: 'tcp' | 'tcp6'; local: string; remote: string }[] = [];
  for (const c of spellings(client)) {
    const s = spellings(server).find((x) => x.file === c.file);
    if (s) out.push({ file: c.file, local: `${c.hex}:${hexPort(ends.remotePort)}`, remote: `${s.hex}:${hexPort(ends.localPort)}` });
  }
  return out;
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

/** Every descendant of `root`, not `root` itself (the supervisor is nobody's caller). */
function descendants(parents: Map<number, number>, root: number): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, ppid] of parents) entry(children, ppid, () => []).push(pid);
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out.slice(1);
}

/** The `socket:[inode]` descriptors of a process that are among `links`. */
async function socketsOf(proc: string, pid: number, links: ReadonlySet<string>): Promise<string[]> {
  const fds = await readdir(`${proc}/${pid}/fd`).catch(() => [] as string[]);
  const targets = await Promise.all(fds.map((fd) => readlink(`${proc}/${pid}/fd/${fd}`).catch(() => null)));
  return targets.filter((l): l is string => l !== null && links.has(l));
}

interface Pending {
  readonly ends: ConnectionEnds;
  readonly resolve: (c: Caller) => void;
}

/**
 * Finds callers in rounds. Listing /proc/net/tcp walks the kernel's whole
 * established-socket hash table (262144 buckets on this VM: about 5 ms of
 * kernel time a read, however few sockets there are), and every lookup
 * would read the descriptors of every process of the sandbox; so a round
 * reads each once for every lookup asked for before it started. A lookup
 * asked for during a round waits for the next one, which starts when that
 * one ends: its connection, accepted before it asked, is then in the table.
 * One round at a time; nothing held between rounds.
 */
export class CallerFinder {
  readonly #proc: string;
  readonly #netDir: string;
  readonly #exeRoot: string | null;
  readonly #root: number;
  #queued: Pending[] = [];
  #running = false;

  constructor(opts: CallerOptions = {}) {
    this.#proc = opts.proc ?? '/proc';
    this.#netDir = opts.netDir ?? `${this.#proc}/net`;
    this.#exeRoot = opts.exeRoot ?? null;
    this.#root = opts.root ?? process.pid;
  }

  /** The processes (descendants of the root) holding the client end of an accepted connection. */
  find(ends: ConnectionEnds): Promise<Caller> {
    return new Promise((resolve) => {
      this.#queued.push({ ends, resolve });
      if (!this.#running) this.#next();
    });
  }

  #next(): void {
    const batch = this.#queued;
    this.#queued = [];
    if (batch.length === 0) {
      this.#running = false;
      return;
    }
    this.#running = true;
    this.#round(batch).then(
      () => this.#next(),
      (err: unknown) => {
        const why: Caller = { unknown: `process lookup failed: ${(err as NodeJS.ErrnoException).code ?? 'error'}` };
        for (const p of batch) p.resolve(why);
        this.#next();
      },
    );
  }

  async #round(batch: Pending[]): Promise<void> {
    const proc = this.#proc;
    // The table first, alone: read beside the tree's many small reads, it queues behind them in libuv's threads (twice as long).
    const tables = new Map<string, Promise<string | null>>();
    const table = (file: string): Promise<string | null> =>
      entry(tables, file, () => readFile(`${this.#netDir}/${file}`, 'latin1').catch(() => null));
    const inodes = new Map<Pending, string>();
    for (const p of batch) {
      for (const w of wanted(p.ends)) {
        const text = await table(w.file);
        const inode = text ? findSocketInode(text, w.local, w.remote) : null;
        if (inode && inode !== '0') {
          inodes.set(p, `socket:[${inode}]`);
          break;
        }
      }
      if (!inodes.has(p)) p.resolve({ unknown: 'the connection is not in /proc/net/tcp (not from this host, or already closed)' });
    }
    if (inodes.size === 0) return;
    const parents = await processTree(proc);
    const tree = descendants(parents, this.#root);
    const links = new Set(inodes.values());
    const held = await Promise.all(tree.map((pid) => socketsOf(proc, pid, links)));
    const holders = new Map<string, number[]>();
    tree.forEach((pid, i) => {
      for (const l of held[i]!) entry(holders, l, () => []).push(pid);
    });
    const exes = new Map<number, Promise<string | null>>();
    const root = this.#exeRoot;
    const inRoot = (exe: string | null): string | null =>
      root === null || exe === null ? exe : exe.startsWith(`${root}/`) ? exe.slice(root.length) : null;
    const exeOf = (pid: number): Promise<string | null> =>
      entry(exes, pid, () => readlink(`${proc}/${pid}/exe`).then(inRoot, () => null));
    for (const [p, link] of inodes) p.resolve(await this.#describe(holders.get(link) ?? [], parents, exeOf));
  }

  async #describe(pids: number[], parents: Map<number, number>, exeOf: (pid: number) => Promise<string | null>): Promise<Caller> {
    if (pids.length === 0) return { unknown: "no process of the sandbox's own holds the connection" };
    const procs: CallerProcess[] = [];
    for (const pid of pids) {
      const exe = await exeOf(pid);
      if (exe === null) return { unknown: `the executable of process ${pid} cannot be read` };
      const ancestors: string[] = [];
      // The chain ends below the root; 64 steps at most.
      for (let p = parents.get(pid), n = 0; p !== undefined && p !== this.#root && n < 64; p = parents.get(p), n++) {
        const a = await exeOf(p);
        if (a !== null) ancestors.push(a);
      }
      procs.push({ pid, exe, ancestors });
    }
    return { procs };
  }
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
