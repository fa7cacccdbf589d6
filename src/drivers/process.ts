import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmdirSync, statfsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import type { Logger } from '../log.js';
import { SUPERVISOR_NODE_FLAGS, supervisorEntry } from '../paths.js';
import { removeSandboxCgroups } from '../supervisor/isolation/cgroups.js';
import type { BackendState, ComputeDriver, SandboxSpec } from './types.js';

export interface ProcessDriverOptions {
  stateDir: string;
  log: Logger;
  /** Compiled supervisor entry; defaults to the package's `dist/src/supervisor/main.js`. */
  supervisorEntry?: string;
  /** Extra environment for supervisors (e.g. NODE_EXTRA_CA_CERTS for a TLS gateway). */
  supervisorEnv?: Record<string, string>;
  /** How often adopted supervisors are checked for life. */
  pollMs?: number;
  /**
   * Supervisor processes kept started and loaded, waiting for a sandbox: a
   * create hands one its assignment over a pipe instead of paying for a Node
   * start-up. 0 = start each supervisor cold.
   */
  warmPool?: number;
  /** How long extra warm supervisors (started for a burst of creates) are kept after the last create. */
  idlePoolMs?: number;
  /** Free space /dev/shm needs for spools to go there (default MIN_SHM_FREE_BYTES). */
  minShmFreeBytes?: number;
  /** `--isolation`: what the supervisor confines its sandbox with (default `auto`). */
  isolation?: 'auto' | 'none';
}

/** What a warm supervisor receives on stdin (one JSON line): it becomes this sandbox's supervisor. */
export interface WarmAssignment {
  env: Record<string, string>;
  cwd: string;
  logFile: string;
  command: string[];
}

interface PidFile {
  pid: number;
  /** Kernel start time of the pid (from /proc), so a recycled pid is never mistaken for ours. */
  startTime: string | null;
}

const SANDBOX_DIR = 'sandboxes';
const MAX_UNIX_PATH = 100;
/** Creates within this window count as demand: the pool grows by one warm supervisor for each. */
const DEMAND_WINDOW_MS = 30_000;
/** Extra warm supervisors (past the base) are stopped this long after the last create. */
const IDLE_POOL_MS = 60_000;

/** A warm supervisor waiting for a sandbox; `loaded` once it has said its modules are in. */
interface Warm {
  child: ChildProcess;
  loaded: boolean;
}

/**
 * Runs each sandbox's supervisor as a detached local process (its own
 * process group and session), so supervisors outlive a gateway restart and
 * are adopted again by the next one.
 */
export class ProcessDriver implements ComputeDriver {
  readonly name = 'process';
  readonly #opts: ProcessDriverOptions;
  readonly #log: Logger;
  readonly #listeners = new Set<(state: BackendState) => void>();
  /** Live workloads by sandbox id. */
  readonly #running = new Map<string, PidFile>();
  readonly #deleting = new Set<string>();
  /** Deletes in flight, so close() can let them finish removing their directories. */
  readonly #deletes = new Set<Promise<void>>();
  readonly #timer: NodeJS.Timeout;
  readonly #pool: Warm[] = [];
  /** When recent creates took a warm supervisor (the pool's demand), oldest first. */
  readonly #takes: number[] = [];
  /** Warm supervisors loading at once, at most: module loading is CPU-bound, more would only share the cores. */
  readonly #maxLoading = Math.max(2, availableParallelism());
  /** This state dir's exec spools on tmpfs (one directory per state dir), or null without tmpfs. */
  readonly #shmRoot: string | null;
  #closed = false;

  constructor(opts: ProcessDriverOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'driver', driver: 'process' });
    this.#timer = setInterval(() => this.#poll(), opts.pollMs ?? 1000).unref();
    this.#shmRoot = shmRoot(opts.stateDir, opts.minShmFreeBytes);
    // Warm supervisors start in the state dir: it must exist before the store makes it.
    mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
    this.#fillPool();
  }

  /** Where a sandbox's files live: workspace, home, logs, the SSH socket, the exec spool. */
  sandboxDir(id: string): string {
    return join(this.#opts.stateDir, SANDBOX_DIR, id);
  }

  /**
   * Exec output spool: on tmpfs when the machine has one (bulk output is
   * spooled at memory speed, not disk speed), else in the sandbox directory.
   */
  spoolDir(id: string): string {
    return this.#shmRoot ? join(this.#shmRoot, id) : join(this.sandboxDir(id), 'spool');
  }

  sshSocketPath(id: string): string {
    const path = join(this.sandboxDir(id), 'run', 'ssh.sock');
    // sun_path holds ~108 bytes; a deep state dir falls back to a short private path.
    return path.length <= MAX_UNIX_PATH ? path : join(tmpdir(), `openshell-${id}`, 'ssh.sock');
  }

  async create(spec: SandboxSpec): Promise<void> {
    const dir = this.sandboxDir(spec.id);
    const workspace = join(dir, 'workspace');
    const home = join(dir, 'home');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await Promise.all([
      mkdir(workspace, { recursive: true }),
      mkdir(home, { recursive: true }),
      mkdir(join(dir, 'logs'), { recursive: true }),
      mkdir(this.spoolDir(spec.id), { recursive: true, mode: 0o700 }),
    ]);
    const logFile = join(dir, 'logs', 'supervisor.log');
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      HOME: home,
      SHELL: '/bin/sh',
      LANG: 'C.UTF-8',
      ...spec.env,
      ...this.#opts.supervisorEnv,
      OPENSHELL_SANDBOX_ID: spec.id,
      OPENSHELL_SANDBOX_NAME: spec.name,
      OPENSHELL_SANDBOX_TOKEN: spec.token,
      OPENSHELL_ENDPOINT: spec.endpoint,
      OPENSHELL_WORKDIR: workspace,
      OPENSHELL_SANDBOX_DIR: dir,
      OPENSHELL_SSH_SOCKET: this.sshSocketPath(spec.id),
      OPENSHELL_SPOOL_DIR: this.spoolDir(spec.id),
      OPENSHELL_PROXY_LISTEN: '127.0.0.1:0',
      OPENSHELL_ISOLATION: this.#opts.isolation ?? 'auto',
      OPENSHELL_RESOURCES: JSON.stringify(spec.resources ?? {}),
    };
    const warm = this.#takeWarm();
    const child = warm
      ? this.#assign(warm, { env, cwd: workspace, logFile, command: spec.command })
      : await this.#spawnCold(env, workspace, logFile, spec.command);
    // Replacements (and, in a burst, more: see #target) once this sandbox's supervisor has its assignment.
    setImmediate(() => this.#fillPool());
    const pid = child.pid as number;
    child.unref();
    const record: PidFile = { pid, startTime: procStartTime(pid) };
    this.#running.set(spec.id, record);
    child.once('exit', (code, signal) => this.#died(spec.id, pid, code, signal));
    await writeFile(join(dir, 'supervisor.json'), JSON.stringify(record), { mode: 0o600 });
    this.#log.info({ sandboxId: spec.id, pid, warm: Boolean(warm) }, 'supervisor started');
  }

  async #spawnCold(env: Record<string, string>, cwd: string, logFile: string, command: string[]): Promise<ChildProcess> {
    const logFd = openSync(logFile, 'a', 0o600);
    try {
      const child = spawn(process.execPath, [...SUPERVISOR_NODE_FLAGS, this.#opts.supervisorEntry ?? supervisorEntry(), '--', ...command], {
        cwd,
        detached: true,
        stdio: ['ignore', logFd, logFd],
        env,
      });
      if (child.pid === undefined) {
        await once(child, 'error');
        throw new Error('could not start the supervisor process');
      }
      return child;
    } finally {
      closeSync(logFd);
    }
  }

  /** Hands a warm supervisor its sandbox; the token travels over the pipe, never in an environment. */
  #assign(child: ChildProcess, assignment: WarmAssignment): ChildProcess {
    child.removeAllListeners('exit');
    child.stdout?.destroy();
    child.stdin?.end(`${JSON.stringify(assignment)}\n`);
    return child;
  }

  /**
   * A loaded warm supervisor if there is one, else the one loading longest
   * (it reads its assignment while it loads, so it is never slower than a
   * cold start); undefined when the pool is empty.
   */
  #takeWarm(): Warm['child'] | undefined {
    for (let i = this.#pool.length - 1; i >= 0; i--) {
      const c = this.#pool[i]!.child;
      if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined || !c.stdin?.writable) this.#pool.splice(i, 1);
    }
    if (this.#pool.length === 0) return undefined;
    this.#takes.push(Date.now());
    const i = this.#pool.findIndex((w) => w.loaded);
    return this.#pool.splice(Math.max(i, 0), 1)[0]!.child;
  }

  /**
   * How many warm supervisors to keep: the base (`warmPool`) plus one for each
   * create of the last DEMAND_WINDOW_MS, up to twice the base more. A burst of
   * creates thus refills ahead of its own demand; IDLE_POOL_MS after the last
   * create the pool is back to its base.
   */
  #target(now = Date.now()): number {
    const base = this.#opts.warmPool ?? 0;
    if (base === 0) return 0;
    while (this.#takes.length > 0 && this.#takes[0]! < now - DEMAND_WINDOW_MS) this.#takes.shift();
    const last = this.#takes.at(-1);
    if (last === undefined || now - last > (this.#opts.idlePoolMs ?? IDLE_POOL_MS)) return base;
    return Math.min(64, base + Math.min(this.#takes.length, 2 * base));
  }

  /** Warm supervisors: loaded, still loading, and how many the pool aims for now. */
  warmPool(): { loaded: number; loading: number; target: number } {
    const loaded = this.#pool.filter((w) => w.loaded).length;
    return { loaded, loading: this.#pool.length - loaded, target: this.#target() };
  }

  /** Starts warm supervisors up to the target, several at once (up to #maxLoading loading), and stops extras past it. */
  #fillPool(): void {
    if (this.#closed) return;
    const target = this.#target();
    let loading = this.#pool.filter((w) => !w.loaded).length;
    while (this.#pool.length < target && loading < this.#maxLoading) {
      const warm = this.#spawnWarm();
      if (!warm) break;
      this.#pool.push(warm);
      loading++;
    }
    // Past the target (demand has passed): the newest loaded extras go.
    for (let i = this.#pool.length - 1; i >= 0 && this.#pool.length > target; i--) {
      const w = this.#pool[i]!;
      if (!w.loaded) continue;
      this.#pool.splice(i, 1);
      w.child.kill('SIGKILL');
    }
  }

  #spawnWarm(): Warm | undefined {
    const child = spawn(process.execPath, [...SUPERVISOR_NODE_FLAGS, this.#opts.supervisorEntry ?? supervisorEntry(), '--warm'], {
      cwd: this.#opts.stateDir,
      detached: true,
      // stdout says when its modules are loaded (one byte), then is closed at assignment.
      stdio: ['pipe', 'pipe', 'ignore'],
      env: {
        PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
        LANG: 'C.UTF-8',
        ...this.#opts.supervisorEnv,
      },
    });
    if (child.pid === undefined) {
      child.on('error', (err) => this.#log.warn({ err }, 'warm supervisor could not start'));
      return undefined;
    }
    const warm: Warm = { child, loaded: false };
    child.stdin?.on('error', () => undefined);
    child.stdout?.on('error', () => undefined);
    child.stdout?.once('data', () => {
      warm.loaded = true;
      child.stdout?.pause();
      this.#fillPool();
    });
    child.on('error', (err) => this.#log.warn({ err }, 'warm supervisor could not start'));
    child.once('exit', () => {
      const i = this.#pool.indexOf(warm);
      if (i >= 0) this.#pool.splice(i, 1);
    });
    return warm;
  }

  async delete(id: string): Promise<void> {
    const done = this.#delete(id);
    this.#deletes.add(done);
    try {
      await done;
    } finally {
      this.#deletes.delete(done);
    }
  }

  async #delete(id: string): Promise<void> {
    this.#deleting.add(id);
    try {
      const record = this.#running.get(id) ?? (await readPidFile(this.sandboxDir(id)));
      if (record && isAlive(record)) {
        signalGroup(record.pid, 'SIGTERM');
        const gone = await waitFor(() => !isAlive(record), 2000);
        if (!gone) signalGroup(record.pid, 'SIGKILL');
        await waitFor(() => !isAlive(record), 2000);
      }
      // Anything the supervisor started and left behind (it may have been SIGKILLed).
      killTagged(id);
      removeSandboxCgroups(id);
      this.#running.delete(id);
      await rm(this.sandboxDir(id), { recursive: true, force: true });
      await rm(this.spoolDir(id), { recursive: true, force: true });
      const sock = this.sshSocketPath(id);
      if (!sock.startsWith(this.sandboxDir(id))) await rm(join(sock, '..'), { recursive: true, force: true });
    } finally {
      this.#deleting.delete(id);
    }
  }

  async list(): Promise<BackendState[]> {
    const root = join(this.#opts.stateDir, SANDBOX_DIR);
    await this.#sweepSpools(existsSync(root) ? readdirSync(root) : []);
    if (!existsSync(root)) return [];
    const states: BackendState[] = [];
    for (const id of readdirSync(root)) {
      const record = this.#running.get(id) ?? (await readPidFile(join(root, id)));
      if (record && isAlive(record)) {
        this.#running.set(id, record);
        states.push({ id, state: 'Running', message: `pid ${record.pid}` });
      } else {
        states.push({ id, state: 'Error', message: 'supervisor process is not running' });
      }
    }
    return states;
  }

  /** Spools in tmpfs hold memory: remove those whose sandbox directory is gone (a sandbox never deleted). */
  async #sweepSpools(known: string[]): Promise<void> {
    if (!this.#shmRoot) return;
    const keep = new Set(known);
    for (const id of readdirSync(this.#shmRoot)) {
      if (!keep.has(id)) await rm(join(this.#shmRoot, id), { recursive: true, force: true });
    }
  }

  watch(listener: (state: BackendState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async close(): Promise<void> {
    // Supervisors keep running: the next gateway adopts them. Unassigned warm ones are ours alone.
    this.#closed = true;
    clearInterval(this.#timer);
    this.#listeners.clear();
    for (const { child } of this.#pool.splice(0)) child.kill('SIGKILL');
    // Each delete is bounded (TERM, KILL after 2 s): let them remove their directories first.
    await Promise.allSettled([...this.#deletes]);
    if (this.#shmRoot) {
      try {
        rmdirSync(this.#shmRoot); // only when empty: live sandboxes keep their spools
      } catch {
        // not empty, or gone
      }
    }
  }

  #poll(): void {
    for (const [id, record] of this.#running) {
      if (!isAlive(record)) this.#died(id, record.pid, null, null);
    }
    // Demand passing lowers the target: stop the extras.
    if (this.#pool.length > this.#target()) this.#fillPool();
  }

  #died(id: string, pid: number, code: number | null, signal: NodeJS.Signals | null): void {
    const record = this.#running.get(id);
    if (!record || record.pid !== pid) return;
    this.#running.delete(id);
    if (this.#closed || this.#deleting.has(id)) return;
    const how = signal ? `signal ${signal}` : code === null ? 'unknown status' : `code ${code}`;
    this.#log.warn({ sandboxId: id, pid, code, signal }, 'supervisor exited');
    this.#emit({ id, state: 'Error', message: `supervisor process exited (${how})` });
  }

  #emit(state: BackendState): void {
    for (const listener of this.#listeners) listener(state);
  }
}

/** /dev/shm must have this much free to hold spools: a container's default 64 MiB would fill with one large output. */
export const MIN_SHM_FREE_BYTES = 1024 ** 3;

/**
 * A private directory on /dev/shm for this state dir's exec spools, or null
 * (spools then go under the state dir) where there is no usable tmpfs or it
 * has less than `minFreeBytes` free.
 */
export function shmRoot(stateDir: string, minFreeBytes = MIN_SHM_FREE_BYTES): string | null {
  try {
    const fs = statfsSync('/dev/shm');
    if (fs.bavail * fs.bsize < minFreeBytes) return null;
    const tag = createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 16);
    const root = join('/dev/shm', `openshell-${process.getuid?.() ?? 0}-${tag}`);
    mkdirSync(root, { recursive: true, mode: 0o700 });
    accessSync(root, constants.W_OK);
    return root;
  } catch {
    return null;
  }
}

async function readPidFile(dir: string): Promise<PidFile | null> {
  try {
    const value = JSON.parse(await readFile(join(dir, 'supervisor.json'), 'utf8')) as PidFile;
    return typeof value.pid === 'number' ? value : null;
  } catch {
    return null;
  }
}

/** Field 22 of /proc/<pid>/stat: the process start time in clock ticks since boot. */
function procStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function isAlive(record: PidFile): boolean {
  try {
    process.kill(record.pid, 0);
  } catch {
    return false;
  }
  const start = procStartTime(record.pid);
  if (record.startTime !== null && start !== null && start !== record.startTime) return false;
  // A zombie has exited; only its parent has not reaped it yet.
  try {
    const stat = readFileSync(`/proc/${record.pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return false;
  } catch {
    // no /proc: kill(0) is all we have
  }
  return true;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** SIGKILLs every process still carrying this sandbox's id in its environment. */
function killTagged(id: string): void {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return;
  }
  const tag = `OPENSHELL_SANDBOX_ID=${id}\0`;
  for (const pid of pids) {
    try {
      if (readFileSync(`/proc/${pid}/environ`, 'latin1').includes(tag)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone, or not ours to read
    }
  }
}

async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  while (!check()) {
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 100);
  }
  return true;
}

function once(emitter: NodeJS.EventEmitter, event: string): Promise<unknown> {
  return new Promise((resolve) => emitter.once(event, resolve));
}
