import { randomBytes } from 'node:crypto';
import { OpenShellError, invalidArgument } from '../errors.js';
import type { Logger } from '../log.js';
import type { ExecBody } from '../schemas/sandbox.js';
import type { SandboxService } from '../sandboxes/service.js';
import type { RelayBroker } from './broker.js';
import type { ExecAttachOp, ExecEv, ExecInfoWire, ExecQueryOp, ExecStartOp } from '../protocol/exec.js';
import type { ExecInfo } from '../schemas/sandbox.js';
import { ExecRun } from './exec-run.js';
import { closeWebSocket } from './heartbeat.js';
import type { RawData, WebSocket } from 'ws';

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export interface ExecStartOptions {
  /** Aborts when the caller goes away. */
  signal?: AbortSignal;
  /** Keep stdin open for the caller to stream (interactive exec). */
  interactiveStdin?: boolean;
  cols?: number;
  rows?: number;
  /** When the body's requestId joins an existing exec: deliver output from these offsets (a client resuming). */
  offsets?: { stdout: number; stderr: number };
}

export interface ExecMetrics {
  started(): void;
  /** An exec re-attached after its relay was lost. */
  resumed?(): void;
  finished(durationMs: number, outcome: string): void;
}

/** Starts execs in sandboxes over `exec` relays. */
export class ExecService {
  readonly #broker: RelayBroker;
  readonly #sandboxes: SandboxService;
  readonly #log: Logger;
  readonly #metrics: ExecMetrics | undefined;

  readonly #resumeWindowMs: number;
  /** Runs without a terminal event yet (what a shutdown must end). */
  readonly #active = new Set<ExecRun>();

  constructor(opts: { broker: RelayBroker; sandboxes: SandboxService; log: Logger; metrics?: ExecMetrics; resumeWindowMs?: number }) {
    this.#resumeWindowMs = opts.resumeWindowMs ?? 0;
    this.#broker = opts.broker;
    this.#sandboxes = opts.sandboxes;
    this.#log = opts.log.child({ component: 'exec' });
    this.#metrics = opts.metrics;
  }

  /**
   * Validates the request, waits for the sandbox's session (15 s), opens an
   * exec relay and starts the command. Throws SANDBOX_NOT_FOUND,
   * SANDBOX_NOT_READY, SESSION_UNAVAILABLE or RESOURCE_EXHAUSTED before
   * anything runs; after that, failures arrive as the run's terminal event.
   */
  async start(name: string, body: ExecBody, opts: ExecStartOptions = {}): Promise<ExecRun> {
    const { start, stdin, record } = await this.#prepare(name, body, opts);
    const execId = start.execId;
    const ws = await this.#broker.acquireExec(record.id, opts.signal);
    const noInput = !opts.interactiveStdin && (!stdin || stdin.length === 0);
    if (noInput) start.closeStdin = true;
    // Body stdin rides in the start op when it fits one frame: the start is then atomic (a
    // requestId retry can never meet a process that got half of it).
    const inline = !opts.interactiveStdin && stdin !== undefined && stdin.length > 0 && stdin.length <= INLINE_STDIN_MAX;
    if (inline) start.stdin = stdin.toString('base64');
    const log = this.#log;
    // Resume needs nothing to re-send: streamed stdin is confirmed by the supervisor
    // (`stdinClosed`) before a resume may happen (ExecRun); a tty is never resumed.
    const resumable = !start.tty && this.#resumeWindowMs > 0;
    const run = new ExecRun(ws, start, {
      onRelease: (relay) => this.#broker.releaseExec(record.id, relay),
      // A caller that named a requestId may retry: its leaving kills the group only if it does not come back.
      ...(start.requestId ? { abandonGraceMs: this.#resumeWindowMs || ABANDON_GRACE_MS } : {}),
      ...(resumable
        ? {
            resume: {
              windowMs: this.#resumeWindowMs,
              reattach: (signal: AbortSignal) => this.#broker.acquireExec(record.id, signal),
              canResume: () => !this.#broker.closed,
              onResumed: (ms: number) => {
                this.#metrics?.resumed?.();
                log.info({ sandboxId: record.id, execId, lostForMs: Math.round(ms) }, 'exec re-attached after a lost relay');
              },
            },
          }
        : {}),
    });
    this.#active.add(run);
    void run.ended.then(() => this.#active.delete(run));
    this.#metrics?.started();
    this.#log.debug({ sandboxId: record.id, execId }, 'exec started');
    if (!inline && stdin && stdin.length > 0) run.writeStdin(stdin);
    if (!opts.interactiveStdin && !noInput && !inline) run.closeStdin();
    return run;
  }

  /**
   * `"detach": true`: starts the command (or, by requestId, finds the exec
   * it already started) and answers with its id; nothing streams, and the
   * process runs until it exits or is signalled.
   */
  async startDetached(name: string, body: ExecBody, opts: { signal?: AbortSignal } = {}): Promise<{ execId: string; existing: boolean }> {
    const { start, stdin, record } = await this.#prepare(name, body, {});
    start.detach = true;
    if (stdin && stdin.length > 0) start.stdin = stdin.toString('base64');
    const ev = await this.#ask(record.id, start, opts.signal);
    if (ev.ev !== 'started') throw new OpenShellError('INTERNAL', `unexpected answer from the supervisor: ${ev.ev}`);
    this.#metrics?.started();
    return { execId: ev.execId, existing: ev.existing === true };
  }

  /** `GET …/execs`: every exec the sandbox's supervisor keeps (running, and finished within the retention). */
  async list(name: string, opts: { signal?: AbortSignal } = {}): Promise<ExecInfo[]> {
    const record = await this.#sandboxes.getRecord(name);
    const ev = await this.#ask(record.id, { op: 'list' }, opts.signal);
    if (ev.ev !== 'list') throw new OpenShellError('INTERNAL', `unexpected answer from the supervisor: ${ev.ev}`);
    return ev.execs.map(toApiInfo);
  }

  /** `GET …/execs/:execId`; EXEC_NOT_FOUND (404) when the supervisor keeps no such exec. */
  async info(name: string, execId: string, opts: { signal?: AbortSignal } = {}): Promise<ExecInfo> {
    const record = await this.#sandboxes.getRecord(name);
    const ev = await this.#ask(record.id, { op: 'info', execId }, opts.signal);
    if (ev.ev !== 'info') throw new OpenShellError('INTERNAL', `unexpected answer from the supervisor: ${ev.ev}`);
    return toApiInfo(ev.exec);
  }

  /** Signals an exec's process group; CONFLICT (409) once it has exited. */
  async signal(name: string, execId: string, signal: string, opts: { signal?: AbortSignal } = {}): Promise<{ execId: string; signal: string; delivered: boolean }> {
    const record = await this.#sandboxes.getRecord(name);
    const ev = await this.#ask(record.id, { op: 'signal', execId, signal }, opts.signal);
    if (ev.ev !== 'signaled') throw new OpenShellError('INTERNAL', `unexpected answer from the supervisor: ${ev.ev}`);
    if (!ev.delivered) throw new OpenShellError('CONFLICT', `exec "${execId}" has exited`, { details: { execId } });
    return { execId, signal, delivered: true };
  }

  /**
   * `GET …/execs/:execId/output`: the exec's output from the given offsets as
   * a run (`started`, output, then `exit`; without `follow`, `running` once
   * the offsets it had reached were sent). Resumes over a lost relay like an exec.
   */
  async attach(
    name: string,
    execId: string,
    offsets: { stdout: number; stderr: number },
    opts: { follow: boolean; signal?: AbortSignal },
  ): Promise<ExecRun> {
    const record = await this.#sandboxes.getRecord(name);
    const ws = await this.#broker.acquireExec(record.id, opts.signal);
    const op: ExecAttachOp = { op: 'attach', execId, offsets, ...(opts.follow ? {} : { follow: false }) };
    const run = new ExecRun(ws, op, {
      onRelease: (relay) => this.#broker.releaseExec(record.id, relay),
      ...(this.#resumeWindowMs > 0
        ? {
            resume: {
              windowMs: this.#resumeWindowMs,
              reattach: (signal: AbortSignal) => this.#broker.acquireExec(record.id, signal),
              canResume: () => !this.#broker.closed,
            },
          }
        : {}),
    });
    // Errors before any output (no such exec, bad offsets) become the status code, not a 200 stream.
    const first = await run.peek();
    if (first.type === 'error') {
      run.close();
      throw new OpenShellError(first.code, first.message.replace(/^[A-Z_]+: /, ''), { details: { execId } });
    }
    this.#active.add(run);
    void run.ended.then(() => this.#active.delete(run));
    return run;
  }

  /**
   * One query on an exec relay (a kept one when there is one): the first
   * text frame back is the answer, then the relay is released for reuse.
   * A relay lost before the answer is retried once on a fresh one (every
   * query is safe to repeat: a detached start carries its execId).
   */
  async #ask(sandboxId: string, op: ExecQueryOp | ExecStartOp, signal?: AbortSignal): Promise<Exclude<ExecEv, { ev: 'error' }>> {
    for (let attempt = 0; ; attempt++) {
      const ws = await this.#broker.acquireExec(sandboxId, signal);
      let ev: ExecEv | null;
      try {
        ev = await askOn(ws, op, signal);
      } catch (err) {
        ws.terminate();
        throw err;
      }
      if (ev === null) {
        if (attempt < 2 && !signal?.aborted) continue;
        throw new OpenShellError('RELAY_LOST', 'the relay to the sandbox closed before the supervisor answered');
      }
      if (ws.readyState === ws.OPEN) {
        ws.send(JSON.stringify({ op: 'release' }));
        this.#broker.releaseExec(sandboxId, ws);
      }
      if (ev.ev === 'error') throw supervisorError(ev.code, ev.message);
      return ev;
    }
  }

  async #prepare(name: string, body: ExecBody, opts: ExecStartOptions) {
    const command = typeof body.command === 'string' ? ['sh', '-c', body.command] : body.command;
    if (command[0] === '') throw invalidArgument('command[0]', 'must not be empty');
    const timeoutSeconds = body.timeoutSeconds ?? 0;
    if (!Number.isFinite(timeoutSeconds) || timeoutSeconds < 0) throw invalidArgument('timeoutSeconds', 'must be ≥ 0');
    let stdin: Buffer | undefined;
    if (body.stdin !== undefined) {
      if (body.stdin.length % 4 !== 0 || !BASE64.test(body.stdin)) throw invalidArgument('stdin', 'must be base64');
      stdin = Buffer.from(body.stdin, 'base64');
    }
    const record = await this.#sandboxes.getRecord(name);
    if (record.phase === 'Error' || record.phase === 'Deleting') {
      throw new OpenShellError('SANDBOX_NOT_READY', `sandbox "${name}" is ${record.phase}`, {
        details: { phase: record.phase, reason: record.condition.reason },
      });
    }
    const execId = `ex_${randomBytes(10).toString('hex')}`;
    const start: ExecStartOp = {
      op: 'start',
      execId,
      command,
      env: body.env ?? {},
      ...(body.workdir ? { workdir: body.workdir } : {}),
      ...(body.user ? { user: body.user } : {}),
      tty: body.tty ?? false,
      ...(opts.cols ? { cols: opts.cols, rows: opts.rows } : {}),
      timeoutSeconds,
      ...(body.requestId ? { requestId: body.requestId } : {}),
      ...(body.requestId && opts.offsets ? { offsets: opts.offsets } : {}),
    };
    return { start, stdin, record };
  }

  /**
   * Gateway shutdown: every exec still streaming ends with a `RELAY_LOST`
   * line saying so (its process keeps running in the sandbox); resolves once
   * each caller's stream took it, or after `timeoutMs`.
   */
  async shutdown(timeoutMs = 2000): Promise<void> {
    const runs = [...this.#active];
    if (runs.length === 0) return;
    for (const run of runs) run.shutdown('the gateway is shutting down; the process keeps running in the sandbox', true);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(runs.map((r) => r.consumed)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
    // Let the last lines reach the sockets before connections are closed.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** Execs still waiting for their terminal event. */
  get activeCount(): number {
    return this.#active.size;
  }

  finished(durationMs: number, outcome: string): void {
    this.#metrics?.finished(durationMs, outcome);
  }
}

/** Body stdin up to this size goes in the start op (the relay's frames may be 64 MiB). */
const INLINE_STDIN_MAX = 16 * 1024 * 1024;

/** How long a caller that named a requestId has to come back when the gateway has no resume window. */
const ABANDON_GRACE_MS = 15_000;

/** Sends `op` and resolves with the first text frame back; null when the relay closed first. */
function askOn(ws: WebSocket, op: ExecQueryOp | ExecStartOp, signal?: AbortSignal): Promise<ExecEv | null> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      ws.off('message', onMessage);
      ws.off('close', onClose);
      signal?.removeEventListener('abort', onAbort);
    };
    const onMessage = (data: RawData, isBinary: boolean): void => {
      if (isBinary) return;
      let ev: ExecEv;
      try {
        ev = JSON.parse((Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer)).toString('utf8')) as ExecEv;
      } catch {
        return;
      }
      cleanup();
      resolve(ev);
    };
    const onClose = (): void => {
      cleanup();
      resolve(null);
    };
    const onAbort = (): void => {
      cleanup();
      closeWebSocket(ws, 1000, 'caller went away');
      reject(new OpenShellError('RELAY_LOST', 'caller went away'));
    };
    ws.on('message', onMessage);
    ws.once('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (ws.readyState !== ws.OPEN) return onClose();
    ws.send(JSON.stringify({ ...op, keep: true }));
  });
}

/** A supervisor's error answer in the gateway's catalogue. */
function supervisorError(code: string, message: string): OpenShellError {
  switch (code) {
    case 'EXEC_NOT_FOUND':
    case 'INVALID_ARGUMENT':
    case 'CONFLICT':
    case 'OUTPUT_EXPIRED':
      return new OpenShellError(code, message);
    default:
      return new OpenShellError('INTERNAL', `${code}: ${message}`);
  }
}

/** The wire description with the API's field names. */
function toApiInfo(w: ExecInfoWire): ExecInfo {
  return {
    execId: w.execId,
    requestId: w.requestId ?? null,
    state: w.state,
    command: w.command,
    tty: w.tty,
    pid: w.pid,
    exitCode: w.exitCode,
    signal: w.signal,
    timedOut: w.timedOut,
    startedAt: w.startedAt,
    finishedAt: w.exitedAt,
    durationMs: w.durationMs,
    stdoutBytes: w.stdoutBytes,
    stderrBytes: w.stderrBytes,
  };
}
