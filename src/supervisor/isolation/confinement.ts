import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readlinkSync, writeFileSync, type Stats } from 'node:fs';
import { randomInt } from 'node:crypto';
import { delimiter, isAbsolute, join, posix } from 'node:path';
import type { Logger } from '../../log.js';
import type { Resources } from '../../schemas/sandbox.js';
import type { ExecLauncher } from '../exec-registry.js';
import { CgroupError, SandboxCgroup } from './cgroups.js';
import {
  SANDBOX_HOME,
  SANDBOX_ROOT,
  SANDBOX_USER,
  SANDBOX_WORKSPACE,
  groupFile,
  hostNetBatch,
  initArgs,
  joinArgv,
  netForSlot,
  nftRuleset,
  passwdFile,
  sandboxNetBatch,
  type ConfinementSpec,
  type NetSpec,
  type SystemPath,
} from './spec.js';
import { TOOL_PACKAGES, findTools, type ToolSet } from './tools.js';

/** The confinement could not be set up; the message names what is missing. */
export class IsolationError extends Error {
  override name = 'IsolationError';
}

export interface ConfinementOptions {
  sandboxId: string;
  hostname: string;
  /** Host directory that becomes /workspace (owned by the sandbox's user from now on). */
  workspace: string;
  /** A private host directory (0700, root's) for the generated /etc files. */
  runDir: string;
  resources: Resources;
  /** The supervisor bundle's directory, when the tools come from it (containers). */
  bundleDir: string | null;
  path: string;
  log: Logger;
  /** First address of the /30 slots (a /18 from here holds 16384 of them). */
  subnetBase?: string;
}

/** uid of slot n = UID_BASE + n: far above host accounts and the usual subordinate-id ranges, below 2^31. */
export const UID_BASE = 2_000_000_000;
export const SLOTS = 16384;
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];
/** The /etc files programs need; those the host has are bound read-only. */
const ETC_FILES = [
  'hosts', 'resolv.conf', 'nsswitch.conf', 'host.conf', 'gai.conf', 'ld.so.cache', 'ld.so.conf', 'ld.so.conf.d',
  'ssl', 'ca-certificates', 'ca-certificates.conf', 'pki', 'alternatives', 'localtime', 'timezone', 'protocols',
  'services', 'mime.types', 'os-release', 'debian_version', 'profile', 'profile.d', 'bash.bashrc', 'inputrc',
  'environment', 'terminfo', 'magic', 'gitconfig', 'python3', 'perl', 'vim', 'mke2fs.conf', 'login.defs', 'shells',
];

/**
 * One sandbox's confinement, owned by its supervisor: the init process that
 * holds the namespaces, the veth pair to the egress proxy, the cgroup. Every
 * process the supervisor starts for the sandbox goes through `argv()`.
 * `close()` ends them all: the PID namespace dies with its init, the veth
 * pair with the network namespace.
 */
export class Confinement implements ExecLauncher {
  readonly mode = 'namespaces';
  readonly uid: number;
  readonly gid: number;
  readonly net: NetSpec;
  readonly initPid: number;
  readonly spec: ConfinementSpec;
  readonly #tools: ToolSet;
  readonly #init: ChildProcess;
  readonly #cgroup: SandboxCgroup | null;
  readonly #log: Logger;
  #closed = false;

  private constructor(parts: {
    spec: ConfinementSpec;
    tools: ToolSet;
    init: ChildProcess;
    initPid: number;
    cgroup: SandboxCgroup | null;
    log: Logger;
  }) {
    this.spec = parts.spec;
    this.uid = parts.spec.uid;
    this.gid = parts.spec.gid;
    this.net = parts.spec.net;
    this.#tools = parts.tools;
    this.#init = parts.init;
    this.initPid = parts.initPid;
    this.#cgroup = parts.cgroup;
    this.#log = parts.log;
  }

  /**
   * Probes what the host supports and sets the sandbox up; throws
   * IsolationError naming what is missing (the caller fails closed).
   */
  static async start(opts: ConfinementOptions): Promise<Confinement> {
    const log = opts.log.child({ component: 'isolation' });
    if (typeof process.geteuid !== 'function' || process.geteuid() !== 0) {
      throw new IsolationError(
        'confinement needs the supervisor to run as root (or, in a container, with the capabilities listed in docs/isolation.md); ' +
          'run with --isolation none to run unconfined',
      );
    }
    const lookup = findTools({ PATH: opts.path }, opts.bundleDir);
    if (lookup.missing.length > 0) {
      const pkgs = [...new Set(lookup.missing.map((t) => TOOL_PACKAGES[t]))];
      throw new IsolationError(`missing confinement tools: ${lookup.missing.join(', ')} (Debian packages: ${pkgs.join(', ')})`);
    }
    const tools = lookup.tools as ToolSet;
    let cgroup: SandboxCgroup | null = null;
    try {
      cgroup = SandboxCgroup.create(opts.sandboxId, opts.resources);
    } catch (err) {
      if (err instanceof CgroupError) throw new IsolationError(err.message);
      throw err;
    }
    mkdirSync(opts.runDir, { recursive: true, mode: 0o700 });
    const generated: Record<string, string> = {};
    for (const name of ['passwd', 'group', 'hostname']) {
      const file = join(opts.runDir, name);
      closeSync(openSync(file, 'w', 0o644));
      generated[name] = file;
    }
    const spec: ConfinementSpec = {
      hostname: opts.hostname,
      uid: -1,
      gid: -1,
      system: SYSTEM_DIRS.filter((p) => existsSync(p)).map(systemPath),
      etc: ETC_FILES.map((f) => `/etc/${f}`).filter((f) => existsSync(f)),
      generatedEtc: generated,
      workspace: opts.workspace,
      tmpMb: opts.resources.diskMb ?? 1024,
      extraBinds: lookup.bundleDir ? [{ host: lookup.bundleDir, sandbox: lookup.bundleDir }] : [],
      net: netForSlot(0, opts.subnetBase),
    };
    const holder = [...tools.sleep, 'infinity'];
    const { child, initPid } = await startInit(tools.bwrap, initArgs(spec), holder, cgroup);
    const fail = async (err: unknown): Promise<never> => {
      child.kill('SIGKILL');
      await cgroup?.remove();
      throw err;
    };
    try {
      const slot = await claimSlot(tools, initPid, opts.subnetBase);
      spec.net = slot.net;
      spec.uid = spec.gid = UID_BASE + slot.slot;
      writeFileSync(generated.passwd!, passwdFile(readOr('/etc/passwd'), spec.uid, spec.gid, existsSync('/bin/bash') ? '/bin/bash' : '/bin/sh'));
      writeFileSync(generated.group!, groupFile(readOr('/etc/group'), spec.gid));
      writeFileSync(generated.hostname!, `${opts.hostname}\n`);
      prepareWorkspace(opts.workspace, spec.uid, spec.gid);
    } catch (err) {
      return fail(err instanceof IsolationError ? err : new IsolationError(`cannot set up the sandbox: ${(err as Error).message}`));
    }
    const c = new Confinement({ spec, tools, init: child, initPid, cgroup, log });
    child.once('exit', (code, signal) => {
      if (!c.#closed) log.error({ code, signal }, "the sandbox's init process exited; its processes are gone");
    });
    log.info({ mode: c.mode, uid: spec.uid, proxy: `${spec.net.hostAddr}:${spec.net.proxyPort}`, initPid, cgroup: cgroup?.describe() }, 'sandbox confined');
    return c;
  }

  /** The sandbox's user, the only one its processes run as. */
  get user(): { name: string; uid: number } {
    return { name: SANDBOX_USER, uid: this.uid };
  }

  /** For the Isolated condition. */
  describe(): string {
    const limits = this.#cgroup ? `; limits in ${this.#cgroup.describe()}` : '';
    return `namespaces (mount, pid, ipc, uts, net, cgroup), uid ${this.uid}, no capabilities, no_new_privs, network only to the egress proxy at ${this.net.hostAddr}:${this.net.proxyPort}${limits}`;
  }

  /** The argv that runs `command` inside the sandbox as its user, in `cwd` (a sandbox path). */
  argv(command: string[], opts: { cwd: string; tty: boolean }): string[] {
    return joinArgv(this.spec, this.#tools, { initPid: this.initPid, cwd: opts.cwd, tty: opts.tty }, command);
  }

  /** Runs a synchronous spawn so that the child starts inside the sandbox's cgroup. */
  spawnInside<T>(fn: () => T): T {
    return this.#cgroup ? this.#cgroup.around(fn) : fn();
  }

  /**
   * Stats a path as a process chrooted in the sandbox would see it: symlinks
   * are followed inside the sandbox's root, never the supervisor's, so a link
   * planted in the workspace tells nothing about the host. For checks only.
   */
  #statInside(path: string): Stats | null {
    const root = `/proc/${this.initPid}/root${SANDBOX_ROOT}`;
    let parts = posix.resolve('/', path).split('/').filter(Boolean);
    let cur = '';
    for (let links = 0; parts.length > 0; ) {
      const name = parts.shift()!;
      if (name === '.') continue;
      if (name === '..') {
        cur = cur.slice(0, cur.lastIndexOf('/'));
        continue;
      }
      const next = `${cur}/${name}`;
      let st: Stats;
      try {
        st = lstatSync(root + next);
      } catch {
        return null;
      }
      if (!st.isSymbolicLink()) {
        cur = next;
        continue;
      }
      if (++links > 40) return null;
      const target = readlinkSync(root + next);
      if (target.startsWith('/')) cur = '';
      parts = [...target.split('/').filter(Boolean), ...parts];
    }
    try {
      return lstatSync(root + (cur || '/'));
    } catch {
      return null;
    }
  }

  /** execvp-style lookup inside the sandbox, so a missing program is reported before anything starts. */
  resolveCommand(file: string, path: string, cwd: string): string | null {
    const ok = (p: string): boolean => this.#statInside(p)?.isFile() ?? false;
    if (file.includes('/')) return ok(isAbsolute(file) ? file : posix.resolve(cwd, file)) ? file : null;
    for (const dir of path.split(delimiter)) {
      if (dir && ok(posix.resolve(cwd, dir, file))) return posix.resolve(cwd, dir, file);
    }
    return null;
  }

  /** True when `cwd` is a directory inside the sandbox. */
  isDirectory(cwd: string): boolean {
    return this.#statInside(cwd)?.isDirectory() ?? false;
  }

  /**
   * The process group to signal for an exec whose wrapper (nsenter) is
   * `leaderPid`: the command runs in its own session under nsenter's one
   * child, so signals reach the command, and nsenter stays to report its
   * status. Before that child exists, the wrapper's own group.
   */
  signalGroup(leaderPid: number): number {
    try {
      const kids = readFileSync(`/proc/${leaderPid}/task/${leaderPid}/children`, 'utf8').trim();
      const first = Number(kids.split(' ')[0]);
      if (Number.isInteger(first) && first > 0) return first;
    } catch {
      // gone, or no children file: the wrapper's group
    }
    return leaderPid;
  }

  /** The proxy's view of the sandbox's connections (its network namespace's tables). */
  get netDir(): string {
    return `/proc/${this.initPid}/net`;
  }

  /** Ends the sandbox: its init (and with it every process in its PID namespace), the veth pair, the cgroup. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const exited = this.#init.exitCode !== null || this.#init.signalCode !== null
      ? Promise.resolve()
      : new Promise<void>((r) => this.#init.once('exit', () => r()));
    this.#init.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2000).unref())]);
    // The netns went with the init and took the veth pair with it; this only covers a straggler.
    await run([...this.#tools.ip, 'link', 'del', this.net.hostIf], '').catch(() => undefined);
    await this.#cgroup?.remove();
    this.#log.debug({}, 'sandbox confinement closed');
  }
}

/** Starts bwrap and waits for its info (the init's host pid) or its failure. */
async function startInit(
  bwrap: string[],
  args: string[],
  holder: string[],
  cgroup: SandboxCgroup | null,
): Promise<{ child: ChildProcess; initPid: number }> {
  const [file, ...pre] = bwrap as [string, ...string[]];
  // Arguments go over a pipe (--args): the sandbox can read its init's command line, and it names host paths.
  const spawnIt = (): ChildProcess =>
    spawn(file, [...pre, '--args', '3', '--info-fd', '4', '--', ...holder], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  const child = cgroup ? cgroup.around(spawnIt) : spawnIt();
  const [argsPipe, infoPipe] = [child.stdio[3], child.stdio[4]] as [NodeJS.WritableStream, NodeJS.ReadableStream];
  argsPipe.on('error', () => undefined);
  argsPipe.end(Buffer.from(args.map((a) => `${a}\0`).join('')));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()).length > 4096 && (stderr = stderr.slice(-4096)));
  return new Promise((resolve, reject) => {
    let info = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new IsolationError(`bwrap did not start the sandbox within 10 s: ${stderr.trim()}`));
    }, 10_000);
    const done = (): void => {
      clearTimeout(timer);
      infoPipe.removeAllListeners('data');
    };
    infoPipe.on('data', (d: Buffer) => {
      info += d.toString();
      const m = /"child-pid"\s*:\s*(\d+)/.exec(info);
      if (m) {
        done();
        child.stderr!.resume();
        resolve({ child, initPid: Number(m[1]) });
      }
    });
    child.once('error', (err) => {
      done();
      reject(new IsolationError(`cannot run bwrap: ${err.message}`));
    });
    child.once('exit', (code, signal) => {
      done();
      // bwrap's first line says what failed (a usage dump after it says nothing more).
      const why = stderr.trim().split('\n')[0]?.slice(0, 500) || 'no message';
      reject(new IsolationError(`bwrap could not create the sandbox (${signal ?? `exit ${code}`}): ${why}`));
    });
  });
}

/**
 * Claims a free slot: its veth name is unique in the supervisor's network
 * namespace, so creating the pair is the lock (released by the kernel when the
 * sandbox's network namespace goes away, whatever happens to the supervisor).
 */
async function claimSlot(tools: ToolSet, initPid: number, base?: string): Promise<{ slot: number; net: NetSpec }> {
  let lastError = '';
  const start = randomInt(SLOTS);
  for (let i = 0; i < 64; i++) {
    const slot = (start + i * 7919) % SLOTS;
    const net = netForSlot(slot, base);
    try {
      await run([...tools.ip, 'link', 'add', net.hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(initPid)], '');
    } catch (err) {
      lastError = (err as Error).message;
      if (/exists/i.test(lastError)) continue;
      throw new IsolationError(`cannot create the sandbox's veth pair: ${lastError}`);
    }
    // The host side, the sandbox side and its rules at once: three tools, one wait.
    const [host, inside, rules] = await Promise.allSettled([
      run([...tools.ip, '-batch', '-'], hostNetBatch(net, initPid).split('\n').slice(1).join('\n')),
      run([...tools.nsenter, `--target=${initPid}`, '--net', '--', ...tools.ip, '-batch', '-'], sandboxNetBatch(net)),
      run([...tools.nsenter, `--target=${initPid}`, '--net', '--', ...tools.nft, '-f', '-'], nftRuleset(net)),
    ]);
    if (host.status === 'fulfilled') {
      for (const r of [inside, rules]) {
        if (r.status === 'rejected') throw new IsolationError(`cannot set up the sandbox's network: ${(r.reason as Error).message}`);
      }
      return { slot, net };
    }
    // Its address is taken on this host (another interface): give the slot back, try the next.
    lastError = (host.reason as Error).message;
    await run([...tools.ip, 'link', 'del', net.hostIf], '').catch(() => undefined);
  }
  throw new IsolationError(`no free network slot for the sandbox: ${lastError}`);
}

/** Runs a tool with `input` on stdin; rejects with its stderr. */
function run(argv: string[], input: string): Promise<void> {
  const [file, ...args] = argv as [string, ...string[]];
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(input);
    child.once('error', reject);
    // The tool's name: after the bundle loader's --library-path DIR, or the program itself.
    const lib = argv.indexOf('--library-path');
    const tool = posix.basename(lib >= 0 ? (argv[lib + 2] ?? file) : file);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${tool}: ${stderr.trim() || signal || `exit ${code}`}`)),
    );
  });
}

function systemPath(path: string): SystemPath {
  const st = lstatSync(path);
  return { path, symlink: st.isSymbolicLink() ? readlinkSync(path) : null };
}

function readOr(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The workspace and HOME belong to the sandbox's user. */
function prepareWorkspace(workspace: string, uid: number, gid: number): void {
  mkdirSync(workspace, { recursive: true });
  chownSync(workspace, uid, gid);
  const home = join(workspace, SANDBOX_HOME.slice(SANDBOX_WORKSPACE.length + 1));
  mkdirSync(home, { recursive: true, mode: 0o755 });
  chownSync(home, uid, gid);
}

export { SANDBOX_HOME, SANDBOX_USER, SANDBOX_WORKSPACE };
