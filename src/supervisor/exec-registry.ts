import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdirSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { delimiter, isAbsolute, join, posix, resolve } from 'node:path';
import type { Logger } from '../log.js';
import {
  STREAM_STDERR,
  STREAM_STDOUT,
  type ExecErrorCode,
  type ExecInfoWire,
  type ExecStartOp,
  type OutputStream,
} from '../protocol/exec.js';
import { spawnPty, type PtyProcess } from './pty.js';
import { REPLAY_CHUNK, Spool } from './spool.js';
import { currentUser, isRoot, lookupUser, type PasswdEntry } from './users.js';

/** An error with an exec protocol code (sent as `{ev:'error',code,message}`). */
export class ExecError extends Error {
  readonly code: ExecErrorCode;
  constructor(code: ExecErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'ExecError';
    this.code = code;
  }
}

export interface ExecResult {
  /** null when the process was killed by a signal (then `signal` names it). 124 on timeout. */
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
}

export type ExecState = 'running' | 'exited';

/** One exec as the registry describes it: the wire form without the requestId (the registry's map holds that). */
export type ExecInfo = Omit<ExecInfoWire, 'requestId'>;

/** Receives an exec's output from a subscription, in offset order per stream, then one `exit`. */
export interface ExecSink {
  output(stream: OutputStream, offset: number, data: Buffer): void;
  /** Called once, after every output byte up to the final offsets was delivered. */
  exit(result: ExecResult): void;
  /** The spooled output could not be read; the subscription is closed. */
  error(err: ExecError): void;
}

/** A reader of one exec's output. The process never depends on it. */
export interface ExecSubscription {
  /** Stop delivering (backpressure). When every reader is paused the child's output is paused too. */
  pause(): void;
  resume(): void;
  /** Unsubscribe. Idempotent. */
  close(): void;
  readonly paused: boolean;
  readonly closed: boolean;
}

/**
 * How processes start when the sandbox is confined (isolation/confinement.ts):
 * every command runs through a wrapper that enters the sandbox, paths are the
 * sandbox's, and signals go to the command's own group.
 */
export interface ExecLauncher {
  /** The sandbox's user: the only one execs may ask for. */
  readonly user: { name: string; uid: number };
  /** The argv that runs `command` inside the sandbox in `cwd`. */
  argv(command: string[], opts: { cwd: string; tty: boolean }): string[];
  /** Runs a synchronous spawn so its child starts inside the sandbox's cgroup. */
  spawnInside<T>(fn: () => T): T;
  resolveCommand(file: string, path: string, cwd: string): string | null;
  isDirectory(cwd: string): boolean;
  /** The process group to signal for the exec whose wrapper is `leaderPid`. */
  signalGroup(leaderPid: number): number;
}

export interface ExecRegistryOptions {
  log: Logger;
  /** Where output spool files live (created 0700 if missing). */
  spoolDir: string;
  /** The sandbox env every exec starts from (e.g. with the proxy variables). */
  baseEnv: () => Record<string, string>;
  defaultCwd: string;
  /** How long a finished exec stays queryable before it and its spool files are removed. */
  finishedRetentionMs?: number;
  /** Output kept in memory per stream once its spool file cannot be written (default 16 MiB). */
  spoolFailedMemoryBytes?: number;
  /** Set when the sandbox is confined: processes start inside it. */
  launcher?: ExecLauncher | null;
}

const KILL_GRACE_MS = 2000;
/** After the leader exits, how long stdio may stay open (held by a background child) without output. */
const LINGER_MS = 2000;
/** Unwritten spool bytes above which the child's stream is paused. */
const SPOOL_HIGH_WATER = 16 * 1024 * 1024;
const EXEC_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/** DESIGN.md, Idempotent start. */
export const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
/** How long a requestId names its exec. */
export const REQUEST_ID_TTL_MS = 24 * 3_600_000;

interface RequestRecord {
  execId: string;
  command: string[];
  at: number;
  /** Kept once the exec itself expired, so a late retry still never starts a second process. */
  finished: { exitedAt: string | null; exitCode: number | null; signal: string | null } | null;
}

const streamIndex = (s: OutputStream): 0 | 1 => (s === STREAM_STDOUT ? 0 : 1);
const streamId = (i: 0 | 1): OutputStream => (i === 0 ? STREAM_STDOUT : STREAM_STDERR);

interface OutState {
  spool: Spool;
  pause: (() => void) | null;
  resume: (() => void) | null;
  paused: boolean;
  ended: boolean;
}

/**
 * The supervisor's exec engine: every process started in the sandbox by the
 * gateway or over SSH is owned here, in its own process group, with its output
 * spooled by offset so that any number of readers can come and go.
 */
export class ExecRegistry {
  readonly log: Logger;
  readonly spoolDir: string;
  readonly defaultCwd: string;
  readonly #baseEnv: () => Record<string, string>;
  readonly #retentionMs: number;
  readonly #spoolFailedMemoryBytes: number | undefined;
  readonly #launcher: ExecLauncher | null;
  readonly #execs = new Map<string, ExecHandle>();
  readonly #expiry = new Set<NodeJS.Timeout>();
  /** requestId → the exec it started (insertion order is age order). */
  readonly #requests = new Map<string, RequestRecord>();
  readonly #requestOf = new Map<string, string>();
  /** Execs whose caller left: killed unless someone attaches first. */
  readonly #abandoned = new Map<string, NodeJS.Timeout>();
  #closed = false;

  constructor(opts: ExecRegistryOptions) {
    this.log = opts.log.child({ component: 'exec-registry' });
    this.spoolDir = opts.spoolDir;
    this.defaultCwd = opts.defaultCwd;
    this.#baseEnv = opts.baseEnv;
    this.#retentionMs = opts.finishedRetentionMs ?? 3_600_000;
    this.#spoolFailedMemoryBytes = opts.spoolFailedMemoryBytes;
    this.#launcher = opts.launcher ?? null;
    mkdirSync(this.spoolDir, { recursive: true, mode: 0o700 });
  }

  /** Starts an exec. Throws ExecError (`INVALID_ARGUMENT`, `SPAWN_FAILED`, `INTERNAL`). */
  start(op: ExecStartOp): ExecHandle {
    if (this.#closed) throw new ExecError('INTERNAL', 'exec registry is closed');
    validateStart(op);
    if (this.#execs.has(op.execId)) throw new ExecError('INVALID_ARGUMENT', `execId: "${op.execId}" already exists`);
    const launcher = this.#launcher;
    const spawnInit = launcher ? this.#confinedSpawn(op, launcher) : this.#hostSpawn(op);
    const handle = new ExecHandle(op, {
      ...spawnInit,
      spoolDir: this.spoolDir,
      spoolFailedMemoryBytes: this.#spoolFailedMemoryBytes,
      log: this.log.child({ execId: op.execId }),
      onFinished: (h) => this.#scheduleExpiry(h),
    });
    this.#execs.set(op.execId, handle);
    return handle;
  }

  /** An exec on this host, as the supervisor's own user (or another, when the supervisor is root). */
  #hostSpawn(op: ExecStartOp): SpawnInit {
    const cwd = op.workdir ? resolve(this.defaultCwd, op.workdir) : this.defaultCwd;
    const account = resolveAccount(op.user);
    const env: Record<string, string> = { ...this.#baseEnv() };
    if (account.switchTo) {
      env.HOME = account.switchTo.home;
      env.USER = account.switchTo.name;
      env.LOGNAME = account.switchTo.name;
    }
    Object.assign(env, op.env);
    try {
      if (!statSync(cwd).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      throw new ExecError('SPAWN_FAILED', `workdir "${cwd}": ${(err as Error).message}`, { cause: err });
    }
    const file = resolveCommand(op.command[0]!, env.PATH ?? process.env.PATH ?? '', cwd);
    if (!file) throw new ExecError('SPAWN_FAILED', `command not found or not executable: ${op.command[0]}`);
    return {
      file,
      args: op.command.slice(1),
      argv0: op.command[0]!,
      cwd,
      env,
      uid: account.switchTo?.uid,
      gid: account.switchTo?.gid,
      spawnInside: (fn) => fn(),
      signalGroup: (pid) => pid,
    };
  }

  /** An exec inside the confined sandbox: sandbox paths, the sandbox's user, through the launcher's wrapper. */
  #confinedSpawn(op: ExecStartOp, launcher: ExecLauncher): SpawnInit {
    const cwd = op.workdir ? posix.resolve(this.defaultCwd, op.workdir) : this.defaultCwd;
    if (op.user && op.user !== launcher.user.name && op.user !== String(launcher.user.uid)) {
      throw new ExecError('INVALID_ARGUMENT', `user: a confined sandbox runs everything as "${launcher.user.name}" (uid ${launcher.user.uid})`);
    }
    const env: Record<string, string> = { ...this.#baseEnv(), ...op.env };
    if (!launcher.isDirectory(cwd)) throw new ExecError('SPAWN_FAILED', `workdir "${cwd}": not a directory in the sandbox`);
    if (!launcher.resolveCommand(op.command[0]!, env.PATH ?? '', cwd)) {
      throw new ExecError('SPAWN_FAILED', `command not found or not executable: ${op.command[0]}`);
    }
    const [file, ...args] = launcher.argv(op.command, { cwd, tty: op.tty }) as [string, ...string[]];
    // The wrapper runs in the supervisor's own directory; it enters the sandbox's root and `cwd` itself.
    return {
      file,
      args,
      argv0: file,
      cwd: '/',
      env,
      uid: undefined,
      gid: undefined,
      spawnInside: (fn) => launcher.spawnInside(fn),
      signalGroup: (pid) => launcher.signalGroup(pid),
    };
  }

  /**
   * Idempotent start (DESIGN.md): with a `requestId` used in the last 24 h,
   * the exec it started is returned (`existing: true`) and nothing is
   * spawned; the check and the record are one synchronous step, so racing
   * starts cannot both spawn. Without one, or the first time, as `start`.
   * Throws CONFLICT when the id named another command, OUTPUT_EXPIRED when
   * its exec finished so long ago that it is gone.
   */
  startOrJoin(op: ExecStartOp): { handle: ExecHandle; existing: boolean } {
    const requestId = op.requestId;
    if (requestId === undefined || requestId === null) return { handle: this.start(op), existing: false };
    if (typeof requestId !== 'string' || !REQUEST_ID_RE.test(requestId)) {
      throw new ExecError('INVALID_ARGUMENT', `requestId: must match ${REQUEST_ID_RE.source}`);
    }
    this.#sweepRequests();
    const record = this.#requests.get(requestId);
    if (record) {
      if (!sameArgv(record.command, op.command)) {
        throw new ExecError('CONFLICT', `requestId: "${requestId}" already started exec ${record.execId} with another command`);
      }
      const handle = this.#execs.get(record.execId);
      if (handle) return { handle, existing: true };
      const f = record.finished;
      throw new ExecError(
        'OUTPUT_EXPIRED',
        `requestId: "${requestId}" started exec ${record.execId}, which finished${f?.exitedAt ? ` at ${f.exitedAt}` : ''}` +
          `${f ? ` (exit code ${String(f.exitCode)}${f.signal ? `, ${f.signal}` : ''})` : ''} and is no longer kept`,
      );
    }
    const handle = this.start(op);
    this.#requests.set(requestId, { execId: handle.execId, command: [...op.command], at: Date.now(), finished: null });
    this.#requestOf.set(handle.execId, requestId);
    return { handle, existing: false };
  }

  get(execId: string): ExecHandle | undefined {
    return this.#execs.get(execId);
  }

  list(): ExecHandle[] {
    return [...this.#execs.values()];
  }

  /** The exec as the `list` and `info` answers describe it. */
  describe(h: ExecHandle): ExecInfoWire {
    return { ...h.info(), requestId: this.#requestOf.get(h.execId) ?? null };
  }

  /**
   * The caller of `h` went away but may come back (it named a requestId):
   * SIGKILL its process group unless `attached(h)` is called within `graceMs`.
   */
  abandon(h: ExecHandle, graceMs: number): void {
    if (h.state !== 'running' || this.#closed) return;
    this.attached(h);
    const timer = setTimeout(() => {
      this.#abandoned.delete(h.execId);
      if (h.state === 'running') {
        this.log.info({ execId: h.execId }, 'abandoned exec not re-attached in time; killing its process group');
        h.signal('SIGKILL');
      }
    }, Math.max(0, graceMs));
    timer.unref();
    this.#abandoned.set(h.execId, timer);
  }

  /** A reader attached to `h`: an abandon pending for it is called off. */
  attached(h: ExecHandle): void {
    const timer = this.#abandoned.get(h.execId);
    if (timer) clearTimeout(timer);
    this.#abandoned.delete(h.execId);
  }

  #sweepRequests(): void {
    const cutoff = Date.now() - REQUEST_ID_TTL_MS;
    for (const [id, r] of this.#requests) {
      if (r.at >= cutoff) break;
      this.#requests.delete(id);
      if (this.#requestOf.get(r.execId) === id) this.#requestOf.delete(r.execId);
    }
  }

  /** Kills every process group still running, waits (bounded) for them, and closes the spools. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const timer of this.#expiry) clearTimeout(timer);
    this.#expiry.clear();
    for (const timer of this.#abandoned.values()) clearTimeout(timer);
    this.#abandoned.clear();
    const all = [...this.#execs.values()];
    for (const h of all) if (h.state === 'running') h.signal('SIGKILL');
    await Promise.all(
      all.map((h) => Promise.race([h.wait(), new Promise((r) => setTimeout(r, KILL_GRACE_MS + LINGER_MS).unref())])),
    );
    await Promise.all(all.map((h) => h.dispose(false)));
  }

  #scheduleExpiry(h: ExecHandle): void {
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#expiry.delete(timer);
      if (this.#execs.get(h.execId) === h) this.#execs.delete(h.execId);
      const requestId = this.#requestOf.get(h.execId);
      const record = requestId === undefined ? undefined : this.#requests.get(requestId);
      if (record) {
        const r = h.result;
        record.finished = { exitedAt: h.info().exitedAt, exitCode: r?.exitCode ?? null, signal: r?.signal ?? null };
      }
      this.#requestOf.delete(h.execId);
      h.dispose(true).catch((err: unknown) => this.log.warn({ err, execId: h.execId }, 'removing exec spool failed'));
    }, this.#retentionMs);
    timer.unref();
    this.#expiry.add(timer);
  }
}

/** How one exec's process starts: its program, where, as whom, and how it is signalled. */
interface SpawnInit {
  file: string;
  args: string[];
  argv0: string;
  cwd: string;
  env: Record<string, string>;
  uid: number | undefined;
  gid: number | undefined;
  /** Wraps the synchronous spawn (a confined sandbox starts its children inside its cgroup). */
  spawnInside: <T>(fn: () => T) => T;
  /** The process group that signals go to, given the spawned process's pid. */
  signalGroup: (pid: number) => number;
}

interface HandleInit extends SpawnInit {
  spoolDir: string;
  spoolFailedMemoryBytes: number | undefined;
  log: Logger;
  onFinished: (h: ExecHandle) => void;
}

/** One exec: its process group, stdin, spooled output, and readers. */
export class ExecHandle {
  readonly execId: string;
  readonly pid: number;
  readonly command: string[];
  readonly tty: boolean;
  readonly startedAt = new Date();
  readonly #log: Logger;
  readonly #t0 = performance.now();
  readonly #out: [OutState, OutState];
  readonly #readers = new Set<Reader>();
  #child: ChildProcess | null = null;
  #pty: PtyProcess | null = null;
  #stdinClosed = false;
  #drainWaiters: (() => void)[] = [];
  #exitStatus: { code: number | null; signal: string | null; ms: number } | null = null;
  #exitedAt: Date | null = null;
  #result: ExecResult | null = null;
  #timedOut = false;
  #timeoutTimer: NodeJS.Timeout | null = null;
  #killTimer: NodeJS.Timeout | null = null;
  #lingerTimer: NodeJS.Timeout | null = null;
  #outputSeq = 0;
  #onFinished: (h: ExecHandle) => void;
  readonly #signalGroup: (pid: number) => number;
  #waiters: ((r: ExecResult) => void)[] = [];

  constructor(op: ExecStartOp, init: HandleInit) {
    this.execId = op.execId;
    this.command = [...op.command];
    this.tty = op.tty;
    this.#log = init.log;
    this.#onFinished = init.onFinished;
    this.#signalGroup = init.signalGroup;
    const mkSpool = (name: string, i: 0 | 1): Spool =>
      new Spool(join(init.spoolDir, `${op.execId}.${name}`), {
        failedMemoryBytes: init.spoolFailedMemoryBytes,
        neededFrom: () => this.#neededFrom(i),
        onFlush: () => this.#updateFlow(i),
        onError: (err) => this.#log.error({ err, stream: name }, 'spool write failed; keeping only the newest output, in memory'),
      });
    this.#out = [
      { spool: mkSpool('stdout', 0), pause: null, resume: null, paused: false, ended: false },
      { spool: mkSpool('stderr', 1), pause: null, resume: null, paused: false, ended: false },
    ];
    const ids = init.uid !== undefined ? { uid: init.uid, gid: init.gid } : {};
    if (op.tty) {
      let p: PtyProcess;
      try {
        p = init.spawnInside(() =>
          spawnPty(init.file, init.args, { cwd: init.cwd, env: init.env, cols: op.cols, rows: op.rows, ...ids }),
        );
      } catch (err) {
        throw new ExecError('SPAWN_FAILED', `cannot start ${op.command[0]}: ${(err as Error).message}`, { cause: err });
      }
      this.#pty = p;
      this.pid = p.pid;
      const out = this.#out[0];
      out.pause = () => p.pause();
      out.resume = () => p.resume();
      this.#out[1].ended = true;
      p.onData((d) => this.#onOutput(0, d));
      p.onExit((code, signal) => {
        out.ended = true;
        this.#onExit(code, signal);
      });
    } else {
      const child = init.spawnInside(() =>
        spawn(init.file, init.args, {
          argv0: init.argv0,
          cwd: init.cwd,
          env: init.env,
          detached: true,
          stdio: ['pipe', 'pipe', 'pipe'],
          ...ids,
        }),
      );
      child.on('error', (err) => this.#log.warn({ err }, 'child process error'));
      if (child.pid === undefined) {
        throw new ExecError('SPAWN_FAILED', `cannot start ${op.command[0]}`);
      }
      this.#child = child;
      this.pid = child.pid;
      const stdin = child.stdin!;
      const wake = (): void => {
        const ws = this.#drainWaiters;
        this.#drainWaiters = [];
        for (const cb of ws) cb();
      };
      stdin.on('drain', wake);
      stdin.on('error', () => {
        // EPIPE once the child stopped reading: stdin is gone, writers must not wait.
        this.#stdinClosed = true;
        wake();
      });
      stdin.on('close', () => {
        this.#stdinClosed = true;
        wake();
      });
      const wire = (i: 0 | 1, stream: NodeJS.ReadableStream & { destroy(): void }): void => {
        const st = this.#out[i];
        st.pause = () => stream.pause();
        st.resume = () => stream.resume();
        stream.on('data', (d: Buffer) => this.#onOutput(i, d));
        const ended = (): void => {
          if (st.ended) return;
          st.ended = true;
          this.#maybeFinish();
        };
        stream.on('end', ended);
        stream.on('close', ended);
        stream.on('error', (err) => this.#log.warn({ err }, 'output stream error'));
      };
      wire(0, child.stdout!);
      wire(1, child.stderr!);
      child.on('exit', (code, signal) => this.#onExit(code, signal));
    }
    if (op.timeoutSeconds > 0) {
      this.#timeoutTimer = setTimeout(() => this.#onTimeout(), op.timeoutSeconds * 1000);
    }
    this.#log.debug({ pid: this.pid, tty: this.tty }, 'exec started');
  }

  get state(): ExecState {
    return this.#result ? 'exited' : 'running';
  }

  /** The final status once the exec finished (exited and its output fully read), else null. */
  get result(): ExecResult | null {
    return this.#result;
  }

  /** Current end offsets of stdout and stderr. */
  get offsets(): { stdout: number; stderr: number } {
    return { stdout: this.#out[0].spool.end, stderr: this.#out[1].spool.end };
  }

  info(): ExecInfo {
    const r = this.#result;
    return {
      execId: this.execId,
      pid: this.pid,
      command: [...this.command],
      tty: this.tty,
      state: this.state,
      startedAt: this.startedAt.toISOString(),
      exitedAt: r && this.#exitedAt ? this.#exitedAt.toISOString() : null,
      exitCode: r?.exitCode ?? null,
      signal: r?.signal ?? null,
      timedOut: r?.timedOut ?? false,
      durationMs: r?.durationMs ?? null,
      stdoutBytes: this.#out[0].spool.end,
      stderrBytes: this.#out[1].spool.end,
    };
  }

  /** Resolves with the result when the exec finished. */
  wait(): Promise<ExecResult> {
    if (this.#result) return Promise.resolve(this.#result);
    return new Promise((res) => this.#waiters.push(res));
  }

  /**
   * Writes to the process's stdin. Returns false when the caller should wait
   * (`onceStdinDrain`) before writing more. Bytes written after stdin closed are dropped.
   */
  writeStdin(data: Buffer): boolean {
    if (this.#stdinClosed || this.#result) return true;
    if (this.#pty) {
      this.#pty.write(data);
      return true;
    }
    return this.#child!.stdin!.write(data);
  }

  /** Calls `cb` once stdin can take more data (at once when it is not backed up or is gone). */
  onceStdinDrain(cb: () => void): void {
    const stdin = this.#child?.stdin;
    if (!stdin || this.#stdinClosed || !stdin.writableNeedDrain) queueMicrotask(cb);
    else this.#drainWaiters.push(cb);
  }

  /** EOF on stdin (on a tty: the EOF character, ^D). */
  closeStdin(): void {
    if (this.#stdinClosed) return;
    this.#stdinClosed = true;
    if (this.#pty) {
      if (!this.#result) this.#pty.write('\x04');
    } else this.#child!.stdin!.end();
  }

  /** Sends a signal (`SIGTERM`, `TERM`, or a number) to the whole process group. False when none is left. */
  signal(sig: string | number): boolean {
    const s = normalizeSignal(sig);
    if (s === null) throw new ExecError('INVALID_ARGUMENT', `signal: unknown signal ${String(sig)}`);
    const group = this.#signalGroup(this.pid);
    try {
      process.kill(-group, s);
      return true;
    } catch {
      // The command's group may not exist yet (a confined child between fork and
      // setsid is still in its wrapper's group): then the wrapper's group.
      if (group === this.pid) return false; // ESRCH: the group is gone
      try {
        process.kill(-this.pid, s);
        return true;
      } catch {
        return false;
      }
    }
  }

  /** Resizes the terminal of a tty exec; ignored otherwise. */
  resize(cols: number, rows: number): void {
    if (this.#pty && !this.#result && cols > 0 && rows > 0) this.#pty.resize(cols, rows);
  }

  /** Bytes of one stream from `offset` (up to `max`), from the spool. */
  read(stream: OutputStream, offset: number, max = REPLAY_CHUNK): Promise<Buffer> {
    return this.#out[streamIndex(stream)].spool.read(offset, max);
  }

  /**
   * Subscribes to output from the given offsets: replays what was spooled,
   * then follows live, then delivers `exit`. Throws INVALID_ARGUMENT when an
   * offset lies beyond what the stream produced.
   */
  subscribe(offsets: { stdout: number; stderr: number }, sink: ExecSink): ExecSubscription {
    const off: [number, number] = [offsets.stdout, offsets.stderr];
    for (const i of [0, 1] as const) {
      const o = off[i];
      if (!Number.isSafeInteger(o) || o < 0 || o > this.#out[i].spool.end) {
        throw new ExecError(
          'INVALID_ARGUMENT',
          `offsets.${i === 0 ? 'stdout' : 'stderr'}: ${String(o)} is outside 0..${this.#out[i].spool.end}`,
        );
      }
    }
    const r = new Reader(this, sink, off);
    this.#readers.add(r);
    // Deliver from a microtask so the caller holds the subscription before its sink runs.
    queueMicrotask(() => r.kick());
    this.#updateFlow(0);
    this.#updateFlow(1);
    return r;
  }

  // --- internals used by Reader ---

  /** @internal */
  spool(i: 0 | 1): Spool {
    return this.#out[i].spool;
  }

  /** @internal */
  readerChanged(r: Reader): void {
    if (r.closed) this.#readers.delete(r);
    this.#updateFlow(0);
    this.#updateFlow(1);
  }

  /** @internal Stops everything: kills a live group, clears timers; `removeFiles` deletes the spools. */
  async dispose(removeFiles: boolean): Promise<void> {
    this.#clearTimers();
    for (const r of [...this.#readers]) r.close();
    await Promise.all(this.#out.map((st) => (removeFiles ? st.spool.remove() : st.spool.seal())));
  }

  #onOutput(i: 0 | 1, data: Buffer): void {
    const offset = this.#out[i].spool.append(data);
    this.#outputSeq++;
    for (const r of this.#readers) r.live(i, offset, data);
    this.#updateFlow(i);
  }

  /**
   * Pauses a stream's source when every reader is slow (none is caught up and
   * unpaused) or the spool file lags too far behind; with no reader at all the
   * output just goes to the spool. After the leader exited we always drain.
   * Once the spool file failed (it keeps only the newest bytes in memory), any
   * reader about to fall out of that window holds the source back instead.
   */
  #updateFlow(i: 0 | 1): void {
    const st = this.#out[i];
    if (st.ended || !st.pause) return;
    let pause: boolean;
    if (st.spool.pendingBytes > SPOOL_HIGH_WATER) pause = true;
    else if (st.spool.failed && st.spool.end - this.#neededFrom(i) > st.spool.lagLimit) pause = true;
    else if (this.#exitStatus || this.#readers.size === 0) pause = false;
    else {
      pause = true;
      for (const r of this.#readers) {
        if (r.isLive(i)) {
          pause = false;
          break;
        }
      }
    }
    if (pause === st.paused) return;
    st.paused = pause;
    if (pause) st.pause();
    else st.resume!();
  }

  /** The lowest offset an open reader still has to deliver on stream i. */
  #neededFrom(i: 0 | 1): number {
    let from = Number.POSITIVE_INFINITY;
    for (const r of this.#readers) from = Math.min(from, r.position(i));
    return from;
  }

  #onTimeout(): void {
    this.#timeoutTimer = null;
    if (this.#exitStatus) return;
    this.#timedOut = true;
    this.#log.info({ pid: this.pid }, 'exec timed out; terminating its process group');
    this.signal('SIGTERM');
    this.#killTimer = setTimeout(() => {
      this.#killTimer = null;
      this.signal('SIGKILL');
    }, KILL_GRACE_MS);
    this.#killTimer.unref();
  }

  #onExit(code: number | null, signal: string | null): void {
    if (this.#exitStatus) return;
    this.#exitStatus = { code, signal, ms: Math.round(performance.now() - this.#t0) };
    this.#exitedAt = new Date();
    if (this.#timeoutTimer) clearTimeout(this.#timeoutTimer);
    this.#timeoutTimer = null;
    this.#updateFlow(0);
    this.#updateFlow(1);
    this.#armLinger(this.#outputSeq);
    this.#maybeFinish();
  }

  /** A background child may hold stdout open after the leader exited; stop waiting once it goes quiet. */
  #armLinger(seq: number): void {
    if (this.#result) return;
    this.#lingerTimer = setTimeout(() => {
      this.#lingerTimer = null;
      if (this.#result) return;
      if (this.#outputSeq !== seq || this.#out.some((st) => st.paused)) return this.#armLinger(this.#outputSeq);
      this.#log.debug({}, 'stdio still open after exit; closing it');
      for (const st of this.#out) st.ended = true;
      this.#child?.stdout?.destroy();
      this.#child?.stderr?.destroy();
      this.#maybeFinish();
    }, LINGER_MS);
    this.#lingerTimer.unref();
  }

  #maybeFinish(): void {
    const ex = this.#exitStatus;
    if (this.#result || !ex || !this.#out[0].ended || !this.#out[1].ended) return;
    this.#result = this.#timedOut
      ? { exitCode: 124, signal: null, timedOut: true, durationMs: ex.ms }
      : { exitCode: ex.code, signal: ex.signal, timedOut: false, durationMs: ex.ms };
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#lingerTimer = null;
    this.#stdinClosed = true;
    if (this.#child?.stdin && !this.#child.stdin.destroyed) this.#child.stdin.destroy();
    // A finished exec is kept for an hour (its result and spool); the process
    // objects and their streams are not needed any more. Each fork copies the
    // supervisor's page tables, so what finished execs hold makes every later
    // exec start slower.
    this.#child = null;
    this.#pty = null;
    for (const st of this.#out) st.pause = st.resume = null;
    this.#log.debug({ ...this.#result }, 'exec finished');
    for (const st of this.#out) st.spool.seal().catch(() => {});
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w(this.#result);
    for (const r of [...this.#readers]) r.kick();
    this.#onFinished(this);
  }

  #clearTimers(): void {
    for (const t of [this.#timeoutTimer, this.#lingerTimer]) if (t) clearTimeout(t);
    this.#timeoutTimer = null;
    this.#lingerTimer = null;
  }
}

/** One subscriber's cursor: follows live chunks while caught up, else replays from the spool. */
class Reader implements ExecSubscription {
  readonly #exec: ExecHandle;
  readonly #sink: ExecSink;
  readonly #off: [number, number];
  #paused = false;
  #pumping = false;
  #closed = false;

  constructor(exec: ExecHandle, sink: ExecSink, off: [number, number]) {
    this.#exec = exec;
    this.#sink = sink;
    this.#off = off;
  }

  get paused(): boolean {
    return this.#paused;
  }

  get closed(): boolean {
    return this.#closed;
  }

  isLive(i: 0 | 1): boolean {
    return !this.#paused && !this.#pumping && !this.#closed && this.#off[i] >= this.#exec.spool(i).end;
  }

  pause(): void {
    if (this.#paused || this.#closed) return;
    this.#paused = true;
    this.#exec.readerChanged(this);
  }

  resume(): void {
    if (!this.#paused || this.#closed) return;
    this.#paused = false;
    this.kick();
    this.#exec.readerChanged(this);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#exec.readerChanged(this);
  }

  /** The next offset this reader delivers on stream i. */
  position(i: 0 | 1): number {
    return this.#off[i];
  }

  /** A chunk was just appended at `offset`. */
  live(i: 0 | 1, offset: number, data: Buffer): void {
    if (this.#paused || this.#pumping || this.#closed) return;
    const o = this.#off[i];
    if (o === offset) {
      this.#off[i] = offset + data.length;
      this.#sink.output(streamId(i), offset, data);
    } else if (o < offset) {
      this.kick();
    }
  }

  /** Catch up if behind; deliver `exit` when caught up with a finished exec. */
  kick(): void {
    if (this.#paused || this.#pumping || this.#closed) return;
    if (this.#behind() >= 0) {
      void this.#pump();
      return;
    }
    const result = this.#exec.result;
    if (result) {
      this.#closed = true;
      this.#exec.readerChanged(this);
      this.#sink.exit(result);
    }
  }

  #behind(): number {
    if (this.#off[0] < this.#exec.spool(0).end) return 0;
    if (this.#off[1] < this.#exec.spool(1).end) return 1;
    return -1;
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      for (;;) {
        if (this.#paused || this.#closed) return;
        const i = this.#behind();
        if (i < 0) break;
        const sp = this.#exec.spool(i as 0 | 1);
        const offset = this.#off[i]!;
        const data = sp.readMemory(offset, REPLAY_CHUNK) ?? (await sp.read(offset, REPLAY_CHUNK));
        if (this.#closed) return;
        if (data.length === 0) throw new Error(`spool returned no bytes at ${offset}`);
        this.#off[i] = offset + data.length;
        this.#sink.output(streamId(i as 0 | 1), offset, data);
      }
    } catch (err) {
      this.#pumping = false;
      if (this.#closed) return;
      this.close();
      this.#sink.error(new ExecError('OUTPUT_EXPIRED', `spooled output is unavailable: ${(err as Error).message}`, { cause: err }));
      return;
    } finally {
      this.#pumping = false;
    }
    this.#exec.readerChanged(this);
    this.kick();
  }
}

function validateStart(op: ExecStartOp): void {
  const bad = (field: string, msg: string): ExecError => new ExecError('INVALID_ARGUMENT', `${field}: ${msg}`);
  if (typeof op.execId !== 'string' || !EXEC_ID_RE.test(op.execId)) throw bad('execId', 'must match ' + EXEC_ID_RE.source);
  if (!Array.isArray(op.command) || op.command.length === 0 || !op.command.every((c) => typeof c === 'string'))
    throw bad('command', 'must be a non-empty array of strings');
  if (op.command[0] === '') throw bad('command', 'program must not be empty');
  if (op.env !== undefined && (typeof op.env !== 'object' || op.env === null || Array.isArray(op.env)))
    throw bad('env', 'must be an object of strings');
  for (const [k, v] of Object.entries(op.env ?? {}))
    if (typeof v !== 'string' || k === '' || k.includes('=')) throw bad(`env.${k}`, 'must be a string');
  if (op.workdir !== undefined && op.workdir !== null && typeof op.workdir !== 'string') throw bad('workdir', 'must be a string');
  if (op.user !== undefined && op.user !== null && typeof op.user !== 'string') throw bad('user', 'must be a string');
  if (typeof op.timeoutSeconds !== 'number' || !(op.timeoutSeconds >= 0)) throw bad('timeoutSeconds', 'must be >= 0');
  for (const f of ['cols', 'rows'] as const) {
    const v = op[f];
    if (v !== undefined && v !== null && (!Number.isInteger(v) || v <= 0 || v > 65535)) throw bad(f, 'must be a positive integer');
  }
}

function sameArgv(a: readonly string[], b: readonly string[]): boolean {
  return Array.isArray(b) && a.length === b.length && a.every((x, i) => x === b[i]);
}

function resolveAccount(user: string | undefined): { switchTo: PasswdEntry | null } {
  if (!user) return { switchTo: null };
  const me = currentUser();
  if (!isRoot()) {
    if (user === me.name || user === String(me.uid)) return { switchTo: null };
    throw new ExecError('INVALID_ARGUMENT', `user: cannot run as "${user}": the supervisor runs as "${me.name}", not root`);
  }
  const entry = lookupUser(user);
  if (!entry) throw new ExecError('INVALID_ARGUMENT', `user: no such user "${user}"`);
  return { switchTo: entry };
}

/** execvp-style lookup, so a missing program is reported synchronously with a clear message. */
function resolveCommand(file: string, path: string, cwd: string): string | null {
  const executable = (p: string): boolean => {
    try {
      accessSync(p, fsConstants.X_OK);
      return statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (file.includes('/')) {
    const p = isAbsolute(file) ? file : resolve(cwd, file);
    return executable(p) ? p : null;
  }
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const p = resolve(cwd, dir, file);
    if (executable(p)) return p;
  }
  return null;
}

function normalizeSignal(sig: string | number): NodeJS.Signals | number | null {
  const signals = osConstants.signals as Record<string, number>;
  if (typeof sig === 'number') return Number.isInteger(sig) && sig >= 0 ? sig : null;
  const s = String(sig).toUpperCase();
  if (/^\d+$/.test(s)) return Number(s);
  const name = s.startsWith('SIG') ? s : `SIG${s}`;
  return name in signals ? (name as NodeJS.Signals) : null;
}
